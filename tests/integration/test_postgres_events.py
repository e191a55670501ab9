"""PostgresEventStream batching and NOTIFY accounting, and following a stream through a listener outage."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from agentd.adapters.postgres import PgDatabase, PostgresEventStream
from agentd.adapters.postgres.postgres_event_stream import NOTIFY_BURST, NOTIFY_DEBOUNCE_S
from agentd.domain.models import StoredEvent, TextEvent
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres


@pytest.fixture
def dsn(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database for this test (tests.support.postgres)."""
    return str(request.getfixturevalue("pg_dsn"))


StreamsMaker = Callable[[], Awaitable[PostgresEventStream]]


@pytest.fixture
async def make_streams(dsn: str) -> AsyncIterator[StreamsMaker]:
    opened: list[PostgresEventStream] = []

    async def make() -> PostgresEventStream:
        s = PostgresEventStream(PgDatabase(dsn, pool_size=4), poll_s=30)  # no polling: NOTIFY or nothing
        await s.open()
        opened.append(s)
        return s

    yield make
    for s in opened:
        await s.close()


def text(i: int) -> TextEvent:
    return TextEvent(message_id="m", chunk=f"c{i}")


async def drain(s: PostgresEventStream, sid: str) -> list[StoredEvent]:
    return [e async for e in s.subscribe(sid)]


async def test_a_burst_is_written_in_few_batches_with_one_notify_per_stream_per_batch(
    make_streams: StreamsMaker,
    dsn: str,
) -> None:
    streams = await make_streams()
    sids = [f"s{i}" for i in range(5)]
    for sid in sids:
        await streams.create(sid)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listen:
        await listen.execute("LISTEN agentd_events")
        before = streams.batches
        results = await asyncio.gather(*(streams.publish(sid, [text(i)]) for i in range(100) for sid in sids))
        batches = streams.batches - before
        notes = Counter[str]()
        async for note in listen.notifies(timeout=0.5):
            notes[note.payload] += 1
    for sid in sids:
        assert await streams.last_seq(sid) == 100
    assert sorted(n for r in results for n in r) == sorted(list(range(1, 101)) * len(sids))
    assert set(notes) == set(sids)
    assert sum(notes.values()) <= batches * len(sids)  # at most one per stream per batch
    assert batches <= 5 and sum(notes.values()) <= 25  # 500 events


async def test_one_event_at_a_time_from_many_jobs_shares_statements(make_streams: StreamsMaker) -> None:
    """The runner publishes one event per call and waits: batches then span the jobs of the process."""
    streams = await make_streams()
    sids = [f"job{i}" for i in range(8)]
    for sid in sids:
        await streams.create(sid)
    before = streams.batches

    async def runner(sid: str) -> list[int]:
        return [n for i in range(50) for n in await streams.publish(sid, [text(i)])]

    results = await asyncio.gather(*(runner(sid) for sid in sids))
    assert all(r == list(range(1, 51)) for r in results)
    assert streams.batches - before <= 50 * 2  # 400 events; about one statement per round of 8


async def test_concurrent_publishers_in_two_processes_never_collide(make_streams: StreamsMaker) -> None:
    a, b = await make_streams(), await make_streams()
    await a.create("shared")

    async def publish(s: PostgresEventStream, n: int) -> list[int]:
        return [seq for i in range(n) for seq in await s.publish("shared", [text(i)])]

    got = await asyncio.gather(publish(a, 100), publish(b, 100))
    assert sorted(got[0] + got[1]) == list(range(1, 201))
    assert got[0] == sorted(got[0]) and got[1] == sorted(got[1])  # each publisher's order is kept
    assert await b.last_seq("shared") == 200
    await a.close_stream("shared")
    chunks = [e.event.chunk for e in await drain(b, "shared") if isinstance(e.event, TextEvent)]
    assert sorted(chunks) == sorted([f"c{i}" for i in range(100)] * 2)


async def test_a_subscriber_keeps_following_after_the_listener_reconnects(
    make_streams: StreamsMaker,
    dsn: str,
) -> None:
    publisher, server = await make_streams(), await make_streams()
    await publisher.create("s")
    got: list[StoredEvent] = []

    async def follow() -> None:
        async for e in server.subscribe("s"):
            got.append(e)

    task = asyncio.create_task(follow())
    await publisher.publish("s", [text(1)])
    await _until(lambda: len(got) == 1)
    listener = server.db.listener
    assert listener is not None
    old_pid = listener.backend_pid
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    await _until(lambda: listener.backend_pid not in (None, old_pid))
    await publisher.publish("s", [text(2)])
    await _until(lambda: len(got) == 2)  # well within poll_s=30: the new LISTEN connection hears it
    await publisher.close_stream("s")
    await asyncio.wait_for(task, 3)
    assert [e.seq for e in got] == [1, 2]


async def _until(check: Callable[[], bool], within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_a_token_stream_published_one_event_at_a_time_gets_debounced_notifies(
    make_streams: StreamsMaker, dsn: str
) -> None:
    # The runner awaits every publish, so each event is its own batch: NOTIFY must still not follow
    # every event. Subscribers elsewhere hear of the first batch at once and of the rest within ~20 ms.
    writer, reader = await make_streams(), await make_streams()
    await writer.create("tok")
    got: list[int] = []

    async def follow() -> None:
        async for e in reader.subscribe("tok"):
            got.append(e.seq)

    follower = asyncio.create_task(follow())
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listen:
        await listen.execute("LISTEN agentd_events")
        t0 = time.monotonic()
        for i in range(200):
            await writer.publish("tok", [text(i)])
        elapsed = time.monotonic() - t0
        await asyncio.sleep(0.1)
        assert got[-1] == 200  # the reader (another instance, NOTIFY only, no polling) saw everything
        await writer.close_stream("tok")
        await asyncio.wait_for(follower, 5)
        notes = [n async for n in listen.notifies(timeout=0.3)]
    # A burst allowance, then at most one per 20 ms window (+1 trailing, +1 for the close).
    bound = NOTIFY_BURST + elapsed / NOTIFY_DEBOUNCE_S + 3
    assert len(notes) <= bound and len(notes) < 200 / 4, (len(notes), elapsed)
    assert got == list(range(1, 201))
