"""Projects and job patches in PostgreSQL (the queue's database: agentd_projects, agentd_job_patches).

The queue's claim reads agentd_projects.max_running (agentd_project_has_room, migration 0003), so a
project's limit holds fleet-wide. Shares the process's `PgDatabase` (`PostgresProjectStore(queue.db)`, then
`open()`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC
from typing import Any

from psycopg.types.json import Jsonb

from agentd.adapters.postgres.database import PgDatabase
from agentd.adapters.postgres.queries import QUERIES
from agentd.domain.projects import Project, ProjectSpec
from agentd.ports.project_store import ProjectStore


def _project(row: Mapping[str, Any]) -> Project:
    spec = ProjectSpec.model_validate(row["spec"])
    return Project(
        id=row["id"],
        **spec.model_dump(),
        created_at=row["created_at"].astimezone(UTC),
        updated_at=row["updated_at"].astimezone(UTC),
    )


PREFETCHED_MAX = 1000


class PostgresProjectStore(ProjectStore):
    def __init__(self, db: PgDatabase) -> None:
        self.db = db
        # Rows read by a claim's statement (the run journal) for the worker's `find` right after it: each is
        # answered once, then forgotten, so no answer is older than the claim of the job that asks.
        self._prefetched: OrderedDict[str, Project | None] = OrderedDict()

    def prefetched(self, project_id: str, row: Mapping[str, Any]) -> None:
        """The project of a job just claimed, read in the claim's statement (`project_found`, `project_spec`,
        `project_created_at`, `project_updated_at`): the next `find` of it answers from this, once."""
        self._prefetched[project_id] = (
            _project(
                {
                    "id": project_id,
                    "spec": row["project_spec"],
                    "created_at": row["project_created_at"],
                    "updated_at": row["project_updated_at"],
                }
            )
            if row["project_found"]
            else None
        )
        self._prefetched.move_to_end(project_id)
        while len(self._prefetched) > PREFETCHED_MAX:
            self._prefetched.popitem(last=False)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def put(self, project_id: str, spec: ProjectSpec) -> tuple[Project, bool]:
        params = {
            "id": project_id,
            "spec": Jsonb(spec.model_dump(mode="json")),
            "max_running": spec.max_running,
        }
        async with self.db.connection() as conn:
            row = await (await conn.execute(QUERIES["project_put"], params)).fetchone()
        assert row is not None
        return _project(row), bool(row["created"])

    async def find(self, project_id: str) -> Project | None:
        if project_id in self._prefetched:
            return self._prefetched.pop(project_id)
        async with self.db.connection() as conn:
            row = await (await conn.execute(QUERIES["project_get"], {"id": project_id})).fetchone()
        return _project(row) if row is not None else None

    async def list(self) -> list[Project]:
        async with self.db.connection() as conn:
            rows = await (await conn.execute(QUERIES["project_list"])).fetchall()
        return [_project(r) for r in rows]

    async def delete(self, project_id: str) -> bool:
        async with self.db.connection() as conn:
            cur = await conn.execute(QUERIES["project_delete"], {"id": project_id})
            return await cur.fetchone() is not None

    async def put_patch(self, project_id: str, job_id: str, patch: bytes) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                QUERIES["patch_put"], {"job_id": job_id, "project_id": project_id, "patch": patch}
            )

    async def get_patch(self, project_id: str, job_id: str) -> bytes | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(QUERIES["patch_get"], {"job_id": job_id, "project_id": project_id})
            row = await cur.fetchone()
        return bytes(row["patch"]) if row is not None else None
