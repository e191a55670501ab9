"""Live fan-out in front of any event log: one reader per stream per process, however many subscribers.

The durable logs (SQLite, PostgreSQL) serve each subscriber by reading the log: 1,000 clients on one job
would mean 1,000 reads, 1,000 JSON parses and 1,000 event objects for every event. This decorator keeps, per
stream followed in this process, one shared tail: ONE subscription to the log (the pump) appends each event
once, and every local subscriber walks the same list of `StoredEvent` objects, keeping only its position
(and the HTTP layer then encodes each event once: agentd.adapters.sse_frames). Events still reach a
subscriber only after the log has them: the pump reads them from the log.

A subscriber that asks for events older than the shared window (a reconnect far behind, a slow reader the
window moved past while it was replaying) reads them from the log directly, then joins the window. The
port's rules hold unchanged (tests/contract/test_event_stream.py runs this adapter too): gap-free order,
replay then live, the end after close, StreamNotFound, and SubscriberTooSlow for a live subscriber more than
`buffer` events behind. Writes go straight to the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agentd.domain.errors import SubscriberTooSlow
from agentd.domain.models import AgentEvent, StoredEvent
from agentd.ports.event_stream import EventStream

HEAD_FRESH_S = 1.0  # how long a last_seq answer stands in for the head at subscribe time


class _Tail:
    """The live end of one stream in this process: events base+1 … base+len(events)."""

    __slots__ = ("base", "changed", "done", "error", "events", "pump", "subscribers")

    def __init__(self, base: int) -> None:
        self.base = base
        self.events: list[StoredEvent] = []
        self.changed = asyncio.Event()
        self.done = False  # the log's subscription ended: the stream is closed and drained (or pruned)
        self.error: Exception | None = None
        self.subscribers = 0
        self.pump: asyncio.Task[None] | None = None

    @property
    def head(self) -> int:
        return self.base + len(self.events)

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class FanoutEventStream(EventStream):
    def __init__(self, inner: EventStream, *, buffer: int = 1000, window: int = 2000) -> None:
        self.inner = inner
        self.buffer = buffer
        self.window = max(window, 16)  # events kept per followed stream (up to twice that, briefly)
        self._tails: dict[str, _Tail] = {}
        self._heads: dict[str, tuple[int, float]] = {}  # stream → (head, when): last_seq answers

    # --- writes and queries: the log's own ---------------------------------------------------------------

    async def create(self, stream_id: str, first: Sequence[AgentEvent] = ()) -> None:
        await self.inner.create(stream_id, first)

    @property
    def writes_in_order(self) -> bool:
        """The log's promise (see agentd.adapters.postgres.postgres_event_stream), passed on."""
        return bool(getattr(self.inner, "writes_in_order", False))

    # `run` (fencing) and `supersede` are passed through as the log has them.
    async def publish(self, stream_id: str, events: Sequence[AgentEvent], **run: Any) -> list[int]:
        return await self.inner.publish(stream_id, events, **run)

    async def supersede(self, stream_id: str, run: int, events: Sequence[AgentEvent]) -> bool:
        return bool(await self.inner.supersede(stream_id, run, events))  # type: ignore[attr-defined,unused-ignore]

    async def close_stream(self, stream_id: str) -> None:
        await self.inner.close_stream(stream_id)

    async def last_seq(self, stream_id: str) -> int:
        head = await self.inner.last_seq(stream_id)
        # Remembered briefly: a subscribe right after (the API checks the stream, then follows it) starts
        # from this head instead of asking the log again.
        self._heads[stream_id] = (head, time.monotonic())
        if len(self._heads) > 1000:
            self._heads.clear()
        return head

    async def prune(self) -> int:
        return await self.inner.prune()

    async def close(self) -> None:
        pumps = [t.pump for t in self._tails.values() if t.pump is not None]
        for p in pumps:
            p.cancel()
        if pumps:
            await asyncio.wait(pumps, timeout=5)
        for tail in self._tails.values():
            tail.done = True
            tail.notify()
        await self.inner.close()

    # --- subscribing ----------------------------------------------------------------------------------------

    async def _pump(self, stream_id: str, tail: _Tail) -> None:
        """The one reader of this stream's log in this process. Should the log ever find it too slow (a
        publisher that never yields), it picks up again right after the last event it has."""
        try:
            while True:
                try:
                    await self._read(stream_id, tail)
                except SubscriberTooSlow:
                    continue
                tail.done = True
                return
        except Exception as e:  # unknown stream, storage trouble: every subscriber hears it
            tail.error = e
        finally:
            tail.notify()

    async def _read(self, stream_id: str, tail: _Tail) -> None:
        events = self.inner.subscribe(stream_id, after=tail.head)
        async with contextlib.aclosing(events):  # type: ignore[type-var]
            async for stored in events:
                tail.events.append(stored)
                if len(tail.events) >= 2 * self.window:  # keep the newest `window` (amortised)
                    drop = len(tail.events) - self.window
                    del tail.events[:drop]
                    tail.base += drop
                tail.notify()

    def _join(self, stream_id: str, after: int) -> _Tail:
        tail = self._tails.get(stream_id)
        if tail is None or tail.error is not None:
            tail = self._tails[stream_id] = _Tail(after)
            tail.pump = asyncio.create_task(self._pump(stream_id, tail), name=f"agentd-fanout-{stream_id}")
        tail.subscribers += 1
        return tail

    def _leave(self, stream_id: str, tail: _Tail) -> None:
        tail.subscribers -= 1
        if tail.subscribers <= 0:
            if self._tails.get(stream_id) is tail:
                del self._tails[stream_id]
            if tail.pump is not None:
                tail.pump.cancel()

    async def subscribe(self, stream_id: str, *, after: int = 0) -> AsyncIterator[StoredEvent]:
        pos = max(0, after)
        # Past the log's head now, the subscriber follows live events (and may be found too slow). Also
        # where an unknown stream raises StreamNotFound.
        known = self._heads.pop(stream_id, None)
        if known is not None and time.monotonic() - known[1] < HEAD_FRESH_S:
            replay_until = known[0]
        else:
            replay_until = await self.inner.last_seq(stream_id)
        tail = self._join(stream_id, pos)
        try:
            while True:
                if pos < tail.base:
                    # Older than the shared window: from the log itself, until the window is reached.
                    reached = False
                    async with contextlib.aclosing(self.inner.subscribe(stream_id, after=pos)) as old:  # type: ignore[type-var]
                        async for stored in old:
                            yield stored
                            pos = stored.seq
                            if pos >= tail.base:
                                reached = True
                                break
                    if not reached:
                        return  # the stream ended (closed and drained) before the window
                    continue
                head = tail.head
                if pos < head:
                    if pos >= replay_until and head - pos > self.buffer:
                        raise SubscriberTooSlow(
                            f"subscriber fell {head - pos} events behind on {stream_id!r}; "
                            f"reconnect with Last-Event-ID: {pos}"
                        )
                    # A copy of the slice: the consumer may await between items while the tail moves.
                    for stored in tail.events[pos - tail.base :]:
                        yield stored
                        pos = stored.seq
                    continue
                if tail.error is not None:
                    raise tail.error
                if tail.done:
                    return
                await tail.changed.wait()
        finally:
            self._leave(stream_id, tail)
