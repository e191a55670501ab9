"""The Claude Code adapter: runs `claude -p --output-format stream-json` locally or through kubectl exec."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import structlog

import agentd.adapters.agent_process as ap
from agentd.adapters.claude_code import protocol
from agentd.adapters.git_workspace import job_tree_mounts
from agentd.adapters.sandbox import Jail, Sandbox, runtime_paths
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
PROXY_NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS")
PASS_NAMES = ("IS_SANDBOX", *PROXY_NAMES)
KUBECTL_NAMES = ("HOME", "KUBECONFIG", *PROXY_NAMES)  # kubectl itself gets no secret either


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
    sandbox: Sandbox | None = None  # None or mode "off": runs are not jailed

    def home(self, project_id: str) -> Path:
        """The CLI's HOME for one project: its settings, sessions and hooks stay with that project."""
        return ap.agent_home(self.data_dir, "claude-code", project_id)

    def tmpdir(self, project_id: str) -> Path:
        return self.home(project_id) / "tmp"

    def workspace(self, project_id: str) -> Path:
        return ap.workspace(self.data_dir, project_id)


class ClaudeCodeAgent(CodeAgent):
    name = "claude-code"

    def __init__(self, config: ClaudeCodeConfig) -> None:
        self.config = config
        self._runs: dict[str, ap.AgentProcess] = {}
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

    def build_env(self, project_id: str, run_env: Mapping[str, str] | None = None) -> dict[str, str]:
        """PATH, LANG, the CLI's own settings and variables, the run's secrets; nothing else of agentd's."""
        env = ap.pick_env(self.config.environ)
        env.update(
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            DISABLE_AUTOUPDATER="1",
            DISABLE_TELEMETRY="1",
        )
        env.update(ap.pick_env(self.config.environ, names=PASS_NAMES, prefixes=PASS_PREFIXES))
        env.update(run_env or {})
        env["HOME"] = str(self.config.home(project_id))
        env["CLAUDE_CODE_TMPDIR"] = str(self.config.tmpdir(project_id))
        # As root, bypassPermissions is refused unless the CLI is told it runs in a sandbox, and it
        # accepts exactly "1" (an inherited IS_SANDBOX=yes failed every job).
        if self.config.permission_mode == "bypassPermissions" and os.geteuid() == 0:
            env["IS_SANDBOX"] = "1"
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
        self,
        request: AgentRequest,
        run_id: str,
        run_env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> tuple[list[str], dict[str, str], bytes | None]:
        """The command line, its environment and its stdin. No secret goes on a command line."""
        args, stdin = self.build_args(request)
        env = self.build_env(request.project_id, run_env)
        cwd = cwd or self.config.workspace(request.project_id)
        if self.config.transport == "local":
            binary = shutil.which(self.config.binary, path=env["PATH"]) or self.config.binary
            return [os.path.abspath(binary) if os.sep in binary else binary, *args], env, stdin
        # kubectl exec: the pod gets no environment from us, and a command line is visible in every
        # process list. The remote shell records its pid (for cancel), reads the run's environment from
        # stdin (one NAME=value per line, backslash-escaped, up to an empty line), then execs claude,
        # which reads the rest of stdin (the prompt, when it is not on the command line).
        script = (
            f"echo $$ > {shlex.quote(self._remote_pidfile(run_id))}; "
            'while IFS= read -r kv && [ -n "$kv" ]; do export "${kv%%=*}=$(printf %b "${kv#*=}")"; done; '
            f"mkdir -p {shlex.quote(str(cwd))} && cd {shlex.quote(str(cwd))} && "
            'exec "$@"'
        )
        header = "".join(f"{k}={_escape(v)}\n" for k, v in env.items() if k != "PATH") + "\n"
        argv = [*self._kubectl_sh(script, stdin=True), "agentd", self.config.binary, *args]
        local = ap.pick_env(self.config.environ, names=KUBECTL_NAMES)
        return argv, local, header.encode() + (stdin or b"")

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
        return f"/tmp/agentd-{run_id}.pid"

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
                version = await ap.probe_version(binary, self.build_env("version-probe"))
                self._version = version.split(" ")[0] if version else None
            except (OSError, TimeoutError) as e:
                return Availability(available=False, detail=f"{binary} --version failed: {e}")
        return Availability(available=True, detail=binary, version=self._version)

    # --- running --------------------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> bool:
        run = self._runs.get(run_id)
        if run is None:
            return False
        run.stop("cancelled", "cancelled by request")
        return True

    async def _kubectl_signal(self, run_id: str, sig: int) -> None:
        """Signal the remote CLI through the pid file its shell wrote."""
        pidfile = shlex.quote(self._remote_pidfile(run_id))
        with contextlib.suppress(OSError, TimeoutError):
            p = await asyncio.create_subprocess_exec(
                *self._kubectl_sh(f"kill -{int(sig)} $(cat {pidfile})"),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            await asyncio.wait_for(p.wait(), 10)

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        cfg = self.config
        signaller = None
        if cfg.transport == "kubectl":
            signaller = lambda sig: self._kubectl_signal(run_id, sig)  # noqa: E731
        cwd, home = workdir or cfg.workspace(request.project_id), cfg.home(request.project_id)
        jail = None
        if cfg.transport == "local":
            jail = Jail(
                workspace=cwd,
                home=home,
                ro_paths=runtime_paths(cfg.binary, cfg.environ.get("PATH")),
                extra_ro=job_tree_mounts(cfg.data_dir, request.project_id)[1:],
            )
        run = ap.AgentProcess(
            run_id,
            escalation=((signal.SIGINT, cfg.sigint_grace_s), (signal.SIGTERM, cfg.sigterm_grace_s)),
            sandbox=cfg.sandbox,
            jail=jail,
            signaller=signaller,
        )
        self._runs[run_id] = run
        state = protocol.StreamState()
        try:
            for d in (cwd, home, cfg.tmpdir(request.project_id)):
                d.mkdir(mode=0o700, parents=True, exist_ok=True)
            argv, run_env, stdin = self.build_argv(request, run_id, env, cwd)
            try:
                await run.spawn(argv, cwd=cwd, env=run_env, stdin_data=stdin)
            except OSError as e:
                yield self._done(state, run, None, f"could not start {argv[0]!r}: {e}")
                return
            log.info("claude.started", run_id=run_id, pid=run.pid, transport=cfg.transport)
            yield StatusEvent(status="running", detail=f"claude pid {run.pid}")
            watchdog = ap.Watchdog(request.timeout_s, cfg.idle_timeout_s, "claude")
            async for name, line in run.lines(watchdog):
                if name == "stderr":
                    if line.strip():
                        yield OutputEvent(type="stderr", content=line)
                    continue
                for ev in protocol.translate_line(state, line):
                    yield ev
            code = await run.wait()
            for ev in protocol.unfinished(state):
                yield ev
            done = self._done(state, run, code, "\n".join(run.stderr_tail))
            log.info(
                "claude.finished",
                run_id=run_id,
                status=done.status,
                exit_code=code,
                duration_ms=done.duration_ms,
                session_id=done.session_id,
            )
            yield done
        finally:
            self._runs.pop(run_id, None)
            killed = await run.close(cfg.sigint_grace_s + 3)
            if killed:
                log.info("claude.leftovers_killed", run_id=run_id, count=killed)

    def _done(
        self, state: protocol.StreamState, run: ap.AgentProcess, code: int | None, tail: str
    ) -> DoneEvent:
        res = protocol.outcome(
            state,
            exit_code=code,
            duration_ms=int((time.monotonic() - run.started) * 1000),
            stderr_tail=tail,
            forced=run.forced,
            forced_reason=run.reason,
        )
        return DoneEvent.from_result(res)


def _escape(value: str) -> str:
    """A value on one line, for the remote shell's `printf %b` (trailing newlines are lost)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


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
