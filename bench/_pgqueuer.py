"""The pgqueuer 1.6.0 anchors, on asyncpg, each run in its own process (as the agentd side is):

    python bench/_pgqueuer.py drain DSN JOBS K      -> prints {"rate": jobs/s}
    python bench/_pgqueuer.py latency DSN JOBS      -> prints {"p50": s, "p99": s}

`drain`: JOBS no-op jobs are enqueued first, then K PgQueuer consumers (one asyncpg connection each, as K
worker processes would have, dequeue batch 10) drain them; jobs/s until every completion is acknowledged
(the queue table is empty), as in pgqueuer's own `tools/benchmark.py --strategy drain`.
`latency`: one consumer waits (LISTEN); the producer enqueues one job at a time, each after the previous one
ran; each handler reports enqueue -> handler start (CLOCK_MONOTONIC is shared by the processes of a machine;
producer and consumer are separate processes here too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time


async def _install(dsn: str) -> None:
    import asyncpg
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(dsn)
    try:
        q = Queries(AsyncpgDriver(conn))
        try:
            await q.install()
        except Exception:  # already installed in this database
            await q.clear_queue()
    finally:
        await conn.close()


async def drain(dsn: str, jobs: int, k: int, batch: int = 10) -> float:
    import asyncpg
    from pgqueuer import PgQueuer, types
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

    await _install(dsn)
    conns = [await asyncpg.connect(dsn) for _ in range(k + 1)]
    try:
        queries = Queries(AsyncpgDriver(conns[0]))
        await queries.clear_queue()
        for start in range(0, jobs, 1000):
            n = min(1000, jobs - start)
            await queries.enqueue(["noop"] * n, [b""] * n, [0] * n)
        done = 0
        pgqs = [PgQueuer(AsyncpgDriver(c)) for c in conns[1:]]
        for pgq in pgqs:

            @pgq.entrypoint("noop")
            async def noop(job: Job) -> None:
                nonlocal done
                done += 1

        watch = await asyncpg.connect(dsn)

        async def all_acknowledged() -> float:
            while True:
                if await watch.fetchval("SELECT NOT EXISTS (SELECT 1 FROM pgqueuer)"):
                    return time.perf_counter()
                await asyncio.sleep(0.002)

        started = time.perf_counter()
        mode = types.QueueExecutionMode.drain
        acked, *_ = await asyncio.gather(
            all_acknowledged(), *(p.run(batch_size=batch, mode=mode) for p in pgqs)
        )
        await watch.close()
        assert done == jobs, (done, jobs)
        return jobs / (acked - started)
    finally:
        for c in conns:
            await c.close()


async def latency(dsn: str, jobs: int) -> dict[str, float]:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

    await _install(dsn)
    # The consumer: its own process, as an `agentd worker` is.
    consumer = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "consumer", dsn, stdout=asyncio.subprocess.PIPE
    )
    assert consumer.stdout is not None
    await consumer.stdout.readline()  # "ready"
    conn = await asyncpg.connect(dsn)
    out: list[float] = []
    try:
        queries = Queries(AsyncpgDriver(conn))
        for _ in range(jobs + 20):
            t0 = time.monotonic()
            await queries.enqueue("probe", json.dumps({"t0": t0}).encode())
            line = await asyncio.wait_for(consumer.stdout.readline(), 10)
            out.append(float(line) - t0)
    finally:
        await conn.close()
        consumer.terminate()
        await consumer.wait()
    _ = (PgQueuer, Job)
    lat = sorted(out[20:])
    return {"p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]}


async def consumer(dsn: str) -> None:
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job

    conn = await asyncpg.connect(dsn)
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("probe")
    async def probe(job: Job) -> None:
        now = time.monotonic()
        sys.stdout.write(f"{now}\n")
        sys.stdout.flush()

    async def ready() -> None:
        await asyncio.sleep(1.0)
        print("ready", flush=True)

    task = asyncio.create_task(ready())
    await pgq.run(batch_size=1)
    await task


def main() -> None:
    logging.getLogger("pgqueuer").setLevel(logging.ERROR)
    logging.basicConfig(level=logging.ERROR)
    cmd, dsn, *rest = sys.argv[1:]
    if cmd == "drain":
        print(json.dumps({"rate": asyncio.run(drain(dsn, int(rest[0]), int(rest[1])))}))
    elif cmd == "latency":
        print(json.dumps(asyncio.run(latency(dsn, int(rest[0])))))
    elif cmd == "consumer":
        asyncio.run(consumer(dsn))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
