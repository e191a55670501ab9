"""Use cases for projects: create or update one (from a repository or a template), look them up, delete
them, list the templates, and hand out a job's patch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog

from agentd.domain.errors import (
    InvalidProject,
    PatchNotFound,
    PatchTooLarge,
    ProjectInUse,
    ProjectNotFound,
    SecretsUnavailable,
    WorkspaceFailed,
)
from agentd.domain.models import AgentRequest, JobStatus, validate_project_id
from agentd.domain.projects import Project, ProjectSpec, TemplateInfo
from agentd.ports.project_store import ProjectStore
from agentd.ports.secret_store import SecretStore
from agentd.ports.work_queue import JobFilter, WorkQueue
from agentd.ports.workspace import TemplateLibrary, Workspaces

log = structlog.get_logger(__name__)


async def git_token(secrets: SecretStore | None, project: Project) -> str | None:
    """The token the project's `git.credentials` names (the project's secret, else the global one)."""
    if project.git is None or project.git.credentials is None:
        return None
    name = project.git.credentials
    if secrets is None:
        raise WorkspaceFailed(f"git.credentials names secret {name}, but this agentd has no secret store")
    try:
        values = await secrets.resolve(project.id)
    except SecretsUnavailable as e:
        raise WorkspaceFailed(f"git.credentials names secret {name}, but {e.message}") from None
    if name not in values:
        raise WorkspaceFailed(
            f"git.credentials names secret {name}, which is not set: set it with "
            f"PUT /projects/{project.id}/secrets/{name} "
            f"(or `agentd secrets set --project {project.id} {name}`)"
        )
    return values[name]


class ProjectService:
    def __init__(
        self,
        store: ProjectStore,
        queue: WorkQueue,
        templates: TemplateLibrary,
        workspaces: Workspaces,
        secrets: SecretStore | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.templates = templates
        self.workspaces = workspaces
        self.secrets = secrets

    async def put(self, project_id: str, body: dict[str, Any]) -> tuple[Project, bool]:
        """Create or update a project. A template gives a new repository its first commit (a local one
        when there is no git URL, or the empty remote one); an existing repository is left as it is."""
        validate_project_id(project_id)
        spec = ProjectSpec.model_validate(body)
        if spec.variables and spec.template is None:
            raise InvalidProject("variables fill a template: give `template` too")
        old = await self.store.find(project_id)
        if spec.template is not None:
            info = self.templates.info(spec.template)
            values = info.values(spec.variables, project_id)
            draft = Project(id=project_id, **spec.model_dump(), created_at=_now(), updated_at=_now())
            token = await self._token(draft)
            if old is None or old.template != spec.template or old.git != spec.git:
                files = self.templates.render(spec.template, values)
                seeded = await self.workspaces.seed(draft, files, token=token)
                log.info("project.template", project_id=project_id, template=spec.template, seeded=seeded)
        elif spec.git is not None and spec.git.credentials is not None:
            draft = Project(id=project_id, **spec.model_dump(), created_at=_now(), updated_at=_now())
            await self._token(draft)  # fail now, not in every job, when the secret is missing
        project, created = await self.store.put(project_id, spec)
        log.info("project.saved", project_id=project_id, created=created)
        return project, created

    async def _token(self, project: Project) -> str | None:
        try:
            return await git_token(self.secrets, project)
        except WorkspaceFailed as e:  # the request names a secret that is not there: the caller's to fix
            raise InvalidProject(e.message) from None

    async def get(self, project_id: str) -> Project:
        project = await self.store.find(validate_project_id(project_id))
        if project is None:
            raise ProjectNotFound(f"no project {project_id!r}: create it with PUT /projects/{project_id}")
        return project

    async def list_projects(self) -> list[Project]:
        return await self.store.list()

    async def delete(self, project_id: str) -> None:
        """Refused (ProjectInUse) while the project has queued or running jobs."""
        await self.get(project_id)
        for status in (JobStatus.running, JobStatus.queued):
            busy = await self.queue.list_jobs(project_id, JobFilter(status=status, limit=1))
            if busy:
                raise ProjectInUse(
                    f"project {project_id!r} has {status.value} job {busy[0].id}: cancel it "
                    f"(POST /projects/{project_id}/jobs/{busy[0].id}/cancel) or wait for it to end"
                )
        await self.store.delete(project_id)
        await self.workspaces.forget(project_id)
        log.info("project.deleted", project_id=project_id)

    def list_templates(self) -> list[TemplateInfo]:
        return self.templates.list()

    async def patch(self, project_id: str, job_id: str) -> bytes:
        job = await self.queue.get(validate_project_id(project_id), job_id)  # JobNotFound
        if job.result is not None and job.result.patch_omitted:  # before the store: an earlier attempt's
            raise PatchTooLarge(f"job {job_id}: {job.result.patch_omitted}")  # patch may still be there
        patch = await self.store.get_patch(project_id, job_id)
        if patch is None:
            if not job.status.is_final:
                raise PatchNotFound(f"job {job_id} is {job.status.value}: its patch is recorded when it ends")
            raise PatchNotFound(
                f"job {job_id} has no patch: project {project_id!r} has no git repository, or the job "
                "ended before its working tree was ready"
            )
        return patch

    async def check_request(self, request: AgentRequest) -> None:
        """`ref` and `push` need a project with a repository."""
        if request.ref is None and request.push is None:
            return
        project = await self.store.find(request.project_id)
        if project is None or not project.has_repository:
            field = "ref" if request.ref is not None else "push"
            raise InvalidProject(
                f"`{field}` needs a project with a git repository: create it with "
                f'PUT /projects/{request.project_id} {{"git": {{"url": ...}}}} or {{"template": ...}}'
            )


def _now() -> datetime:
    return datetime.now(UTC)
