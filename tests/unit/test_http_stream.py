"""The SSE handler's one wait: the next event, a heartbeat after each quiet interval, or shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from agentd.adapters.http.app import ServerShuttingDown, _with_heartbeats
from agentd.domain.models import StatusEvent, StoredEvent


class Source:
    """An event source that yields one event when told to, and records that it was closed."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.closed = False

    async def events(self) -> AsyncIterator[StoredEvent]:
        try:
            await self.release.wait()
            yield StoredEvent(seq=1, event=StatusEvent(status="running"))
        finally:
            self.closed = True


async def test_heartbeats_while_quiet_then_the_event_then_the_end() -> None:
    src = Source()
    items = _with_heartbeats(src.events(), 0.01, asyncio.Event())
    assert await anext(items) is None  # nothing yet: a heartbeat, the pending read goes on
    assert await anext(items) is None
    src.release.set()
    got = await anext(items)
    assert got is not None and got.seq == 1
    with pytest.raises(StopAsyncIteration):
        await anext(items)
    assert src.closed


async def test_shutdown_ends_a_waiting_stream_and_closes_its_source() -> None:
    src = Source()
    closing = asyncio.Event()
    items = _with_heartbeats(src.events(), 60, closing)
    waiting = asyncio.ensure_future(anext(items))
    await asyncio.sleep(0)
    assert not waiting.done()
    closing.set()
    with pytest.raises(ServerShuttingDown, match="reconnect with Last-Event-ID"):
        await asyncio.wait_for(waiting, 5)
    assert src.closed
