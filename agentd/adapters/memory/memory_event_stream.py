"""In-memory event streams: one shared append-only log per stream, read by any number of subscribers.

Subscribers keep only a position in the shared log, so publishing never waits for anybody and memory does
not grow per subscriber. A subscriber that lags more than `buffer` events behind the head while following
live gets SubscriberTooSlow and can resume with `after=<last seq>`.

For tests and benchmarks only (a restart loses everything; `agentd serve` keeps its log in SQLite). Memory is
bounded: past `max_events` kept events in all, the oldest closed streams are forgotten before their
retention ends (open streams are never dropped).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from agentd.domain.errors import RunSuperseded, StreamNotFound, SubscriberTooSlow
from agentd.domain.models import AgentEvent, StoredEvent
from agentd.ports.event_stream import EventStream


@dataclass
class _Log:
    events: list[StoredEvent] = field(default_factory=list)
    closed_at: float | None = None
    run: int = 0  # the newest run that wrote (fencing)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        # Wake everyone waiting now; later waiters get a fresh Event.
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryEventStream(EventStream):
    def __init__(self, *, retention_s: float = 3600.0, buffer: int = 1000, max_events: int = 200_000) -> None:
        self._logs: dict[str, _Log] = {}
        self._retention_s = retention_s
        self._buffer = buffer
        self._max_events = max_events
        self._kept = 0

    def _log(self, stream_id: str) -> _Log:
        log = self._logs.get(stream_id)
        if log is None:
            raise StreamNotFound(f"no event stream {stream_id!r} (unknown, or its retention period is over)")
        return log

    async def create(self, stream_id: str, first: Sequence[AgentEvent] = ()) -> None:
        if stream_id not in self._logs:
            self._logs[stream_id] = _Log()
            if first:
                await self.publish(stream_id, first)

    async def publish(self, stream_id: str, events: Sequence[AgentEvent], *, run: int = 0) -> list[int]:
        log = self._log(stream_id)
        if log.closed_at is not None:
            raise StreamNotFound(f"event stream {stream_id!r} is closed")
        if run and run < log.run:
            raise RunSuperseded(f"run {run} of stream {stream_id!r} was superseded by run {log.run}")
        log.run = max(log.run, run)
        return self._append(log, events)

    async def supersede(self, stream_id: str, run: int, events: Sequence[AgentEvent]) -> bool:
        log = self._log(stream_id)
        if log.closed_at is not None or log.run >= run:
            return False
        log.run = run
        self._append(log, events)
        return True

    def _append(self, log: _Log, events: Sequence[AgentEvent]) -> list[int]:
        seqs = []
        for ev in events:
            stored = StoredEvent(seq=len(log.events) + 1, event=ev)
            log.events.append(stored)
            seqs.append(stored.seq)
        if seqs:
            log.notify()
            self._kept += len(seqs)
            if self._kept > self._max_events:
                self._forget_oldest_closed()
        return seqs

    def _forget_oldest_closed(self) -> None:
        closed = sorted((log.closed_at, sid) for sid, log in self._logs.items() if log.closed_at is not None)
        for _, sid in closed:
            if self._kept <= self._max_events:
                return
            self._kept -= len(self._logs.pop(sid).events)

    async def close_stream(self, stream_id: str) -> None:
        log = self._log(stream_id)
        if log.closed_at is None:
            log.closed_at = time.monotonic()
            log.notify()

    async def subscribe(self, stream_id: str, *, after: int = 0) -> AsyncIterator[StoredEvent]:
        log = self._log(stream_id)
        pos = max(0, after)
        replay_until = len(log.events)  # past this point the subscriber follows live events
        while True:
            head = len(log.events)
            if pos >= replay_until and head - pos > self._buffer:
                raise SubscriberTooSlow(
                    f"subscriber fell {head - pos} events behind on {stream_id!r}; "
                    f"reconnect with Last-Event-ID: {pos}"
                )
            if pos < head:
                # Copy the slice: the consumer may await between items while the log grows.
                for stored in log.events[pos:head]:
                    yield stored
                    pos = stored.seq
                continue
            if log.closed_at is not None:
                return
            waiter = log.changed
            await waiter.wait()

    async def last_seq(self, stream_id: str) -> int:
        return len(self._log(stream_id).events)

    async def prune(self) -> int:
        now = time.monotonic()
        dead = [
            sid
            for sid, log in self._logs.items()
            if log.closed_at is not None and now - log.closed_at >= self._retention_s
        ]
        for sid in dead:
            self._kept -= len(self._logs.pop(sid).events)
        return len(dead)

    async def close(self) -> None:
        for log in self._logs.values():
            log.notify()
