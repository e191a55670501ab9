"""Submit → first event latency through the HTTP API, with an instantly answering agent.

Three set-ups on loopback: the embedded default (`agentd serve`: SQLite queue + memory streams, API and
workers in one process); PostgreSQL as a fleet runs it (an API process, and an `agentd worker` process);
and PostgreSQL with API and workers in one process. N jobs are submitted one after another. A client
times, from the start of the POST: the first streamed event (`queued`, written by the API), the first
event written by the worker (`running`), the agent's first event, and `done`. Prints p50/p99.

    .venv/bin/python bench/bench_latency.py [--jobs 300] [--dsn postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent  # noqa: E402
from agentd.adapters.postgres.migrate import migrate  # noqa: E402
from agentd.bootstrap import build  # noqa: E402
from agentd.config import Settings  # noqa: E402
from agentd.sse import aiter_sse  # noqa: E402

MARKS = ("first event", "running", "agent event", "done")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


async def run(settings: Settings, n: int, *, worker_process: bool = False) -> dict[str, list[float]]:
    container = await build(settings, agents=[ScriptedCodeAgent()], with_workers=not worker_process)
    worker = None
    if worker_process:
        env = {
            **os.environ,
            "AGENTD_DATABASE_URL": settings.database_url or "",
            "AGENTD_PROVIDERS": "scripted",
            "AGENTD_DATA_DIR": str(settings.data_dir / "worker"),
            "AGENTD_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT),
        }
        worker = await asyncio.create_subprocess_exec(sys.executable, "-m", "agentd.cli", "worker", env=env)
        await asyncio.sleep(2.0)
    runner = web.AppRunner(container.app(port=0), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    out: dict[str, list[float]] = {k: [] for k in MARKS}
    async with aiohttp.ClientSession() as http:
        for i in range(n + 20):  # the first 20 warm up pools, caches and the JIT-less interpreter paths
            t0 = time.perf_counter()
            async with http.post(f"{base}/projects/bench/jobs", json={"prompt": "hi"}) as r:
                job = await r.json()
            seen: dict[str, float] = {}
            async with http.get(job["stream_url"]) as r:
                async for ev in aiter_sse(r.content.iter_any()):
                    t = time.perf_counter() - t0
                    seen.setdefault("first event", t)
                    if ev.event == "status" and '"running"' in ev.data:
                        seen.setdefault("running", t)
                    if ev.event == "session":
                        seen.setdefault("agent event", t)
                    if ev.event == "done":
                        seen["done"] = t
                        break
            if i >= 20:
                for k in MARKS:
                    out[k].append(seen[k])
    await runner.cleanup()
    if worker is not None:
        worker.terminate()
        await worker.wait()
    return out


def report(name: str, res: dict[str, list[float]]) -> None:
    print(f"{name}:")
    for k in MARKS:
        v = res[k]
        print(f"  submit → {k:12s} p50 {pct(v, 0.5) * 1000:6.2f} ms   p99 {pct(v, 0.99) * 1000:6.2f} ms")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument(
        "--dsn", default=os.environ.get("AGENTD_BENCH_DSN", "postgresql://postgres@127.0.0.1/postgres")
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        embedded = await run(Settings(data_dir=Path(d) / "embedded", log_level="warning"), args.jobs)
        name = f"agentd_bench_{secrets.token_hex(4)}"
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        dsn = psycopg.conninfo.make_conninfo(args.dsn, dbname=name)
        try:
            await migrate(dsn)
            fleet = await run(
                Settings(data_dir=Path(d) / "fleet", database_url=dsn, log_level="warning"),
                args.jobs,
                worker_process=True,
            )
            pg = await run(
                Settings(data_dir=Path(d) / "pg", database_url=dsn, log_level="warning"), args.jobs
            )
        finally:
            with psycopg.connect(args.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    print(f"{args.jobs} jobs one after another, instantly answering agent, HTTP + SSE on loopback\n")
    report("embedded (SQLite queue, memory streams)", embedded)
    report("PostgreSQL, fleet layout (API process + `agentd worker` process)", fleet)
    report("PostgreSQL, API and workers in one process", pg)
    print("\ngoal: p50 <= 5 ms, p99 <= 20 ms")


if __name__ == "__main__":
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    asyncio.run(main())
