"""A CodeAgent that answers instantly from a script, with no process and no model.

Used by API tests and benchmarks (the "instantly answering agent") and as the in-memory adapter in the
CodeAgent contract tests. Prompts may steer it: `sleep:<seconds>` waits (cancellable), `fail:<message>`
fails, `ticks:<n>[:<ms>]` sends n text events (ms apart; cancellable); anything else is echoed back as text
in two chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
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
        self, request: AgentRequest, *, run_id: str, env: Mapping[str, str] | None = None
    ) -> AsyncIterator[AgentEvent]:
        self.runs.append(request)
        started = time.monotonic()
        cancel = self._cancels.setdefault(run_id, asyncio.Event())
        session = request.session_id or f"scripted-{uuid.uuid4().hex[:12]}"
        try:
            yield SessionEvent(session_id=session, model=request.model or "scripted")
            prompt = request.prompt.strip()
            status: Literal["succeeded", "failed", "cancelled", "timed_out"] = "succeeded"
            error: str | None = None
            text = prompt
            if prompt.startswith("sleep:"):
                want = float(prompt.split(":", 1)[1])
                try:
                    await asyncio.wait_for(cancel.wait(), min(want, request.timeout_s))
                    status, error = "cancelled", "cancelled by request"
                except TimeoutError:
                    if want > request.timeout_s:
                        status, error = "timed_out", f"timed out after {request.timeout_s:g} s"
                text = "slept" if status == "succeeded" else ""
            elif prompt.startswith("ticks:"):
                parts = prompt.split(":")
                n, gap = int(parts[1]), (float(parts[2]) / 1000 if len(parts) > 2 else 0.0)
                mid = f"msg_{uuid.uuid4().hex[:16]}"
                for i in range(n):
                    if cancel.is_set():
                        status, error = "cancelled", "cancelled by request"
                        break
                    yield TextEvent(message_id=mid, chunk=f"{i} ", is_complete=i == n - 1)
                    if gap:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(cancel.wait(), gap)
                text = ""
            elif prompt.startswith("fail:"):
                status, error, text = "failed", prompt.split(":", 1)[1].strip() or "failed", ""
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
