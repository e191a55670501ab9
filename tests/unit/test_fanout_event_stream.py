"""The live fan-out decorator: one read of the log per stream per process, the same event objects for all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from agentd.adapters.fanout_event_stream import FanoutEventStream
from agentd.adapters.memory.memory_event_stream import MemoryEventStream
from agentd.domain.models import StoredEvent, TextEvent


class CountingLog(MemoryEventStream):
    def __init__(self) -> None:
        super().__init__(buffer=1_000_000)
        self.subscriptions = 0

    async def subscribe(self, stream_id: str, *, after: int = 0) -> AsyncIterator[StoredEvent]:
        self.subscriptions += 1
        async for stored in super().subscribe(stream_id, after=after):
            yield stored


def text(i: int) -> TextEvent:
    return TextEvent(message_id="m", chunk=f"c{i}")


async def test_many_subscribers_one_reader_the_same_objects() -> None:
    log = CountingLog()
    streams = FanoutEventStream(log, buffer=1000)
    await streams.create("s")

    async def follow() -> list[StoredEvent]:
        return [e async for e in streams.subscribe("s")]

    tasks = [asyncio.create_task(follow()) for _ in range(200)]
    await asyncio.sleep(0.01)
    for i in range(30):
        await streams.publish("s", [text(i)])
        await asyncio.sleep(0)
    await streams.close_stream("s")
    results = await asyncio.gather(*tasks)
    assert all([e.seq for e in r] == list(range(1, 31)) for r in results)
    assert log.subscriptions == 1  # the pump: one reader for 200 subscribers
    assert all(r[i] is results[0][i] for r in results for i in range(30))
    await streams.close()


async def test_a_subscriber_behind_the_window_reads_the_log_then_joins() -> None:
    log = CountingLog()
    streams = FanoutEventStream(log, buffer=10_000, window=16)
    await streams.create("s")
    live = streams.subscribe("s").__aiter__()
    await streams.publish("s", [text(0)])
    assert (await live.__anext__()).seq == 1
    for i in range(1, 100):
        await streams.publish("s", [text(i)])
        await asyncio.sleep(0)
    # A late subscriber from the start: 1..100, the old part from the log, the rest from the window.
    late = streams.subscribe("s", after=0).__aiter__()
    got = [(await late.__anext__()).seq for _ in range(100)]
    assert got == list(range(1, 101))
    assert log.subscriptions == 2
    await live.aclose()
    await late.aclose()
    await streams.close()
