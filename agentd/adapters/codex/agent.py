"""The Codex adapter: OpenAI's Codex CLI (`@openai/codex`), one process per job, in one of two modes.

- `app-server` (`codex app-server`, JSON-RPC over stdio): token deltas of text and reasoning, tool calls
  with their output, and `turn/interrupt` for cancel. One process per job: it costs about 0.2 s more per
  job than a long-lived one (bench/bench_codex.py: 0.24-0.34 s for spawn + initialize + thread + a short
  turn + exit, against 0.06-0.10 s for thread + turn on a warm process; about 150 MB each), and it keeps
  what a run may see per run: the run's own environment (its secrets), its own jail, its own process
  tree to stop.
- `exec` (`codex exec --json`, one process per turn): the text of a message arrives whole; cancel is
  SIGINT, then the escalation.
- `auto`: app-server, and exec from then on when the app-server cannot start.

Codex's own sandbox and approvals are off (`--dangerously-bypass-approvals-and-sandbox`; app-server:
`approvalPolicy: never`, `sandbox: danger-full-access`): agentd's jail is the sandbox. Every project has
its own CODEX_HOME (config.toml written from AGENTD_CODEX_* before each run, threads, logs); the user's
~/.codex is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

import agentd.adapters.agent_process as ap
from agentd.adapters.codex import home, protocol
from agentd.adapters.git_workspace import job_tree_mounts
from agentd.adapters.sandbox import Jail, Sandbox, runtime_paths
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    Availability,
    Capabilities,
    DoneEvent,
    Forced,
    OutputEvent,
    StatusEvent,
)
from agentd.ports.code_agent import CodeAgent

log = structlog.get_logger(__name__)

PROVIDER = "codex"
PASS_PREFIXES = ("OPENAI_", "CODEX_")
PASS_NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE")
CODEX_FLAGS = ("--json", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox")
CLIENT_INFO = {"name": "agentd", "title": "agentd", "version": "1"}
RPC_TIMEOUT_S = 30.0
Mode = Literal["auto", "app-server", "exec"]


@dataclass(frozen=True)
class CodexConfig:
    data_dir: Path
    binary: str = "codex"
    mode: Mode = "auto"
    base_url: str | None = None  # a Responses API base URL (.../v1); None: the provider's own
    provider: str = "openai"
    model: str | None = None
    env_key: str = "OPENAI_API_KEY"
    max_retries: int = 4
    idle_timeout_s: float = 300.0
    interrupt_grace_s: float = 3.0
    sigint_grace_s: float = 3.0
    sigterm_grace_s: float = 2.0
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    sandbox: Sandbox | None = None  # None or mode "off": runs are not jailed

    def workspace(self, project_id: str) -> Path:
        return ap.workspace(self.data_dir, project_id)

    def home(self, project_id: str) -> Path:
        """HOME of the project's Codex runs; CODEX_HOME is its `.codex`."""
        return ap.agent_home(self.data_dir, PROVIDER, project_id)

    def codex_home(self, project_id: str) -> Path:
        return self.home(project_id) / ".codex"


def native_binary(binary: str, path: str | None = None) -> str:
    """The Rust binary behind the npm wrapper (`node_modules/.bin/codex` -> `bin/codex.js`), so that no
    Node process sits between agentd and Codex (0.1 s and 40 MB less, signals reach Codex directly).
    Anything else is returned as found."""
    found = shutil.which(binary, path=path) or shutil.which(binary) or binary
    real = Path(found).resolve()
    if real.name != "codex.js":
        return found
    arch = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine().lower()
    )
    package = real.parent.parent  # node_modules/@openai/codex
    for base in (package.parent, package / "node_modules" / "@openai"):
        for cand in sorted(base.glob(f"codex-linux-{arch}/vendor/*/bin/codex")):
            if os.access(cand, os.X_OK):
                return str(cand)
    return found


@dataclass
class _Run:
    proc: ap.AgentProcess
    mode: Literal["app-server", "exec"]
    forced: Forced | None = None  # set by an app-server interrupt (the process is not signalled)
    reason: str | None = None
    interrupt: asyncio.Event = field(default_factory=asyncio.Event)


class _AppServerDown(Exception):
    """`codex app-server` did not answer `initialize` (auto mode then falls back to exec)."""


class CodexAgent(CodeAgent):
    name = PROVIDER

    def __init__(self, config: CodexConfig) -> None:
        self.config = config
        self._runs: dict[str, _Run] = {}
        self._version: str | None = None
        self._exec_only = config.mode == "exec"

    @property
    def mode(self) -> Literal["app-server", "exec"]:
        return "exec" if self._exec_only else "app-server"

    def capabilities(self) -> Capabilities:
        streaming = self.mode == "app-server"
        return Capabilities(
            streaming=streaming,
            partial_text=streaming,
            reasoning=True,
            tools=True,
            resume=True,
            cancel=True,
            max_turns=False,
        )

    # --- environment and command line -----------------------------------------------------------------

    def binary(self) -> str:
        return native_binary(self.config.binary, self.config.environ.get("PATH"))

    def build_env(self, project_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        cfg = self.config
        env = ap.pick_env(cfg.environ, names=PASS_NAMES, prefixes=PASS_PREFIXES)
        rg = Path(self.binary()).resolve().parent.parent / "codex-path"  # the ripgrep Codex ships
        if rg.is_dir():
            env["PATH"] = f"{env['PATH']}{os.pathsep}{rg}"
        env.update(HOME=str(cfg.home(project_id)), CODEX_HOME=str(cfg.codex_home(project_id)))
        env.update(extra or {})
        env["CODEX_HOME"] = str(cfg.codex_home(project_id))  # never the run's own idea of it
        return env

    def write_config(self, project_id: str) -> None:
        cfg = self.config
        home.write_config(
            cfg.codex_home(project_id),
            base_url=cfg.base_url,
            provider=cfg.provider,
            model=cfg.model,
            env_key=cfg.env_key,
            request_max_retries=cfg.max_retries,
        )

    def exec_argv(self, request: AgentRequest) -> list[str]:
        """`codex exec [resume THREAD] --json ... -`: the prompt goes on stdin (never on argv)."""
        argv = [self.binary(), "exec"]
        if request.session_id:
            argv.append("resume")
        argv.extend(CODEX_FLAGS)
        if request.model:
            argv.extend(["-m", request.model])
        if request.session_id:
            argv.append(request.session_id)
        argv.append("-")
        return argv

    # --- availability ---------------------------------------------------------------------------------

    async def is_available(self) -> Availability:
        binary = self.binary()
        if shutil.which(binary) is None:
            return Availability(
                available=False,
                detail=f"{self.config.binary!r} not found: install it (npm i -g @openai/codex@0.169.0, or "
                "scripts/setup) or set AGENTD_CODEX_BIN",
            )
        if self._version is None:
            try:
                out = await ap.probe_version(binary, ap.pick_env(self.config.environ))
            except (OSError, TimeoutError) as e:
                return Availability(available=False, detail=f"{binary} --version failed: {e}")
            self._version = (out or "").split()[-1] if out else None
        return Availability(available=True, detail=f"{binary} ({self.mode} mode)", version=self._version)

    # --- running --------------------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None:
            return False
        if run.mode == "app-server" and run.proc.forced is None:
            if run.forced is None:
                run.forced, run.reason = "cancelled", "cancelled by request"
            run.interrupt.set()
        else:
            run.proc.stop("cancelled", "cancelled by request")
        return True

    def jail(self, project_id: str, workdir: Path | None = None) -> Jail:
        """What a run may see: its workspace, its project's home (CODEX_HOME inside), Codex's install (the
        native binary's vendor folder, with the ripgrep Codex ships)."""
        cfg = self.config
        path = cfg.environ.get("PATH")
        native = self.binary()
        ro: list[Path] = []
        for p in (*runtime_paths(cfg.binary, path), *runtime_paths(native, path), Path(native).parent.parent):
            if not any(p == q or p.is_relative_to(q) for q in ro):
                ro.append(p)
        return Jail(
            workspace=workdir or cfg.workspace(project_id),
            home=cfg.home(project_id),
            ro_paths=tuple(ro),
            extra_ro=job_tree_mounts(cfg.data_dir, project_id)[1:] if workdir else (),
        )

    def _process(self, run_id: str, project_id: str, workdir: Path | None) -> ap.AgentProcess:
        cfg = self.config
        return ap.AgentProcess(
            run_id,
            escalation=((signal.SIGINT, cfg.sigint_grace_s), (signal.SIGTERM, cfg.sigterm_grace_s)),
            sandbox=cfg.sandbox,
            jail=self.jail(project_id, workdir),
        )

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        cfg = self.config
        cwd = workdir or cfg.workspace(request.project_id)
        cwd.mkdir(parents=True, exist_ok=True)
        self.write_config(request.project_id)
        run_env = self.build_env(request.project_id, env)
        baseline = home.thread_usage_total(cfg.codex_home(request.project_id), request.session_id)
        if not self._exec_only:
            run = _Run(self._process(run_id, request.project_id, workdir), "app-server")
            self._runs[run_id] = run
            try:
                async for ev in self._app_server(run, request, cwd, run_env, baseline):
                    yield ev
                return
            except _AppServerDown as e:
                if cfg.mode == "app-server":
                    yield self._failed(run, f"codex app-server did not start: {e}")
                    return
                log.warning("codex.app_server_unavailable", run_id=run_id, error=str(e))
                self._exec_only = True
                yield StatusEvent(status="running", detail=f"codex app-server unavailable ({e}): exec mode")
            finally:
                await self._finish(run_id, run)
        run = _Run(self._process(run_id, request.project_id, workdir), "exec")
        self._runs[run_id] = run
        try:
            async for ev in self._exec(run, request, cwd, run_env, baseline):
                yield ev
        finally:
            await self._finish(run_id, run)

    async def _finish(self, run_id: str, run: _Run) -> None:
        if self._runs.get(run_id) is run:
            self._runs.pop(run_id, None)
        killed = await run.proc.close(self.config.sigint_grace_s + 3)
        if killed:
            log.info("codex.leftovers_killed", run_id=run_id, count=killed)

    def _failed(self, run: _Run, error: str) -> DoneEvent:
        state = protocol.TurnState(mode=run.mode)
        res = protocol.outcome(
            state,
            exit_code=run.proc.returncode,
            duration_ms=int((time.monotonic() - run.proc.started) * 1000),
            stderr_tail=error,
        )
        return DoneEvent.from_result(res)

    def _done(self, run: _Run, state: protocol.TurnState, code: int | None) -> DoneEvent:
        forced = run.proc.forced or run.forced
        reason = run.proc.reason if run.proc.forced else run.reason
        res = protocol.outcome(
            state,
            exit_code=code,
            duration_ms=int((time.monotonic() - run.proc.started) * 1000),
            stderr_tail="\n".join(run.proc.stderr_tail),
            forced=forced,
            forced_reason=reason,
        )
        log.info(
            "codex.finished",
            run_id=run.proc.run_id,
            mode=run.mode,
            status=res.status,
            exit_code=code,
            duration_ms=res.duration_ms,
            session_id=res.session_id,
        )
        return DoneEvent.from_result(res)

    # --- exec mode ------------------------------------------------------------------------------------

    async def _exec(
        self,
        run: _Run,
        request: AgentRequest,
        cwd: Path,
        env: dict[str, str],
        baseline: dict[str, int],
    ) -> AsyncIterator[AgentEvent]:
        state = protocol.TurnState(mode="exec", model=request.model or self.config.model, cwd=str(cwd))
        state.baseline = baseline
        argv = self.exec_argv(request)
        try:
            await run.proc.spawn(argv, cwd=cwd, env=env, stdin_data=with_files(request).encode())
        except OSError as e:
            yield self._failed(run, f"could not start {argv[0]!r}: {e}")
            return
        log.info("codex.started", run_id=run.proc.run_id, pid=run.proc.pid, mode="exec")
        yield StatusEvent(status="running", detail=f"codex exec pid {run.proc.pid}")
        watchdog = ap.Watchdog(request.timeout_s, self.config.idle_timeout_s, "codex")
        async for name, line in run.proc.lines(watchdog):
            if name == "stderr":
                if line.strip():
                    yield OutputEvent(type="stderr", content=line)
                continue
            for ev in protocol.exec_line(state, line):
                yield ev
        code = await run.proc.wait()
        for ev in protocol.unfinished(state):
            yield ev
        yield self._done(run, state, code)

    # --- app-server mode ------------------------------------------------------------------------------

    async def _app_server(
        self,
        run: _Run,
        request: AgentRequest,
        cwd: Path,
        env: dict[str, str],
        baseline: dict[str, int],
    ) -> AsyncIterator[AgentEvent]:
        state = protocol.TurnState(mode="app-server", model=request.model or self.config.model, cwd=str(cwd))
        state.baseline = baseline
        proc = run.proc
        argv = [self.binary(), "app-server"]
        try:
            await proc.spawn(argv, cwd=cwd, env=env, keep_stdin=True)
        except OSError as e:
            raise _AppServerDown(f"could not start {argv[0]!r}: {e}") from e
        log.info("codex.started", run_id=proc.run_id, pid=proc.pid, mode="app-server")
        rpc = _Rpc(proc)
        events: asyncio.Queue[AgentEvent | None] = asyncio.Queue()
        turn_done = asyncio.Event()
        watchdog = ap.Watchdog(request.timeout_s, self.config.idle_timeout_s, "codex")
        reader = asyncio.create_task(self._pump(proc, rpc, state, watchdog, events, turn_done))
        driver: asyncio.Task[None] | None = None
        try:
            try:
                await rpc.call("initialize", {"clientInfo": CLIENT_INFO})
            except (_RpcError, TimeoutError, ConnectionError) as e:
                raise _AppServerDown(str(e) or type(e).__name__) from e
            yield StatusEvent(status="running", detail=f"codex app-server pid {proc.pid}")
            driver = asyncio.create_task(self._drive(run, rpc, request, cwd, state, events, turn_done))
            while (ev := await events.get()) is not None:
                yield ev
            code = await proc.wait()
            await driver
            for ev in protocol.unfinished(state):
                yield ev
            if state.status is None and state.error is None and rpc.failure:
                state.error = rpc.failure
            yield self._done(run, state, code)
        finally:
            for task in (driver, reader):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    @staticmethod
    async def _pump(
        proc: ap.AgentProcess,
        rpc: _Rpc,
        state: protocol.TurnState,
        watchdog: ap.Watchdog,
        events: asyncio.Queue[AgentEvent | None],
        turn_done: asyncio.Event,
    ) -> None:
        """Read the app-server until it exits: responses resolve calls, notifications become events."""
        try:
            async for name, line in proc.lines(watchdog):
                if name == "stderr":
                    if line.strip():
                        await events.put(OutputEvent(type="stderr", content=line))
                    continue
                for ev in await rpc.handle(state, line):
                    await events.put(ev)
                if state.status is not None:
                    turn_done.set()
        finally:
            rpc.closed()
            turn_done.set()
            await events.put(None)

    async def _drive(
        self,
        run: _Run,
        rpc: _Rpc,
        request: AgentRequest,
        cwd: Path,
        state: protocol.TurnState,
        events: asyncio.Queue[AgentEvent | None],
        turn_done: asyncio.Event,
    ) -> None:
        """Open the thread, start the turn, interrupt it on cancel, and end the process after it."""
        proc = run.proc
        try:
            await rpc.notify("initialized")
            common: dict[str, Any] = {
                "cwd": str(cwd),
                "approvalPolicy": "never",
                "sandbox": "danger-full-access",
            }
            if request.model:
                common["model"] = request.model
            if request.session_id:
                r = await rpc.call(
                    "thread/resume", {"threadId": request.session_id, "excludeTurns": True, **common}
                )
            else:
                r = await rpc.call("thread/start", common)
            thread = r.get("thread") or {}
            state.model = str(r.get("model") or state.model or "") or None
            for ev in protocol.session(state, str(thread.get("id") or request.session_id or "")):
                await events.put(ev)
            if run.forced is None:
                params = {
                    "threadId": state.thread_id,
                    "input": [{"type": "text", "text": with_files(request)}],
                }
                r = await rpc.call("turn/start", params)
                state.turn_id = str((r.get("turn") or {}).get("id") or "") or state.turn_id
                await self._await_turn(run, rpc, state, turn_done)
        except (_RpcError, TimeoutError, ConnectionError) as e:
            if isinstance(e, _RpcError):
                rpc.failure = protocol.provider_message(str(e))
            elif not proc.forced:
                rpc.failure = f"codex app-server: {e or type(e).__name__}"
        # The turn is over (or never started): closing stdin ends the app-server (in ~25 ms).
        rpc.close_stdin()
        if await proc.wait(self.config.sigint_grace_s) is None:
            proc.stop(run.forced or "cancelled", run.reason or "codex app-server did not exit")

    async def _await_turn(
        self, run: _Run, rpc: _Rpc, state: protocol.TurnState, turn_done: asyncio.Event
    ) -> None:
        done = asyncio.create_task(turn_done.wait())
        interrupt = asyncio.create_task(run.interrupt.wait())
        try:
            await asyncio.wait({done, interrupt}, return_when=asyncio.FIRST_COMPLETED)
            if not turn_done.is_set():
                log.info("codex.interrupt", run_id=run.proc.run_id, turn_id=state.turn_id)
                with contextlib.suppress(_RpcError, TimeoutError, ConnectionError):
                    await rpc.call(
                        "turn/interrupt",
                        {"threadId": state.thread_id, "turnId": state.turn_id},
                        timeout_s=self.config.interrupt_grace_s,
                    )
                try:
                    await asyncio.wait_for(turn_done.wait(), self.config.interrupt_grace_s)
                except TimeoutError:
                    run.proc.stop("cancelled", run.reason or "cancelled by request")
        finally:
            for t in (done, interrupt):
                t.cancel()


class _RpcError(Exception):
    """An error response from the app-server."""


class _Rpc:
    """JSON-RPC (without the "jsonrpc" field) over the app-server's stdin/stdout."""

    def __init__(self, proc: ap.AgentProcess) -> None:
        self.proc = proc
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.failure: str | None = None

    async def _send(self, msg: dict[str, Any]) -> None:
        p = self.proc.proc
        if p is None or p.stdin is None or p.stdin.is_closing():
            raise ConnectionError("the app-server's stdin is closed")
        p.stdin.write((json.dumps(msg) + "\n").encode())
        await p.stdin.drain()

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        await self._send({"method": method, **({"params": params} if params is not None else {})})

    async def call(
        self, method: str, params: dict[str, Any], *, timeout_s: float = RPC_TIMEOUT_S
    ) -> dict[str, Any]:
        self._next += 1
        rid = self._next
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._send({"id": rid, "method": method, "params": params})
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._pending.pop(rid, None)

    def closed(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("codex app-server exited"))

    def close_stdin(self) -> None:
        p = self.proc.proc
        if p is not None and p.stdin is not None and not p.stdin.is_closing():
            p.stdin.close()

    async def handle(self, state: protocol.TurnState, line: str) -> list[AgentEvent]:
        """A line from the server: a response (resolves its call), a request (refused: with approvals
        off none is expected), or a notification (translated)."""
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            return [OutputEvent(type="stdout", content=line)] if line.strip() else []
        if not isinstance(msg, dict):
            return [OutputEvent(type="stdout", content=line)]
        if "method" not in msg:
            fut = self._pending.get(msg.get("id", -1))
            if fut is not None and not fut.done():
                if "error" in msg:
                    err = msg["error"] or {}
                    fut.set_exception(_RpcError(str(err.get("message") if isinstance(err, dict) else err)))
                else:
                    result = msg.get("result")
                    fut.set_result(result if isinstance(result, dict) else {})
            return []
        if "id" in msg:
            with contextlib.suppress(ConnectionError):
                await self._send(
                    {
                        "id": msg["id"],
                        "error": {"code": -32601, "message": "agentd does not answer this request"},
                    }
                )
            return [OutputEvent(type="stdout", content=line)]
        return protocol.app_notification(state, msg)


def with_files(request: AgentRequest) -> str:
    """Codex has no file attachments on its command line: paths and inline content go into the prompt."""
    prompt = request.prompt
    paths = [f.path for f in request.files if f.path]
    if paths:
        prompt += "\n\nFiles (relative to the working directory): " + ", ".join(str(p) for p in paths)
    for f in request.files:
        if f.content is not None:
            prompt += f"\n\n<file name={f.filename or 'attachment'!r}>\n{f.content}\n</file>"
    return prompt
