"""Supervisor of a managed `opencode serve`: private environment, start on demand, restart, stop the tree."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import socket
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

import agentd.adapters.agent_process as ap
from agentd.adapters.opencode.client import OpenCodeClient, OpenCodeUnavailable
from agentd.adapters.sandbox import Jail, Sandbox

log = structlog.get_logger(__name__)

# Keep the server quiet and offline (verified with strace in the research notes).
QUIET_ENV = {
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
    # The npm install of @opencode-ai/plugin on a project's first load fails fast and harmlessly.
    "npm_config_registry": "http://127.0.0.1:9/",
}
PASS_PREFIXES = ("OPENCODE_",)
PASS_NAMES = (
    "PATH",
    "LANG",
    "LC_ALL",
    "TZ",
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "NODE_EXTRA_CA_CERTS",
)
# Unknown routes would then proxy to the internet (and answer 500); the password is always ours.
DROPPED = ("OPENCODE_DISABLE_EMBEDDED_WEB_UI", "OPENCODE_SERVER_PASSWORD", "OPENCODE_SERVER_USERNAME")
_LISTENING = re.compile(r"listening on (https?://\S+)")


@dataclass
class ServerConfig:
    binary: str
    base_dir: Path  # <data dir>/opencode: home, xdg dirs, the server's working directory
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    extra_env: Mapping[str, str] = field(default_factory=dict)
    passthrough: tuple[str, ...] = ()  # more variable names to copy from `environ` (e.g. provider API keys)
    username: str = "opencode"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    startup_timeout_s: float = 30.0
    stop_grace_s: float = 3.0
    max_quick_deaths: int = 5  # stop restarting after this many deaths within `quick_death_s` of a start
    quick_death_s: float = 10.0
    run_env: Mapping[str, str] = field(default_factory=dict)  # the project's secrets
    sandbox: Sandbox | None = None
    jail: Jail | None = None  # what the server (and the tools it runs) may see, when the sandbox is on

    def env(self) -> dict[str, str]:
        d = self.base_dir
        env = ap.pick_env(self.environ, names=(*PASS_NAMES, *self.passthrough))
        env.update(
            HOME=str(d / "home"),
            XDG_CONFIG_HOME=str(d / "config"),
            XDG_DATA_HOME=str(d / "data"),
            XDG_CACHE_HOME=str(d / "cache"),
            XDG_STATE_HOME=str(d / "state"),
            TMPDIR=str(d / "tmp"),
        )
        env.update(QUIET_ENV)
        env.update(ap.pick_env(self.environ, prefixes=PASS_PREFIXES))
        env.update(self.extra_env)
        env.update(self.run_env)
        for k in DROPPED:
            env.pop(k, None)
        env["OPENCODE_SERVER_USERNAME"] = self.username
        env["OPENCODE_SERVER_PASSWORD"] = self.password
        return env

    def dirs(self) -> list[Path]:
        return [self.base_dir / n for n in ("home", "config", "data", "cache", "state", "tmp", "run")]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManagedServer:
    """Starts `opencode serve` on loopback when first needed, restarts it when it dies, stops it on close."""

    def __init__(self, config: ServerConfig, client: OpenCodeClient) -> None:
        self.config = config
        self.client = client  # its base_url follows the server
        client.username, client.password = config.username, config.password
        self.proc: ap.AgentProcess | None = None
        self.url: str | None = None
        self.version: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self.restarts = 0
        self.deaths = 0
        self._lock = asyncio.Lock()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._deaths: deque[float] = deque(maxlen=config.max_quick_deaths)
        self._started_at = 0.0
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and self.url is not None

    @property
    def pid(self) -> int | None:
        return self.proc.agent_pid() if self.proc is not None and self.proc.returncode is None else None

    def crash_looping(self) -> bool:
        now = time.monotonic()
        n = self.config.max_quick_deaths
        return len(self._deaths) >= n and now - self._deaths[0] < n * (self.config.quick_death_s + 30)

    async def ensure_started(self) -> str:
        """The base URL of a healthy server, starting one if needed. Raises OpenCodeUnavailable."""
        if self.running:
            assert self.url is not None
            return self.url
        async with self._lock:
            if self.running:
                assert self.url is not None
                return self.url
            if self._closing:
                raise OpenCodeUnavailable("the OpenCode adapter is closed")
            if self.crash_looping():
                raise OpenCodeUnavailable(
                    f"the managed OpenCode server died {len(self._deaths)} times right after starting; "
                    f"last error: {self.last_error or 'unknown'}"
                )
            try:
                return await self._start()
            except OpenCodeUnavailable as e:
                if not isinstance(e.__cause__, OpenCodeUnavailable) or "before listening" not in str(e):
                    raise
                log.warning("opencode.server.retry_start", error=str(e))  # e.g. the port was taken
                return await self._start()

    async def _start(self) -> str:
        cfg = self.config
        for d in cfg.dirs():
            d.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [cfg.binary, "serve", "--hostname", "127.0.0.1", "--port", str(port)]  # all ours
        started = time.monotonic()
        proc = ap.AgentProcess(
            f"opencode-serve-{port}",
            escalation=((signal.SIGTERM, cfg.stop_grace_s),),
            sandbox=cfg.sandbox,
            jail=cfg.jail,
        )
        try:
            await proc.spawn(argv, cwd=cfg.base_dir / "run", env=cfg.env())
        except OSError as e:
            self.last_error = f"cannot run {cfg.binary!r}: {e}"
            raise OpenCodeUnavailable(
                f"{self.last_error}. Install it (npm i -g opencode-ai) or set AGENTD_OPENCODE_BIN, "
                "or point AGENTD_OPENCODE_URL at a running `opencode serve`"
            ) from e
        self.proc = proc
        try:
            url = await asyncio.wait_for(self._await_ready(proc), cfg.startup_timeout_s)
        except (TimeoutError, OpenCodeUnavailable, asyncio.CancelledError) as e:
            await self._kill(proc)
            self.proc = None
            if isinstance(e, asyncio.CancelledError):
                raise
            tail = " | ".join(list(self.stderr_tail)[-5:])
            self.last_error = f"{type(e).__name__}: {e}".rstrip(": ") + (f" (stderr: {tail})" if tail else "")
            raise OpenCodeUnavailable(f"the managed OpenCode server did not start: {self.last_error}") from e
        self.url, self.client.base_url = url, url
        self._started_at = time.monotonic()
        self._spawn(self._watch(proc))
        log.info(
            "opencode.server.started",
            pid=proc.pid,
            url=url,
            version=self.version,
            startup_ms=int((time.monotonic() - started) * 1000),
            restarts=self.restarts,
        )
        return url

    async def _await_ready(self, proc: ap.AgentProcess) -> str:
        """Read the output up to the "listening on" line, then wait for /global/health to say healthy."""
        listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._spawn(self._drain(proc, listening))
        url = await listening
        self.client.base_url = url
        while True:
            try:
                health = await self.client.health(timeout_s=2.0)
                if health.get("healthy"):
                    self.version = str(health.get("version") or "") or None
                    return url
            except OpenCodeUnavailable:
                pass
            if proc.returncode is not None:
                raise OpenCodeUnavailable(f"`opencode serve` exited with code {proc.returncode}")
            await asyncio.sleep(0.1)

    async def _drain(self, proc: ap.AgentProcess, listening: asyncio.Future[str]) -> None:
        """Read stdout and stderr for the server's whole life; the "listening on" line settles `listening`."""
        proc.stderr_tail = self.stderr_tail
        async for name, text in proc.lines():
            m = _LISTENING.search(text) if name == "stdout" and not listening.done() else None
            if m:
                listening.set_result(m.group(1).rstrip("/"))
            if text.strip():
                log.debug("opencode.server.output", stream=name, line=text[:500])
        if not listening.done():
            code = await proc.wait(5.0)
            listening.set_exception(
                OpenCodeUnavailable(f"`opencode serve` exited with code {code} before listening")
            )

    async def _watch(self, proc: ap.AgentProcess) -> None:
        code = await proc.wait()
        if self._closing:
            return
        self.deaths += 1  # runs compare this to know that their server (and their run) is gone
        await proc.close()  # leftovers (tools) of the dead server
        if time.monotonic() - self._started_at < self.config.quick_death_s:
            self._deaths.append(time.monotonic())
        self.last_error = f"exited with code {code}; stderr: {' | '.join(list(self.stderr_tail)[-5:])}"
        log.error("opencode.server.died", pid=proc.pid, code=code, stderr=list(self.stderr_tail)[-10:])
        if self.proc is not proc:
            return  # already replaced (started again on demand)
        self.url = None
        if self.crash_looping():
            log.error("opencode.server.crash_loop", deaths=len(self._deaths))
            return
        await asyncio.sleep(min(30.0, 0.5 * 2 ** len(self._deaths)))
        if self.proc is proc:
            self.restarts += 1
            with contextlib.suppress(OpenCodeUnavailable):
                await self.ensure_started()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _kill(self, proc: ap.AgentProcess) -> None:
        """SIGTERM, then SIGKILL of the whole tree after the grace period; waits until it is gone."""
        pids = ap.tree(proc.pid) if proc.pid is not None else set()
        proc.stop("cancelled", "stopping the server")
        await proc.close(grace_s=self.config.stop_grace_s + 1.0)
        await ap.wait_gone(pids, 2.0)

    async def stop(self) -> None:
        self._closing = True
        async with self._lock:
            proc, self.proc, self.url = self.proc, None, None
            if proc is not None:
                await self._kill(proc)
                log.info("opencode.server.stopped", pid=proc.pid)
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def rss_bytes(self) -> int:
        """Resident memory of the server and everything it started (VmRSS summed over the tree)."""
        return 0 if self.proc is None or self.proc.pid is None else ap.tree_rss(self.proc.pid)
