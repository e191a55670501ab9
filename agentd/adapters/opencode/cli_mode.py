"""CLI mode: one `opencode run --format json` process per job, for when no server can be used.

The binary prints one JSON object per line: {"type": "step_start" | "text" | "reasoning" | "tool_use" |
"step_finish" | "error", "sessionID", "part" | "error"}. Parts arrive as finished snapshots (no deltas):
text comes whole, tools only once completed. Each line is fed to the server-event translation as the
event it stands for. The exit code is 0 on success, 1 on a model error.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

import agentd.adapters.agent_process as ap
from agentd.adapters.opencode.prompt import session_title
from agentd.adapters.opencode.protocol import RunState
from agentd.adapters.opencode.run import RunControl
from agentd.adapters.sandbox import Jail, Sandbox
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    DoneEvent,
    OutputEvent,
    SessionEvent,
    StatusEvent,
)
from agentd.domain.workspace import workspace_path

log = structlog.get_logger(__name__)


async def supports_json(binary: str, env: Mapping[str, str]) -> bool:
    """Whether `opencode run` of this binary has a machine-readable output mode (--format json)."""
    try:
        text = await ap.probe([binary, "run", "--help"], env, with_stderr=True)
    except (OSError, TimeoutError):
        return False
    return "--format" in text and "json" in text


def build_argv(
    binary: str, request: AgentRequest, directory: Path, files: Sequence[Path], mentions: Sequence[str]
) -> list[str]:
    """Untrusted values always as --flag=value: a model like `--dir=/etc` must stay a value."""
    argv = [binary, "run", "--format=json", "--thinking", f"--dir={directory}"]
    if request.session_id:
        argv.append(f"--session={request.session_id}")
    else:
        argv.append(f"--title={session_title(request.prompt)}")
    if request.model:
        argv.append(f"--model={request.model}")
    if request.agent:
        argv.append(f"--agent={request.agent}")
    argv += [f"--file={f}" for f in files]
    prompt = request.prompt + "".join(f" @{m}" for m in mentions)
    return [*argv, "--", prompt]


_LINE_TYPES = {
    "text": "message.part.updated",
    "reasoning": "message.part.updated",
    "tool_use": "message.part.updated",
    "step_start": "message.part.updated",
    "step_finish": "message.part.updated",
}


class CliRun:
    def __init__(
        self,
        binary: str,
        env: Mapping[str, str],
        request: AgentRequest,
        control: RunControl,
        directory: Path,
        *,
        idle_timeout_s: float,
        scratch: Path,
        stop_grace_s: float = 3.0,
        sandbox: Sandbox | None = None,
        jail: Jail | None = None,
    ) -> None:
        self.binary, self.env, self.request, self.control, self.dir = binary, env, request, control, directory
        self.idle_timeout_s, self.scratch = idle_timeout_s, scratch
        self.proc = ap.AgentProcess(
            control.run_id,
            escalation=((signal.SIGINT, stop_grace_s), (signal.SIGTERM, stop_grace_s)),
            sandbox=sandbox,
            jail=jail,
        )
        control.listeners.append(lambda: self.proc.stop(control.forced or "cancelled", control.reason or ""))

    def _file_paths(self) -> list[Path]:
        paths = []
        for i, f in enumerate(self.request.files):
            if f.path is not None:  # inside the workspace after symlinks, or InvalidRequest
                paths.append(workspace_path(self.dir, f.path))
            else:
                self.scratch.mkdir(parents=True, exist_ok=True)
                p = self.scratch / f"{i}-{Path(f.filename or 'attachment.txt').name}"
                p.write_bytes((f.content or "").encode())
                paths.append(p)
        return paths

    async def events(self) -> AsyncGenerator[AgentEvent, None]:
        argv = build_argv(self.binary, self.request, self.dir, self._file_paths(), self.request.mentions)
        state: RunState | None = None
        try:
            if self.control.forced is not None:
                self.proc.stop(self.control.forced, self.control.reason or "")
            try:
                await self.proc.spawn(argv, cwd=self.dir, env=self.env)
            except OSError as e:
                yield self._done(None, None, f"could not run {self.binary!r}: {e}")
                return
            yield StatusEvent(status="running", detail=f"opencode run (cli mode), pid {self.proc.pid}")
            watchdog = ap.Watchdog(self.request.timeout_s, self.idle_timeout_s, "opencode")
            async for kind, line in self.proc.lines(watchdog):
                if not line.strip():
                    continue
                if kind == "stderr":
                    yield OutputEvent(type="stderr", content=line)
                    continue
                try:
                    obj = json.loads(line)
                except ValueError:
                    yield OutputEvent(type="stdout", content=line)
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("sessionID"), str):
                    continue
                if state is None:
                    state = RunState(obj["sessionID"])
                    model = self.request.model
                    yield SessionEvent(session_id=state.session_id, model=model, cwd=str(self.dir))
                for ev in state.handle(_as_event(obj)):
                    yield ev
            code = await self.proc.wait()
            if state is not None:
                for ev in state.close_open():
                    yield ev
            yield self._done(state, code, None)
        finally:
            await self.proc.close(grace_s=sum(grace for _, grace in self.proc.escalation) + 1.0)

    def _done(self, state: RunState | None, code: int | None, spawn_error: str | None) -> DoneEvent:
        """The CLI prints no message events: a reported error, an abort or its exit code say how it ended."""
        state = state or RunState(self.request.session_id or "")
        error, retryable = state.reported_error()
        if error is None and not state.aborted and (spawn_error or code != 0):
            stderr = " | ".join(list(self.proc.stderr_tail)[-5:])
            error = spawn_error or f"opencode run exited with code {code}" + (f": {stderr}" if stderr else "")
        # Forced by the control (a cancel before the process existed) or by the watchdog.
        forced = self.control.forced or self.proc.forced
        res = AgentResult.ended(
            forced=forced,
            forced_reason=self.control.reason or self.proc.reason,
            error=error,
            aborted="the run was aborted in OpenCode" if state.aborted else None,
            exit_code=code,
            duration_ms=int((time.monotonic() - self.proc.started) * 1000),
            retryable=retryable and forced is None,
            **state.result_fields(),
        )
        log.info("opencode.cli.finished", run_id=self.control.run_id, status=res.status, exit_code=code)
        return DoneEvent.from_result(res)


def _as_event(obj: dict[str, Any]) -> dict[str, Any]:
    """A line of `opencode run --format json` as the server event it stands for."""
    kind = obj.get("type")
    sid = obj["sessionID"]
    if kind == "error":
        return {"type": "session.error", "properties": {"sessionID": sid, "error": obj.get("error")}}
    if kind in _LINE_TYPES and isinstance(obj.get("part"), dict):
        return {"type": _LINE_TYPES[kind], "properties": {"sessionID": sid, "part": obj["part"]}}
    return {"type": f"cli.{kind}", "properties": {"sessionID": sid}}
