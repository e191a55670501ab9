"""The composition root: settings in, a wired application out. Tests override any part by keyword."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from aiohttp import web

from agentd.adapters.agent_process import reap_orphans
from agentd.adapters.claude_code.agent import ClaudeCodeAgent, ClaudeCodeConfig
from agentd.adapters.codex.agent import CodexAgent, CodexConfig
from agentd.adapters.embedded.sqlite_event_stream import SqliteEventStream
from agentd.adapters.embedded.sqlite_key_store import SqliteKeyStore
from agentd.adapters.embedded.sqlite_project_store import SqliteProjectStore
from agentd.adapters.embedded.sqlite_secret_store import SqliteSecretStore
from agentd.adapters.embedded.sqlite_webhook_outbox import SqliteWebhookOutbox
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.fanout_event_stream import FanoutEventStream
from agentd.adapters.git_workspace import GitWorkspaces
from agentd.adapters.http.app import ApiConfig, create_app
from agentd.adapters.memory.memory_project_store import MemoryProjectStore
from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.adapters.opencode import OpenCodeAgent, OpenCodeConfig
from agentd.adapters.sandbox import Sandbox
from agentd.adapters.template_library import SHIPPED, DirectoryTemplateLibrary
from agentd.adapters.webhook_sender import AiohttpWebhookSender
from agentd.config import ConfigError, Settings, load_master_key, service_secrets
from agentd.observability import PrometheusMetrics, QueueStat, QueueStatsSource, start_metrics_server
from agentd.ports.code_agent import CodeAgent
from agentd.ports.event_stream import EventStream
from agentd.ports.key_store import KeyStore
from agentd.ports.project_store import ProjectStore
from agentd.ports.secret_store import SecretStore
from agentd.ports.webhook_outbox import WebhookOutbox
from agentd.ports.work_queue import Limits, RunJournal, WorkQueue
from agentd.ports.workspace import TemplateLibrary, Workspaces
from agentd.services.access import KeyService, RateLimit
from agentd.services.git_runs import GitRuns
from agentd.services.jobs import JobService
from agentd.services.projects import ProjectService
from agentd.services.redaction import LOG_SECRETS
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import Runner
from agentd.services.secrets import SecretService
from agentd.services.webhooks import WebhookService

log = structlog.get_logger(__name__)
FANOUT_LOG_BUFFER = 1_000_000  # the fan-out's one reader per stream is never cut off by the log
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass
class Container:
    settings: Settings
    queue: WorkQueue
    streams: EventStream
    registry: ProviderRegistry
    runner: Runner | None
    service: JobService
    secrets: SecretService
    keys: KeyService
    sandbox: Sandbox
    projects: ProjectService
    metrics: PrometheusMetrics
    metrics_server: web.AppRunner | None = None
    webhooks: WebhookService | None = None

    def app(self, host: str | None = None, port: int | None = None) -> web.Application:
        """The API, answering the Host names of the address it is bound to (`host`, `port`: the settings'
        unless given; port 0: any port)."""
        s = self.settings
        rate = s.rate_limit
        self.keys.allow_anonymous = (host or s.host) in LOOPBACK
        config = ApiConfig(
            heartbeat_s=s.sse_heartbeat_s,
            allowed_hosts=s.allowed_hosts_for(host or s.host, s.port if port is None else port),
            public_url=s.public_url,
            cors_origins=frozenset(s.cors_origins),
            rate_limit=RateLimit(rate[0], rate[1], s.rate_limit_text or "") if rate else None,
            max_streams_per_key=s.max_streams_per_key,
            max_streams=s.max_streams,
            sandbox=self.sandbox.mode,
        )
        app = create_app(
            self.service,
            config,
            self.secrets,
            self.keys,
            projects=self.projects,
            metrics=self.metrics,
            serve_metrics=s.metrics_port is None,  # else on AGENTD_METRICS_PORT, without a key
        )
        app.cleanup_ctx.append(self._lifecycle)
        expect_subscribers(self.streams)
        return app

    async def _lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        yield
        await self.stop()

    async def start(self) -> None:
        port = self.settings.metrics_port
        if port is not None and self.metrics_server is None:
            self.metrics_server = await start_metrics_server(self.metrics, self.settings.host, port)
            log.info("agentd.metrics_listening", host=self.settings.host, port=port)
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
        if self.webhooks is not None:
            await self.webhooks.outbox.close()
            sender = self.webhooks.sender
            if isinstance(sender, AiohttpWebhookSender):
                await sender.close()
        await self.streams.close()
        for store in (self.secrets.store, self.keys.store):
            close = getattr(store, "close", None)
            if close is not None:
                await close()
        await self.projects.store.close()
        await self.queue.close()
        if self.metrics_server is not None:
            await self.metrics_server.cleanup()
            self.metrics_server = None


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
    AGENTD_STREAM_RETENTION_S after its job ends, never longer than its job (AGENTD_JOB_RETENTION_S).

    Either log sits behind the live fan-out (one reader per followed stream per process, however many
    clients follow it; agentd.adapters.fanout_event_stream), which also enforces the subscriber buffer: the
    log's own limit is only a backstop for that one reader."""
    retention_s = min(settings.stream_retention_s, settings.job_retention_s)
    queue: WorkQueue
    durable: EventStream
    if settings.database_url:
        from agentd.adapters.postgres import open_postgres

        queue, durable = await open_postgres(
            settings.database_url,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            retention_s=retention_s,
            subscriber_buffer=FANOUT_LOG_BUFFER,
            pool_size=settings.db_pool_size,
            # A worker has no subscribers: it must not hear every NOTIFY it sends. The API's `app` (or a
            # first subscriber) starts listening (expect_subscribers).
            listen_events=False,
        )
    else:
        sq = SqliteWorkQueue(
            settings.data_dir / "queue.sqlite3", lease_s=settings.lease_s, max_attempts=settings.max_attempts
        )
        queue = sq
        durable = SqliteEventStream(sq.db, retention_s=retention_s, buffer=FANOUT_LOG_BUFFER)
    return queue, FanoutEventStream(durable, buffer=settings.subscriber_buffer)


def expect_subscribers(streams: EventStream) -> None:
    """This process serves the API: a PostgreSQL log hears other processes' event NOTIFYs from now on (the
    worker role never does: it has no subscribers)."""
    durable = streams.inner if isinstance(streams, FanoutEventStream) else streams
    pg = sys.modules.get("agentd.adapters.postgres")  # not imported: no PostgreSQL log here
    if pg is not None and isinstance(durable, pg.PostgresEventStream):
        durable.expect_subscribers()


def run_journal(
    queue: WorkQueue,
    streams: EventStream,
    projects: ProjectStore | None = None,
    secrets: SecretStore | None = None,
) -> RunJournal | None:
    """The run journal when the queue and the event log share one database (PostgreSQL; agentd.ports.
    work_queue.RunJournal): a job's `running` goes with its claim, its `done` with its result. None otherwise
    (say, a log given by a test): the runner writes them on their own."""
    durable = streams.inner if isinstance(streams, FanoutEventStream) else streams
    pg = sys.modules.get("agentd.adapters.postgres")  # not imported: no PostgreSQL queue (nor psycopg) here
    if pg is None or not isinstance(queue, pg.PostgresWorkQueue):
        return None
    if isinstance(durable, pg.PostgresEventStream) and queue.db is durable.db:
        same = isinstance(projects, pg.PostgresProjectStore) and projects.db is queue.db
        same_secrets = isinstance(secrets, pg.PostgresSecretStore) and secrets.db is queue.db
        journal: RunJournal = pg.PostgresRunJournal(
            queue, durable, projects if same else None, secrets if same_secrets else None
        )
        return journal
    return None


async def open_secret_store(settings: Settings, queue: WorkQueue | None = None) -> SecretStore:
    """The secret store, in the queue's database: the SQLite file of the embedded queue, or PostgreSQL.

    `queue`: the running process's queue, whose database (connection or pool) the store shares; without
    one (the `agentd secrets` commands) the store opens the same database itself, so a command and a running
    server see the same secrets. Without a master key every call answers SecretsUnavailable, which says how
    to set one.
    """
    key = load_master_key(settings)
    if settings.database_url:
        from agentd.adapters.postgres import PgDatabase, PostgresWorkQueue, open_postgres_secrets

        db = queue.db if isinstance(queue, PostgresWorkQueue) else None
        return await open_postgres_secrets(
            db or PgDatabase(settings.database_url, pool_size=2, listen=False), key
        )
    db_or_path = queue.db if isinstance(queue, SqliteWorkQueue) else settings.data_dir / "queue.sqlite3"
    return SqliteSecretStore(db_or_path, key)


async def open_key_store(settings: Settings, queue: WorkQueue | None = None) -> KeyStore:
    """The API keys, in the queue's database (shared with `queue` when given, as for the secrets)."""
    if settings.database_url:
        from agentd.adapters.postgres import PgDatabase, PostgresWorkQueue, open_postgres_keys

        db = queue.db if isinstance(queue, PostgresWorkQueue) else None
        return await open_postgres_keys(db or PgDatabase(settings.database_url, pool_size=2, listen=False))
    return SqliteKeyStore(
        queue.db if isinstance(queue, SqliteWorkQueue) else settings.data_dir / "queue.sqlite3"
    )


def key_service(settings: Settings, store: KeyStore) -> KeyService:
    bootstrap = settings.api_key.get_secret_value() if settings.api_key else None
    return KeyService(store, bootstrap_key=bootstrap, stream_token_ttl_s=settings.stream_token_ttl_s)


async def open_webhooks(settings: Settings, queue: WorkQueue, secrets: SecretStore) -> WebhookService | None:
    """Webhook deliveries live in the queue's database: SQLite beside the embedded queue, PostgreSQL
    beside the PostgreSQL queue; another queue (a test's) has none."""
    outbox: WebhookOutbox
    if isinstance(queue, SqliteWorkQueue):
        outbox = SqliteWebhookOutbox(queue.db)
    else:
        from agentd.adapters.postgres import PostgresWorkQueue
        from agentd.adapters.postgres.postgres_webhook_outbox import PostgresWebhookOutbox

        if not isinstance(queue, PostgresWorkQueue):
            return None
        pg = PostgresWebhookOutbox(queue.db)
        await pg.open()
        outbox = pg
    fallback = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    return WebhookService(
        outbox,
        AiohttpWebhookSender(),
        secrets=secrets,
        fallback_secret=fallback,
        retry_base_s=settings.webhook_retry_base_s,
        jobs=queue,
    )


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
    return GitWorkspaces.in_data_dir(
        settings.data_dir, git=settings.git_bin, max_patch_bytes=settings.max_patch_bytes
    )


async def build(
    settings: Settings,
    *,
    agents: list[CodeAgent] | None = None,
    queue: WorkQueue | None = None,
    streams: EventStream | None = None,
    secrets: SecretStore | None = None,
    keys: KeyStore | None = None,
    projects: ProjectStore | None = None,
    workspaces: Workspaces | None = None,
    templates: TemplateLibrary | None = None,
    with_workers: bool = True,
) -> Container:
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings.data_dir.chmod(0o700)  # also an older, wider one: nothing beneath it is reachable by others
    # A bad key file fails here, first. Credentials in agentd's own environment are redacted too.
    own_keys = service_secrets(settings, load_master_key(settings), os.environ)
    LOG_SECRETS.add(own_keys)
    sandbox = open_sandbox(settings)
    registry = ProviderRegistry()
    for agent in agents if agents is not None else build_agents(settings, sandbox):
        registry.register(agent)
    if queue is None or streams is None:
        q, s = await open_storage(settings)
        queue, streams = queue or q, streams or s
    secrets = secrets or await open_secret_store(settings, queue)
    keys = keys or await open_key_store(settings, queue)
    projects = projects or await open_project_store(queue)
    workspaces = workspaces or git_workspaces(settings)
    project_service = ProjectService(
        projects, queue, templates or template_library(settings), workspaces, secrets
    )
    metrics = PrometheusMetrics(queue_stats=_queue_stats(queue), providers=registry.names())
    webhooks = await open_webhooks(settings, queue, secrets)
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
            webhooks=webhooks,
            git_runs=GitRuns(projects, workspaces, secrets),
            metrics=metrics,
            journal=run_journal(queue, streams, projects, secrets),
        )
    service = JobService(
        queue,
        streams,
        registry,
        runner,
        max_queued_per_project=settings.max_queued_per_project,
        workspaces_dir=settings.workspaces_dir,
        projects=project_service,
        metrics=metrics,
        webhooks=webhooks,
    )
    return Container(
        settings,
        queue,
        streams,
        registry,
        runner,
        service,
        SecretService(secrets),
        key_service(settings, keys),
        sandbox,
        project_service,
        metrics,
        webhooks=webhooks,
    )


def _queue_stats(queue: WorkQueue) -> QueueStatsSource:
    """The queue gauges' source: the queue's per-provider counts, with the oldest job's age."""

    async def stats() -> dict[str, QueueStat]:
        now = datetime.now(UTC)
        return {
            p: QueueStat(n, (now - oldest).total_seconds() if oldest else None)
            for p, (n, oldest) in (await queue.queue_stats()).items()
        }

    return stats
