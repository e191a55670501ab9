"""The Claude Code adapter: runs `claude -p --output-format stream-json` locally or through kubectl exec."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

from agentd.adapters.claude_code import process, protocol
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    Availability,
    Capabilities,
    DoneEvent,
    OutputEvent,
    StatusEvent,
)
from agentd.ports.code_agent import CodeAgent

log = structlog.get_logger(__name__)

STDIN_PROMPT_BYTES = 64 * 1024  # larger prompts go on stdin (argv limits; 200 KB fails with E2BIG)
PASS_PREFIXES = ("ANTHROPIC_", "CLAUDE_CODE_")
PASS_NAMES = ("IS_SANDBOX", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS")


@dataclass(frozen=True)
class ClaudeCodeConfig:
    data_dir: Path
    binary: str = "claude"
    transport: Literal["local", "kubectl"] = "local"
    kubectl: str = "kubectl"
    pod: str | None = None
    namespace: str = "default"
    permission_mode: str = "bypassPermissions"
    setting_sources: str = "user"
    idle_timeout_s: float = 300.0
    sigint_grace_s: float = 3.0
    sigterm_grace_s: float = 2.0
    extra_args: tuple[str, ...] = ()
    include_partial: bool = True
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def home(self) -> Path:
        return self.data_dir / "claude" / "home"

    @property
    def tmpdir(self) -> Path:
        return self.data_dir / "claude" / "tmp"

    def workspace(self, project_id: str) -> Path:
        return self.data_dir / "workspaces" / project_id


@dataclass
class _Run:
    run_id: str
    proc: asyncio.subprocess.Process | None = None
    forced: str | None = None  # "cancelled" | "timed_out"
    reason: str | None = None
    stopper: asyncio.Task[None] | None = None


class ClaudeCodeAgent(CodeAgent):
    name = "claude-code"

    def __init__(self, config: ClaudeCodeConfig) -> None:
        self.config = config
        self._runs: dict[str, _Run] = {}
        self._version: str | None = None

    def capabilities(self) -> Capabilities:
        return Capabilities(
            streaming=True,
            partial_text=self.config.include_partial,
            reasoning=True,
            tools=True,
            resume=True,
            cancel=True,
            max_turns=True,
        )

    # --- environment and command line -----------------------------------------------------------------

    def build_env(self, run_id: str) -> dict[str, str]:
        src = self.config.environ
        env = {
            "PATH": src.get("PATH", os.defpath),
            "LANG": src.get("LANG", "C.UTF-8"),
            "HOME": str(self.config.home),
            "CLAUDE_CODE_TMPDIR": str(self.config.tmpdir),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
        }
        for k, v in src.items():
            if k.startswith(PASS_PREFIXES) or k in PASS_NAMES:
                env[k] = v
        # As root, bypassPermissions is refused unless the CLI is told it runs in a sandbox.
        if self.config.permission_mode == "bypassPermissions" and os.geteuid() == 0:
            env.setdefault("IS_SANDBOX", "1")
        env[process.RUN_MARKER] = run_id
        env[process.OWNER_MARKER] = str(os.getpid())
        return env

    def build_args(self, request: AgentRequest) -> tuple[list[str], bytes | None]:
        """Arguments after the binary, and stdin data. Untrusted values always as --flag=value."""
        args = ["-p", "--output-format=stream-json", "--verbose"]
        if self.config.include_partial:
            args.append("--include-partial-messages")
        if self.config.permission_mode:
            args.append(f"--permission-mode={self.config.permission_mode}")
        if self.config.setting_sources:
            args.append(f"--setting-sources={self.config.setting_sources}")
        if request.session_id:
            args.append(f"--resume={request.session_id}")
        if request.model:
            args.append(f"--model={request.model}")
        if request.max_turns:
            args.append(f"--max-turns={request.max_turns}")
        args.extend(self.config.extra_args)
        prompt = with_files(request)
        if prompt.startswith("-") or len(prompt.encode()) > STDIN_PROMPT_BYTES:
            return args, prompt.encode()
        return [*args, prompt], None

    def build_argv(
        self, request: AgentRequest, run_id: str, cwd: Path | None = None
    ) -> tuple[list[str], dict[str, str], bytes | None]:
        args, stdin = self.build_args(request)
        env = self.build_env(run_id)
        cwd = cwd or self.config.workspace(request.project_id)
        if self.config.transport == "local":
            return [self.config.binary, *args], env, stdin
        # kubectl exec: the pod gets no environment from us except what the command line sets, so the
        # remote shell exports the non-secret variables, records its pid (for cancel) and execs claude.
        remote_env = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in env.items() if not k.startswith("ANTHROPIC_") and k != "PATH"
        )
        script = (
            f"echo $$ > {shlex.quote(self._remote_pidfile(run_id))}; "
            f"mkdir -p {shlex.quote(str(cwd))} && cd {shlex.quote(str(cwd))} && "
            f'exec env {remote_env} "$@"'
        )
        argv = [
            *self._kubectl_sh(script, stdin=True),
            "agentd",
            self.config.binary,
            *args,
        ]
        return argv, env, stdin

    def _kubectl_sh(self, script: str, *, stdin: bool = False) -> list[str]:
        """`kubectl exec [-i] <pod> -n <ns> -- sh -c <script>`."""
        pod, ns = str(self.config.pod), self.config.namespace
        return [
            self.config.kubectl,
            "exec",
            *(["-i"] if stdin else []),
            pod,
            "-n",
            ns,
            "--",
            "sh",
            "-c",
            script,
        ]

    def _remote_pidfile(self, run_id: str) -> str:
        return f"{self.config.tmpdir}/agentd-{run_id}.pid"

    # --- availability ---------------------------------------------------------------------------------

    async def is_available(self) -> Availability:
        if self.config.transport == "kubectl":
            if not self.config.pod:
                return Availability(available=False, detail="set AGENTD_CLAUDE_POD for the kubectl transport")
            binary = self.config.kubectl
        else:
            binary = self.config.binary
        found = shutil.which(binary, path=self.config.environ.get("PATH")) or shutil.which(binary)
        if found is None:
            return Availability(
                available=False,
                detail=f"{binary!r} not found on PATH: install it (npm i -g @anthropic-ai/claude-code) "
                "or set AGENTD_CLAUDE_BIN",
            )
        if self.config.transport == "kubectl":
            return Availability(available=True, detail=f"kubectl exec into {self.config.pod}")
        if self._version is None:
            try:
                proc = await asyncio.create_subprocess_exec(
                    binary,
                    "--version",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=self.build_env("version-probe"),
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 20)
                self._version = out.decode(errors="replace").strip().split(" ")[0] or None
            except (OSError, TimeoutError) as e:
                return Availability(available=False, detail=f"{binary} --version failed: {e}")
        return Availability(available=True, detail=binary, version=self._version)

    # --- running --------------------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None:
            return False
        self._stop(run, "cancelled", "cancelled by request")
        return True

    def _stop(self, run: _Run, forced: str, reason: str) -> None:
        if run.forced is None:
            run.forced, run.reason = forced, reason
        if run.stopper is None and run.proc is not None:
            run.stopper = asyncio.create_task(self._escalate(run))

    async def _escalate(self, run: _Run) -> None:
        """SIGINT (the CLI writes its own result) → SIGTERM → SIGKILL of the whole tree."""
        proc = run.proc
        assert proc is not None
        for sig, grace in (
            (signal.SIGINT, self.config.sigint_grace_s),
            (signal.SIGTERM, self.config.sigterm_grace_s),
        ):
            if proc.returncode is not None:
                return
            await self._signal(run, sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        if proc.returncode is None:
            log.warning("claude.kill", run_id=run.run_id, pid=proc.pid)
            process.kill_run_tree(proc.pid, run.run_id)

    async def _signal(self, run: _Run, sig: int) -> None:
        assert run.proc is not None
        if self.config.transport == "kubectl":
            pidfile = shlex.quote(self._remote_pidfile(run.run_id))
            with contextlib.suppress(OSError):
                p = await asyncio.create_subprocess_exec(
                    *self._kubectl_sh(f"kill -{int(sig)} $(cat {pidfile})"),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                await asyncio.wait_for(p.wait(), 10)
            return
        with contextlib.suppress(ProcessLookupError):
            run.proc.send_signal(sig)

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        run = _Run(run_id=run_id)
        self._runs[run_id] = run
        started = time.monotonic()
        state = protocol.StreamState()
        stderr_tail: deque[str] = deque(maxlen=20)
        cwd = workdir or self.config.workspace(request.project_id)
        try:
            for d in (cwd, self.config.home, self.config.tmpdir):
                d.mkdir(parents=True, exist_ok=True)
            argv, env, stdin = self.build_argv(request, run_id, cwd)
            try:
                run.proc = await process.spawn(argv, cwd=cwd, env=env, stdin_data=stdin)
            except OSError as e:
                yield self._done(state, None, started, f"could not start {argv[0]!r}: {e}")
                return
            if run.forced:  # cancelled while starting
                self._stop(run, run.forced, run.reason or "")
            log.info("claude.started", run_id=run_id, pid=run.proc.pid, transport=self.config.transport)
            yield StatusEvent(status="running", detail=f"claude pid {run.proc.pid}")
            async for ev in self._pump(run, request, state, stderr_tail, started):
                yield ev
            for ev in protocol.unfinished(state):
                yield ev
            code = run.proc.returncode
            result = protocol.outcome(
                state,
                exit_code=code,
                duration_ms=int((time.monotonic() - started) * 1000),
                stderr_tail="\n".join(stderr_tail),
                forced=run.forced,
                forced_reason=run.reason,
            )
            log.info(
                "claude.finished",
                run_id=run_id,
                status=result.status,
                exit_code=code,
                duration_ms=result.duration_ms,
                session_id=result.session_id,
            )
            yield DoneEvent.from_result(result)
        finally:
            await self._cleanup(run)

    async def _pump(
        self,
        run: _Run,
        request: AgentRequest,
        state: protocol.StreamState,
        stderr_tail: deque[str],
        started: float,
    ) -> AsyncIterator[AgentEvent]:
        """Read stdout and stderr concurrently until both end and the process exits; watch the clocks."""
        proc = run.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()

        async def read(name: str, reader: asyncio.StreamReader) -> None:
            try:
                async for line in process.iter_lines(reader):
                    await queue.put((name, line))
            finally:
                await queue.put((name, None))

        readers = [
            asyncio.create_task(read("stdout", proc.stdout)),
            asyncio.create_task(read("stderr", proc.stderr)),
        ]
        try:
            open_streams = 2
            deadline = started + request.timeout_s
            last_activity = time.monotonic()
            while open_streams:
                now = time.monotonic()
                wait = min(deadline - now, last_activity + self.config.idle_timeout_s - now)
                if run.stopper is not None:
                    wait = 1.0  # already stopping: just keep draining
                elif wait <= 0:
                    if now >= deadline:
                        self._stop(run, "timed_out", f"timed out after {request.timeout_s:g} s")
                    else:
                        self._stop(
                            run,
                            "timed_out",
                            f"no output from claude for {self.config.idle_timeout_s:g} s "
                            "(inactivity watchdog)",
                        )
                    continue
                try:
                    name, line = await asyncio.wait_for(queue.get(), max(wait, 0.01))
                except TimeoutError:
                    continue
                last_activity = time.monotonic()
                if line is None:
                    open_streams -= 1
                    continue
                if name == "stderr":
                    if line.strip():
                        stderr_tail.append(line)
                        yield OutputEvent(type="stderr", content=line)
                    continue
                for ev in protocol.translate_line(state, line):
                    yield ev
            await proc.wait()
        finally:
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    def _done(self, state: protocol.StreamState, code: int | None, started: float, error: str) -> DoneEvent:
        res = protocol.outcome(
            state, exit_code=code, duration_ms=int((time.monotonic() - started) * 1000), stderr_tail=error
        )
        return DoneEvent.from_result(res)

    async def _cleanup(self, run: _Run) -> None:
        """Whatever ended the run: no process of it may survive (tools, background tasks, the CLI)."""
        self._runs.pop(run.run_id, None)
        proc = run.proc
        if proc is not None and proc.returncode is None:
            # The consumer went away mid-run (iterator closed): stop politely, then by force.
            self._stop(run, "cancelled", "the run's consumer went away")
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), self.config.sigint_grace_s + 3)
        if run.stopper is not None:
            run.stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.stopper
        killed = process.kill_run_tree(proc.pid if proc and proc.returncode is None else None, run.run_id)
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if killed:
            log.info("claude.leftovers_killed", run_id=run.run_id, count=killed)


def with_files(request: AgentRequest) -> str:
    """Claude Code reads files the prompt mentions as @path; inline content goes into the prompt itself."""
    prompt = request.prompt
    paths = [f.path for f in request.files if f.path]
    inline = [f for f in request.files if f.content is not None]
    if paths:
        prompt += "\n\nFiles: " + " ".join(f"@{p}" for p in paths)
    for f in inline:
        prompt += f"\n\n<file name={f.filename or 'attachment'!r}>\n{f.content}\n</file>"
    if request.mentions:
        prompt += "\n\nUse these agents: " + ", ".join(request.mentions)
    return prompt


def reap_stale() -> int:
    """Kill processes left behind by runs of an agentd process that no longer exists (crash, kill -9)."""
    return process.reap_orphans()
