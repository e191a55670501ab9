"""A CodeAgent that answers instantly from a script, with no process and no model.

Used by API tests and benchmarks (the "instantly answering agent") and as the in-memory adapter in the
CodeAgent contract tests. Prompts may steer it: `sleep:<seconds>` waits (cancellable), `fail:<message>`
fails, `ticks:<n>[:<ms>]` sends n text events (ms apart; cancellable), `edit:<json>` changes files in
the run's working directory (see `edit_files`); `stream:<count>:<per_second>:<delay_s>` waits `delay_s`,
then sends `count` text chunks, `per_second` of them a second (0: as fast as the consumer takes them), each
chunk `t=<time.monotonic()>;` (the fan-out bench measures delivery latency with it: CLOCK_MONOTONIC is
shared by the processes of a machine); anything else is echoed back as text in two chunks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Literal

from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    Availability,
    Capabilities,
    DoneEvent,
    SessionEvent,
    TextEvent,
)
from agentd.ports.code_agent import CodeAgent


class ScriptedCodeAgent(CodeAgent):
    def __init__(self, name: str = "scripted") -> None:
        self.name = name
        self._cancels: dict[str, asyncio.Event] = {}
        self.runs: list[AgentRequest] = []
        self.workdirs: list[Path | None] = []
        self.envs: list[dict[str, str]] = []

    def capabilities(self) -> Capabilities:
        return Capabilities(partial_text=True, tools=False, max_turns=False)

    async def is_available(self) -> Availability:
        return Availability(available=True, detail="in-process scripted agent", version="1")

    async def cancel(self, run_id: str) -> bool:
        ev = self._cancels.get(run_id)
        if ev is None:
            return False
        ev.set()
        return True

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        self.runs.append(request)
        self.workdirs.append(workdir)
        self.envs.append(dict(env or {}))
        started = time.monotonic()
        cancel = self._cancels.setdefault(run_id, asyncio.Event())
        session = request.session_id or f"scripted-{uuid.uuid4().hex[:12]}"
        try:
            yield SessionEvent(session_id=session, model=request.model or "scripted")
            prompt = request.prompt.strip()
            status: Literal["succeeded", "failed", "cancelled", "timed_out"] = "succeeded"
            error: str | None = None
            text = prompt
            if prompt.startswith("stream:"):
                async for ev in _timed_stream(prompt, cancel):
                    yield ev
                text = ""
            elif prompt.startswith("sleep:"):
                status, error, text = await _sleep(prompt, request.timeout_s, cancel)
            elif prompt.startswith("ticks:"):
                async for tick in _ticks(prompt, cancel):
                    yield tick
                if cancel.is_set():
                    status, error = "cancelled", "cancelled by request"
                text = ""
            elif prompt.startswith("env:"):  # which value the run got, without showing it: its sha256
                name = prompt.split(":", 1)[1].strip()
                value = (env or {}).get(name)
                text = f"{name} unset" if value is None else f"{name} sha256 {_sha256(value)}"
            elif prompt.startswith("fail:"):
                status, error, text = "failed", prompt.split(":", 1)[1].strip() or "failed", ""
            elif prompt.startswith("edit:"):
                try:
                    text = await _edit(workdir, prompt.split(":", 1)[1], cancel)
                except (ValueError, OSError) as e:
                    status, error, text = "failed", f"edit: {e}", ""
            if text:
                mid = f"msg_{uuid.uuid4().hex[:16]}"
                half = len(text) // 2
                yield TextEvent(message_id=mid, chunk=text[:half])
                yield TextEvent(message_id=mid, chunk=text[half:], is_complete=True)
            yield DoneEvent.from_result(
                AgentResult(
                    status=status,
                    exit_code=0 if status == "succeeded" else 1,
                    duration_ms=int((time.monotonic() - started) * 1000),
                    session_id=session,
                    result=text or None,
                    error=error,
                )
            )
        finally:
            self._cancels.pop(run_id, None)


async def _timed_stream(prompt: str, cancel: asyncio.Event) -> AsyncIterator[TextEvent]:
    count_s, rate_s, delay_s = [*prompt.split(":", 1)[1].split(":"), "0", "0"][:3]
    count, rate, delay = int(count_s), float(rate_s), float(delay_s)
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel.wait(), delay)
    mid = f"msg_{uuid.uuid4().hex[:16]}"
    start = time.monotonic()
    for i in range(count):
        if cancel.is_set():
            return
        if rate > 0:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        yield TextEvent(message_id=mid, chunk=f"t={time.monotonic():.6f};")


Status = Literal["succeeded", "failed", "cancelled", "timed_out"]


async def _sleep(prompt: str, timeout_s: float, cancel: asyncio.Event) -> tuple[Status, str | None, str]:
    """`sleep:<seconds>`: wait (cancellable, within the request's timeout)."""
    want = float(prompt.split(":", 1)[1])
    try:
        await asyncio.wait_for(cancel.wait(), min(want, timeout_s))
        return "cancelled", "cancelled by request", ""
    except TimeoutError:
        if want > timeout_s:
            return "timed_out", f"timed out after {timeout_s:g} s", ""
    return "succeeded", None, "slept"


async def _ticks(prompt: str, cancel: asyncio.Event) -> AsyncIterator[AgentEvent]:
    """`ticks:<n>[:<ms>]`: n text events of one message, ms apart, until cancelled."""
    parts = prompt.split(":")
    n, gap = int(parts[1]), (float(parts[2]) / 1000 if len(parts) > 2 else 0.0)
    mid = f"msg_{uuid.uuid4().hex[:16]}"
    for i in range(n):
        if cancel.is_set():
            return
        yield TextEvent(message_id=mid, chunk=f"{i} ", is_complete=i == n - 1)
        if gap:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel.wait(), gap)


async def _edit(workdir: Path | None, script: str, cancel: asyncio.Event) -> str:
    pause = float(json.loads(script).get("sleep", 0))
    if pause > 0:  # hold the working tree a while (concurrency tests)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cancel.wait(), pause)
    return edit_files(workdir, script)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def edit_files(workdir: Path | None, script: str) -> str:
    """Apply `{"write": {path: text}, "write_b64": {path: base64}, "delete": [path], "rename": {old: new},
    "sleep": seconds}` inside `workdir` (paths relative, never outside it). Returns a summary."""
    if workdir is None:
        raise ValueError("no working directory: the project has no git repository")
    ops = json.loads(script)
    root = workdir.resolve()

    def inside(rel: str) -> Path:
        p = (root / rel).resolve()
        if p != root and root not in p.parents:
            raise ValueError(f"{rel!r} is outside the working directory")
        return p

    done: list[str] = []
    for rel, text in ops.get("write", {}).items():
        p = inside(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        done.append(f"wrote {rel}")
    for rel, b64 in ops.get("write_b64", {}).items():
        p = inside(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(base64.b64decode(b64))
        done.append(f"wrote {rel}")
    for rel in ops.get("delete", []):
        inside(rel).unlink()
        done.append(f"deleted {rel}")
    for old, new in ops.get("rename", {}).items():
        target = inside(new)
        target.parent.mkdir(parents=True, exist_ok=True)
        inside(old).rename(target)
        done.append(f"renamed {old} to {new}")
    return "; ".join(done) or "nothing to do"
