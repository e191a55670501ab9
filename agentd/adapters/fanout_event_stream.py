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
from collections.abc import AsyncIterator, Awaitable, Sequence
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

    def subscribe(self, stream_id: str, *, after: int = 0) -> FanoutSubscription:
        """A subscription: an async iterator of the events (the port's contract), and also `take()` /
        `wait()`, which hand out whatever is ready in one batch and wait with no frame of their own."""
        return FanoutSubscription(self, stream_id, max(0, after))


_REPLAY_BATCH = 256  # events read from the log per step of a replay older than the shared window
_ENDED = -1  # a subscription's `_replay_until` once it has ended (or was closed)


class FanoutSubscription:
    """One subscriber: a position in its stream's shared tail and nothing running of its own.

    `take()` (sync) returns the events ready now and moves past them: a non-empty list, `()` when none is
    ready (then `await wait()`), or None once the stream has ended; it raises the stream's error, or
    SubscriberTooSlow. `wait()` returns the tail's own `Event.wait()` while the subscriber follows live, so a
    quiet subscriber costs a position and one waiter; before its first event (the log's head, joining the
    tail) and while replaying events older than the window from the log it does that work instead. The
    async iterator interface is built on the two. `aclose()` leaves the tail (the last one out stops the
    pump); a subscription dropped unclosed leaves when collected.
    """

    __slots__ = ("_batch", "_fan", "_i", "_old", "_pending", "_pos", "_replay_until", "_stream_id", "_tail")

    def __init__(self, fan: FanoutEventStream, stream_id: str, after: int) -> None:
        self._fan = fan
        self._stream_id = stream_id
        self._pos = after
        self._tail: _Tail | None = None  # joined at the first wait()
        self._replay_until = 0  # the log's head at subscribe time: past it the subscriber follows live
        self._old: AsyncIterator[StoredEvent] | None = None  # the log itself, for events before the window
        self._pending: list[StoredEvent] | None = None  # events read from the log, for the next take()
        self._batch: Sequence[StoredEvent] = ()  # the async iterator's current batch ...
        self._i = 0  # ... and its position in it

    # --- the batch interface ----------------------------------------------------------------------------

    def take(self) -> Sequence[StoredEvent] | None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._pos = pending[-1].seq
            return pending
        if self._replay_until == _ENDED:
            return None
        tail = self._tail
        if tail is None:
            return ()  # not joined yet: wait() does
        pos = self._pos
        if pos < tail.base:
            return ()  # older than the window: wait() reads the log
        head = tail.base + len(tail.events)
        if pos < head:
            if pos >= self._replay_until and head - pos > self._fan.buffer:
                raise SubscriberTooSlow(
                    f"subscriber fell {head - pos} events behind on {self._stream_id!r}; "
                    f"reconnect with Last-Event-ID: {pos}"
                )
            self._pos = head
            return tail.events[pos - tail.base :]  # a copy: the tail moves while the consumer writes
        if tail.error is not None:
            raise tail.error
        return None if tail.done else ()

    def wait(self) -> Awaitable[Any]:
        tail = self._tail
        if tail is None or self._pos < tail.base:
            return self._prepare()
        return tail.changed.wait()

    async def _prepare(self) -> None:
        if self._tail is None:
            await self._join()
        if self._tail is not None and self._pos < self._tail.base:
            await self._replay(self._tail)

    async def start(self) -> None:
        """Join the stream now rather than at the first wait(): StreamNotFound for an unknown stream."""
        if self._tail is None and self._replay_until != _ENDED:
            await self._join()

    async def _join(self) -> None:
        fan, stream_id = self._fan, self._stream_id
        # Past the log's head now, the subscriber follows live events (and may be found too slow). Also
        # where an unknown stream raises StreamNotFound. A stream this process follows live exists: its
        # tail's head (the log's, or a moment behind it) stands in without asking the log.
        tail = fan._tails.get(stream_id)
        known = fan._heads.pop(stream_id, None)
        if tail is not None and tail.error is None and not tail.done:
            self._replay_until = tail.head
        elif known is not None and time.monotonic() - known[1] < HEAD_FRESH_S:
            self._replay_until = known[0]
        else:
            self._replay_until = await fan.inner.last_seq(stream_id)
        self._tail = fan._join(stream_id, self._pos)

    async def _replay(self, tail: _Tail) -> None:
        """Older than the shared window: a batch from the log itself, until the window is reached."""
        old = self._old
        if old is None:
            old = self._old = self._fan.inner.subscribe(self._stream_id, after=self._pos).__aiter__()
        got: list[StoredEvent] = []
        try:
            while len(got) < _REPLAY_BATCH:
                try:
                    stored = await old.__anext__()
                except StopAsyncIteration:
                    # The stream ended (closed and drained) before the window: the end, once `got` is out.
                    self._old = None
                    self._replay_until = _ENDED
                    break
                got.append(stored)
                if stored.seq >= tail.base:
                    break
        except BaseException:
            await self._close_old()
            raise
        if got:
            self._pending = got
            if got[-1].seq >= tail.base:
                await self._close_old()

    async def _close_old(self) -> None:
        old, self._old = self._old, None
        aclose = getattr(old, "aclose", None)
        if aclose is not None:
            await aclose()

    # --- the async iterator interface (the port's contract) -------------------------------------------------

    def __aiter__(self) -> FanoutSubscription:
        return self

    async def __anext__(self) -> StoredEvent:
        while True:
            if self._i < len(self._batch):
                stored = self._batch[self._i]
                self._i += 1
                return stored
            try:
                batch = self.take()
                if batch is None:
                    raise StopAsyncIteration
                if batch:
                    self._batch, self._i = batch, 0
                else:
                    await self.wait()
            except BaseException:
                await self.aclose()
                raise

    async def aclose(self) -> None:
        self._batch = ()
        self._pending = None
        self._replay_until = _ENDED
        self._leave()
        await self._close_old()

    def _leave(self) -> None:
        tail, self._tail = self._tail, None
        if tail is not None:
            self._fan._leave(self._stream_id, tail)

    def __del__(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self._leave()
