"""The real worker path: one `agentd worker` process (4 slots, PostgreSQL) draining submitted jobs.

Workload: JOBS jobs of the instant `scripted` agent are submitted over HTTP to an `agentd api` process, each
in its own project; the API is then stopped and ONE `agentd worker` process with AGENTD_WORKERS=4 runs them
all: the claim, the stream (created, `running`, session, two text chunks, `done`, closed: every event
written to the durable log), the result. jobs/s = JOBS / (last finished_at - first started_at), read from the
database. The anchor, in the same run, interleaved round by round, in its own process: pgqueuer 1.6.0 on
asyncpg draining JOBS no-op jobs with K=4 consumers (bench/_pgqueuer.py).

    .venv/bin/python bench/bench_worker.py [--jobs 2000] [--rounds 3] [--profile py-spy|cprofile]

`--profile py-spy` records the worker of the last round with py-spy (`py-spy record --idle`, so time spent
waiting shows up too) into bench-worker.svg / a `--format raw` text; `cprofile` runs the worker under
cProfile and prints its top entries by cumulative and by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PY,
    ROOT,
    Proc,
    agentd_env,
    cpu_line,
    cpu_seconds,
    free_port,
    median,
    processes,
    ratio,
    scratch_database,
    setup_uvloop,
    start_agentd,
    table,
    tmpdir,
    wait_http,
)


async def submit_all(port: int, jobs: int, concurrency: int = 16) -> None:
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    next_i = 0

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < jobs:
            i = next_i
            next_i += 1
            async with http.post(
                f"{base}/projects/p{i}/jobs", json={"prompt": "hi", "provider": "scripted"}
            ) as r:
                if r.status != 202:
                    raise RuntimeError(f"submit answered {r.status}: {await r.text()}")

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))


async def drain_figures(dsn: str) -> tuple[int, int, float]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*),"
            " extract(epoch FROM max(finished_at) - min(started_at)) FROM agentd_jobs"
        )
        row = await cur.fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), float(row[2] or 0.0)


async def agentd_round(
    admin_dsn_kind: str, jobs: int, profile: str | None, out_dir: Path
) -> dict[str, float]:
    async with scratch_database(admin_dsn_kind) as dsn:
        with tmpdir() as d, processes() as procs:
            data = Path(d)
            env = agentd_env(data / "api", AGENTD_DATABASE_URL=dsn, AGENTD_DB_POOL_SIZE="10")
            mig = subprocess.run(
                [PY, "-m", "agentd.cli", "migrate"], env=env, capture_output=True, timeout=60
            )
            if mig.returncode != 0:
                raise RuntimeError(f"agentd migrate failed: {mig.stderr.decode()}")
            port = free_port()
            api = start_agentd(procs, "api", env, port=port, log=data / "api.log")
            await wait_http(port, api)
            await submit_all(port, jobs)
            api.stop()
            wenv = agentd_env(data / "worker", AGENTD_DATABASE_URL=dsn, AGENTD_WORKERS="4")
            args = [PY, "-m", "agentd.cli", "worker"]
            if profile == "cprofile":
                args[1:1] = ["-m", "cProfile", "-o", str(out_dir / "bench-worker.pstats")]
            worker = Proc(args, wenv, log=data / "worker.log")
            procs.append(worker)
            spy = None
            if profile == "py-spy":
                spy_bin = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
                spy = subprocess.Popen(
                    [
                        spy_bin,
                        "record",
                        "--idle",
                        "--pid",
                        str(worker.pid),
                        "--rate",
                        "200",
                        "--format",
                        "raw",
                        "--output",
                        str(out_dir / "bench-worker.pyspy.txt"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            cpu, wall, pg_cpu = await _drained(dsn, worker, jobs)
            if spy is not None:
                spy.send_signal(2)
                spy.wait(30)
            worker.stop()
            ok, _, span = await drain_figures(dsn)
            if ok != jobs:
                raise RuntimeError(f"{jobs - ok} of {jobs} jobs did not succeed:\n{worker.tail()}")
            return {"rate": jobs / span, "cpu": cpu / wall, "pg_cpu_ms_per_job": pg_cpu * 1000 / jobs}


async def _drained(dsn: str, worker: Proc, jobs: int) -> tuple[float, float, float]:
    """Wait until every job is final: the worker's CPU seconds and the wall time since the first job started,
    and the CPU seconds of the worker's database backends."""
    import psycopg

    deadline = time.monotonic() + max(120.0, jobs / 10)
    cpu0: tuple[float, float] | None = None  # CPU time and clock when the first job started
    # One connection for the progress polls (a connection per poll is a backend fork on the database's side
    # every 50 ms, charged to agentd's round).
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watch:
        while True:
            started, finished, total = await _progress(watch)
            if started and cpu0 is None:
                cpu0 = (cpu_seconds(worker.pid), time.monotonic())
            if finished >= total:
                break
            if time.monotonic() > deadline or worker.popen.poll() is not None:
                raise RuntimeError(f"worker did not drain ({finished}/{total}):\n{worker.tail()}")
            await asyncio.sleep(0.05)
        assert cpu0 is not None
        cpu = cpu_seconds(worker.pid) - cpu0[0]
        return cpu, time.monotonic() - cpu0[1], await _backends_cpu(watch)


async def _progress(conn: Any) -> tuple[int, int, int]:
    cur = await conn.execute("SELECT count(started_at), count(finished_at), count(*) FROM agentd_jobs")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


async def _backends_cpu(conn: Any) -> float:
    """CPU seconds used so far by the database's other backends (the worker's connections)."""
    cur = await conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    total = 0.0
    for (pid,) in await cur.fetchall():
        try:
            total += cpu_seconds(int(pid))
        except OSError:
            pass
    return total


async def pgqueuer_round(jobs: int) -> float:
    async with scratch_database("pgq") as dsn:
        proc = await asyncio.create_subprocess_exec(
            PY,
            str(ROOT / "bench" / "_pgqueuer.py"),
            "drain",
            dsn,
            str(jobs),
            "4",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
        if proc.returncode != 0:
            raise RuntimeError("the pgqueuer drain failed")
        return float(json.loads(out)["rate"])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", choices=("py-spy", "cprofile"))
    ap.add_argument("--profile-dir", default=".")
    args = ap.parse_args()
    anchor: list[float] = []
    ours: list[dict[str, float]] = []
    for n in range(args.rounds):  # interleaved: both sides see the same machine weather
        anchor.append(await pgqueuer_round(args.jobs))
        prof = args.profile if n == args.rounds - 1 else None
        ours.append(await agentd_round("worker", args.jobs, prof, Path(args.profile_dir)))
    a = median(anchor)
    r = median([o["rate"] for o in ours])
    cpu = median([o["cpu"] for o in ours])
    pg_ms = median([o["pg_cpu_ms_per_job"] for o in ours])
    print(cpu_line())
    print(
        "rounds (anchor / agentd jobs/s): "
        + ", ".join(f"{x:,.0f} / {o['rate']:,.0f}" for x, o in zip(anchor, ours, strict=True))
    )
    print(
        table(
            f"Real worker drain: {args.jobs} jobs submitted over HTTP, one `agentd worker` "
            f"(4 slots, PostgreSQL); median of {args.rounds} interleaved rounds",
            ["what", "anchor: pgqueuer 1.6.0 asyncpg drain, K=4", "agentd", "ratio", "goal"],
            [
                [
                    "jobs/s, first start → last finish",
                    f"{a:,.0f} jobs/s",
                    f"{r:,.0f} jobs/s",
                    ratio(r, a),
                    "≥ 0.25×",
                ],
                ["worker CPU while draining", "", f"{cpu * 100:.0f} % of one core", "", ""],
                ["database CPU per job (the worker's backends)", "", f"{pg_ms:.2f} ms", "", ""],
            ],
        )
    )
    if args.profile == "cprofile":
        import pstats

        st = pstats.Stats(str(Path(args.profile_dir) / "bench-worker.pstats"))
        st.sort_stats("cumulative").print_stats(25)
        st.sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    setup_uvloop()
    asyncio.run(main())
