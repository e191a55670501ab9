"""Queue throughput: agentd's PostgresWorkQueue against pgqueuer 1.6.0 on the same PostgreSQL, same workload.

Workload (both queues): enqueue N no-op jobs, then K concurrent workers claim and complete them until the
queue is empty; jobs/s = N / time until every job is durably complete (enqueueing is not timed). Each
worker has its own connection(s), as separate processes would. pgqueuer runs as in its own
`tools/benchmark.py --strategy drain` (PgQueuer over a PsycopgDriver, dequeue batch 10, completions
acknowledged in buffered batches); its drain mode needs seconds to notice the end, so it is timed until its
queue table is empty (the "until drain returns" figure is printed too). agentd runs
  - one job at a time: `claim` one job, `finish` it (two commits per job);
  - `claim_many` for the free slots, then one `finish` per job as each ends;
  - `claim_many` + `finish_many`, batch 10 like pgqueuer's. This is what the runner does: it claims for
    all its free slots at once, and results that end while a write is in flight go out in one
    `finish_many`.
Every agentd job has its own project (pgqueuer has no per-project exclusion); `--all` adds runs with 50 busy
projects and with `Limits`.

    .venv/bin/python bench/bench_queue.py [--jobs 5000] [--workers 4] [--rounds 3] [--all]

Needs PostgreSQL (AGENTD_BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/postgres); it
creates two scratch databases and drops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import psycopg
import structlog
from psycopg import sql
from psycopg.conninfo import make_conninfo

from agentd.adapters.postgres import PgDatabase, PostgresWorkQueue, migrate
from agentd.domain.models import AgentRequest, AgentResult
from agentd.ports.work_queue import Limits

ADMIN_DSN = os.environ.get("AGENTD_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DONE = AgentResult(status="succeeded")


@asynccontextmanager
async def scratch_database(kind: str) -> AsyncIterator[str]:
    name = f"agentd_bench_{kind}_{os.getpid()}_{secrets.token_hex(3)}"
    async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(ADMIN_DSN, dbname=name)
    finally:
        async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def run_agentd(
    dsn: str,
    jobs: int,
    workers: int,
    *,
    projects: int = 0,
    limits: Limits | None = None,
    batch: int = 1,
    finish_each: bool = False,
) -> float:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE agentd_jobs")
    producer = PostgresWorkQueue(PgDatabase(dsn, pool_size=8))
    await producer.open()
    request = AgentRequest(project_id="p", prompt="noop")

    async def enqueue(i: int) -> None:
        project = f"p{i % projects}" if projects else f"p{i}"
        update = {"project_id": project}
        await producer.enqueue(
            request.model_copy(update=update),
            provider="noop",
            job_id=f"job_{i:08d}",
            stream_id=f"stm_{i:08d}",
        )

    for start in range(0, jobs, 500):
        await asyncio.gather(*(enqueue(i) for i in range(start, min(start + 500, jobs))))
    await producer.close()
    queues = [PostgresWorkQueue(PgDatabase(dsn, pool_size=1)) for _ in range(workers)]
    for q in queues:
        await q.open()
    done = 0

    async def worker(n: int, q: PostgresWorkQueue) -> None:
        nonlocal done
        me = f"w{n}"
        while done < jobs:
            if batch == 1:  # one job at a time
                one = await q.claim_many(me, 1, limits=limits)
                if one:
                    await q.finish_many([(one[0].id, DONE)], worker_id=me)
                    done += 1
                    continue
            else:
                claimed = await q.claim_many(me, batch, limits=limits)
                if claimed and finish_each:  # the runner: each job's task finishes it on its own
                    await asyncio.gather(*(q.finish_many([(j.id, DONE)], worker_id=me) for j in claimed))
                    done += len(claimed)
                    continue
                if claimed:
                    await q.finish_many([(j.id, DONE) for j in claimed], worker_id=me)
                    done += len(claimed)
                    continue
            await q.wait_for_work(0.01)  # every runnable job is taken (busy project, limit, other worker)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(n, q) for n, q in enumerate(queues)))
        return jobs / (time.perf_counter() - started)
    finally:
        for q in queues:
            await q.close()


async def run_pgqueuer(dsn: str, jobs: int, workers: int, batch_size: int) -> tuple[float, float]:
    """(jobs/s until every job is durably complete, jobs/s until its drain mode returns).

    pgqueuer acknowledges completions in buffered batches (a completed job leaves its queue table), and its
    drain mode takes seconds to notice the end and shut down; the first figure is the fair one.
    """
    from pgqueuer import PgQueuer, types
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(workers + 2)]
    try:
        queries = Queries(PsycopgDriver(conns[0]))
        await queries.clear_queue()
        await queries.clear_statistics_log()
        for start in range(0, jobs, 1000):
            n = min(1000, jobs - start)
            await queries.enqueue(["noop"] * n, [b""] * n, [0] * n)
        done = 0
        pgqs = [PgQueuer(PsycopgDriver(c)) for c in conns[2:]]
        for pgq in pgqs:

            @pgq.entrypoint("noop")
            async def noop(job: Job) -> None:
                nonlocal done
                done += 1

        async def all_acknowledged() -> float:
            while True:
                cur = await conns[1].execute("SELECT NOT EXISTS (SELECT 1 FROM pgqueuer)")
                row = await cur.fetchone()
                if row is not None and row[0]:
                    return time.perf_counter()
                await asyncio.sleep(0.005)

        started = time.perf_counter()
        drain = types.QueueExecutionMode.drain
        acked, *_ = await asyncio.gather(
            all_acknowledged(), *(pgq.run(batch_size=batch_size, mode=drain) for pgq in pgqs)
        )
        returned = time.perf_counter()
        assert done == jobs, (done, jobs)
        return jobs / (acked - started), jobs / (returned - started)
    finally:
        for c in conns:
            await c.close()


async def median_of(rounds: int, run: Callable[[], Awaitable[float]]) -> float:
    return statistics.median([await run() for _ in range(rounds)])


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=10, help="pgqueuer's batch size, and claim_many's")
    parser.add_argument("--all", action="store_true", help="also busy projects and limits")
    args = parser.parse_args()
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n, k, b = args.jobs, args.workers, args.batch

    print(f"{n} no-op jobs, {k} workers, median of {args.rounds} rounds")
    async with scratch_database("pgqueuer") as pgq_dsn, scratch_database("agentd") as dsn:
        async with await psycopg.AsyncConnection.connect(pgq_dsn, autocommit=True) as conn:
            from pgqueuer.db import PsycopgDriver
            from pgqueuer.queries import Queries

            await Queries(PsycopgDriver(conn)).install()
        await migrate(dsn)
        pgq_runs = [await run_pgqueuer(pgq_dsn, n, k, b) for _ in range(args.rounds)]
        base = statistics.median(acked for acked, _ in pgq_runs)
        returned = statistics.median(ret for _, ret in pgq_runs)
        print(f"  {f'pgqueuer 1.6.0 (PsycopgDriver, batch {b})':<46} {base:7.0f} jobs/s")
        print(f"  {'  (until its drain mode returns)':<46} {returned:7.0f} jobs/s")
        rows: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("agentd claim + finish, one job each", lambda: run_agentd(dsn, n, k)),
            (
                f"agentd claim_many {b} + one finish per job",
                lambda: run_agentd(dsn, n, k, batch=b, finish_each=True),
            ),
            (f"agentd claim_many + finish_many, batch {b} (runner)", lambda: run_agentd(dsn, n, k, batch=b)),
        ]
        if args.all:
            limits = Limits(global_max=2 * k)
            rows += [
                ("agentd port, 50 projects (1 running each)", lambda: run_agentd(dsn, n, k, projects=50)),
                (f"agentd port, Limits(global_max={2 * k})", lambda: run_agentd(dsn, n, k, limits=limits)),
                (f"agentd batch {b}, Limits(global_max={4 * b})", lambda: run_agentd(dsn, n, k, batch=b,
                                                                          limits=Limits(global_max=4 * b))),
            ]  # fmt: skip
        for label, run in rows:
            rate = await median_of(args.rounds, run)
            print(f"  {label:<46} {rate:7.0f} jobs/s   ratio {rate / base:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
