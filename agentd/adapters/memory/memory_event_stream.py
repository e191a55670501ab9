"""In-memory event streams: one shared append-only log per stream, read by any number of subscribers.

Subscribers keep only a position in the shared log, so publishing never waits for anybody and memory does
not grow per subscriber. A subscriber that lags more than `buffer` events behind the head while following
live gets SubscriberTooSlow and can resume with `after=<last seq>`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from agentd.domain.errors import StreamNotFound, SubscriberTooSlow
from agentd.domain.models import AgentEvent, StoredEvent
from agentd.ports.event_stream import EventStream


@dataclass
class _Log:
    events: list[StoredEvent] = field(default_factory=list)
    closed_at: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def notify(self) -> None:
        # Wake everyone waiting now; later waiters get a fresh Event.
        self.changed.set()
        self.changed = asyncio.Event()


class MemoryEventStream(EventStream):
    def __init__(self, *, retention_s: float = 3600.0, buffer: int = 1000) -> None:
        self._logs: dict[str, _Log] = {}
        self._retention_s = retention_s
        self._buffer = buffer

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

    async def publish(self, stream_id: str, events: Sequence[AgentEvent]) -> list[int]:
        log = self._log(stream_id)
        if log.closed_at is not None:
            raise StreamNotFound(f"event stream {stream_id!r} is closed")
        seqs = []
        for ev in events:
            stored = StoredEvent(seq=len(log.events) + 1, event=ev)
            log.events.append(stored)
            seqs.append(stored.seq)
        if seqs:
            log.notify()
        return seqs

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
            del self._logs[sid]
        return len(dead)

    async def close(self) -> None:
        for log in self._logs.values():
            log.notify()
