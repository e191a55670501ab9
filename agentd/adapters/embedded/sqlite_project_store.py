"""Projects and job patches in the embedded database (the SQLite file of the queue).

The queue's claim reads `projects.max_running` (sql/queries.sql `next_runnable`), so the store and the
queue must share one `SqliteDatabase` (`SqliteProjectStore(queue.db)`).
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from agentd.adapters.embedded.database import SqliteDatabase, queries
from agentd.domain.projects import Project, ProjectSpec
from agentd.ports.project_store import ProjectStore

Q = queries("projects")


def _project(row: sqlite3.Row) -> Project:
    spec = ProjectSpec.model_validate_json(row["spec"])
    return Project(
        id=row["id"],
        **spec.model_dump(),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


class SqliteProjectStore(ProjectStore):
    def __init__(self, db: SqliteDatabase | Path) -> None:
        self.db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)
        self.db.acquire()

    async def put(self, project_id: str, spec: ProjectSpec) -> tuple[Project, bool]:
        params = {
            "id": project_id,
            "spec": spec.model_dump_json(),
            "max_running": spec.max_running,
            "now": datetime.now(UTC).isoformat(timespec="microseconds"),
        }

        def op(db: sqlite3.Connection) -> tuple[Project, bool]:
            created = db.execute(Q["get"], params).fetchone() is None
            db.execute(Q["put"], params)
            return _project(db.execute(Q["get"], params).fetchone()), created

        return await self.db.run(op)

    async def find(self, project_id: str) -> Project | None:
        row = await self.db.run(lambda db: db.execute(Q["get"], {"id": project_id}).fetchone())
        return _project(row) if row is not None else None

    async def list(self) -> list[Project]:
        rows = await self.db.run(lambda db: db.execute(Q["list"]).fetchall())
        return [_project(r) for r in rows]

    async def delete(self, project_id: str) -> bool:
        return await self.db.run(lambda db: db.execute(Q["delete"], {"id": project_id}).rowcount == 1)

    async def put_patch(self, project_id: str, job_id: str, patch: bytes) -> None:
        params = {
            "job_id": job_id,
            "project_id": project_id,
            "patch": patch,
            "now": datetime.now(UTC).isoformat(timespec="microseconds"),
        }
        await self.db.run(lambda db: db.execute(Q["put_patch"], params))

    async def get_patch(self, project_id: str, job_id: str) -> bytes | None:
        row = await self.db.run(
            lambda db: db.execute(Q["get_patch"], {"job_id": job_id, "project_id": project_id}).fetchone()
        )
        return bytes(row["patch"]) if row is not None else None

    async def close(self) -> None:
        await self.db.close()
