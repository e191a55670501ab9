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
from agentd.adapters.opencode.cli_mode import CliRun, supports_json
from agentd.adapters.opencode.client import OpenCodeClient, OpenCodeHTTPError, OpenCodeUnavailable
from agentd.adapters.opencode.run import RunControl, RunOptions, ServerRun
from agentd.adapters.opencode.server import ManagedServer, ServerConfig
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

    @property
    def base_dir(self) -> Path:
        return self.data_dir / "opencode"

    def workspace(self, project_id: str) -> Path:
        return ap.workspace(self.data_dir, project_id)

    def server_config(self) -> ServerConfig:
        return ServerConfig(
            binary=self.binary, base_dir=self.base_dir, environ=self.environ, extra_env=self.extra_env,
            passthrough=self.passthrough, username=self.username, startup_timeout_s=self.startup_timeout_s,
        )


class OpenCodeAgent(CodeAgent):
    name = "opencode"

    def __init__(self, config: OpenCodeConfig) -> None:
        self.config = config
        self.client = OpenCodeClient(
            config.url or "http://127.0.0.1:0", username=config.username, password=config.password
        )
        self.server = None if config.url else ManagedServer(config.server_config(), self.client)
        self._env = config.server_config().env()
        self._runs: dict[str, RunControl] = {}
        self._version: str | None = None
        self._cli_ok: bool | None = None
        self._server_failed_at: float | None = None
        self._why = ""
        self._closed = False

    def capabilities(self) -> Capabilities:
        return Capabilities(
            streaming=True, partial_text=self.config.mode != "cli", reasoning=True, tools=True,
            resume=True, cancel=True, max_turns=False,
        )

    # --- reaching a server ----------------------------------------------------------------------------

    def _binary_path(self) -> str | None:
        b = self.config.binary
        return shutil.which(b, path=self._env.get("PATH")) or (b if Path(b).is_file() else None)

    def _missing_binary(self) -> str:
        return (
            f"OpenCode binary {self.config.binary!r} not found: install it (npm i -g opencode-ai) or set "
            "AGENTD_OPENCODE_BIN, or run `opencode serve` and set AGENTD_OPENCODE_URL"
        )

    async def _health(self) -> dict[str, Any]:
        where = self.client.base_url
        try:
            health = await self.client.health(self.config.health_timeout_s)
        except OpenCodeHTTPError as e:
            hint = " (check AGENTD_OPENCODE_PASSWORD)" if e.status == 401 else ""
            raise OpenCodeUnavailable(f"OpenCode server at {where} is unhealthy{hint}: {e}") from e
        except OpenCodeUnavailable as e:
            hint = "is `opencode serve` running there?" if self.config.url else "the managed server is down"
            raise OpenCodeUnavailable(f"OpenCode server at {where} cannot be reached ({hint}): {e}") from e
        if not health.get("healthy"):
            raise OpenCodeUnavailable(f"OpenCode server at {where} reports itself unhealthy: {health}")
        return health

    async def ensure_server(self) -> str:
        """A healthy server's base URL (starting the managed one if needed). Raises OpenCodeUnavailable."""
        if self._closed:
            raise OpenCodeUnavailable("the OpenCode adapter is closed")
        if self.server is not None:
            if self._binary_path() is None:
                raise OpenCodeUnavailable(self._missing_binary())
            await asyncio.shield(self.server.ensure_started())
        health = await self._health()
        self._version = str(health.get("version") or "") or self._version
        return self.client.base_url

    async def _choose(self, control: RunControl) -> Literal["server", "cli"]:
        """Where this job runs. Raises OpenCodeUnavailable with what to do about it."""
        mode = self.config.mode
        if mode == "cli":
            return "cli"
        recent_failure = (
            mode == "auto" and self.server is not None and self._server_failed_at is not None
            and time.monotonic() - self._server_failed_at < self.config.server_retry_s
        )
        try:
            if recent_failure:
                raise OpenCodeUnavailable(f"the managed OpenCode server failed recently: {self._why}")
            await _until(control, self.ensure_server())
            self._server_failed_at = None
            return "server"
        except OpenCodeUnavailable as e:
            if self.server is not None and not recent_failure:
                self._server_failed_at, self._why = time.monotonic(), str(e)
            if mode == "server" or self._binary_path() is None:
                raise
            if self._cli_ok is None:
                self._cli_ok = await supports_json(self._binary_path() or self.config.binary, self._env)
            if not self._cli_ok:
                why = f"{e}; and `opencode run` has no --format json to fall back to"
                raise OpenCodeUnavailable(why) from e
            log.warning("opencode.mode.fallback", mode="cli", reason=str(e))
            return "cli"

    async def is_available(self) -> Availability:
        running = self.server is not None and self.server.running
        if self.config.mode != "cli" and (self.config.url or running):
            try:
                health = await self._health()
                version = health.get("version")
                return Availability(available=True, detail=self.client.base_url, version=version)
            except OpenCodeUnavailable as e:
                if self.config.mode == "server" or self._binary_path() is None:
                    return Availability(available=False, detail=str(e))
                return Availability(available=True, detail=f"{e}; jobs fall back to `opencode run`")
        binary = self._binary_path()
        if binary is None:
            return Availability(available=False, detail=self._missing_binary())
        if self._version is None:
            try:
                self._version = await ap.probe_version(binary, self._env)
            except (OSError, TimeoutError) as e:
                return Availability(available=False, detail=f"{binary} --version failed: {e!r}")
        how = "`opencode run` per job" if self.config.mode == "cli" else "managed `opencode serve`"
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
    ) -> AsyncIterator[AgentEvent]:
        started = time.monotonic()
        control = RunControl(run_id)
        self._runs[run_id] = control
        directory = self.config.workspace(request.project_id)
        scratch = self.config.base_dir / "tmp" / ("run-" + re.sub(r"[^A-Za-z0-9_.-]", "_", run_id))
        try:
            directory.mkdir(parents=True, exist_ok=True)
            try:
                where = await self._choose(control)
            except OpenCodeUnavailable as e:
                yield ErrorEvent(code=e.code, message=str(e))
                yield _done(control, started, request.session_id, str(e))
                return
            if control.forced is not None:
                yield _done(control, started, request.session_id, None)
                return
            log.info("opencode.run.started", run_id=run_id, where=where, project_id=request.project_id)
            inner: Callable[[], AsyncGenerator[AgentEvent, None]]
            if where == "server":
                inner = ServerRun(
                    self.client, request, control, directory,
                    _with_reply(self.config.run, self.config.idle_timeout_s, self.config.permission_reply),
                    ensure_server=self.ensure_server, server_epoch=self._epoch,
                ).events
            else:
                inner = CliRun(
                    self._binary_path() or self.config.binary, self._env, request, control, directory,
                    idle_timeout_s=self.config.idle_timeout_s, scratch=scratch,
                ).events
            stream = inner()
            try:
                async for ev in stream:
                    yield ev
            finally:
                await stream.aclose()
        finally:
            self._runs.pop(run_id, None)
            shutil.rmtree(scratch, ignore_errors=True)

    async def close(self) -> None:
        """Stop the runs and the managed server (no process is left behind); close the HTTP client."""
        self._closed = True
        for control in list(self._runs.values()):
            control.stop("cancelled", "agentd is shutting down")
        if self.server is not None:
            await self.server.stop()
        await self.client.close()

    def _epoch(self) -> int:
        return self.server.deaths if self.server is not None else 0

    def server_rss_bytes(self) -> int:
        return self.server.rss_bytes() if self.server is not None else 0


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
