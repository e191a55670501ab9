"""The EventStream contract (ports/event_stream.py), run against every adapter."""

from __future__ import annotations

import asyncio

import pytest

from agentd.domain.errors import StreamNotFound, SubscriberTooSlow
from agentd.domain.models import DoneEvent, StatusEvent, StoredEvent, TextEvent
from agentd.ports.event_stream import EventStream


def text(i: int) -> TextEvent:
    return TextEvent(message_id="m", chunk=f"c{i}")


async def drain(streams: EventStream, sid: str, after: int = 0) -> list[StoredEvent]:
    return [e async for e in streams.subscribe(sid, after=after)]


async def test_sequence_numbers_have_no_gaps(streams: EventStream) -> None:
    await streams.create("s")
    assert await streams.publish("s", [text(1), text(2)]) == [1, 2]
    assert await streams.publish("s", [text(3)]) == [3]
    assert await streams.last_seq("s") == 3


async def test_create_is_idempotent(streams: EventStream) -> None:
    await streams.create("s")
    await streams.publish("s", [text(1)])
    await streams.create("s")
    assert await streams.last_seq("s") == 1


async def test_unknown_stream(streams: EventStream) -> None:
    with pytest.raises(StreamNotFound):
        await streams.last_seq("nope")
    with pytest.raises(StreamNotFound):
        await drain(streams, "nope")


async def test_replay_then_live_then_end(streams: EventStream) -> None:
    await streams.create("s")
    await streams.publish("s", [text(1), text(2)])
    got: list[StoredEvent] = []

    async def sub() -> None:
        async for e in streams.subscribe("s"):
            got.append(e)

    task = asyncio.create_task(sub())
    await asyncio.sleep(0.05)
    assert [e.seq for e in got] == [1, 2]
    await streams.publish("s", [text(3)])
    await asyncio.sleep(0.05)
    assert [e.seq for e in got] == [1, 2, 3]
    await streams.publish("s", [DoneEvent(status="succeeded")])
    await streams.close_stream("s")
    await asyncio.wait_for(task, 2)
    assert [e.seq for e in got] == [1, 2, 3, 4] and got[-1].event.event == "done"
    assert got[0].event == text(1)


async def test_after_gives_exactly_the_missed_events(streams: EventStream) -> None:
    await streams.create("s")
    await streams.publish("s", [text(i) for i in range(1, 11)])
    await streams.close_stream("s")
    assert [e.seq for e in await drain(streams, "s", after=7)] == [8, 9, 10]
    assert await drain(streams, "s", after=10) == []
    assert [e.seq for e in await drain(streams, "s", after=0)] == list(range(1, 11))


async def test_many_subscribers_see_the_same_order(streams: EventStream) -> None:
    await streams.create("s")
    tasks = [asyncio.create_task(drain(streams, "s")) for _ in range(5)]
    for i in range(20):
        await streams.publish("s", [text(i)])
        if i % 5 == 0:
            await asyncio.sleep(0)
    await streams.close_stream("s")
    results = await asyncio.gather(*tasks)
    assert all([e.seq for e in r] == list(range(1, 21)) for r in results)


async def test_slow_subscriber_is_cut_off_without_blocking_the_publisher(streams: EventStream) -> None:
    await streams.create("s")
    it = streams.subscribe("s").__aiter__()
    await streams.publish("s", [text(0)])
    assert (await it.__anext__()).seq == 1
    # The publisher never waits for this subscriber: far more events than its buffer (50) go through.
    for i in range(200):
        await streams.publish("s", [text(i)])
    with pytest.raises(SubscriberTooSlow):
        while True:
            await it.__anext__()
    # It can resume from where it was.
    await streams.close_stream("s")
    assert len(await drain(streams, "s", after=1)) == 200


async def test_publish_after_close_fails(streams: EventStream) -> None:
    await streams.create("s")
    await streams.close_stream("s")
    with pytest.raises(StreamNotFound):
        await streams.publish("s", [StatusEvent(status="late")])


async def test_prune_forgets_closed_streams_after_retention(streams: EventStream) -> None:
    await streams.create("old")
    await streams.create("open")
    await streams.publish("old", [text(1)])
    await streams.close_stream("old")
    assert await streams.prune() == 0  # retention (0.2 s in these tests) not over yet
    await asyncio.sleep(0.3)
    assert await streams.prune() == 1
    with pytest.raises(StreamNotFound):
        await streams.last_seq("old")
    assert await streams.last_seq("open") == 0
