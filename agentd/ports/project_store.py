"""The ProjectStore port: projects, and the patches their jobs produced, in the queue's database."""

from __future__ import annotations

from abc import abstractmethod
from typing import Protocol

from agentd.domain.projects import Project, ProjectSpec


class ProjectStore(Protocol):
    """Every adapter passes tests/contract/test_project_store.py.

    Projects are keyed by id; `put` creates or replaces one (keeping its creation time). Patches are kept
    per job (bytes: a `git diff --binary`, which need not be UTF-8); a later `put_patch` for the same job
    replaces the earlier one (a retried run).
    """

    @abstractmethod
    async def put(self, project_id: str, spec: ProjectSpec) -> tuple[Project, bool]:
        """Create or update a project. Returns (project, created)."""
        ...

    @abstractmethod
    async def find(self, project_id: str) -> Project | None:
        """The project, or None when it was never created."""
        ...

    @abstractmethod
    async def list(self) -> list[Project]:
        """Every project, sorted by id."""
        ...

    @abstractmethod
    async def delete(self, project_id: str) -> bool:
        """False when there was no such project. The jobs and patches of the project stay."""
        ...

    @abstractmethod
    async def put_patch(self, project_id: str, job_id: str, patch: bytes) -> None:
        """Keep a job's patch (replacing an earlier one of the same job)."""
        ...

    @abstractmethod
    async def get_patch(self, project_id: str, job_id: str) -> bytes | None:
        """A job's patch, or None."""
        ...

    async def close(self) -> None:
        return None
