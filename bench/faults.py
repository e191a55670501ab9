"""The fault suite (issue 10): real agentd processes, real faults, one table.

Run:  .venv/bin/python bench/faults.py            # the full suite (about 20 minutes on 2 cores)
      .venv/bin/python bench/faults.py --quick    # a few trials of each (about 3 minutes)
      .venv/bin/python bench/faults.py --only kill9,disconnects --kill 10

Needs the machine's PostgreSQL (127.0.0.1:5432, trust; AGENTD_TEST_DATABASE_URL) for a fresh database of its
own, PostgreSQL's server binaries for a throwaway cluster (the "PostgreSQL stopped" rows; the machine's
server is never stopped), and the `claude` CLI (scripts/setup) for the background-process rows. Not part of
the default test run.

Scenarios (each row of the table):
- kill9: `kill -9` of the worker running a job, PostgreSQL, two workers (a replacement is started).
- pg-stop <lease / > lease: the throwaway cluster stopped mid-run for half a lease or 2.5 leases.
- lease (sqlite|postgres): a stand-in for a clock jump: the running job's lease is moved into the past.
- sigterm worker: SIGTERM of the worker running a job (a deploy), a replacement started.
- sigterm serve: SIGTERM of `agentd serve` mid-job, then a restart (embedded SQLite).
- disconnects: clients following one stream of 10,000 events drop their connections at random and resume
  with Last-Event-ID; every client must end with exactly ids 1..10000.
- cancel|timeout|crash + bg: runs of the real `claude` CLI (scripted model server) whose Bash tool leaves
  background processes (one in its own session), ended by a cancel, by their timeout, or by kill -9 of
  `agentd serve` (then restarted).

Columns: lost = a job that did not end `succeeded` (for disconnects: ids a client missed); twice = a job two
of whose runs overlapped in time (from the workers' run.started / run.ended log lines; a killed process's
runs end when it is killed) or that stored two results (disconnects: ids a client got twice); interleaved =
a stream where an older run's event follows a newer run's, numbers have a gap, or a superseded run is not
announced by exactly one `requeued`/`retrying` event (disconnects: ids out of order); ghost = a job still
`running` when everything has settled; orphans = processes of a run alive after its end (and, at the end, any
process carrying the suite's marker); recovery = from the fault (for an outage: from its end) until the
job's next attempt started (0 when the run survived), worst case; goal: within two lease periods.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp
import psycopg
from psycopg.rows import dict_row

from agentd.adapters.postgres.migrate import migrate
from agentd.client import AgentdClient
from agentd.sse import SSEDecoder, aiter_sse
from tests.support.net import free_port
from tests.support.pg_cluster import SERVICE_USER, PgCluster, find_pg_bin
from tests.support.postgres import create_database, drop_database, unique_name

AGENTD = [sys.executable, "-m", "agentd.cli"]
TOKEN = f"faults-{secrets.token_hex(6)}"  # every agentd process of this suite carries AGENTD_FAULTS=<token>

FINAL = {"succeeded", "failed", "cancelled", "timed_out"}


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    trials: int = 0
    lost: int = 0
    twice: int = 0
    interleaved: int = 0
    ghost: int = 0
    orphans: int = 0
    worst_recovery_s: float = 0.0
    limit_s: float | None = None  # two lease periods
    notes: list[str] = field(default_factory=list)

    def recovered(self, seconds: float) -> None:
        self.worst_recovery_s = max(self.worst_recovery_s, seconds)


def table(rows: list[Row]) -> str:
    cols = ["scenario", "trials", "jobs lost", "run twice", "interleaved", "ghost running", "orphans"]
    out = ["| " + " | ".join([*cols, "worst recovery"]) + " |", "|" + "---|" * 8]
    for r in rows:
        rec = f"{r.worst_recovery_s:.2f} s" + (f" (≤ {r.limit_s:g} s)" if r.limit_s else "")
        out.append(
            f"| {r.scenario} | {r.trials} | {r.lost} | {r.twice} | {r.interleaved} | {r.ghost} | {r.orphans} "
            f"| {rec} |"
        )
    notes = [f"- {r.scenario}: {n}" for r in rows for n in r.notes]
    return "\n".join(out + (["", *notes] if notes else []))


# -- processes ----------------------------------------------------------------------------------------------


class Proc:
    def __init__(self, role: str, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.role, self.env, self.log, self.port = role, env, log, port
        args = [*AGENTD, role] + (["--port", str(port)] if port else [])
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=out)
        self.pid = self.proc.pid
        self.killed_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, timeout: float = 30) -> None:
        if self.port is None:
            await until(lambda: b'"agentd.worker_started"' in self.log.read_bytes(), f"{self.log}", timeout)
            return
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.role} exited: {self.log.read_text()[-2000:]}")
                try:
                    async with http.get(f"{self.url}/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await until(healthy, f"{self.role} /healthz ({self.log})", timeout)

    def kill9(self) -> None:
        self.killed_at = time.time()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return -9

    def runs(self) -> dict[str, list[float | None]]:
        """run id → [started, ended] from this process's log (ended None: not logged)."""
        out: dict[str, list[float | None]] = {}
        for line in self.log.read_text(errors="replace").splitlines():
            if '"run.' not in line:
                continue
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if rec.get("event") == "run.started":
                    out.setdefault(rec["run_id"], [None, None])[0] = float(rec["at"])
                elif rec.get("event") == "run.ended":
                    out.setdefault(rec["run_id"], [None, None])[1] = float(rec["at"])
        return out

    def finished(self) -> list[str]:
        jobs = []
        for line in self.log.read_text(errors="replace").splitlines():
            if '"job.finished"' in line:
                with contextlib.suppress(ValueError):
                    jobs.append(json.loads(line).get("job_id", ""))
        return jobs


async def until(check: Callable[[], Any], what: str, timeout: float = 30, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(every)


def base_env(data_dir: Path, lease_s: float, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "AGENTD_DATA_DIR": str(data_dir),
        "AGENTD_PROVIDERS": "scripted",
        "AGENTD_LEASE_S": str(lease_s),
        "AGENTD_HEARTBEAT_S": str(lease_s / 4),
        "AGENTD_SHUTDOWN_GRACE_S": "0.5",
        "AGENTD_LOG_FORMAT": "json",
        "AGENTD_FAULTS": TOKEN,
        **extra,
    }


def marked(key: str, value: str) -> list[int]:
    needle = f"{key}={value}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# -- storage views ------------------------------------------------------------------------------------------


class Store:
    """Read-only looks at jobs and events, straight from the database."""

    def job(self, job_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def events(self, stream_id: str) -> list[tuple[int, str, dict[str, Any], int]]:
        raise NotImplementedError

    def cut_lease(self, job_id: str) -> None:
        raise NotImplementedError


class PgStore(Store):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=3) as c:
            return c.execute(sql, args).fetchall()

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self._rows(
            "SELECT id, status, attempts, worker_id, result FROM agentd_jobs WHERE id = %s", job_id
        )
        return rows[0] if rows else None

    def events(self, stream_id: str) -> list[tuple[int, str, dict[str, Any], int]]:
        rows = self._rows(
            "SELECT seq, type, data, run FROM agentd_events WHERE stream_id = %s ORDER BY seq", stream_id
        )
        return [(r["seq"], r["type"], r["data"], r["run"]) for r in rows]

    def cut_lease(self, job_id: str) -> None:
        self._rows(
            "UPDATE agentd_jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s RETURNING id",
            job_id,
        )


class SqliteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self._db() as db:
            r = db.execute("SELECT id, status, attempts, worker_id, result FROM jobs WHERE id = ?", (job_id,))
            row = r.fetchone()
            return dict(row) if row else None

    def events(self, stream_id: str) -> list[tuple[int, str, dict[str, Any], int]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT seq, type, data, run FROM events WHERE stream_id = ? ORDER BY seq", (stream_id,)
            ).fetchall()
            return [(r["seq"], r["type"], json.loads(r["data"]), r["run"]) for r in rows]

    def cut_lease(self, job_id: str) -> None:
        with self._db() as db:
            db.execute("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (job_id,))
            db.commit()


# -- judging ------------------------------------------------------------------------------------------------


@dataclass
class Trial:
    job_id: str
    stream_id: str
    fault_at: float  # when the fault happened (or, for an outage, ended)
    attempt: int  # the attempt that was running when it happened


def stream_ok(events: list[tuple[int, str, dict[str, Any], int]]) -> bool:
    """Numbers 1..n; runs never go back; each change of run after the first is announced by exactly one
    `requeued`/`retrying` status event written as the new run."""
    if [e[0] for e in events] != list(range(1, len(events) + 1)):
        return False
    current = 0
    announced = 0
    changes = 0
    for _, etype, data, run in events:
        if run == 0:
            continue
        if run < current:
            return False
        if run > current:
            if current > 0:
                changes += 1
            current = run
        if etype == "status" and data.get("status") in ("requeued", "retrying"):
            announced += 1
    return announced == changes


def run_spans(procs: list[Proc]) -> dict[str, list[tuple[int, float, float]]]:
    """job id → (attempt, started, ended) of each run any of `procs` logged; a run of a killed process ends
    when it was killed, one still going ends now."""
    out: dict[str, list[tuple[int, float, float]]] = {}
    now = time.time()
    for p in procs:
        for run_id, (start, end) in p.runs().items():
            if start is None:
                continue
            stop = end if end is not None else (p.killed_at if p.killed_at is not None else now)
            job_id, attempt = run_id.rsplit(".", 1)
            out.setdefault(job_id, []).append((int(attempt), start, stop))
    return out


def judge(row: Row, trials: list[Trial], store: Store, procs: list[Proc]) -> None:
    spans_of = run_spans(procs)
    finished: dict[str, int] = {}
    for p in procs:
        for job_id in p.finished():
            finished[job_id] = finished.get(job_id, 0) + 1
    for t in trials:
        row.trials += 1
        job = store.job(t.job_id)
        status = job["status"] if job else "missing"
        if status == "running":
            row.ghost += 1
        elif status != "succeeded":
            row.lost += 1
            row.notes.append(f"{t.job_id} ended {status}: {job.get('result') if job else ''}")
        spans = sorted((start, stop) for _, start, stop in spans_of.get(t.job_id, []))
        if any(b[0] < a[1] for a, b in itertools.pairwise(spans)) or finished.get(t.job_id, 0) > 1:
            row.twice += 1
            row.notes.append(f"{t.job_id}: runs {spans}")
        events = store.events(t.stream_id)
        if not stream_ok(events):
            row.interleaved += 1
            row.notes.append(f"{t.stream_id}: {[(s, ty, d.get('status'), r) for s, ty, d, r in events]}")
        later = [start for attempt, start, _ in spans_of.get(t.job_id, []) if attempt > t.attempt]
        if later:
            row.recovered(max(0.0, min(later) - t.fault_at))


def orphans_of_suite(live: list[Proc]) -> list[int]:
    mine = {p.pid for p in live if p.proc.poll() is None}
    return [pid for pid in marked("AGENTD_FAULTS", TOKEN) if pid not in mine]


# -- helpers for jobs ---------------------------------------------------------------------------------------


async def submit(url: str, project: str, prompt: str, **kw: Any) -> dict[str, Any]:
    async with AgentdClient(url) as c:
        for _ in range(100):
            try:
                return await c.submit(project, prompt, **kw)
            except Exception:  # the API may answer 503 while storage comes back
                await asyncio.sleep(0.2)
        raise RuntimeError("could not submit")


async def running_attempt(store: Store, job: dict[str, Any], timeout: float = 30) -> int:
    """Wait until the job's run has said `running` in its stream; returns the attempt."""
    found: list[int] = []

    def check() -> bool:
        for _, etype, data, _run in store.events(job["stream_id"]):
            if etype == "status" and data.get("status") == "running":
                found.append(int(data.get("attempt") or 0))
                return True
        return False

    await until(check, f"job {job['job_id']} to run", timeout, every=0.05)
    return found[-1]


async def settled(store: Store, job_ids: list[str], timeout: float) -> None:
    def check() -> bool:
        for job_id in job_ids:
            j = store.job(job_id)
            if j is None or j["status"] not in FINAL:
                return False
        return True

    with contextlib.suppress(TimeoutError):
        await until(check, "jobs to end", timeout, every=0.2)


def holder(store: Store, job_id: str, procs: list[Proc]) -> Proc | None:
    j = store.job(job_id)
    if not j or not j["worker_id"]:
        return None
    pid = int(str(j["worker_id"]).split(":")[1])
    return next((p for p in procs if p.pid == pid), None)


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    name = unique_name("faults")
    dsn = create_database(name)
    try:
        await migrate(dsn)
        yield dsn
    finally:
        drop_database(name)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[PgCluster]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise RuntimeError("initdb not found: install PostgreSQL's server binaries or set AGENTD_TEST_PG_BIN")
    run_as = SERVICE_USER if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="agentd-faults-pg-"))
    try:
        if run_as is not None:
            user = pwd.getpwnam(run_as)
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = PgCluster(bin_dir, root, free_port(), run_as)
        cluster.init()
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running:
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Fleet:
    """`agentd api` + `agentd worker`s on one PostgreSQL database."""

    def __init__(self, dsn: str, work: Path, lease_s: float) -> None:
        self.dsn, self.work, self.lease_s = dsn, work, lease_s
        self.procs: list[Proc] = []
        self.api: Proc | None = None

    def env(self, name: str) -> dict[str, str]:
        return base_env(self.work / name, self.lease_s, AGENTD_DATABASE_URL=self.dsn)

    async def start_api(self) -> Proc:
        self.api = Proc("api", self.env("api"), self.work / "api.log", free_port())
        self.procs.append(self.api)
        await self.api.ready()
        return self.api

    async def start_worker(self, wait: bool = True) -> Proc:
        n = len(self.procs)
        w = Proc("worker", self.env(f"worker{n}"), self.work / f"worker{n}.log")
        self.procs.append(w)
        if wait:
            await w.ready()
        return w

    def workers(self) -> list[Proc]:
        return [p for p in self.procs if p.role == "worker" and p.proc.poll() is None]

    def close(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                p.stop(signal.SIGKILL, 10)


# -- scenarios ----------------------------------------------------------------------------------------------


async def kill9(n: int, work: Path) -> Row:
    lease = 3.0
    row = Row("kill -9 of a worker mid-job (PostgreSQL, 2 workers)", limit_s=2 * lease)
    async with fresh_database() as dsn:
        fleet, store = Fleet(dsn, work / "kill9", lease), PgStore(dsn)
        (work / "kill9").mkdir()
        try:
            api = await fleet.start_api()
            await fleet.start_worker()
            await fleet.start_worker()
            trials = []
            for i in range(n):
                job = await submit(api.url, f"k{i}", "sleep:1")
                attempt = await running_attempt(store, job)
                victim = holder(store, job["job_id"], fleet.procs)
                if victim is None:  # already done: not a trial of this fault
                    continue
                victim.kill9()
                trials.append(
                    Trial(job["job_id"], job["stream_id"], victim.killed_at or time.time(), attempt)
                )
                await fleet.start_worker(wait=False)  # two workers again
                await settled(store, [job["job_id"]], 6 * lease + 10)
            await settled(store, [t.job_id for t in trials], 10)
            judge(row, trials, store, fleet.procs)
        finally:
            fleet.close()
        row.orphans += len(orphans_of_suite([]))
    return row


async def pg_stop(n: int, work: Path) -> list[Row]:
    lease = 4.0
    rows = [
        Row(f"PostgreSQL stopped mid-run for {lease / 2:g} s (< lease {lease:g} s)", limit_s=2 * lease),
        Row(f"PostgreSQL stopped mid-run for {lease * 2.5:g} s (> lease)", limit_s=2 * lease),
    ]
    with throwaway_cluster() as cluster:
        dsn = cluster.dsn()
        await migrate(dsn)
        store = PgStore(dsn)
        for row, outage in zip(rows, (lease / 2, lease * 2.5), strict=True):
            sub = work / f"pgstop{outage:g}"
            sub.mkdir()
            fleet = Fleet(dsn, sub, lease)
            try:
                api = await fleet.start_api()
                await fleet.start_worker()
                await fleet.start_worker()
                trials = []
                for i in range(n):
                    job = await submit(api.url, f"s{i}", "sleep:5")
                    attempt = await running_attempt(store, job)
                    await asyncio.sleep(0.5)
                    cluster.stop("fast")
                    await asyncio.sleep(outage)
                    cluster.start()
                    trials.append(Trial(job["job_id"], job["stream_id"], time.time(), attempt))
                    await settled(store, [job["job_id"]], 6 * lease + 20)
                judge(row, trials, store, fleet.procs)
                survived = sum(1 for t in trials if (store.job(t.job_id) or {}).get("attempts") == t.attempt)
                row.notes.append(f"{survived} of {len(trials)} runs survived the outage (no new attempt)")
            finally:
                fleet.close()
    return rows


async def lease_expiry(n: int, work: Path) -> list[Row]:
    lease = 4.0
    rows = []
    # SQLite: one `agentd serve`.
    row = Row("lease expired under a running job (SQLite, agentd serve)", limit_s=2 * lease)
    sub = work / "lease-sqlite"
    sub.mkdir()
    serve = Proc("serve", base_env(sub / "data", lease), sub / "serve.log", free_port())
    try:
        await serve.ready()
        store: Store = SqliteStore(sub / "data" / "queue.sqlite3")
        trials = []
        for i in range(n):
            job = await submit(serve.url, f"l{i}", "sleep:2")
            attempt = await running_attempt(store, job)
            store.cut_lease(job["job_id"])
            trials.append(Trial(job["job_id"], job["stream_id"], time.time(), attempt))
            await settled(store, [job["job_id"]], 6 * lease + 10)
        judge(row, trials, store, [serve])
        reruns = sum(1 for t in trials if (store.job(t.job_id) or {}).get("attempts", 0) > t.attempt)
        row.notes.append(f"{reruns} of {len(trials)} jobs ran again as a next attempt")
    finally:
        serve.stop(signal.SIGKILL, 10)
    rows.append(row)
    # PostgreSQL: api + 2 workers.
    row = Row("lease expired under a running job (PostgreSQL, 2 workers)", limit_s=2 * lease)
    async with fresh_database() as dsn:
        sub = work / "lease-pg"
        sub.mkdir()
        fleet, store = Fleet(dsn, sub, lease), PgStore(dsn)
        try:
            api = await fleet.start_api()
            await fleet.start_worker()
            await fleet.start_worker()
            trials = []
            for i in range(n):
                job = await submit(api.url, f"l{i}", "sleep:2")
                attempt = await running_attempt(store, job)
                store.cut_lease(job["job_id"])
                trials.append(Trial(job["job_id"], job["stream_id"], time.time(), attempt))
                await settled(store, [job["job_id"]], 6 * lease + 10)
            judge(row, trials, store, fleet.procs)
            reruns = sum(1 for t in trials if (store.job(t.job_id) or {}).get("attempts", 0) > t.attempt)
            row.notes.append(f"{reruns} of {len(trials)} jobs ran again as a next attempt")
        finally:
            fleet.close()
    rows.append(row)
    return rows


async def sigterm_worker(n: int, work: Path) -> Row:
    lease = 2.0
    row = Row("SIGTERM of a worker mid-job (PostgreSQL, 2 workers)", limit_s=2 * lease)
    async with fresh_database() as dsn:
        sub = work / "sigterm-worker"
        sub.mkdir()
        fleet, store = Fleet(dsn, sub, lease), PgStore(dsn)
        try:
            api = await fleet.start_api()
            await fleet.start_worker()
            await fleet.start_worker()
            trials = []
            for i in range(n):
                job = await submit(api.url, f"t{i}", "sleep:3")
                attempt = await running_attempt(store, job)
                victim = holder(store, job["job_id"], fleet.procs)
                if victim is None:
                    continue
                t0 = time.time()
                rc = victim.stop(signal.SIGTERM, 30)
                if rc != 0:
                    row.notes.append(f"worker exited {rc} on SIGTERM")
                trials.append(Trial(job["job_id"], job["stream_id"], t0, attempt))
                await fleet.start_worker(wait=False)
                await settled(store, [job["job_id"]], 6 * lease + 10)
            judge(row, trials, store, fleet.procs)
            cancelled = sum(1 for t in trials if (store.job(t.job_id) or {}).get("status") == "cancelled")
            row.notes.append(f"{cancelled} jobs ended cancelled (a deploy must not cancel)")
        finally:
            fleet.close()
    return row


async def sigterm_serve(n: int, work: Path) -> Row:
    lease = 2.0
    row = Row("SIGTERM of agentd serve mid-job, then a restart (SQLite)", limit_s=2 * lease)
    sub = work / "sigterm-serve"
    sub.mkdir()
    env = base_env(sub / "data", lease)
    port = free_port()
    store = SqliteStore(sub / "data" / "queue.sqlite3")
    procs: list[Proc] = []
    trials = []
    try:
        serve = Proc("serve", env, sub / "serve0.log", port)
        procs.append(serve)
        await serve.ready()
        for i in range(n):
            job = await submit(serve.url, f"t{i}", "sleep:2")
            attempt = await running_attempt(store, job)
            t0 = time.time()
            rc = serve.stop(signal.SIGTERM, 30)
            if rc != 0:
                row.notes.append(f"serve exited {rc} on SIGTERM")
            trials.append(Trial(job["job_id"], job["stream_id"], t0, attempt))
            serve = Proc("serve", env, sub / f"serve{i + 1}.log", port)
            procs.append(serve)
            await serve.ready()
            await settled(store, [job["job_id"]], 6 * lease + 10)
        judge(row, trials, store, procs)
        cancelled = sum(1 for t in trials if (store.job(t.job_id) or {}).get("status") == "cancelled")
        row.notes.append(f"{cancelled} jobs ended cancelled; restart included in the recovery time")
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.stop(signal.SIGKILL, 10)
    return row


@dataclass
class Follower:
    """A client following one stream that drops its connection after the given numbers of events and
    resumes with Last-Event-ID (as an EventSource does); also resumes when the server cuts it off."""

    url: str
    cuts: list[int]
    got: list[int] = field(default_factory=list)
    worst_s: float = 0.0  # reconnect → first event
    cut_by_server: int = 0

    async def follow(self) -> None:
        async with aiohttp.ClientSession() as http:
            while not await self._connection(http):
                pass

    async def _connection(self, http: aiohttp.ClientSession) -> bool:
        """One connection; True when the stream ended."""
        last = self.got[-1] if self.got else 0
        headers = {"Last-Event-ID": str(last)} if last else {}
        t0 = time.monotonic()
        async with http.get(self.url, headers=headers) as resp:
            async for ev in aiter_sse(resp.content.iter_any(), decoder=SSEDecoder()):
                if ev.event == "error":
                    self.cut_by_server += 1
                    return False
                if not ev.id:
                    continue
                if last == (self.got[-1] if self.got else 0):
                    self.worst_s = max(self.worst_s, time.monotonic() - t0)
                self.got.append(int(ev.id))
                if ev.event == "done":
                    return True
                if self.cuts and len(self.got) >= self.cuts[0]:
                    self.cuts.pop(0)
                    return False  # the client drops the connection (the response is closed)
        return False


async def disconnects(total: int, events: int, clients: int, work: Path) -> Row:
    row = Row(f"{total} random client disconnects, one stream of {events} events (Last-Event-ID resume)")
    sub = work / "disconnects"
    sub.mkdir()
    serve = Proc("serve", base_env(sub / "data", 30.0), sub / "serve.log", free_port())
    try:
        await serve.ready()
        # queued, running, session, the ticks, done: `events` in all
        job = await submit(serve.url, "d", f"ticks:{events - 4}:1", timeout_s=3600)
        per = total // clients
        rng = random.Random(7)
        followers = [
            Follower(job["stream_url"], sorted(rng.sample(range(1, events), per))) for _ in range(clients)
        ]
        await asyncio.gather(*(f.follow() for f in followers))
    finally:
        serve.stop(signal.SIGKILL, 10)
    want = list(range(1, events + 1))
    row.trials = per * clients
    for f in followers:
        row.lost += len(set(want) - set(f.got))
        row.twice += len(f.got) - len(set(f.got))
        row.interleaved += sum(1 for a, b in itertools.pairwise(f.got) if b <= a)
        row.recovered(f.worst_s)
    row.notes.append(
        f"{clients} clients, {per} disconnects each; clients that ended with exactly ids 1..{events}: "
        f"{sum(1 for f in followers if f.got == want)} of {clients}; "
        f"{sum(f.cut_by_server for f in followers)} more cut-offs by the server (slow subscribers), resumed"
    )
    return row


def _claude_bin() -> str | None:
    local = ROOT / ".tools" / "node" / "node_modules" / ".bin" / "claude"
    return os.environ.get("AGENTD_CLAUDE_BIN") or (str(local) if local.exists() else shutil.which("claude"))


@dataclass
class ClaudeServe:
    """`agentd serve` with the real claude CLI against the scripted model server."""

    env: dict[str, str]
    work: Path
    port: int = field(default_factory=free_port)
    procs: list[Proc] = field(default_factory=list)

    async def start(self) -> Proc:
        p = Proc("serve", self.env, self.work / f"serve{len(self.procs)}.log", self.port)
        self.procs.append(p)
        await p.ready()
        return p

    @property
    def store(self) -> SqliteStore:
        return SqliteStore(Path(self.env["AGENTD_DATA_DIR"]) / "queue.sqlite3")


# The daemon_tool scenario's processes (tests/support/fake_anthropic.py): found by their command lines, which
# nothing else uses (a jailed run's environment carries no marker agentd could look for).
DAEMON_SLEEPS = {f"/bin/sleep {n}" for n in (301, 302, 303, 304)}


def daemon_sleeps() -> set[int]:
    found = set()
    for entry in os.scandir("/proc"):
        if (
            entry.name.isdigit()
            and _cmdline(int(entry.name)).replace(b"\0", b" ").decode(errors="replace").strip()
            in DAEMON_SLEEPS
        ):
            found.add(int(entry.name))
    return found


def tools_running(before: set[int]) -> bool:
    return bool(daemon_sleeps() - before)


async def left_behind(before: set[int]) -> int:
    """The tool's processes still alive 5 s after the run's end (then killed: never left on the machine)."""
    with contextlib.suppress(TimeoutError):
        await until(lambda: not daemon_sleeps() - before, "processes to go", 5, every=0.2)
    pids = sorted(daemon_sleeps() - before)
    kill_all(pids)
    return len(pids)


async def _bg_trial(srv: Proc, store: Store, project: str, row: Row, want: str, **kw: Any) -> None:
    """A run whose tool starts background processes, ended by a cancel (`want` cancelled) or its timeout."""
    before = daemon_sleeps()
    async with AgentdClient(srv.url) as c:
        job = await c.submit(project, "SCENARIO:daemon_tool", **kw)
        await until(lambda: tools_running(before), "the tool to start", 60)
        if want == "cancelled":
            await asyncio.sleep(0.5)
            await c.cancel(project, job["job_id"])
        await settled(store, [job["job_id"]], 60)
    row.trials += 1
    row.orphans += await left_behind(before)
    if (store.job(job["job_id"]) or {}).get("status") != want:
        row.lost += 1


async def _bg_crash(serve: ClaudeServe, srv: Proc, project: str, row: Row) -> Proc:
    """kill -9 of serve while the tool runs; the restarted serve reaps what the crash left and runs the job
    again (then cancelled here)."""
    before = daemon_sleeps()
    async with AgentdClient(srv.url) as c:
        job = await c.submit(project, "SCENARIO:daemon_tool")
    await until(lambda: tools_running(before), "the tool to start", 60)
    await asyncio.sleep(0.5)
    first = daemon_sleeps() - before  # attempt 1's processes
    srv.kill9()
    t0 = time.time()
    srv = await serve.start()  # reaps what the crash left, and runs the job again
    row.trials += 1
    with contextlib.suppress(TimeoutError):
        await until(lambda: not first & daemon_sleeps(), "attempt 1's processes to go", 5, every=0.2)
    left = sorted(first & daemon_sleeps())
    kill_all(left)
    row.orphans += len(left)
    await until(
        lambda: (serve.store.job(job["job_id"]) or {}).get("attempts", 0) >= 2, "the next attempt", 60
    )
    row.recovered(time.time() - t0)
    async with AgentdClient(srv.url) as c:
        await c.cancel(project, job["job_id"])
    await settled(serve.store, [job["job_id"]], 30)
    row.orphans += await left_behind(before | first)
    return srv


async def background_processes(n: int, work: Path) -> list[Row]:
    from tests.support.fake_anthropic import FakeAnthropic

    claude = _claude_bin()
    rows = [
        Row("cancel of a run whose tool left background processes (claude CLI)"),
        Row("timeout of a run whose tool left background processes (claude CLI)"),
        Row("kill -9 of agentd serve mid-tool, then a restart (claude CLI)", limit_s=12.0),
    ]
    if claude is None:
        for r in rows:
            r.notes.append("skipped: the claude CLI is not installed (scripts/setup)")
        return rows
    sub = work / "bg"
    sub.mkdir()
    async with FakeAnthropic() as model:
        env = base_env(
            sub / "data",
            6.0,
            AGENTD_PROVIDERS="claude-code",
            AGENTD_CLAUDE_BIN=claude,
            ANTHROPIC_BASE_URL=model.base_url,
            ANTHROPIC_API_KEY="sk-fake",
            CLAUDE_CODE_MAX_RETRIES="1",
        )
        serve = ClaudeServe(env, sub)
        try:
            srv = await serve.start()
            for i in range(n):
                await _bg_trial(srv, serve.store, f"c{i}", rows[0], "cancelled")
                await _bg_trial(srv, serve.store, f"t{i}", rows[1], "timed_out", timeout_s=12)
            for i in range(n):
                srv = await _bg_crash(serve, srv, f"k{i}", rows[2])
        finally:
            for p in serve.procs:
                if p.proc.poll() is None:
                    p.stop(signal.SIGTERM, 30)
    rows[2].notes.append("recovery includes the restart of agentd serve (limit: two 6 s leases)")
    return rows


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# -- main ---------------------------------------------------------------------------------------------------

SCENARIOS = ("kill9", "pg-stop", "lease", "sigterm", "disconnects", "background")


async def run(args: argparse.Namespace) -> list[Row]:
    only = set(args.only.split(",")) if args.only else set(SCENARIOS)
    unknown = only - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    work = Path(tempfile.mkdtemp(prefix="agentd-faults-"))
    rows: list[Row] = []
    steps: list[tuple[str, Callable[[], Awaitable[Row | list[Row]]]]] = [
        ("kill9", lambda: kill9(args.kill, work)),
        ("pg-stop", lambda: pg_stop(args.pg_stop, work)),
        ("lease", lambda: lease_expiry(args.lease, work)),
        ("sigterm", lambda: sigterm_worker(args.sigterm, work)),
        ("sigterm", lambda: sigterm_serve(args.sigterm, work)),
        ("disconnects", lambda: disconnects(args.disconnects, args.events, args.clients, work)),
        ("background", lambda: background_processes(args.background, work)),
    ]
    try:
        for name, step in steps:
            if name not in only:
                continue
            t0 = time.monotonic()
            print(f"faults: {name}…", file=sys.stderr, flush=True)
            try:
                got = await step()
            except Exception as e:  # a scenario that could not run is a row that says so, not a lost table
                got = Row(f"{name}: could not run", lost=1, notes=[f"{type(e).__name__}: {e}"])
            for r in got if isinstance(got, list) else [got]:
                rows.append(r)
                print(f"faults: {r.scenario}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
        left = orphans_of_suite([])
        if left:
            kill_all(left)
            rows.append(Row("processes of the suite left at the end", orphans=len(left)))
    finally:
        if args.keep:
            print(f"faults: logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few trials of each scenario")
    p.add_argument("--only", help=f"comma-separated: {', '.join(SCENARIOS)}")
    p.add_argument("--kill", type=int, help="kill -9 trials (default 50)")
    p.add_argument("--pg-stop", type=int, help="PostgreSQL stops per duration (default 5)")
    p.add_argument("--lease", type=int, help="lease expiries per queue (default 20)")
    p.add_argument("--sigterm", type=int, help="SIGTERMs of a worker and of serve (default 20 each)")
    p.add_argument("--disconnects", type=int, help="client disconnects (default 1000)")
    p.add_argument("--events", type=int, help="events in the followed stream (default 10000)")
    p.add_argument("--clients", type=int, default=20, help="concurrent clients (default 20)")
    p.add_argument("--background", type=int, help="cancel/timeout/crash trials each (default 3)")
    p.add_argument("--json", help="also write the rows as JSON to this file")
    p.add_argument("--keep", action="store_true", help="keep the processes' logs")
    args = p.parse_args()
    quick = {
        "kill": 5,
        "pg_stop": 1,
        "lease": 3,
        "sigterm": 3,
        "disconnects": 100,
        "events": 2000,
        "background": 1,
    }
    full = {
        "kill": 50,
        "pg_stop": 5,
        "lease": 20,
        "sigterm": 20,
        "disconnects": 1000,
        "events": 10000,
        "background": 3,
    }
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    t0 = time.monotonic()
    rows = asyncio.run(run(args))
    print(table(rows))
    print(f"\n(total {time.monotonic() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    bad = any(r.lost or r.twice or r.interleaved or r.ghost or r.orphans for r in rows)
    slow = any(r.limit_s and r.worst_recovery_s > r.limit_s for r in rows)
    return 1 if bad or slow else 0


if __name__ == "__main__":
    sys.exit(main())
