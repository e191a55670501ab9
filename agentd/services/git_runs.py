"""A job's git working tree, around its run: prepared before the agent starts, its changes recorded (the
patch, `changed_files`, an optional push) after the agent ends, removed at the end.

Jobs of projects that were never created, or that have no repository, run as before (no working tree).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from agentd.domain.errors import JobNotFound, WorkspaceFailed
from agentd.domain.models import AgentResult, Job
from agentd.domain.projects import Project
from agentd.ports.project_store import ProjectStore
from agentd.ports.secret_store import SecretStore
from agentd.ports.work_queue import WorkQueue
from agentd.ports.workspace import Workspace, Workspaces
from agentd.services.projects import git_token

log = structlog.get_logger(__name__)


class GitRuns:
    def __init__(self, projects: ProjectStore, workspaces: Workspaces, secrets: SecretStore | None) -> None:
        self.projects = projects
        self.workspaces = workspaces
        self.secrets = secrets

    async def open(self, job: Job) -> GitRun | None:
        """The job's working tree, or None for a project without a repository. WorkspaceFailed when the
        repository cannot be fetched or the ref is unknown."""
        project = await self.projects.find(job.project_id)
        if project is None or not project.has_repository:
            if job.request.ref is not None or job.request.push is not None:
                raise WorkspaceFailed(f"project {job.project_id!r} has no git repository (any more)")
            return None
        token = await git_token(self.secrets, project)
        ws = await self.workspaces.prepare(project, job.id, job.request.ref, token=token)
        return GitRun(self, project, ws, token)

    async def sweep(self, queue: WorkQueue, busy: Collection[str]) -> int:
        """Remove the working trees that runs left behind (their worker was killed before it could), and
        return how many. A tree is removed once its job is final or gone (purged); the trees of jobs in
        `busy` (running here) or running elsewhere (a worker sharing this data dir) stay, and so do those
        of queued jobs: the next attempt starts its tree afresh, and may be starting it right now."""
        removed = 0
        for project_id, job_id in await self.workspaces.trees():
            if job_id in busy:
                continue
            try:
                job = await queue.get(project_id, job_id)
            except JobNotFound:
                pass
            else:
                if not job.status.is_final:
                    continue
            await self.workspaces.remove_tree(project_id, job_id)
            log.info("workspace.swept", project_id=project_id, job_id=job_id)
            removed += 1
        return removed


@dataclass
class GitRun:
    owner: GitRuns
    project: Project
    workspace: Workspace
    token: str | None

    @property
    def workdir(self) -> Path:
        return self.workspace.path

    @property
    def secrets(self) -> dict[str, str]:
        """The git token, to redact from everything the run produces."""
        name = self.project.git.credentials if self.project.git else None
        return {name: self.token} if name and self.token else {}

    def scrub(self, env: Mapping[str, str]) -> dict[str, str]:
        """The run's environment without the git token: agentd fetches and pushes, the agent needs none."""
        return {k: v for k, v in env.items() if k not in self.secrets}

    async def record(self, job: Job, result: AgentResult) -> AgentResult:
        """Keep the patch with the job; with `push`, commit and push a succeeded run's changes."""
        try:
            changes = await self.owner.workspaces.changes(self.workspace)
            if changes.patch is not None:
                await self.owner.projects.put_patch(job.project_id, job.id, changes.patch)
        except WorkspaceFailed as e:
            log.error("workspace.record_failed", error=e.message)
            return result.model_copy(
                update={"status": "failed", "error": f"could not record the changes: {e.message}"}
            )
        update: dict[str, object] = {"changed_files": changes.files}
        if changes.patch is None:  # too large to keep: the run's result stands, `changed_files` says what
            update["patch_omitted"] = (
                f"the patch is larger than {changes.patch_limit} bytes (AGENTD_MAX_PATCH_BYTES): not kept; "
                "`changed_files` lists what changed"
            )
        push = job.request.push
        if push is not None and result.status == "succeeded" and changes.files:
            branch = push.branch_for(job.id)
            try:
                update["push"] = await self.owner.workspaces.push(
                    self.project,
                    self.workspace,
                    branch,
                    f"agentd job {job.id}\n\n{_summary(job)}",
                    token=self.token,
                )
            except WorkspaceFailed as e:
                update.update(status="failed", error=f"could not push branch {branch}: {e.message}")
        return result.model_copy(update=update)

    async def close(self) -> None:
        await self.owner.workspaces.remove(self.workspace)


def _summary(job: Job) -> str:
    prompt = " ".join(job.request.prompt.split())
    return (prompt[:200] + "…") if len(prompt) > 200 else prompt
