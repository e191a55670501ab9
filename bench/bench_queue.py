"""Queue throughput: agentd's PostgresWorkQueue against pgqueuer 1.6.0 on the same PostgreSQL, same workload.

Workload (both queues): enqueue N no-op jobs, then K concurrent workers claim and complete them until the
queue is empty; jobs/s = N / time until every job is durably complete (enqueueing is not timed). Each
worker has its own connection(s), as separate processes would. The anchor: pgqueuer 1.6.0 on asyncpg
(bench/_pgqueuer.py drain: K PgQueuer consumers, dequeue batch 10, completions acknowledged in buffered
batches), timed until its queue table is empty. agentd (psycopg) runs
  - one job at a time: `claim` one job, `finish` it (two commits per job);
  - `claim_many` for the free slots, then one `finish` per job as each ends;
  - `claim_many` + `finish_many`, batch 10 like pgqueuer's (the runner claims for all its free slots at
    once, and results that end while a write is in flight go out in one `finish_many`);
  - `finish_and_claim`, batch 10: a batch's results and the next claim sent together in psycopg's pipeline
    mode, one round trip and one transaction.
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
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import structlog
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import _pgqueuer

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
        yield _common.with_dbname(ADMIN_DSN, name)
    finally:
        async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def run_agentd(  # noqa: C901, PLR0915
    dsn: str,
    jobs: int,
    workers: int,
    *,
    projects: int = 0,
    limits: Limits | None = None,
    batch: int = 1,
    finish_each: bool = False,
    pipeline: bool = False,
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
        if pipeline:  # the batch's results and the next claim in one round trip
            claimed = await q.claim_many(me, batch, limits=limits)
            while done < jobs:
                if not claimed:
                    await q.wait_for_work(0.01)
                    claimed = await q.claim_many(me, batch, limits=limits)
                    continue
                _, next_claimed = await q.finish_and_claim(  # type: ignore[attr-defined]
                    [(j.id, DONE) for j in claimed], batch, worker_id=me, limits=limits
                )
                done += len(claimed)
                claimed = next_claimed
            return
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


async def run_pgqueuer(dsn: str, jobs: int, workers: int, batch_size: int) -> float:
    """jobs/s until every job is durably complete (acknowledged: gone from pgqueuer's queue table), with
    pgqueuer on asyncpg (bench/_pgqueuer.py's drain, in this process like the agentd side)."""
    return await _pgqueuer.drain(
        _common.with_dbname(_common.ADMIN_DSN, dsn_name(dsn)), jobs, workers, batch_size
    )


def dsn_name(dsn: str) -> str:
    return dsn.rsplit("/", 1)[1]


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

    async with scratch_database("pgqueuer") as pgq_dsn, scratch_database("agentd") as dsn:
        await migrate(dsn)
        rows: list[tuple[str, Callable[[], Awaitable[float]]]] = [
            ("claim + finish, one job each", lambda: run_agentd(dsn, n, k)),
            (
                f"claim_many {b} + one finish per job",
                lambda: run_agentd(dsn, n, k, batch=b, finish_each=True),
            ),
            (f"claim_many + finish_many, batch {b} (runner)", lambda: run_agentd(dsn, n, k, batch=b)),
        ]
        # finish_and_claim comes with the queue work of branch perf-on-queues (on top of wip-queues).
        if hasattr(PostgresWorkQueue, "finish_and_claim"):
            rows.append(
                (
                    f"finish_and_claim, batch {b} (one round trip)",
                    lambda: run_agentd(dsn, n, k, batch=b, pipeline=True),
                )
            )
        if args.all:
            limits = Limits(global_max=2 * k)
            rows += [
                ("50 projects (1 running each)", lambda: run_agentd(dsn, n, k, projects=50)),
                (f"Limits(global_max={2 * k})", lambda: run_agentd(dsn, n, k, limits=limits)),
                (
                    f"batch {b}, Limits(global_max={4 * b})",
                    lambda: run_agentd(dsn, n, k, batch=b, limits=Limits(global_max=4 * b)),
                ),
            ]
        # Interleaved: each round runs the anchor, then every agentd variant.
        anchor: list[float] = []
        ours: list[list[float]] = [[] for _ in rows]
        for _ in range(args.rounds):
            anchor.append(await run_pgqueuer(pgq_dsn, n, k, b))
            for i, (_label, run) in enumerate(rows):
                ours[i].append(await run())
    base = statistics.median(anchor)
    print(_common.cpu_line())
    out = []
    for (label, _), rates in zip(rows, ours, strict=True):
        rate = statistics.median(rates)
        out.append([f"agentd {label}", f"{rate:,.0f} jobs/s", _common.ratio(rate, base)])
    print(
        _common.table(
            f"Queue operations: {n} no-op jobs, {k} workers (own connections), median of {args.rounds} "
            f"interleaved rounds; anchor: pgqueuer 1.6.0 asyncpg drain, K={k}, batch {b}: {base:,.0f} jobs/s",
            ["agentd (psycopg)", "jobs/s", "ratio (goal ≥ 1.0×)"],
            out,
        )
    )


if __name__ == "__main__":
    _common.setup_uvloop()
    asyncio.run(main())
