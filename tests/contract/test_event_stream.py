"""The EventStream contract (ports/event_stream.py), run against every adapter.

`make_streams()` gives another instance on the same storage: for PostgreSQL another process (its own pool
and listener), so "publish here, serve there" is tested the way API replicas and workers use it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from agentd.domain.errors import RunSuperseded, StreamNotFound, SubscriberTooSlow
from agentd.domain.models import DoneEvent, StatusEvent, StoredEvent, TextEvent
from agentd.ports.event_stream import EventStream
from tests.contract.conftest import StreamsFactory


def text(i: int) -> TextEvent:
    return TextEvent(message_id="m", chunk=f"c{i}")


async def drain(streams: EventStream, sid: str, after: int = 0) -> list[StoredEvent]:
    return [e async for e in streams.subscribe(sid, after=after)]


async def eventually(check: Callable[[], bool], within_s: float = 2.0) -> None:
    """Wait until `check()` holds: live delivery may cross processes (NOTIFY), so it is not instant."""
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_sequence_numbers_have_no_gaps(streams: EventStream) -> None:
    await streams.create("s")
    assert await streams.publish("s", [text(1), text(2)]) == [1, 2]
    assert await streams.publish("s", [text(3)]) == [3]
    assert await streams.last_seq("s") == 3


async def test_concurrent_publishers_get_distinct_gap_free_numbers(streams: EventStream) -> None:
    for sid in ("a", "b"):
        await streams.create(sid)
    results = await asyncio.gather(
        *(streams.publish(sid, [text(i), text(i)]) for i in range(20) for sid in ("a", "b"))
    )
    for sid in ("a", "b"):
        assert await streams.last_seq(sid) == 40
    numbers = sorted(n for r in results for n in r)
    assert numbers == sorted(list(range(1, 41)) * 2)
    await streams.close_stream("a")
    assert [e.seq for e in await drain(streams, "a")] == list(range(1, 41))


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
    with pytest.raises(StreamNotFound):
        await streams.publish("nope", [text(1)])
    with pytest.raises(StreamNotFound):
        await streams.close_stream("nope")


async def test_replay_then_live_then_end(streams: EventStream) -> None:
    await streams.create("s")
    await streams.publish("s", [text(1), text(2)])
    got: list[StoredEvent] = []

    async def sub() -> None:
        async for e in streams.subscribe("s"):
            got.append(e)

    task = asyncio.create_task(sub())
    await eventually(lambda: [e.seq for e in got] == [1, 2])
    await streams.publish("s", [text(3)])
    await eventually(lambda: [e.seq for e in got] == [1, 2, 3])
    await streams.publish("s", [DoneEvent(status="succeeded")])
    await streams.close_stream("s")
    await asyncio.wait_for(task, 2)
    assert [e.seq for e in got] == [1, 2, 3, 4] and got[-1].event.event == "done"
    assert got[0].event == text(1)


async def test_another_instance_serves_the_stream(make_streams: StreamsFactory) -> None:
    """What API replicas rely on: a worker publishes through one instance, a replica serves another."""
    worker, replica = await make_streams(), await make_streams()
    await replica.create("s")
    assert await replica.publish("s", [StatusEvent(status="queued")]) == [1]  # the API at submit
    assert await worker.publish("s", [text(1)]) == [2]  # the worker continues the numbering
    got: list[StoredEvent] = []

    async def sub() -> None:
        async for e in replica.subscribe("s", after=1):
            got.append(e)

    task = asyncio.create_task(sub())
    await eventually(lambda: [e.seq for e in got] == [2])  # replay
    await worker.publish("s", [text(2), text(3)])
    await eventually(lambda: [e.seq for e in got] == [2, 3, 4])  # live
    await worker.publish("s", [DoneEvent(status="succeeded")])
    await worker.close_stream("s")
    await asyncio.wait_for(task, 3)  # the end
    assert [e.seq for e in got] == [2, 3, 4, 5] and got[1].event == text(2)
    assert await replica.last_seq("s") == 5


async def test_numbering_survives_writers_taking_turns(make_streams: StreamsFactory) -> None:
    """A job retried on another worker and then back on the first: numbers continue, never repeat."""
    first, second = await make_streams(), await make_streams()
    await first.create("s")
    assert await first.publish("s", [text(1), text(2)]) == [1, 2]
    assert await second.publish("s", [text(3)]) == [3]
    assert await first.publish("s", [text(4)]) == [4]
    assert await second.publish("s", [text(5)]) == [5]
    await first.close_stream("s")
    assert [e.event for e in await drain(second, "s")] == [text(i) for i in range(1, 6)]


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


async def test_long_replay_is_complete(streams: EventStream) -> None:
    await streams.create("s")
    for start in range(0, 1200, 300):
        await streams.publish("s", [text(i) for i in range(start, start + 300)])
    await streams.close_stream("s")
    assert [e.seq for e in await drain(streams, "s", after=5)] == list(range(6, 1201))


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
    await streams.close_stream("s")  # closing twice is harmless
    with pytest.raises(StreamNotFound):
        await streams.publish("s", [StatusEvent(status="late")])
    with pytest.raises(StreamNotFound):
        await streams.publish("s", [])


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
    with pytest.raises(StreamNotFound):
        await drain(streams, "old")
    assert await streams.last_seq("open") == 0


async def test_create_with_first_events_writes_them_only_once(streams: EventStream) -> None:
    first = [StatusEvent(status="queued"), StatusEvent(status="hello")]
    await streams.create("s", first)
    assert await streams.last_seq("s") == 2
    await streams.create("s", first)  # idempotent: nothing more
    assert await streams.publish("s", [StatusEvent(status="next")]) == [3]
    await streams.close_stream("s")
    got = [e async for e in streams.subscribe("s")]
    assert [(e.seq, e.event) for e in got] == [(1, first[0]), (2, first[1]), (3, StatusEvent(status="next"))]


# Fencing (issue 10): a job's runs write with run=<attempt>; an older run is refused once a newer one wrote.


async def test_an_older_run_is_refused_once_a_newer_one_wrote(streams: EventStream) -> None:
    await streams.create("s", [StatusEvent(status="queued")])
    assert await streams.publish("s", [text(1)], run=1) == [2]
    assert await streams.publish("s", [text(2)], run=2) == [3]
    with pytest.raises(RunSuperseded):
        await streams.publish("s", [text(3)], run=1)
    assert await streams.last_seq("s") == 3  # nothing of the refused write, no gap
    assert await streams.publish("s", [StatusEvent(status="x")]) == [4]  # run 0 (the API) is never fenced
    assert await streams.publish("s", [text(4)], run=2) == [5]
    await streams.close_stream("s")
    assert [e.seq for e in await drain(streams, "s")] == [1, 2, 3, 4, 5]


async def test_supersede_writes_once_and_fences_the_older_runs(streams: EventStream) -> None:
    await streams.create("s")
    await streams.publish("s", [text(1)], run=1)
    requeued = StatusEvent(status="requeued", detail="lease expired")
    assert await streams.supersede("s", 2, [requeued])
    assert not await streams.supersede("s", 2, [requeued])  # the second announcer writes nothing
    with pytest.raises(RunSuperseded):
        await streams.publish("s", [text(2)], run=1)
    await streams.publish("s", [text(3)], run=2)
    assert not await streams.supersede("s", 1, [requeued])
    await streams.close_stream("s")
    got = [(e.seq, e.event.event) for e in await drain(streams, "s")]
    assert got == [(1, "text"), (2, "status"), (3, "text")]


async def test_racing_runs_never_interleave_and_leave_no_gap(make_streams: StreamsFactory) -> None:
    a, b = await make_streams(), await make_streams()  # for PostgreSQL: two processes
    await a.create("s")

    async def run(streams: EventStream, n: int) -> int:
        written = 0
        for i in range(40):
            try:
                await streams.publish("s", [TextEvent(message_id=f"r{n}", chunk=str(i))], run=n)
                written += 1
            except RunSuperseded:
                break
            await asyncio.sleep(0)
        return written

    await asyncio.gather(run(a, 1), run(b, 2), run(a, 3))
    await a.close_stream("s")
    events = await drain(b, "s")
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    runs = [int(e.event.message_id[1:]) for e in events if isinstance(e.event, TextEvent)]
    assert runs == sorted(runs)  # once a run wrote, no older run's event follows it
    assert runs[-1] == 3
