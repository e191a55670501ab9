"""PostgreSQL event log round trips: a job's last event and the end of its stream in ONE statement; a
stream's first write here numbered without asking the table first."""

from __future__ import annotations

import asyncio

import pytest

from agentd.adapters.postgres import PgDatabase, PostgresEventStream
from agentd.domain.errors import StreamNotFound
from agentd.domain.models import DoneEvent, StatusEvent, TextEvent
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres


async def test_done_and_close_go_out_in_one_statement(pg_dsn: str) -> None:  # noqa: F811
    api = PostgresEventStream(PgDatabase(pg_dsn, pool_size=2))
    worker = PostgresEventStream(PgDatabase(pg_dsn, pool_size=2))
    await api.open()
    await worker.open()
    try:
        await api.create("s", [StatusEvent(status="queued")])
        # The worker never wrote to "s": its first publish is numbered by the INSERT itself (seq 2).
        before = worker.batches
        assert await worker.publish("s", [StatusEvent(status="running")], run=1) == [2]
        assert worker.batches == before + 1
        before = worker.batches
        publish = asyncio.create_task(worker.publish("s", [DoneEvent(status="succeeded")], run=1))
        await asyncio.sleep(0)  # the publish is pending; the close joins its statement
        await worker.close_stream("s")
        assert await publish == [3]
        assert worker.batches == before + 1
        events = [e async for e in api.subscribe("s")]  # ends: the stream is closed
        assert [(e.seq, e.event.event) for e in events] == [(1, "status"), (2, "status"), (3, "done")]
        with pytest.raises(StreamNotFound):
            await worker.publish("s", [TextEvent(message_id="m", chunk="late")], run=1)
        with pytest.raises(StreamNotFound):
            await worker.close_stream("nope")
    finally:
        await worker.close()
        await api.close()


async def test_a_publish_after_a_close_in_the_same_batch_is_refused(pg_dsn: str) -> None:  # noqa: F811
    streams = PostgresEventStream(PgDatabase(pg_dsn, pool_size=2))
    await streams.open()
    try:
        await streams.create("s")
        first = asyncio.create_task(streams.publish("s", [TextEvent(message_id="m", chunk="a")]))
        close = asyncio.create_task(streams.close_stream("s"))
        late = asyncio.create_task(streams.publish("s", [TextEvent(message_id="m", chunk="b")]))
        assert await first == [1]
        await close
        with pytest.raises(StreamNotFound):
            await late
        assert await streams.last_seq("s") == 1
    finally:
        await streams.close()
