"""Queue throughput: agentd's PostgresWorkQueue against pgqueuer 1.6.0 on the same PostgreSQL, same workload.

Workload (both queues): enqueue N no-op jobs, then K concurrent workers claim and complete them until the
queue is empty; jobs/s = N / drain time. Each worker has its own connection(s), like separate processes.
pgqueuer runs as in its own `tools/benchmark.py --strategy drain` (PgQueuer over a PsycopgDriver, batch 10).
agentd runs its port as the runner does: `claim` one job, `finish` it; every job in its own project (pgqueuer
has no per-project exclusion), then again with 50 busy projects, and with `Limits` on.

    .venv/bin/python bench/bench_queue.py [--jobs 5000] [--workers 4] [--rounds 3]

Needs PostgreSQL (AGENTD_BENCH_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/postgres); each
run creates scratch databases and drops them.
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


async def bench_agentd(
    jobs: int, workers: int, *, projects: int | None = None, limits: Limits | None = None, batch: int = 1
) -> float:
    async with scratch_database("agentd") as dsn:
        await migrate(dsn)
        queues = [PostgresWorkQueue(PgDatabase(dsn, pool_size=1)) for _ in range(workers)]
        for q in queues:
            await q.open()
        try:
            producer = PostgresWorkQueue(PgDatabase(dsn, pool_size=8))
            await producer.open()
            request = AgentRequest(project_id="p", prompt="noop")

            async def enqueue(i: int) -> None:
                project = f"p{i % projects}" if projects else f"p{i}"
                await producer.enqueue(
                    request.model_copy(update={"project_id": project}),
                    provider="noop",
                    job_id=f"job_{i:08d}",
                    stream_id=f"stm_{i:08d}",
                )

            for start in range(0, jobs, 500):
                await asyncio.gather(*(enqueue(i) for i in range(start, min(start + 500, jobs))))
            await producer.close()
            done = 0

            async def worker(n: int, q: PostgresWorkQueue) -> None:
                nonlocal done
                while done < jobs:
                    if batch == 1:  # the port, as the runner uses it
                        job = await q.claim(f"w{n}", limits=limits)
                        claimed = [job] if job is not None else []
                    else:
                        claimed = await q.claim_many(f"w{n}", batch, limits=limits)
                    if not claimed:
                        await q.wait_for_work(0.01)  # another worker's project or a limit slot
                        continue
                    if batch == 1:
                        await q.finish(claimed[0].id, DONE, worker_id=f"w{n}")
                    else:
                        await q.finish_many([(j.id, DONE) for j in claimed], worker_id=f"w{n}")
                    done += len(claimed)

            started = time.perf_counter()
            await asyncio.gather(*(worker(n, q) for n, q in enumerate(queues)))
            return jobs / (time.perf_counter() - started)
        finally:
            for q in queues:
                await q.close()


async def bench_pgqueuer(jobs: int, workers: int, batch_size: int) -> float:
    from pgqueuer import PgQueuer, types
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

    async with scratch_database("pgqueuer") as dsn:
        conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(workers + 1)]
        try:
            queries = Queries(PsycopgDriver(conns[0]))
            await queries.install()
            for start in range(0, jobs, 1000):
                n = min(1000, jobs - start)
                await queries.enqueue(["noop"] * n, [b""] * n, [0] * n)
            done = 0
            pgqs = [PgQueuer(PsycopgDriver(c)) for c in conns[1:]]
            for pgq in pgqs:

                @pgq.entrypoint("noop")
                async def noop(job: Job) -> None:
                    nonlocal done
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(
                *(pgq.run(batch_size=batch_size, mode=types.QueueExecutionMode.drain) for pgq in pgqs)
            )
            elapsed = time.perf_counter() - started
            assert done == jobs, (done, jobs)
            return jobs / elapsed
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
    parser.add_argument("--pgqueuer-batch", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("pgqueuer").setLevel(logging.WARNING)
    n, k = args.jobs, args.workers

    print(f"{n} no-op jobs, {k} workers, median of {args.rounds} rounds")
    batch = args.pgqueuer_batch
    pgq = await median_of(args.rounds, lambda: bench_pgqueuer(n, k, batch))
    print(f"  pgqueuer 1.6.0 (PsycopgDriver, batch {batch}):        {pgq:7.0f} jobs/s")
    rows: list[tuple[str, Callable[[], Awaitable[float]]]] = [
        ("agentd port: claim + finish, 1 job each", lambda: bench_agentd(n, k)),
        ("  same, 50 projects (1 running job each)", lambda: bench_agentd(n, k, projects=50)),
        (f"  same, Limits(global_max={2 * k})", lambda: bench_agentd(n, k, limits=Limits(global_max=2 * k))),
        (f"agentd claim_many/finish_many, batch {batch}", lambda: bench_agentd(n, k, batch=batch)),
    ]
    for label, run in rows:
        rate = await median_of(args.rounds, run)
        print(f"  {label:<45} {rate:7.0f} jobs/s  ratio {rate / pgq:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
