"""Submit → first event latency, black-box: agentd in its own processes, this process the HTTP client.

Set-ups, on loopback, the instant `scripted` agent:
  - embedded: one `agentd serve` process (SQLite queue, its own event streams, in-process workers);
  - PostgreSQL, fleet layout: an `agentd api` process and an `agentd worker` process.
JOBS jobs are submitted one after another (each after the previous one's `done`). From the start of the
POST, the client times the first streamed event (`queued`, written at submit), the worker's `running`, the
agent's first event and `done`. Anchor, same run: pgqueuer 1.6.0 on asyncpg, enqueue → handler start, producer
and consumer in separate processes (bench/_pgqueuer.py latency).

    .venv/bin/python bench/bench_latency.py [--jobs 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PY,
    ROOT,
    agentd_env,
    cpu_line,
    free_port,
    pct,
    processes,
    scratch_database,
    setup_uvloop,
    start_agentd,
    table,
    tmpdir,
    wait_http,
)

MARKS = ("first event", "running", "agent event", "done")
WARMUP = 20


async def drive(port: int, jobs: int) -> dict[str, list[float]]:
    import time

    import aiohttp

    from agentd.sse import SSEDecoder

    base = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {k: [] for k in MARKS}
    async with aiohttp.ClientSession() as http:
        for i in range(jobs + WARMUP):  # the first ones warm up pools, caches and plans
            t0 = time.perf_counter()
            async with http.post(f"{base}/projects/bench/jobs", json={"prompt": "hi"}) as r:
                job = await r.json()
            seen: dict[str, float] = {}
            dec = SSEDecoder()
            async with http.get(job["stream_url"]) as r:
                async for chunk in r.content.iter_any():
                    t = time.perf_counter() - t0
                    for ev in dec.feed(chunk):
                        seen.setdefault("first event", t)
                        if ev.event == "status" and '"running"' in ev.data:
                            seen.setdefault("running", t)
                        if ev.event == "session":
                            seen.setdefault("agent event", t)
                        if ev.event == "done":
                            seen["done"] = t
                    if "done" in seen:
                        break
            if i >= WARMUP:
                for k in MARKS:
                    out[k].append(seen[k])
    return out


async def embedded(jobs: int) -> dict[str, list[float]]:
    with tmpdir() as d, processes() as procs:
        port = free_port()
        p = start_agentd(procs, "serve", agentd_env(Path(d) / "data"), port=port, log=Path(d) / "serve.log")
        await wait_http(port, p)
        return await drive(port, jobs)


async def fleet(jobs: int) -> dict[str, list[float]]:
    async with scratch_database("latency") as dsn:
        with tmpdir() as d, processes() as procs:
            env = agentd_env(Path(d) / "api", AGENTD_DATABASE_URL=dsn)
            mig = await asyncio.create_subprocess_exec(PY, "-m", "agentd.cli", "migrate", env=env)
            if await mig.wait() != 0:
                raise RuntimeError("agentd migrate failed")
            port = free_port()
            api = start_agentd(procs, "api", env, port=port, log=Path(d) / "api.log")
            wenv = agentd_env(Path(d) / "worker", AGENTD_DATABASE_URL=dsn, AGENTD_WORKERS="4")
            start_agentd(procs, "worker", wenv, log=Path(d) / "worker.log")
            await wait_http(port, api)
            return await drive(port, jobs)


async def anchor(jobs: int) -> dict[str, float]:
    async with scratch_database("pgqlat") as dsn:
        proc = await asyncio.create_subprocess_exec(
            PY,
            str(ROOT / "bench" / "_pgqueuer.py"),
            "latency",
            dsn,
            str(jobs),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        if proc.returncode != 0:
            raise RuntimeError("the pgqueuer latency run failed")
        return dict(json.loads(out))


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300)
    args = ap.parse_args()
    pgq = await anchor(args.jobs)
    pg = await fleet(args.jobs)
    emb = await embedded(args.jobs)
    print(cpu_line())
    rows = [
        [
            "submit → first event, PostgreSQL (api + worker processes)",
            f"{ms(pgq['p50'])} / {ms(pgq['p99'])}",
            f"{ms(pct(pg['first event'], 0.5))} / {ms(pct(pg['first event'], 0.99))}",
            f"{pct(pg['first event'], 0.5) / pgq['p50']:.1f}× / "
            f"{pct(pg['first event'], 0.99) / pgq['p99']:.1f}×",
            "≤ 5 ms / ≤ 20 ms",
        ],
        [
            "submit → first event, embedded (`agentd serve`)",
            "",
            f"{ms(pct(emb['first event'], 0.5))} / {ms(pct(emb['first event'], 0.99))}",
            "",
            "≤ 5 ms / ≤ 20 ms",
        ],
    ]
    for name, res in (("PostgreSQL", pg), ("embedded", emb)):
        for k in MARKS[1:]:
            rows.append(
                [f"  {name}: submit → {k}", "", f"{ms(pct(res[k], 0.5))} / {ms(pct(res[k], 0.99))}", "", ""]
            )
    print(
        table(
            f"Latency: {args.jobs} jobs one after another from a separate client process, p50 / p99",
            ["what", "anchor: pgqueuer 1.6.0 asyncpg, enqueue → handler", "agentd", "ratio", "goal"],
            rows,
        )
    )


if __name__ == "__main__":
    setup_uvloop()
    asyncio.run(main())
