"""Projects in a dict, for tests and single-process trials (nothing survives a restart).

Values are copied in and out (pydantic models are frozen; patches are bytes), so no caller aliases state.
The per-project `max_running` is not seen by a queue that is not in the same database: with this store
the queue keeps its own limit (one running job per project).
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime

from agentd.domain.projects import Project, ProjectSpec
from agentd.ports.project_store import ProjectStore


class MemoryProjectStore(ProjectStore):
    def __init__(self) -> None:
        self._projects: dict[str, Project] = {}
        self._patches: dict[tuple[str, str], bytes] = {}

    async def put(self, project_id: str, spec: ProjectSpec) -> tuple[Project, bool]:
        now = datetime.now(UTC)
        old = self._projects.get(project_id)
        project = Project(
            id=project_id,
            **spec.model_dump(),
            created_at=old.created_at if old else now,
            updated_at=now,
        )
        self._projects[project_id] = project
        return project, old is None

    async def find(self, project_id: str) -> Project | None:
        return self._projects.get(project_id)

    async def list(self) -> builtins.list[Project]:
        return [self._projects[k] for k in sorted(self._projects)]

    async def delete(self, project_id: str) -> bool:
        return self._projects.pop(project_id, None) is not None

    async def put_patch(self, project_id: str, job_id: str, patch: bytes) -> None:
        self._patches[(project_id, job_id)] = bytes(patch)

    async def get_patch(self, project_id: str, job_id: str) -> bytes | None:
        return self._patches.get((project_id, job_id))
