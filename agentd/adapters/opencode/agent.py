"""The OpenCode adapter: jobs run on an OpenCode server (managed or external), or `opencode run` per job.

Modes: "server" (managed `opencode serve`, or the external AGENTD_OPENCODE_URL), "cli" (`opencode run
--format json` per job) and "auto" (server; the CLI when no server can be started or reached).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog

import agentd.adapters.agent_process as ap
from agentd.adapters.git_workspace import job_tree_mounts
from agentd.adapters.opencode.cli_mode import CliRun, supports_json
from agentd.adapters.opencode.client import OpenCodeClient, OpenCodeHTTPError, OpenCodeUnavailable
from agentd.adapters.opencode.pool import ServerPool, Slot
from agentd.adapters.opencode.run import RunControl, RunOptions, ServerRun
from agentd.adapters.opencode.server import ManagedServer, ServerConfig
from agentd.adapters.sandbox import Jail, Sandbox, runtime_paths
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    Availability,
    Capabilities,
    DoneEvent,
    ErrorEvent,
)
from agentd.ports.code_agent import CodeAgent

log = structlog.get_logger(__name__)
Mode = Literal["auto", "server", "cli"]


@dataclass(frozen=True)
class OpenCodeConfig:
    data_dir: Path
    binary: str = "opencode"
    url: str | None = None  # an external server; None: agentd starts and supervises its own
    password: str | None = None  # of the external server
    username: str = "opencode"
    mode: Mode = "auto"
    idle_timeout_s: float = 300.0
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))  # OPENCODE_* pass through
    extra_env: Mapping[str, str] = field(default_factory=dict)  # more variables for the managed server/CLI
    passthrough: tuple[str, ...] = ()  # names copied from `environ` too (e.g. ANTHROPIC_API_KEY)
    startup_timeout_s: float = 30.0
    health_timeout_s: float = 5.0
    server_retry_s: float = 60.0  # auto mode: after a failed start, use the CLI this long before retrying
    permission_reply: Literal["once", "always", "reject"] = "reject"
    run: RunOptions = field(default_factory=RunOptions)
    sandbox: Sandbox | None = None  # None or mode "off": servers and CLI runs are not jailed
    max_servers: int = 4  # managed servers (one per project)
    idle_stop_s: float = 600.0  # a managed server without a run for this long is stopped

    def home(self, project_id: str) -> Path:
        """One project's OpenCode home: HOME, XDG dirs, the server's working directory."""
        return ap.agent_home(self.data_dir, "opencode", project_id)

    def workspace(self, project_id: str) -> Path:
        return ap.workspace(self.data_dir, project_id)

    def server_config(
        self, project_id: str, run_env: Mapping[str, str] | None = None, binary: str | None = None
    ) -> ServerConfig:
        binary = binary or self.binary
        home = self.home(project_id)
        trees, objects = job_tree_mounts(self.data_dir, project_id)
        for d in (trees, objects):  # a server outlives runs: mount them even before the first git job
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        jail = Jail(
            workspace=self.workspace(project_id),
            home=home,
            ro_paths=runtime_paths(binary, self.environ.get("PATH")),
            extra_rw=(trees,),  # jobs of git projects run in their own trees (sessions pick the directory)
            extra_ro=(objects,),
        )
        return ServerConfig(
            binary=binary,
            base_dir=home,
            environ=self.environ,
            extra_env=self.extra_env,
            passthrough=self.passthrough,
            username=self.username,
            startup_timeout_s=self.startup_timeout_s,
            run_env=dict(run_env or {}),
            sandbox=self.sandbox,
            jail=jail,
        )


class OpenCodeAgent(CodeAgent):
    name = "opencode"

    def __init__(self, config: OpenCodeConfig) -> None:
        self.config = config
        # An external server is shared by every project; managed servers run one per project.
        self.external = (
            OpenCodeClient(config.url, username=config.username, password=config.password)
            if config.url
            else None
        )
        self.pool = (
            None
            if config.url
            else ServerPool(self._new_server, max_servers=config.max_servers, idle_stop_s=config.idle_stop_s)
        )
        self._runs: dict[str, RunControl] = {}
        self._version: str | None = None
        self._cli_ok: bool | None = None
        self._server_failed_at: float | None = None
        self._why = ""
        self._closed = False

    def capabilities(self) -> Capabilities:
        return Capabilities(
            streaming=True,
            partial_text=self.config.mode != "cli",
            reasoning=True,
            tools=True,
            resume=True,
            cancel=True,
            max_turns=False,
        )

    # --- reaching a server ----------------------------------------------------------------------------

    def _probe_env(self) -> dict[str, str]:
        return ap.pick_env(self.config.environ)

    def _binary_path(self) -> str | None:
        b = self.config.binary
        found = shutil.which(b, path=self.config.environ.get("PATH")) or (b if Path(b).is_file() else None)
        return os.path.abspath(found) if found and os.sep in found else found

    def _missing_binary(self) -> str:
        return (
            f"OpenCode binary {self.config.binary!r} not found: install it (npm i -g opencode-ai) or set "
            "AGENTD_OPENCODE_BIN, or run `opencode serve` and set AGENTD_OPENCODE_URL"
        )

    def _new_server(self, project_id: str, run_env: Mapping[str, str]) -> ManagedServer:
        cfg = self.config.server_config(project_id, run_env, self._binary_path())
        client = OpenCodeClient("http://127.0.0.1:0", username=cfg.username, password=cfg.password)
        return ManagedServer(cfg, client)

    def server_for(self, project_id: str) -> ManagedServer | None:
        """The project's managed server, if one is in the pool."""
        slot = self.pool.get(project_id) if self.pool is not None else None
        return slot.server if slot is not None else None

    def client_for(self, project_id: str) -> OpenCodeClient:
        """The client of the server that runs the project's jobs."""
        if self.external is not None:
            return self.external
        slot = self.pool.get(project_id) if self.pool is not None else None
        if slot is None:
            raise OpenCodeUnavailable(f"no OpenCode server runs for project {project_id!r}")
        return slot.client

    async def _health(self, client: OpenCodeClient) -> dict[str, Any]:
        where = client.base_url
        try:
            health = await client.health(self.config.health_timeout_s)
        except OpenCodeHTTPError as e:
            hint = " (check AGENTD_OPENCODE_PASSWORD)" if e.status == 401 else ""
            raise OpenCodeUnavailable(f"OpenCode server at {where} is unhealthy{hint}: {e}") from e
        except OpenCodeUnavailable as e:
            hint = "is `opencode serve` running there?" if self.config.url else "the managed server is down"
            raise OpenCodeUnavailable(f"OpenCode server at {where} cannot be reached ({hint}): {e}") from e
        if not health.get("healthy"):
            raise OpenCodeUnavailable(f"OpenCode server at {where} reports itself unhealthy: {health}")
        return health

    async def ensure_server(self, project_id: str, run_env: Mapping[str, str] | None = None) -> str:
        """A healthy server's base URL for the project (starting its managed one if needed); keeps a
        managed server from being stopped until release(). Raises OpenCodeUnavailable."""
        slot = await self._acquire(project_id, run_env)
        if slot is not None and self.pool is not None:
            self.pool.release(slot)
        return self.client_for(project_id).base_url

    async def _acquire(self, project_id: str, run_env: Mapping[str, str] | None) -> Slot | None:
        if self._closed:
            raise OpenCodeUnavailable("the OpenCode adapter is closed")
        slot = None
        if self.pool is not None:
            if self._binary_path() is None:
                raise OpenCodeUnavailable(self._missing_binary())
            slot = await self.pool.acquire(project_id, run_env or {})
        try:
            health = await self._health(slot.client if slot is not None else self.client_for(project_id))
        except OpenCodeUnavailable:
            if slot is not None and self.pool is not None:
                self.pool.release(slot)
            raise
        self._version = str(health.get("version") or "") or self._version
        return slot

    async def _choose(
        self, control: RunControl, project_id: str, run_env: Mapping[str, str] | None
    ) -> Literal["server", "cli"] | Slot:
        """Where this job runs: a server (its pool slot, or "server" for an external one) or the CLI.
        Raises OpenCodeUnavailable with what to do about it."""
        mode = self.config.mode
        if mode == "cli":
            return "cli"
        recent_failure = (
            mode == "auto"
            and self.pool is not None
            and self._server_failed_at is not None
            and time.monotonic() - self._server_failed_at < self.config.server_retry_s
        )
        try:
            if recent_failure:
                raise OpenCodeUnavailable(f"the managed OpenCode server failed recently: {self._why}")
            slot = await _until(control, self._acquire(project_id, run_env))
            if control.forced is not None:  # stopped while starting: the caller ends the run
                if slot is not None and self.pool is not None:
                    self.pool.release(slot)
                return "server"
            self._server_failed_at = None
            return slot if slot is not None else "server"
        except OpenCodeUnavailable as e:
            if self.pool is not None and not recent_failure:
                self._server_failed_at, self._why = time.monotonic(), str(e)
            if mode == "server" or self._binary_path() is None:
                raise
            if self._cli_ok is None:
                binary = self._binary_path() or self.config.binary
                self._cli_ok = await supports_json(binary, self._probe_env())
            if not self._cli_ok:
                why = f"{e}; and `opencode run` has no --format json to fall back to"
                raise OpenCodeUnavailable(why) from e
            log.warning("opencode.mode.fallback", mode="cli", reason=str(e))
            return "cli"

    async def is_available(self) -> Availability:
        if self.external is not None and self.config.mode != "cli":
            try:
                health = await self._health(self.external)
                version = health.get("version")
                return Availability(available=True, detail=self.external.base_url, version=version)
            except OpenCodeUnavailable as e:
                if self.config.mode == "server" or self._binary_path() is None:
                    return Availability(available=False, detail=str(e))
                return Availability(available=True, detail=f"{e}; jobs fall back to `opencode run`")
        binary = self._binary_path()
        if binary is None:
            return Availability(available=False, detail=self._missing_binary())
        if self._version is None:
            try:
                self._version = await ap.probe_version(binary, self._probe_env())
            except (OSError, TimeoutError) as e:
                return Availability(available=False, detail=f"{binary} --version failed: {e!r}")
        how = (
            "`opencode run` per job"
            if self.config.mode == "cli"
            else "a managed `opencode serve` per project"
        )
        return Availability(available=True, detail=f"{binary} ({how})", version=self._version)

    # --- running ----------------------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> bool:
        control = self._runs.get(run_id)
        if control is None:
            return False
        control.stop("cancelled", "cancelled by request")
        return True

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        started = time.monotonic()
        control = RunControl(run_id)
        self._runs[run_id] = control
        project = request.project_id
        directory = workdir or self.config.workspace(project)
        scratch = self.config.home(project) / "tmp" / ("run-" + re.sub(r"[^A-Za-z0-9_.-]", "_", run_id))
        slot: Slot | None = None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                where = await self._choose(control, project, env)
            except OpenCodeUnavailable as e:
                yield ErrorEvent(code=e.code, message=str(e))
                yield _done(control, started, request.session_id, str(e))
                return
            slot = where if isinstance(where, Slot) else None
            if control.forced is not None:
                yield _done(control, started, request.session_id, None)
                return
            log.info(
                "opencode.run.started",
                run_id=run_id,
                where=where if slot is None else "server",
                project_id=project,
            )
            inner: Callable[[], AsyncGenerator[AgentEvent, None]]
            if where != "cli":
                server = slot.server if slot is not None else None
                inner = ServerRun(
                    self.client_for(project),
                    request,
                    control,
                    directory,
                    _with_reply(self.config.run, self.config.idle_timeout_s, self.config.permission_reply),
                    ensure_server=lambda: self.ensure_server(project, env),
                    server_epoch=(lambda: server.deaths) if server is not None else (lambda: 0),
                ).events
            else:
                inner = self._cli_run(request, control, env, scratch, directory).events
            stream = inner()
            try:
                async for ev in stream:
                    yield ev
            finally:
                await stream.aclose()
        finally:
            self._runs.pop(run_id, None)
            if slot is not None and self.pool is not None:
                self.pool.release(slot)
            shutil.rmtree(scratch, ignore_errors=True)

    def _cli_run(
        self,
        request: AgentRequest,
        control: RunControl,
        run_env: Mapping[str, str] | None,
        scratch: Path,
        directory: Path,
    ) -> CliRun:
        binary = self._binary_path() or self.config.binary
        cfg = self.config.server_config(request.project_id, run_env, binary)
        for d in cfg.dirs():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = cfg.env()
        for k in ("OPENCODE_SERVER_USERNAME", "OPENCODE_SERVER_PASSWORD"):
            env.pop(k, None)  # no server here
        return CliRun(
            binary,
            env,
            request,
            control,
            directory,
            idle_timeout_s=self.config.idle_timeout_s,
            scratch=scratch,
            sandbox=self.config.sandbox,
            jail=cfg.jail,
        )

    async def close(self) -> None:
        """Stop the runs and the managed servers (no process is left behind); close the HTTP clients."""
        self._closed = True
        for control in list(self._runs.values()):
            control.stop("cancelled", "agentd is shutting down")
        if self.pool is not None:
            await self.pool.close()
        if self.external is not None:
            await self.external.close()

    def server_rss_bytes(self) -> int:
        if self.pool is None:
            return 0
        return sum(slot.server.rss_bytes() for slot in self.pool.slots.values())


def _with_reply(opts: RunOptions, idle_timeout_s: float, reply: str) -> RunOptions:
    return replace(opts, idle_timeout_s=idle_timeout_s, permission_reply=reply)


async def _until(control: RunControl, aw: Any) -> Any:
    """Await `aw` unless the run is stopped first (then the awaitable is cancelled)."""
    task = asyncio.ensure_future(aw)
    stop = asyncio.ensure_future(control.stopped.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


def _done(control: RunControl, started: float, session_id: str | None, error: str | None) -> DoneEvent:
    """A run that ended before it reached a server or a CLI process."""
    res = AgentResult.ended(
        forced=control.forced,
        forced_reason=control.reason,
        error=error or control.reason or "the run did not start",
        duration_ms=int((time.monotonic() - started) * 1000),
        session_id=session_id,
    )
    return DoneEvent.from_result(res)
