"""Ports for projects' code: git workspaces for jobs, and the templates new projects start from."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agentd.domain.models import ChangedFile, PushResult
from agentd.domain.projects import Project, TemplateInfo


@dataclass(frozen=True)
class Workspace:
    """One job's working tree: `path` at commit `base` (what `ref` named when the job started)."""

    project_id: str
    job_id: str
    path: Path
    ref: str
    base: str


@dataclass(frozen=True)
class Changes:
    files: list[ChangedFile]
    # `git diff --binary` against the base commit (applies with `git apply`); None when it is larger than
    # `patch_limit` bytes: then it is not kept (a run may write gigabytes).
    patch: bytes | None
    patch_limit: int | None = None


class Workspaces(Protocol):
    """Git working trees for jobs. `token` is the password git uses for the project's URL (from the secret
    store): it is handed to git through a credential helper's environment, never put in a URL, a file, a
    command line or a log. Git failures raise WorkspaceFailed (with `retryable` for network trouble)."""

    @abstractmethod
    async def seed(self, project: Project, files: Mapping[str, bytes], *, token: str | None = None) -> bool:
        """Give a project made from a template its first commit: a new local repository (no git URL), or
        the empty remote repository. False when the repository already has commits (nothing done)."""
        ...

    @abstractmethod
    async def prepare(
        self, project: Project, job_id: str, ref: str | None, *, token: str | None
    ) -> Workspace:
        """Fetch, then create the job's own working tree at `ref` (the project's default ref when None)."""
        ...

    @abstractmethod
    async def changes(self, ws: Workspace) -> Changes:
        """What the run changed against `ws.base`: staged, untracked and committed changes alike."""
        ...

    @abstractmethod
    async def push(
        self, project: Project, ws: Workspace, branch: str, message: str, *, token: str | None
    ) -> PushResult:
        """Commit the working tree's changes (with `message`) and push them to `branch`."""
        ...

    @abstractmethod
    async def remove(self, ws: Workspace) -> None:
        """Delete the working tree (never raises)."""
        ...

    @abstractmethod
    async def trees(self) -> list[tuple[str, str]]:
        """(project id, job id) of every job working tree there is: those of running jobs, and those left
        by a worker that died before it could remove them."""
        ...

    @abstractmethod
    async def remove_tree(self, project_id: str, job_id: str) -> None:
        """Delete a job's working tree and what agentd kept beside it for the job (never raises)."""
        ...

    @abstractmethod
    async def forget(self, project_id: str) -> None:
        """Delete everything kept for a project (its mirror, its local repository)."""
        ...


class TemplateLibrary(Protocol):
    """Project templates: the ones agentd ships and the user's own (AGENTD_TEMPLATES_DIR)."""

    @abstractmethod
    def list(self) -> list[TemplateInfo]:
        """Every template, sorted by name (a user's template hides a shipped one of the same name)."""
        ...

    @abstractmethod
    def render(self, name: str, variables: Mapping[str, str]) -> dict[str, bytes]:
        """The template's files (relative path → content) with `{{ variable }}` filled in.
        TemplateNotFound for an unknown name."""
        ...

    @abstractmethod
    def info(self, name: str) -> TemplateInfo:
        """The template's manifest, or TemplateNotFound."""
        ...
