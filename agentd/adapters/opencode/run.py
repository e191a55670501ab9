"""One job on an OpenCode server: session, event subscription, prompt_async, events until the end.

One inbox carries everything the run reacts to, in order: the server's events, markers from the event
reader (connected / dropped) and stop requests (cancel, timeouts). The run ends at idle + final message;
idle without a final message, session errors and reconnects are settled by re-reading the message list.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from agentd.adapters.opencode.client import OpenCodeClient, OpenCodeHTTPError, OpenCodeUnavailable
from agentd.adapters.opencode.prompt import new_id, prompt_body, session_title
from agentd.adapters.opencode.protocol import RunState
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    DoneEvent,
    ErrorEvent,
    Forced,
    SessionEvent,
    StatusEvent,
)

log = structlog.get_logger(__name__)
EventHook = Callable[[dict[str, Any]], None]
_STREAM_ERRORS = (
    OpenCodeHTTPError,
    OpenCodeUnavailable,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
    ValueError,
)


@dataclass
class RunControl:
    """The handle cancel() and the timers use to stop a run, whatever stage it is in."""

    run_id: str
    forced: Forced | None = None
    reason: str | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, forced: Forced, reason: str) -> None:
        if self.forced is None:
            self.forced, self.reason = forced, reason
            self.stopped.set()
            for listener in self.listeners:
                listener()


@dataclass(frozen=True)
class RunOptions:
    idle_timeout_s: float = 300.0
    finish_grace_s: float = 1.0  # idle without the final message: re-read the messages after this long
    stop_grace_s: float = 5.0  # after an abort, wait this long for the final message
    connect_timeout_s: float = 10.0
    reconnect_delays: tuple[float, ...] = (0.05, 0.25, 0.5, 1.0, 2.0)
    reconnect_limit_s: float = 30.0  # fail the run after this long without an event stream
    permission_reply: str = "reject"  # "once" | "always" | "reject": nobody answers a question for us
    event_hook: EventHook | None = None  # sees every raw event; raising ConnectionError cuts the stream


@dataclass(frozen=True)
class _Connected:
    first: bool


@dataclass(frozen=True)
class _Dropped:
    error: str


_STOP = object()


@dataclass
class _Timers:
    """What the pump waits for: the run's deadline, the inactivity watchdog (`last_activity`, and `seen`,
    the session's event count then), the next re-read of the messages (`check_at`, `checks` so far), the
    end of the grace after an abort (`stop_by`) and since when the event stream is gone."""

    deadline: float
    last_activity: float
    seen: int
    check_at: float | None = None
    checks: int = 0
    stop_by: float | None = None
    offline_since: float | None = None


class ServerRun:
    def __init__(
        self,
        client: OpenCodeClient,
        request: AgentRequest,
        control: RunControl,
        directory: Path,
        options: RunOptions,
        *,
        ensure_server: Callable[[], Awaitable[object]],
        server_epoch: Callable[[], int] = lambda: 0,
    ) -> None:
        self.client, self.request, self.control, self.dir = client, request, control, directory
        self.options, self.ensure_server = options, ensure_server
        self.server_epoch, self.epoch = server_epoch, server_epoch()
        self.inbox: asyncio.Queue[object] = asyncio.Queue()
        control.listeners.append(lambda: self.inbox.put_nowait(_STOP))
        self.session_id: str | None = None
        self.created = self.accepted = self.abort_sent = self.finished = False
        self.failure: str | None = None
        self.started = time.monotonic()

    def _done(self, state: RunState | None, error: str | None = None) -> DoneEvent:
        ms = int((time.monotonic() - self.started) * 1000)
        forced, reason = self.control.forced, self.control.reason
        if state is None:  # nothing ran
            res = AgentResult.ended(
                forced=forced,
                forced_reason=reason,
                error=error or reason or "the run did not start",
                duration_ms=ms,
                session_id=self.session_id,
            )
        else:
            res = state.outcome(duration_ms=ms, forced=forced, forced_reason=reason)
            if self.failure and not forced:
                res = res.model_copy(update={"status": "failed", "error": self.failure})
        log.info(
            "opencode.run.finished",
            run_id=self.control.run_id,
            session_id=res.session_id,
            status=res.status,
            duration_ms=res.duration_ms,
            error=res.error,
        )
        self.finished = True
        return DoneEvent.from_result(res)

    async def events(self) -> AsyncGenerator[AgentEvent, None]:
        reader = asyncio.create_task(self._read())  # subscribe while the session is being set up
        try:
            try:
                if self.request.session_id:
                    await self.client.get_session(self.dir, self.request.session_id)
                    self.session_id = self.request.session_id
                else:
                    info = await self.client.create_session(self.dir, session_title(self.request.prompt))
                    self.session_id, self.created = info["id"], True
            except (OpenCodeHTTPError, OpenCodeUnavailable) as e:
                yield ErrorEvent(code=e.code, message=str(e))
                yield self._done(None, f"could not open the OpenCode session: {e}")
                return
            assert self.session_id is not None
            yield SessionEvent(session_id=self.session_id, model=self.request.model, cwd=str(self.dir))
            state = RunState(self.session_id, user_message_id=new_id("msg"))
            error = await self._wait_connected()
            if self.control.forced is None and error is None:
                error = await self._send_prompt(state)
            if not self.accepted:
                await self._discard_session()
                if error:
                    yield ErrorEvent(code="opencode_error", message=error)
                yield self._done(None, error)
                return
            yield StatusEvent(status="running", detail=f"opencode session {self.session_id}")
            async for ev in self._pump(state):
                yield ev
            for ev in state.close_open():
                yield ev
            yield self._done(state)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if self.accepted and not self.finished and not self.abort_sent:
                # The consumer went away mid-run: stop the run on the server.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._abort(), 5)

    async def _send_prompt(self, state: RunState) -> str | None:
        assert self.session_id is not None
        try:
            body = prompt_body(
                self.request.prompt,
                directory=self.dir,
                message_id=state.user_message_id or "",
                model=self.request.model,
                agent=self.request.agent,
                files=self.request.files,
                mentions=self.request.mentions,
            )
        except ValueError as e:
            return str(e)
        try:
            await self.client.prompt_async(self.dir, self.session_id, body)
        except (OpenCodeHTTPError, OpenCodeUnavailable) as e:
            return f"OpenCode did not accept the prompt: {e}"
        self.accepted = True
        log.info("opencode.run.prompted", run_id=self.control.run_id, session_id=self.session_id)
        return None

    async def _discard_session(self) -> None:
        """Nothing ran: a session we created for this run would only be clutter."""
        if self.created and self.session_id:
            with contextlib.suppress(OpenCodeHTTPError, OpenCodeUnavailable):
                await self.client.delete_session(self.dir, self.session_id)
            self.session_id = None

    async def _wait_connected(self) -> str | None:
        deadline = time.monotonic() + self.options.connect_timeout_s
        last = "no answer"
        while self.control.forced is None:
            try:
                item = await asyncio.wait_for(self.inbox.get(), max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                return f"could not subscribe to the OpenCode event stream: {last}"
            if isinstance(item, _Connected):
                return None
            if isinstance(item, _Dropped):
                last = item.error
        return None

    async def _read(self) -> None:
        """Follow GET /event; reconnect when it drops. Runs as a task until the run ends."""
        first, attempt = True, 0
        delays = self.options.reconnect_delays
        while True:
            try:
                if not first:
                    await self.ensure_server()
                async with self.client.events(self.dir) as stream:
                    async for ev in stream:
                        if self.options.event_hook is not None:
                            self.options.event_hook(ev)
                        if ev.get("type") == "server.connected":
                            self.inbox.put_nowait(_Connected(first))
                            first, attempt = False, 0
                        else:
                            self.inbox.put_nowait(ev)
                error = "the event stream ended"
            except _STREAM_ERRORS as e:
                error = f"{type(e).__name__}: {e}"
            log.warning("opencode.events.dropped", run_id=self.control.run_id, error=error)
            self.inbox.put_nowait(_Dropped(error))
            await asyncio.sleep(delays[min(attempt, len(delays) - 1)])
            attempt += 1

    async def _abort(self) -> None:
        self.abort_sent = True
        assert self.session_id is not None
        try:
            await self.client.abort(self.dir, self.session_id)
            log.info("opencode.run.aborted", run_id=self.control.run_id, reason=self.control.reason)
        except (OpenCodeHTTPError, OpenCodeUnavailable) as e:
            log.warning("opencode.run.abort_failed", run_id=self.control.run_id, error=str(e))

    async def _reconcile(self, state: RunState) -> list[AgentEvent]:
        assert self.session_id is not None
        try:
            messages = await self.client.messages(self.dir, self.session_id)
            statuses = await self.client.status(self.dir)
        except (OpenCodeHTTPError, OpenCodeUnavailable) as e:
            log.warning("opencode.run.reconcile_failed", run_id=self.control.run_id, error=str(e))
            return []
        out = state.apply_messages(messages)
        state.apply_status(statuses)
        return out

    def _settled(self, state: RunState, checks: int) -> bool:
        """After a re-read with the session idle but no final message: is there nothing more to wait for?"""
        if not state.idle:
            return False
        if self.server_epoch() != self.epoch and state.open_messages and not self.abort_sent:
            self.failure = "the OpenCode server died during the run (it was restarted); the run is lost"
            return True
        if state.failed or state.aborted or self.abort_sent:
            return not state.open_messages or checks >= 3
        if state.prompt_seen:
            return (not state.open_messages and checks >= 2) or checks >= 5
        return checks >= 20  # the prompt never showed up

    async def _pump(self, state: RunState) -> AsyncIterator[AgentEvent]:
        """The run's events until it is finished, settled, stopped or lost."""
        t = _Timers(self.started + self.request.timeout_s, time.monotonic(), state.relevant)
        if self.control.forced is not None:
            await self._abort()
            t.stop_by = time.monotonic() + self.options.stop_grace_s
        while not state.finished:
            now = time.monotonic()
            await self._enforce_limits(t, now)
            due = await self._due(state, t, now)
            if due is not None:
                events, over = due
                for ev in events:
                    yield ev
                if over:
                    return
                continue
            try:
                item = await asyncio.wait_for(self.inbox.get(), self._wait_s(t, now))
            except TimeoutError:
                continue
            async for ev in self._take(state, t, item):
                yield ev
        if state.open_parts:  # final text snapshots may still be missing: the stored list has them
            for ev in await self._reconcile(state):
                yield ev

    async def _enforce_limits(self, t: _Timers, now: float) -> None:
        """The run's timeout and the inactivity watchdog stop the run; a stopped run is aborted once."""
        opts, control = self.options, self.control
        if control.forced is None and now >= t.deadline:
            control.stop("timed_out", f"timed out after {self.request.timeout_s:g} s")
        elif control.forced is None and now >= t.last_activity + opts.idle_timeout_s:
            idle = opts.idle_timeout_s
            control.stop("timed_out", f"no activity from OpenCode for {idle:g} s (inactivity watchdog)")
        if control.forced is not None and not self.abort_sent:
            await self._abort()
            t.stop_by = time.monotonic() + opts.stop_grace_s
            t.check_at = min(t.check_at or now + opts.finish_grace_s, now + opts.finish_grace_s)

    async def _due(self, state: RunState, t: _Timers, now: float) -> tuple[list[AgentEvent], bool] | None:
        """The timer that has come, if any: its events, and whether the run is over."""
        if t.stop_by is not None and now >= t.stop_by:  # the grace after an abort is over
            return await self._reconcile(state), True
        if t.check_at is not None and now >= t.check_at:
            return await self._check(state, t)
        if self._offline_too_long(t, now):
            return [], True
        return None

    async def _check(self, state: RunState, t: _Timers) -> tuple[list[AgentEvent], bool]:
        """Re-read the messages: their events, and whether the run is over."""
        t.checks += 1
        t.check_at = None
        out = await self._reconcile(state)
        if state.finished or self._settled(state, t.checks):
            return out, True
        if state.idle or state.failed:
            t.check_at = time.monotonic() + self.options.finish_grace_s
        return out, False

    def _offline_too_long(self, t: _Timers, now: float) -> bool:
        limit = self.options.reconnect_limit_s
        if t.offline_since is not None and now - t.offline_since > limit:
            self.failure = f"lost the OpenCode event stream for more than {limit:g} s"
            return True
        return False

    def _wait_s(self, t: _Timers, now: float) -> float:
        """How long to wait for the inbox: until the next timer (each second once the run is stopped)."""
        opts = self.options
        wake = (
            [t.deadline, t.last_activity + opts.idle_timeout_s]
            if self.control.forced is None
            else [now + 1.0]
        )
        wake += [x for x in (t.check_at, t.stop_by) if x is not None]
        return max(0.01, min(wake) - now)

    async def _take(self, state: RunState, t: _Timers, item: object) -> AsyncIterator[AgentEvent]:
        """One inbox item: a server event (and the questions it asks, answered), or a marker."""
        if not isinstance(item, dict):
            for ev in await self._on_marker(state, t, item):
                yield ev
            return
        for ev in self._handle(state, t, item):
            yield ev
        while state.requests:
            for ev in await self._answer(state.requests.pop(0)):
                yield ev
        self._check_when_idle(state, t)

    def _handle(self, state: RunState, t: _Timers, item: dict[str, Any]) -> list[AgentEvent]:
        """One server event; any news about the session counts as activity for the watchdog."""
        out = state.handle(item, now_ms=int(time.time() * 1000))
        if state.relevant != t.seen:
            t.seen, t.last_activity = state.relevant, time.monotonic()
        return out

    def _check_when_idle(self, state: RunState, t: _Timers) -> None:
        """Idle or failed without the final message: re-read the messages soon (at once when nothing came)."""
        if not state.finished and t.check_at is None and (state.idle or state.failed):
            quick = state.idle and not state.text.messages and state.failed
            t.check_at = time.monotonic() + (0.0 if quick else self.options.finish_grace_s)

    async def _on_marker(self, state: RunState, t: _Timers, item: object) -> list[AgentEvent]:
        """A marker from the event reader (or a stop request, which the next turn of the pump acts on)."""
        if isinstance(item, _Dropped):
            state.stream_reset()
            t.offline_since = t.offline_since or time.monotonic()
        elif isinstance(item, _Connected):  # (re)connected: what happened meanwhile is in the stored list
            t.offline_since = None
            out = await self._reconcile(state)
            if not state.finished and state.idle:
                t.check_at = t.check_at or time.monotonic() + self.options.finish_grace_s
            return out
        return []

    async def _answer(self, req: dict[str, Any]) -> list[AgentEvent]:
        """Permission and question requests would block the run: agentd runs unattended."""
        rid = str(req["id"])
        what = str(req.get("permission") or "question")
        detail = ", ".join(str(p) for p in req.get("patterns") or []) or what
        try:
            if req["kind"] == "permission":
                reply = self.options.permission_reply
                await self.client.reply_permission(
                    self.dir, rid, reply, "agentd runs unattended; this permission was not granted"
                )
                if reply != "reject":
                    return [StatusEvent(status="permission_granted", detail=f"{what}: {detail} ({reply})")]
                msg = f"{what}: {detail} (rejected: agentd runs unattended)"
                return [ErrorEvent(code="permission_denied", message=msg)]
            await self.client.reject_question(self.dir, rid)
            msg = "the agent asked a question; agentd runs unattended and rejected it"
            return [ErrorEvent(code="question_rejected", message=msg)]
        except (OpenCodeHTTPError, OpenCodeUnavailable) as e:
            log.warning("opencode.run.answer_failed", run_id=self.control.run_id, error=str(e))
            return []
