"""The composition root: settings in, a wired application out. Tests override any part by keyword."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from aiohttp import web

from agentd.adapters.agent_process import reap_orphans
from agentd.adapters.claude_code.agent import ClaudeCodeAgent, ClaudeCodeConfig
from agentd.adapters.codex.agent import CodexAgent, CodexConfig
from agentd.adapters.embedded.sqlite_event_stream import SqliteEventStream
from agentd.adapters.embedded.sqlite_project_store import SqliteProjectStore
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.git_workspace import GitWorkspaces
from agentd.adapters.http.app import ApiConfig, create_app
from agentd.adapters.memory.memory_project_store import MemoryProjectStore
from agentd.adapters.memory.memory_secret_store import MemorySecretStore
from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.adapters.opencode import OpenCodeAgent, OpenCodeConfig
from agentd.adapters.sandbox import Sandbox
from agentd.adapters.template_library import SHIPPED, DirectoryTemplateLibrary
from agentd.config import ConfigError, Settings, load_master_key, service_secrets
from agentd.ports.code_agent import CodeAgent
from agentd.ports.event_stream import EventStream
from agentd.ports.project_store import ProjectStore
from agentd.ports.secret_store import SecretStore
from agentd.ports.work_queue import Limits, WorkQueue
from agentd.ports.workspace import TemplateLibrary, Workspaces
from agentd.services.git_runs import GitRuns
from agentd.services.jobs import JobService
from agentd.services.projects import ProjectService
from agentd.services.redaction import LOG_SECRETS
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import Runner
from agentd.services.secrets import SecretService

log = structlog.get_logger(__name__)


@dataclass
class Container:
    settings: Settings
    queue: WorkQueue
    streams: EventStream
    registry: ProviderRegistry
    runner: Runner | None
    service: JobService
    secrets: SecretService
    sandbox: Sandbox
    projects: ProjectService

    def app(self) -> web.Application:
        api_key = self.settings.api_key.get_secret_value() if self.settings.api_key else None
        app = create_app(
            self.service,
            ApiConfig(
                api_key=api_key,
                heartbeat_s=self.settings.sse_heartbeat_s,
                sandbox=self.sandbox.mode,
            ),
            self.secrets,
            projects=self.projects,
        )
        app.cleanup_ctx.append(self._lifecycle)
        return app

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.stop()

    async def start(self) -> None:
        if self.runner is not None:
            reaped = reap_orphans()  # what runs of a crashed agentd left behind
            if reaped:
                log.warning("agentd.reaped_orphans", count=reaped)
            await self.runner.start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop(self.settings.shutdown_grace_s)
        for _, agent in self.registry.items():
            await agent.close()
        await self.streams.close()
        await self.projects.store.close()
        await self.queue.close()


def open_sandbox(settings: Settings) -> Sandbox:
    """AGENTD_SANDBOX, probed once at start; the data dir is hidden from every jail."""
    return Sandbox.start(settings.sandbox, hide=(settings.data_dir,))


def claude_config(settings: Settings, sandbox: Sandbox | None = None) -> ClaudeCodeConfig:
    return ClaudeCodeConfig(
        sandbox=sandbox,
        data_dir=settings.data_dir,
        binary=settings.claude_bin,
        transport=settings.claude_transport,
        kubectl=settings.claude_kubectl_bin,
        pod=settings.claude_pod,
        namespace=settings.claude_namespace,
        permission_mode=settings.claude_permission_mode,
        setting_sources=settings.claude_setting_sources,
        idle_timeout_s=settings.claude_idle_timeout_s,
        extra_args=settings.claude_extra_args,
    )


def codex_config(settings: Settings, sandbox: Sandbox | None = None) -> CodexConfig:
    return CodexConfig(
        sandbox=sandbox,
        data_dir=settings.data_dir,
        binary=settings.codex_bin,
        mode=settings.codex_mode,
        base_url=settings.codex_base_url,
        provider=settings.codex_provider,
        model=settings.codex_model,
        env_key=settings.codex_env_key,
        max_retries=settings.codex_max_retries,
        idle_timeout_s=settings.codex_idle_timeout_s,
    )


def opencode_config(settings: Settings, sandbox: Sandbox | None = None) -> OpenCodeConfig:
    return OpenCodeConfig(
        sandbox=sandbox,
        max_servers=settings.opencode_max_servers,
        idle_stop_s=settings.opencode_idle_stop_s,
        data_dir=settings.data_dir,
        binary=settings.opencode_bin,
        url=settings.opencode_url or None,
        password=settings.opencode_password.get_secret_value() if settings.opencode_password else None,
        mode=settings.opencode_mode,
        idle_timeout_s=settings.opencode_idle_timeout_s,
        username=settings.opencode_username,
        passthrough=settings.opencode_env_passthrough,
        permission_reply=settings.opencode_permission_reply,
    )


def build_agents(settings: Settings, sandbox: Sandbox | None = None) -> list[CodeAgent]:
    agents: list[CodeAgent] = []
    for name in settings.providers:
        if name == "claude-code":
            agents.append(ClaudeCodeAgent(claude_config(settings, sandbox)))
        elif name == "opencode":
            agents.append(OpenCodeAgent(opencode_config(settings, sandbox)))
        elif name == "codex":
            agents.append(CodexAgent(codex_config(settings, sandbox)))
        elif name == "scripted":
            agents.append(ScriptedCodeAgent())
        else:
            raise ConfigError(
                f"AGENTD_PROVIDERS: unknown provider {name!r}; known: claude-code, opencode, codex, scripted"
            )
    return agents


async def open_storage(settings: Settings) -> tuple[WorkQueue, EventStream]:
    """PostgreSQL when AGENTD_DATABASE_URL is set, else the embedded SQLite queue and event log (one file in
    the data dir: a restart serves every stream, replay included). A stream is kept for
    AGENTD_STREAM_RETENTION_S after its job ends, never longer than its job (AGENTD_JOB_RETENTION_S)."""
    retention_s = min(settings.stream_retention_s, settings.job_retention_s)
    if settings.database_url:
        from agentd.adapters.postgres import open_postgres

        return await open_postgres(
            settings.database_url,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            retention_s=retention_s,
            subscriber_buffer=settings.subscriber_buffer,
            pool_size=settings.db_pool_size,
        )
    queue = SqliteWorkQueue(
        settings.data_dir / "queue.sqlite3", lease_s=settings.lease_s, max_attempts=settings.max_attempts
    )
    streams = SqliteEventStream(queue.db, retention_s=retention_s, buffer=settings.subscriber_buffer)
    return queue, streams


async def open_secret_store(settings: Settings) -> SecretStore:
    """The secret store (for `agentd serve` and the `agentd secrets` commands). Without a master key every
    call answers SecretsUnavailable, which says how to set one.

    For now an in-memory store: the SQLite and PostgreSQL stores come with the queue's database.
    """
    return MemorySecretStore(load_master_key(settings))


async def open_project_store(queue: WorkQueue) -> ProjectStore:
    """Projects live in the queue's database (its claim reads their `max_running`)."""
    if isinstance(queue, SqliteWorkQueue):
        return SqliteProjectStore(queue.db)
    from agentd.adapters.postgres import PostgresProjectStore, PostgresWorkQueue

    if isinstance(queue, PostgresWorkQueue):
        store = PostgresProjectStore(queue.db)
        await store.open()
        return store
    return MemoryProjectStore()


def template_library(settings: Settings) -> DirectoryTemplateLibrary:
    return DirectoryTemplateLibrary(SHIPPED, settings.templates_dir)


def git_workspaces(settings: Settings) -> GitWorkspaces:
    return GitWorkspaces.in_data_dir(settings.data_dir, git=settings.git_bin)


async def build(
    settings: Settings,
    *,
    agents: list[CodeAgent] | None = None,
    queue: WorkQueue | None = None,
    streams: EventStream | None = None,
    secrets: SecretStore | None = None,
    projects: ProjectStore | None = None,
    workspaces: Workspaces | None = None,
    templates: TemplateLibrary | None = None,
    with_workers: bool = True,
) -> Container:
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)  # also an older, wider one: nothing beneath it is reachable by others
    sandbox = open_sandbox(settings)
    registry = ProviderRegistry()
    for agent in agents if agents is not None else build_agents(settings, sandbox):
        registry.register(agent)
    if queue is None or streams is None:
        q, s = await open_storage(settings)
        queue, streams = queue or q, streams or s
    secrets = secrets or await open_secret_store(settings)
    own_keys = service_secrets(settings, load_master_key(settings))
    LOG_SECRETS.add(own_keys)
    projects = projects or await open_project_store(queue)
    workspaces = workspaces or git_workspaces(settings)
    project_service = ProjectService(
        projects, queue, templates or template_library(settings), workspaces, secrets
    )
    runner = None
    if with_workers:
        runner = Runner(
            queue,
            streams,
            registry,
            workers=settings.workers,
            heartbeat_s=settings.heartbeat_s,
            lease_s=settings.lease_s,
            poll_s=min(1.0, settings.lease_s / 8),  # under queue_policy.requeue_delay (a fifth of the lease)
            sweep_s=max(1.0, settings.lease_s / 3),
            limits=Limits(global_max=settings.max_running, per_provider=settings.provider_limits),
            secrets=secrets,
            service_secrets=own_keys,
            job_retention_s=settings.job_retention_s,
            git_runs=GitRuns(projects, workspaces, secrets),
        )
    service = JobService(queue, streams, registry, runner, projects=project_service)
    return Container(
        settings, queue, streams, registry, runner, service, SecretService(secrets), sandbox, project_service
    )
