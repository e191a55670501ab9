"""CLI mode: one `opencode run --format json` process per job, for when no server can be used.

The binary prints one JSON object per line: {"type": "step_start" | "text" | "reasoning" | "tool_use" |
"step_finish" | "error", "sessionID", "part" | "error"}. Parts arrive as finished snapshots (no deltas):
text comes whole, tools only once completed. Each line is fed to the server-event translation as the
event it stands for. The exit code is 0 on success, 1 on a model error.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import structlog

from agentd.adapters.opencode import procs
from agentd.adapters.opencode.prompt import FileAttachment, session_title
from agentd.adapters.opencode.protocol import RunState
from agentd.adapters.opencode.run import RunControl
from agentd.domain.models import AgentEvent, AgentRequest, DoneEvent, OutputEvent, SessionEvent, StatusEvent

log = structlog.get_logger(__name__)


async def supports_json(binary: str, env: dict[str, str]) -> bool:
    """Whether `opencode run` of this binary has a machine-readable output mode (--format json)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "run", "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
        )
    except OSError:
        return False
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        return False
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode(errors="replace")
    return "--format" in text and "json" in text


def build_argv(
    binary: str, request: AgentRequest, directory: Path, files: Sequence[Path], mentions: Sequence[str]
) -> list[str]:
    argv = [binary, "run", "--format", "json", "--thinking", "--dir", str(directory)]
    if request.session_id:
        argv += ["--session", request.session_id]
    else:
        argv += ["--title", session_title(request.prompt)]
    if request.model:
        argv += ["--model", request.model]
    if request.agent:
        argv += ["--agent", request.agent]
    for f in files:
        argv += ["--file", str(f)]
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
        env: dict[str, str],
        request: AgentRequest,
        control: RunControl,
        directory: Path,
        *,
        idle_timeout_s: float,
        scratch: Path,
        files: Sequence[FileAttachment] = (),
        mentions: Sequence[str] = (),
        stop_grace_s: float = 3.0,
    ) -> None:
        self.binary, self.env, self.request, self.control, self.dir = binary, env, request, control, directory
        self.idle_timeout_s, self.scratch, self.stop_grace_s = idle_timeout_s, scratch, stop_grace_s
        self.files, self.mentions = files, mentions
        self.stderr: deque[str] = deque(maxlen=20)
        self.started = time.monotonic()

    def _file_paths(self) -> list[Path]:
        paths = []
        for i, f in enumerate(self.files):
            if f.path is not None:
                p = Path(f.path)
                paths.append(p if p.is_absolute() else self.dir / p)
            else:
                self.scratch.mkdir(parents=True, exist_ok=True)
                p = self.scratch / f"{i}-{f.filename or 'attachment.txt'}"
                p.write_bytes(f.content.encode() if isinstance(f.content, str) else f.content or b"")
                paths.append(p)
        return paths

    async def events(self) -> AsyncGenerator[AgentEvent, None]:
        argv = build_argv(self.binary, self.request, self.dir, self._file_paths(), self.mentions)
        state: RunState | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=self.dir,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=procs.die_with_parent,
                limit=64 * 1024 * 1024,
            )
        except OSError as e:
            yield self._done(None, None, f"could not run {self.binary!r}: {e}")
            return
        stopper: asyncio.Task[None] | None = None
        yield StatusEvent(status="running", detail=f"opencode run (cli mode), pid {proc.pid}")
        try:
            async for kind, line in self._lines(proc):
                if self.control.forced is not None and stopper is None:
                    stopper = asyncio.create_task(self._stop(proc))
                if kind == "wake":
                    continue
                if kind == "stderr":
                    self.stderr.append(line)
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
            code = await procs.wait_exit(proc)
            if state is not None:
                for ev in state.close_open():
                    yield ev
            yield self._done(state, code, None)
        finally:
            if stopper is not None:
                stopper.cancel()
            if proc.returncode is None:
                await self._stop(proc)
            procs.kill_tree(proc.pid)

    async def _lines(self, proc: asyncio.subprocess.Process) -> AsyncIterator[tuple[str, str]]:
        """stdout and stderr lines as they come; enforces the deadline and the inactivity watchdog."""
        assert proc.stdout is not None and proc.stderr is not None
        queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()

        async def read(name: str, stream: asyncio.StreamReader) -> None:
            try:
                while raw := await stream.readline():
                    await queue.put((name, raw.decode(errors="replace").rstrip("\n")))
            finally:
                await queue.put((name, None))

        readers = [
            asyncio.create_task(read("stdout", proc.stdout)),
            asyncio.create_task(read("stderr", proc.stderr)),
        ]
        self.control.listeners.append(lambda: queue.put_nowait(("wake", "")))
        try:
            open_streams, last = 2, time.monotonic()
            deadline = self.started + self.request.timeout_s
            while open_streams:
                now = time.monotonic()
                if self.control.forced is None and now >= deadline:
                    self.control.stop("timed_out", f"timed out after {self.request.timeout_s:g} s")
                elif self.control.forced is None and now >= last + self.idle_timeout_s:
                    idle = self.idle_timeout_s
                    why = f"no output from opencode for {idle:g} s (inactivity watchdog)"
                    self.control.stop("timed_out", why)
                wait = 1.0 if self.control.forced else min(deadline, last + self.idle_timeout_s) - now
                try:
                    name, line = await asyncio.wait_for(queue.get(), max(wait, 0.01))
                except TimeoutError:
                    continue
                if name == "wake":
                    yield name, ""
                    continue
                last = time.monotonic()
                if line is None:
                    open_streams -= 1
                elif line.strip():
                    yield name, line
        finally:
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGINT (opencode aborts the run), then SIGTERM, then SIGKILL of the whole tree."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            if proc.returncode is not None:
                return
            procs.signal_all(proc.pid, set(), sig)
            await procs.wait_exit(proc, self.stop_grace_s)
        if proc.returncode is None:
            procs.kill_tree(proc.pid)
            await procs.wait_exit(proc)

    def _done(self, state: RunState | None, code: int | None, error: str | None) -> DoneEvent:
        ms = int((time.monotonic() - self.started) * 1000)
        forced, reason = self.control.forced, self.control.reason
        stderr = " | ".join(list(self.stderr)[-5:])
        if state is None:
            state = RunState(self.request.session_id or "")
            state.idle = True
        res = state.outcome(duration_ms=ms, forced=forced, forced_reason=reason, exit_code=code)
        if forced is None and state.error is None and not state.aborted:
            # The CLI prints no message events: its exit code says how the run ended.
            if code == 0 and error is None:
                res = res.model_copy(update={"status": "succeeded", "error": None})
            else:
                why = error or f"opencode run exited with code {code}" + (f": {stderr}" if stderr else "")
                res = res.model_copy(update={"status": "failed", "error": why})
        log.info("opencode.cli.finished", run_id=self.control.run_id, status=res.status, exit_code=code)
        return DoneEvent.from_result(res.model_copy(update={"session_id": state.session_id or None}))


def _as_event(obj: dict[str, Any]) -> dict[str, Any]:
    """A line of `opencode run --format json` as the server event it stands for."""
    kind = obj.get("type")
    sid = obj["sessionID"]
    if kind == "error":
        return {"type": "session.error", "properties": {"sessionID": sid, "error": obj.get("error")}}
    if kind in _LINE_TYPES and isinstance(obj.get("part"), dict):
        return {"type": _LINE_TYPES[kind], "properties": {"sessionID": sid, "part": obj["part"]}}
    return {"type": f"cli.{kind}", "properties": {"sessionID": sid}}
