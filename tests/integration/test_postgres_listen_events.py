"""A process that only writes events (a worker) does not LISTEN on the events channel: it would receive every
NOTIFY it sends. It starts listening once it has a subscriber, and the subscriber misses nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest

from agentd.adapters.postgres import PgDatabase, PostgresEventStream
from agentd.adapters.postgres.database import EVENTS_CHANNEL, JOBS_CHANNEL
from agentd.domain.models import StoredEvent, TextEvent
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres


async def _until(check: Callable[[], bool], within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _notify(dsn: str, channel: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("SELECT pg_notify(%s, 'x')", (channel,))


async def test_no_events_listen_until_a_subscriber_comes(pg_dsn: str) -> None:  # noqa: F811
    db = PgDatabase(pg_dsn, pool_size=2, listen_events=False)
    heard: list[str] = []
    db.on_notify(EVENTS_CHANNEL, lambda p: heard.append(f"events:{p}"))
    db.on_notify(JOBS_CHANNEL, lambda p: heard.append(f"jobs:{p}"))
    streams = PostgresEventStream(db, poll_s=30)  # no polling: NOTIFY or nothing
    await streams.open()
    publisher = PostgresEventStream(PgDatabase(pg_dsn, pool_size=2), poll_s=30)
    await publisher.open()
    try:
        await _notify(pg_dsn, EVENTS_CHANNEL)
        await _notify(pg_dsn, JOBS_CHANNEL)
        await _until(lambda: "jobs:x" in heard)  # NOTIFYs arrive in order: events:x would be here by now
        assert heard == ["jobs:x"]

        await publisher.create("s")
        got: list[StoredEvent] = []

        async def follow() -> None:
            async for e in streams.subscribe("s"):
                got.append(e)

        task = asyncio.create_task(follow())
        listener = db.listener
        assert listener is not None
        await _until(listener.connected.is_set)
        await publisher.publish("s", [TextEvent(message_id="m", chunk="1")])
        await _until(lambda: len(got) == 1)  # well within poll_s=30: heard by NOTIFY
        await publisher.publish("s", [TextEvent(message_id="m", chunk="2")])
        await _until(lambda: len(got) == 2)
        await publisher.close_stream("s")
        await asyncio.wait_for(task, 3)
        assert [e.seq for e in got] == [1, 2]
        await _notify(pg_dsn, JOBS_CHANNEL)  # the job wake-ups kept coming on the new connection
        await _until(lambda: heard.count("jobs:x") == 2)
    finally:
        await publisher.close()
        await streams.close()


async def test_a_listener_moves_to_a_new_connection_when_it_listens_to_more(pg_dsn: str) -> None:  # noqa: F811
    db = PgDatabase(pg_dsn, pool_size=2, listen_events=False)
    gaps: list[int] = []
    db.on_gap(lambda: gaps.append(1))
    streams = PostgresEventStream(db, poll_s=30)
    await streams.open()
    try:
        listener = db.listener
        assert listener is not None and listener.connected.is_set()
        first, gaps_before = listener.backend_pid, len(gaps)
        streams.expect_subscribers()
        streams.expect_subscribers()  # once is enough
        await _until(lambda: listener.backend_pid not in (None, first))
        assert len(gaps) == gaps_before + 1  # callers were told to look once
        # The old connection is closed (eventually).
        deadline = time.monotonic() + 3
        while True:
            async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
                cur = await conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,))
                row = await cur.fetchone()
            if row is not None and row[0] == 0:
                break
            assert time.monotonic() < deadline, "the old listener connection stayed open"
            await asyncio.sleep(0.05)
    finally:
        await streams.close()
