"""PostgresWorkQueue under contention and failure: many workers, dropped connections, NOTIFY accounting."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg
import pytest

from agentd.adapters.postgres import PgDatabase, PostgresWorkQueue
from agentd.domain.errors import QueueUnavailable
from agentd.domain.ids import new_job_ids
from agentd.domain.models import AgentRequest, AgentResult, Job
from agentd.ports.work_queue import Limits
from tests.contract.test_work_queue import claim_one, finish_one
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres


@pytest.fixture
def dsn(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database for this test (tests.support.postgres)."""
    return str(request.getfixturevalue("pg_dsn"))


QueueMaker = Callable[..., Awaitable[PostgresWorkQueue]]


@pytest.fixture
async def make_queue(dsn: str) -> AsyncIterator[QueueMaker]:
    opened: list[PostgresWorkQueue] = []

    async def make(pool_size: int = 2) -> PostgresWorkQueue:
        q = PostgresWorkQueue(PgDatabase(dsn, pool_size=pool_size))
        await q.open()
        opened.append(q)
        return q

    yield make
    for q in opened:
        await q.close()


async def put(q: PostgresWorkQueue, project: str, provider: str = "scripted") -> Job:
    job_id, stream_id = new_job_ids()
    job, _ = await q.enqueue(
        AgentRequest(project_id=project, prompt="x"), provider=provider, job_id=job_id, stream_id=stream_id
    )
    return job


async def drain_with_workers(
    queues: list[PostgresWorkQueue], total: int, limits: Limits | None = None
) -> tuple[list[str], int]:
    """Workers claim and finish until `total` jobs are done; checks the rules at every claim."""
    running: dict[str, str] = {}  # project → job id, as the workers see it
    claimed: list[str] = []
    peak = 0

    async def worker(n: int, q: PostgresWorkQueue) -> None:
        nonlocal peak
        while len(claimed) < total:
            job = await claim_one(q, f"w{n}", limits=limits)
            if job is None:
                await q.wait_for_work(0.05)
                continue
            assert job.project_id not in running, f"{job.id} started while {running[job.project_id]} runs"
            running[job.project_id] = job.id
            claimed.append(job.id)
            peak = max(peak, len(running))
            await asyncio.sleep(random.uniform(0, 0.003))
            del running[job.project_id]  # before finish commits: nobody can claim the project before this
            await finish_one(q, job.id, AgentResult(status="succeeded"), worker_id=f"w{n}")

    await asyncio.wait_for(asyncio.gather(*(worker(n, q) for n, q in enumerate(queues))), 120)
    return claimed, peak


async def test_many_workers_never_share_a_job_or_a_project(make_queue: QueueMaker) -> None:
    queues = [await make_queue() for _ in range(8)]
    jobs = [await put(queues[0], project=f"proj{i % 5}") for i in range(200)]
    claimed, peak = await drain_with_workers(queues, len(jobs))
    assert len(claimed) == len(set(claimed)) == len(jobs)
    assert set(claimed) == {j.id for j in jobs}
    assert 1 < peak <= 5  # projects ran in parallel, never two jobs of one project
    async with queues[0].db.connection() as conn:
        cur = await conn.execute(
            "SELECT status, count(*) AS n, max(attempts) AS a FROM agentd_jobs GROUP BY 1"
        )
        assert [(r["status"], r["n"], r["a"]) for r in await cur.fetchall()] == [("succeeded", 200, 1)]


async def test_limits_hold_fleet_wide_under_contention(make_queue: QueueMaker) -> None:
    queues = [await make_queue() for _ in range(6)]
    for i in range(60):
        await put(queues[0], project=f"p{i}", provider="alpha" if i % 2 else "beta")
    limits = Limits(global_max=3, per_provider={"alpha": 1})
    in_flight: list[int] = []

    async def sample() -> None:
        async with queues[0].db.connection() as conn:
            while True:
                cur = await conn.execute(
                    "SELECT count(*) AS n, count(*) FILTER (WHERE provider = 'alpha') AS alpha "
                    "FROM agentd_jobs WHERE status = 'running'"
                )
                row = await cur.fetchone()
                assert row is not None and row["n"] <= 3 and row["alpha"] <= 1, row
                in_flight.append(row["n"])
                await asyncio.sleep(0.001)

    sampler = asyncio.create_task(sample())
    claimed, peak = await drain_with_workers(queues, 60, limits)
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    assert len(set(claimed)) == 60 and peak <= 3 and max(in_flight) >= 2


async def test_listener_reconnects_and_still_wakes_workers(make_queue: QueueMaker, dsn: str) -> None:
    idle, producer = await make_queue(), await make_queue()
    listener = idle.db.listener
    assert listener is not None and listener.connected.is_set()
    old_pid = listener.backend_pid
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(%s)", (old_pid,))
    for _ in range(200):
        if listener.backend_pid not in (None, old_pid):
            break
        await asyncio.sleep(0.02)
    assert listener.backend_pid not in (None, old_pid) and listener.reconnects == 1
    waiter = asyncio.create_task(idle.wait_for_work(30))
    await asyncio.sleep(0)  # one turn: the waiter reaches its wait (it does no I/O before it)
    assert not waiter.done()
    await put(producer, "p")  # NOTIFY from another process
    await asyncio.wait_for(waiter, 3)


async def test_one_notify_per_enqueue_and_per_finish_that_frees_waiting_work(
    make_queue: QueueMaker, dsn: str
) -> None:
    q = await make_queue(pool_size=4)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listen:
        await listen.execute("LISTEN agentd_jobs")
        for _ in range(10):
            await put(q, "busy")
        await asyncio.gather(*(put(q, f"solo{i}") for i in range(10)))
        while (job := await claim_one(q, "w")) is not None:
            await finish_one(q, job.id, AgentResult(status="succeeded"))
        payloads = Counter[str]()
        async for note in listen.notifies(timeout=0.5):
            payloads[note.payload] += 1
    assert payloads == {"enqueued": 20, "finished": 9}  # each "busy" job but the last had a successor


async def test_claim_many_and_finish_many(make_queue: QueueMaker) -> None:
    q = await make_queue()
    jobs = [await put(q, project) for project in ("a", "a", "b", "c", "d")]
    got = await q.claim_many("w", 10, limits=Limits(per_provider={"scripted": 3}))
    assert [j.id for j in got] == [jobs[0].id, jobs[2].id, jobs[3].id]  # one per project, 3 per provider
    assert all(j.worker_id == "w" and j.attempts == 1 for j in got)
    retry = AgentResult(status="failed", retryable=True)
    done = await q.finish_many(
        [(got[1].id, retry), (got[0].id, AgentResult(status="succeeded"))], worker_id="w"
    )
    assert [(j.id, j.status.value) for j in done] == [(got[1].id, "queued"), (got[0].id, "succeeded")]
    with pytest.raises(ValueError, match="once"):
        await q.finish_many([(got[2].id, retry), (got[2].id, retry)])
    # c runs, b backs off: a global cap of 3 leaves room for the next "a" job and d.
    more = await q.claim_many("w2", 10, limits=Limits(global_max=3))
    assert [j.id for j in more] == [jobs[1].id, jobs[4].id]
    assert await q.claim_many("w2", 10, limits=Limits(global_max=3)) == []


async def test_connection_loss_is_queue_unavailable_then_heals(make_queue: QueueMaker, dsn: str) -> None:
    q = await make_queue(pool_size=1)
    job = await put(q, "p")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    with pytest.raises(QueueUnavailable, match="unavailable"):
        await q.get("p", job.id)
    for _ in range(50):  # the pool replaces the broken connection
        try:
            assert (await q.get("p", job.id)).id == job.id
            break
        except QueueUnavailable:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the pool never recovered")


async def test_unreachable_database_is_queue_unavailable() -> None:
    db = PgDatabase("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1", pool_timeout_s=1)
    with pytest.raises(QueueUnavailable, match=r"127\.0\.0\.1:1/nowhere"):
        await PostgresWorkQueue(db).open()
