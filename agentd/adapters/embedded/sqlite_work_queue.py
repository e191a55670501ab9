"""Embedded work queue on SQLite (stdlib), for one agentd process without a database server.

Durable: every change is committed before the call returns (WAL, synchronous=NORMAL), so a restart loses no
job. Calls run in a worker thread so the event loop never blocks on disk; every change is one
`BEGIN IMMEDIATE` transaction, so checks and writes never interleave. Leases work as in the PostgreSQL
queue (a heartbeat renews them, `recover` returns expired ones to the queue), even though one process owns
this file: a worker stuck without heartbeats loses its job the same way everywhere.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from agentd.domain.errors import IdempotencyConflict, JobNotFound, ProjectBusy, QueueUnavailable
from agentd.domain.models import AgentRequest, AgentResult, Job, JobStatus
from agentd.ports.work_queue import BusyPolicy, JobFilter, Limits, WorkQueue

T = TypeVar("T")
SCHEMA_VERSION = 1
MAX_BACKOFF_S = 600.0
_COLUMNS = {  # schema 1; a file from before schema 1 gets the missing columns added
    "seq": "INTEGER PRIMARY KEY AUTOINCREMENT",
    "id": "TEXT NOT NULL UNIQUE",
    "project_id": "TEXT NOT NULL",
    "provider": "TEXT NOT NULL",
    "stream_id": "TEXT NOT NULL",
    "request": "TEXT NOT NULL",
    "status": "TEXT NOT NULL",
    "created_at": "TEXT NOT NULL",
    "started_at": "TEXT",
    "finished_at": "TEXT",
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "max_attempts": "INTEGER NOT NULL DEFAULT 3",
    "run_after": "REAL NOT NULL DEFAULT 0",  # epoch seconds
    "cancel_requested": "INTEGER NOT NULL DEFAULT 0",
    "worker_id": "TEXT",
    "lease_expires_at": "REAL",  # epoch seconds; NULL on a pre-schema-1 running job: recover() takes it
    "idempotency_key": "TEXT",
    "request_hash": "TEXT",
    "last_error": "TEXT",
    "result": "TEXT",
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_project ON jobs(project_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(project_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
"""
_CANCELLED = AgentResult(status="cancelled", error="cancelled before it started").model_dump_json()
_seen_generation: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar(
    "agentd_sqlite_seen_generation", default=None
)


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def _now() -> str:
    return _iso(datetime.now(UTC))


def _bound(dt: datetime) -> str:
    """A filter bound as stored text; a naive datetime means UTC."""
    return _iso(dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt)


def request_hash(request: AgentRequest) -> str:
    return hashlib.sha256(request.model_dump_json().encode()).hexdigest()


def _row_to_job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        project_id=row["project_id"],
        provider=row["provider"],
        stream_id=row["stream_id"],
        request=AgentRequest.model_validate_json(row["request"]),
        status=JobStatus(row["status"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        started_at=datetime.fromisoformat(row["started_at"]) if row["started_at"] else None,
        finished_at=datetime.fromisoformat(row["finished_at"]) if row["finished_at"] else None,
        attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]),
        worker_id=row["worker_id"],
        result=AgentResult.model_validate_json(row["result"]) if row["result"] else None,
    )


class SqliteWorkQueue(WorkQueue):
    recover_all_at_start = True

    def __init__(
        self, path: Path, *, lease_s: float = 30.0, max_attempts: int = 3, retry_base_s: float = 2.0
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a commit survives any crash of the process (the only writer); only an OS crash or
        # power loss can lose the last commits. FULL would fsync every enqueue (~3 ms each).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._closed = False
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self._generation = 0
        self._wake = asyncio.Event()
        self._tx(self._migrate)

    def _migrate(self) -> None:
        if self._db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        cols = ", ".join(f"{name} {decl}" for name, decl in _COLUMNS.items())
        self._db.execute(f"CREATE TABLE IF NOT EXISTS jobs ({cols})")
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for name, decl in _COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
        for stmt in _INDEXES.split(";"):
            if stmt.strip():
                self._db.execute(stmt)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def _run(self, fn: Callable[[], T]) -> T:
        """Run `fn` as one transaction, in a thread."""
        return await asyncio.to_thread(self._tx, fn)

    def _tx(self, fn: Callable[[], T]) -> T:
        with self._lock:
            if self._closed:
                raise QueueUnavailable("the embedded queue is closed (agentd is shutting down)")
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    def _fetch(self, job_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row

    def _job(self, job_id: str) -> Job:
        row = self._fetch(job_id)
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return _row_to_job(row)

    def _notify(self) -> None:
        self._generation += 1
        self._wake.set()
        self._wake = asyncio.Event()

    async def enqueue(
        self,
        request: AgentRequest,
        *,
        provider: str,
        job_id: str,
        stream_id: str,
        idempotency_key: str | None = None,
        busy: BusyPolicy = "enqueue",
    ) -> tuple[Job, bool]:
        digest = request_hash(request) if idempotency_key is not None else None

        def op() -> tuple[Job, bool]:
            if idempotency_key is not None:
                row = self._db.execute(
                    "SELECT * FROM jobs WHERE project_id = ? AND idempotency_key = ?",
                    (request.project_id, idempotency_key),
                ).fetchone()
                if row is not None:
                    if row["request_hash"] != digest:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {idempotency_key!r} was already used in project "
                            f"{request.project_id!r} with a different request (job {row['id']})",
                            job_id=row["id"],
                        )
                    return _row_to_job(row), False
            if (
                busy == "reject"
                and self._db.execute(
                    "SELECT 1 FROM jobs WHERE project_id = ? AND status IN ('queued', 'running') LIMIT 1",
                    (request.project_id,),
                ).fetchone()
            ):
                raise ProjectBusy(
                    f"project {request.project_id!r} already has a queued or running job (busy=reject)"
                )
            self._db.execute(
                "INSERT INTO jobs (id, project_id, provider, stream_id, request, status, created_at, "
                "max_attempts, idempotency_key, request_hash) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                (
                    job_id, request.project_id, provider, stream_id, request.model_dump_json(), _now(),
                    self.max_attempts, idempotency_key, digest,
                ),
            )  # fmt: skip
            return self._job(job_id), True

        job, created = await self._run(op)
        if created:
            self._notify()
        return job, created

    async def claim(self, worker_id: str, *, limits: Limits | None = None) -> Job | None:
        jobs = await self.claim_many(worker_id, 1, limits=limits)
        return jobs[0] if jobs else None

    async def claim_many(self, worker_id: str, n: int, *, limits: Limits | None = None) -> list[Job]:
        _seen_generation.set((id(self), self._generation))
        lim = limits or Limits()

        def many() -> list[Job]:
            out: list[Job] = []
            while len(out) < n and (job := op()) is not None:
                out.append(job)
            return out

        def op() -> Job | None:
            counts = dict(
                self._db.execute(
                    "SELECT provider, count(*) FROM jobs WHERE status = 'running' GROUP BY provider"
                ).fetchall()
            )
            if lim.global_max is not None and sum(counts.values()) >= lim.global_max:
                return None
            full = [p for p, cap in lim.per_provider.items() if counts.get(p, 0) >= cap]
            now = time.time()
            row = self._db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' AND run_after <= ? "
                f"AND provider NOT IN ({', '.join('?' * len(full))}) "
                "AND project_id NOT IN (SELECT project_id FROM jobs WHERE status = 'running') "
                # a project's jobs start in submission order (an older one backing off holds the turn)
                "AND NOT EXISTS (SELECT 1 FROM jobs o WHERE o.project_id = jobs.project_id "
                "AND o.status = 'queued' AND o.seq < jobs.seq) "
                "ORDER BY seq LIMIT 1",
                (now, *full),
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE jobs SET status = 'running', worker_id = ?, started_at = ?, attempts = attempts + 1, "
                "lease_expires_at = ? WHERE id = ?",
                (worker_id, _now(), now + self.lease_s, row["id"]),
            )
            return self._job(row["id"])

        return await self._run(many)

    async def wait_for_work(self, timeout: float) -> None:
        seen = _seen_generation.get()
        if seen is not None and seen[0] == id(self) and seen[1] != self._generation:
            _seen_generation.set((id(self), self._generation))
            return  # a wake-up came after this task's last claim started looking
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return

    async def heartbeat(self, job_id: str, worker_id: str) -> bool:
        def op() -> bool:
            cur = self._db.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND worker_id = ? AND status = 'running'",
                (time.time() + self.lease_s, job_id, worker_id),
            )
            return cur.rowcount == 1

        return await self._run(op)

    async def finish(self, job_id: str, result: AgentResult, *, worker_id: str | None = None) -> Job:
        return (await self.finish_many([(job_id, result)], worker_id=worker_id))[0]

    async def finish_many(
        self, results: Sequence[tuple[str, AgentResult]], *, worker_id: str | None = None
    ) -> list[Job]:
        ids = [job_id for job_id, _ in results]
        if len(set(ids)) != len(ids):
            raise ValueError("finish_many: each job may appear once")

        def many() -> list[Job]:
            return [op(job_id, result) for job_id, result in results]

        def op(job_id: str, result: AgentResult) -> Job:
            row = self._fetch(job_id)
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            status = JobStatus(row["status"])
            if status.is_final or (
                worker_id is not None and (status != JobStatus.running or row["worker_id"] != worker_id)
            ):
                return _row_to_job(row)
            retry = (
                result.retryable
                and result.status == "failed"
                and not row["cancel_requested"]
                and row["attempts"] < row["max_attempts"]
            )
            if retry:
                delay = min(self.retry_base_s * 2 ** (max(row["attempts"], 1) - 1), MAX_BACKOFF_S)
                self._db.execute(
                    "UPDATE jobs SET status = 'queued', run_after = ?, worker_id = NULL, "
                    "lease_expires_at = NULL, last_error = ? WHERE id = ?",
                    (time.time() + delay, result.error, job_id),
                )
            else:
                self._db.execute(
                    "UPDATE jobs SET status = ?, finished_at = ?, result = ?, lease_expires_at = NULL "
                    "WHERE id = ?",
                    (result.status, _now(), result.model_dump_json(), job_id),
                )
            return self._job(job_id)

        jobs = await self._run(many)
        self._notify()  # the project (or a limit slot) may be free for the next job
        return jobs

    async def request_cancel(self, project_id: str, job_id: str) -> tuple[Job, bool]:
        def op() -> tuple[Job, bool]:
            row = self._fetch(job_id)
            if row is None or row["project_id"] != project_id:
                raise JobNotFound(f"no job {job_id!r} in project {project_id!r}")
            ended = row["status"] == JobStatus.queued
            if ended:
                self._db.execute(
                    "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = ?, "
                    "result = ? WHERE id = ?",
                    (_now(), _CANCELLED, job_id),
                )
            elif row["status"] == JobStatus.running:
                self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return self._job(job_id), ended

        return await self._run(op)

    async def get(self, project_id: str, job_id: str) -> Job:
        row = await self._run(lambda: self._fetch(job_id))
        if row is None or row["project_id"] != project_id:
            raise JobNotFound(f"no job {job_id!r} in project {project_id!r}")
        return _row_to_job(row)

    async def list_jobs(self, project_id: str, flt: JobFilter | None = None) -> list[Job]:
        f = flt or JobFilter()
        where = ["project_id = ?"]
        args: list[Any] = [project_id]
        for clause, value in (
            ("status = ?", f.status.value if f.status is not None else None),
            ("provider = ?", f.provider),
            ("created_at > ?", _bound(f.created_after) if f.created_after else None),
            ("created_at < ?", _bound(f.created_before) if f.created_before else None),
            ("seq < (SELECT seq FROM jobs WHERE id = ?)", f.before),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
        rows = await self._run(lambda: self._db.execute(sql, (*args, max(0, f.limit))).fetchall())
        return [_row_to_job(r) for r in rows]

    async def recover(self, *, all_running: bool = False) -> list[Job]:
        reason = "its worker is gone" if all_running else "lease expired"

        def op() -> list[Job]:
            rows = self._db.execute(
                "SELECT id, attempts, max_attempts FROM jobs WHERE status = 'running' "
                "AND (? OR lease_expires_at IS NULL OR lease_expires_at < ?) ORDER BY seq",
                (all_running, time.time()),
            ).fetchall()
            for r in rows:
                if r["attempts"] >= r["max_attempts"]:
                    gave_up = AgentResult(
                        status="failed", error=f"worker lost ({reason}) {r['attempts']} times; giving up"
                    )
                    self._db.execute(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, result = ?, worker_id = NULL, "
                        "lease_expires_at = NULL, last_error = ? WHERE id = ?",
                        (_now(), gave_up.model_dump_json(), f"worker lost ({reason})", r["id"]),
                    )
                else:
                    self._db.execute(
                        "UPDATE jobs SET status = 'queued', worker_id = NULL, lease_expires_at = NULL, "
                        "run_after = 0, last_error = ? WHERE id = ?",
                        (f"worker lost ({reason})", r["id"]),
                    )
            return [self._job(r["id"]) for r in rows]

        jobs = await self._run(op)
        if any(j.status == JobStatus.queued for j in jobs):
            self._notify()
        return jobs

    async def close(self) -> None:
        def shut() -> None:
            # Under the lock: a thread still running an operation (its task was cancelled, the thread
            # was not) must finish before the connection goes away, or sqlite crashes the process.
            with self._lock:
                self._closed = True
                self._db.close()

        await asyncio.to_thread(shut)
