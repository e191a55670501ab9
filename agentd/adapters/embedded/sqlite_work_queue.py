"""Embedded work queue on SQLite (stdlib), for one agentd process without a database server.

Durable: every change is committed before the call returns (WAL, synchronous=FULL), so a restart loses no
job; `recover()` at start returns jobs that were running when the process died to the queue. Calls run in
a worker thread so the event loop never blocks on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agentd.domain.errors import JobNotFound
from agentd.domain.models import AgentRequest, AgentResult, Job, JobStatus
from agentd.ports.work_queue import WorkQueue

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    heartbeat_at TEXT,
    result TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_project ON jobs(project_id, seq);
"""
_COLS = (
    "id, project_id, provider, stream_id, request, status, created_at, started_at, finished_at, "
    "attempts, cancel_requested, worker_id, result"
)


def _now() -> str:
    return datetime.now(UTC).isoformat()


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
    def __init__(self, path: Path, *, max_attempts: int = 3) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._max_attempts = max_attempts
        self._wake = asyncio.Event()

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(locked)

    def _tx(self, fn: Any) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            out = fn()
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return out

    def _fetch(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    async def enqueue(
        self, request: AgentRequest, *, provider: str, job_id: str, stream_id: str
    ) -> Job:
        def op() -> Job:
            self._db.execute(
                "INSERT INTO jobs (id, project_id, provider, stream_id, request, status, created_at) "
                "VALUES (?, ?, ?, ?, ?, 'queued', ?)",
                (job_id, request.project_id, provider, stream_id, request.model_dump_json(), _now()),
            )
            job = self._fetch(job_id)
            assert job is not None
            return job

        job: Job = await self._run(op)
        self._wake.set()
        return job

    async def claim(self, worker_id: str) -> Job | None:
        def op() -> Job | None:
            def tx() -> Job | None:
                row = self._db.execute(
                    "SELECT id FROM jobs WHERE status = 'queued' AND project_id NOT IN "
                    "(SELECT project_id FROM jobs WHERE status = 'running') ORDER BY seq LIMIT 1"
                ).fetchone()
                if row is None:
                    return None
                now = _now()
                self._db.execute(
                    "UPDATE jobs SET status = 'running', worker_id = ?, started_at = ?, heartbeat_at = ?, "
                    "attempts = attempts + 1 WHERE id = ?",
                    (worker_id, now, now, row["id"]),
                )
                return self._fetch(row["id"])

            result: Job | None = self._tx(tx)
            return result

        job: Job | None = await self._run(op)
        return job

    async def wait_for_work(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            return
        finally:
            self._wake.clear()

    async def heartbeat(self, job_id: str, worker_id: str) -> bool:
        def op() -> bool:
            cur = self._db.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND worker_id = ? AND status = 'running'",
                (_now(), job_id, worker_id),
            )
            return cur.rowcount == 1

        ok: bool = await self._run(op)
        return ok

    async def finish(self, job_id: str, result: AgentResult) -> Job:
        def op() -> Job:
            self._db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result = ? "
                "WHERE id = ? AND status IN ('queued', 'running')",
                (result.status, _now(), result.model_dump_json(), job_id),
            )
            job = self._fetch(job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id!r}")
            return job

        job: Job = await self._run(op)
        self._wake.set()  # the project may be free for its next job
        return job

    async def request_cancel(self, project_id: str, job_id: str) -> tuple[Job, bool]:
        cancelled = AgentResult(status="cancelled", error="cancelled before it started").model_dump_json()

        def op() -> tuple[Job, bool]:
            def tx() -> tuple[Job, bool]:
                job = self._fetch(job_id)
                if job is None or job.project_id != project_id:
                    raise JobNotFound(f"no job {job_id!r} in project {project_id!r}")
                ended = job.status == JobStatus.queued
                if ended:
                    self._db.execute(
                        "UPDATE jobs SET status = 'cancelled', cancel_requested = 1, finished_at = ?, "
                        "result = ? WHERE id = ?",
                        (_now(), cancelled, job_id),
                    )
                elif job.status == JobStatus.running:
                    self._db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
                out = self._fetch(job_id)
                assert out is not None
                return out, ended

            result: tuple[Job, bool] = self._tx(tx)
            return result

        out: tuple[Job, bool] = await self._run(op)
        return out

    async def get(self, project_id: str, job_id: str) -> Job:
        job: Job | None = await self._run(self._fetch, job_id)
        if job is None or job.project_id != project_id:
            raise JobNotFound(f"no job {job_id!r} in project {project_id!r}")
        return job

    async def list_jobs(
        self,
        project_id: str,
        *,
        status: JobStatus | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Job]:
        def op() -> list[Job]:
            sql = f"SELECT {_COLS} FROM jobs WHERE project_id = ?"
            args: list[Any] = [project_id]
            if status is not None:
                sql += " AND status = ?"
                args.append(status.value)
            if before is not None:
                sql += " AND seq < (SELECT seq FROM jobs WHERE id = ?)"
                args.append(before)
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit)
            return [_row_to_job(r) for r in self._db.execute(sql, args).fetchall()]

        jobs: list[Job] = await self._run(op)
        return jobs

    async def recover(self) -> list[Job]:
        """Single-process queue: at start, every 'running' job lost its worker with the last process."""
        gave_up = AgentResult(
            status="failed",
            error=f"the worker died while running this job {self._max_attempts} times; giving up",
        ).model_dump_json()

        def op() -> list[Job]:
            def tx() -> list[Job]:
                rows = self._db.execute("SELECT id, attempts FROM jobs WHERE status = 'running'").fetchall()
                for r in rows:
                    if r["attempts"] >= self._max_attempts:
                        self._db.execute(
                            "UPDATE jobs SET status = 'failed', finished_at = ?, result = ? WHERE id = ?",
                            (_now(), gave_up, r["id"]),
                        )
                    else:
                        self._db.execute(
                            "UPDATE jobs SET status = 'queued', worker_id = NULL WHERE id = ?", (r["id"],)
                        )
                return [j for r in rows if (j := self._fetch(r["id"])) is not None]

            result: list[Job] = self._tx(tx)
            return result

        jobs: list[Job] = await self._run(op)
        if jobs:
            self._wake.set()
        return jobs

    async def close(self) -> None:
        await self._run(self._db.close)
