"""Embedded work queue on SQLite (stdlib), for one agentd process without a database server.

Storage is agentd.adapters.embedded.database (one file, one transaction per call, in a thread); the SQL is
in sql/queries.sql; the rules shared with the PostgreSQL queue (retry, backoff, idempotency, wake-ups) are
agentd.adapters.queue_policy. Leases work as in the PostgreSQL queue (a heartbeat renews them, `recover`
returns expired ones to the queue), even though one process owns this file: a worker stuck without
heartbeats loses its job the same way everywhere.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agentd.adapters.embedded.database import SqliteDatabase, queries
from agentd.adapters.queue_policy import (
    CANCELLED_JSON,
    WakeUps,
    backoff_s,
    distinct_ids,
    gave_up_error,
    idempotency_conflict,
    lost_error,
    lost_reason,
    project_busy,
    request_hash,
    requeue_delay,
    retries,
)
from agentd.domain.errors import JobNotFound
from agentd.domain.models import AgentRequest, AgentResult, Job, JobStatus
from agentd.ports.work_queue import BusyPolicy, JobFilter, Limits, WorkQueue

Q = queries("queries")


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="microseconds")


def _now() -> str:
    return _iso(datetime.now(UTC))


def _bound(dt: datetime | None) -> str | None:
    """A filter bound as stored text; a naive datetime means UTC."""
    if dt is None:
        return None
    return _iso(dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt)


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


def _fetch(db: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute(Q["get"], {"id": job_id}).fetchone()
    return row


def _job(db: sqlite3.Connection, job_id: str) -> Job:
    row = _fetch(db, job_id)
    if row is None:
        raise JobNotFound(f"no job {job_id!r}")
    return _row_to_job(row)


class SqliteWorkQueue(WorkQueue):
    recover_all_at_start = True

    def __init__(
        self,
        path: Path | SqliteDatabase,
        *,
        lease_s: float = 30.0,
        max_attempts: int = 3,
        retry_base_s: float = 2.0,
        requeue_delay_s: float | None = None,
    ) -> None:
        self.db = path if isinstance(path, SqliteDatabase) else SqliteDatabase(path)
        self.db.acquire()
        self.lease_s = lease_s
        self.requeue_delay_s = requeue_delay(lease_s, requeue_delay_s)
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self._wake = WakeUps()

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
        params = {
            "id": job_id,
            "project_id": request.project_id,
            "provider": provider,
            "stream_id": stream_id,
            "request": request.model_dump_json(),
            "now": _now(),
            "max_attempts": self.max_attempts,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash(request) if idempotency_key is not None else None,
        }

        def op(db: sqlite3.Connection) -> tuple[Job, bool]:
            if idempotency_key is not None:
                row = db.execute(Q["job_by_idempotency_key"], params).fetchone()
                if row is not None:
                    if row["request_hash"] != params["request_hash"]:
                        raise idempotency_conflict(idempotency_key, request.project_id, row["id"])
                    return _row_to_job(row), False
            if busy == "reject" and db.execute(Q["project_busy"], params).fetchone():
                raise project_busy(request.project_id)
            db.execute(Q["enqueue"], params)
            return _job(db, job_id), True

        job, created = await self.db.run(op)
        if created:
            self._wake.notify()
        return job, created

    async def claim_many(
        self, worker_id: str, n: int, *, limits: Limits | None = None, exclude: Collection[str] = ()
    ) -> list[Job]:
        self._wake.claiming()
        lim = limits or Limits()
        skip = json.dumps(sorted(exclude))

        def one(db: sqlite3.Connection) -> Job | None:
            running = {r["provider"]: r["n"] for r in db.execute(Q["running_per_provider"])}
            if lim.global_max is not None and sum(running.values()) >= lim.global_max:
                return None
            full = [p for p, cap in lim.per_provider.items() if running.get(p, 0) >= cap]
            now = time.time()
            row = db.execute(
                Q["next_runnable"], {"now": now, "full": json.dumps(full), "exclude": skip}
            ).fetchone()
            if row is None:
                return None
            db.execute(
                Q["start"],
                {
                    "id": row["id"],
                    "worker_id": worker_id,
                    "now_iso": _now(),
                    "lease_expires_at": now + self.lease_s,
                },
            )
            return _job(db, row["id"])

        def many(db: sqlite3.Connection) -> list[Job]:
            out: list[Job] = []
            while len(out) < n and (job := one(db)) is not None:
                out.append(job)
            return out

        return await self.db.run(many)

    async def wait_for_work(self, timeout: float) -> None:
        await self._wake.wait(timeout)

    async def heartbeat(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> bool:
        now = time.time()
        params = {
            "id": job_id,
            "worker_id": worker_id,
            "attempt": attempt,
            "now": now,
            "lease_expires_at": now + self.lease_s,
        }
        return await self.db.run(lambda db: db.execute(Q["heartbeat"], params).rowcount == 1)

    async def finish_many(
        self,
        results: Sequence[tuple[str, AgentResult]],
        *,
        worker_id: str | None = None,
        attempts: Mapping[str, int] | None = None,
    ) -> list[Job]:
        distinct_ids(results)  # ValueError when a job appears twice

        def one(db: sqlite3.Connection, job_id: str, result: AgentResult) -> Job:
            row = _fetch(db, job_id)
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            status = JobStatus(row["status"])
            attempt = attempts.get(job_id) if attempts is not None else None
            if (
                status.is_final
                or (worker_id is not None and (status != JobStatus.running or row["worker_id"] != worker_id))
                or (attempt is not None and (status != JobStatus.running or row["attempts"] != attempt))
            ):
                return _row_to_job(row)
            if retries(
                result,
                attempts=row["attempts"],
                max_attempts=row["max_attempts"],
                cancel_requested=bool(row["cancel_requested"]),
            ):
                run_after = time.time() + backoff_s(row["attempts"], self.retry_base_s)
                db.execute(
                    Q["requeue_for_retry"], {"id": job_id, "run_after": run_after, "error": result.error}
                )
            else:
                db.execute(
                    Q["finish"],
                    {
                        "id": job_id,
                        "status": result.status,
                        "now_iso": _now(),
                        "result": result.model_dump_json(),
                    },
                )
            return _job(db, job_id)

        jobs = await self.db.run(lambda db: [one(db, job_id, result) for job_id, result in results])
        self._wake.notify()  # the project (or a limit slot) may be free for the next job
        return jobs

    async def request_cancel(self, project_id: str, job_id: str) -> tuple[Job, bool]:
        def op(db: sqlite3.Connection) -> tuple[Job, bool]:
            row = _fetch(db, job_id)
            if row is None or row["project_id"] != project_id:
                raise JobNotFound(f"no job {job_id!r} in project {project_id!r}")
            ended = row["status"] == JobStatus.queued
            if ended:
                db.execute(Q["cancel_queued"], {"id": job_id, "now_iso": _now(), "result": CANCELLED_JSON})
            elif row["status"] == JobStatus.running:
                db.execute(Q["request_cancel"], {"id": job_id})
            return _job(db, job_id), ended

        return await self.db.run(op)

    async def get(self, project_id: str, job_id: str) -> Job:
        row = await self.db.run(lambda db: _fetch(db, job_id))
        if row is None or row["project_id"] != project_id:
            raise JobNotFound(f"no job {job_id!r} in project {project_id!r}")
        return _row_to_job(row)

    async def list_jobs(self, project_id: str | None, flt: JobFilter | None = None) -> list[Job]:
        f = flt or JobFilter()
        query = Q["list_jobs"] if project_id is not None else Q["list_all_jobs"]
        params = {
            "project_id": project_id,
            "status": f.status.value if f.status is not None else None,
            "provider": f.provider,
            "created_after": _bound(f.created_after),
            "created_before": _bound(f.created_before),
            "before": f.before,
            "limit": max(0, f.limit),
        }
        rows = await self.db.run(lambda db: db.execute(query, params).fetchall())
        return [_row_to_job(r) for r in rows]

    async def recover(self, *, all_running: bool = False) -> list[Job]:
        reason = lost_reason(all_running)

        def op(db: sqlite3.Connection) -> list[Job]:
            rows = db.execute(Q["lost_jobs"], {"all_running": all_running, "now": time.time()}).fetchall()
            for r in rows:
                if r["attempts"] >= r["max_attempts"]:
                    gave_up = AgentResult(status="failed", error=gave_up_error(reason, r["attempts"]))
                    db.execute(
                        Q["fail_lost"],
                        {
                            "id": r["id"],
                            "now_iso": _now(),
                            "result": gave_up.model_dump_json(),
                            "error": lost_error(reason),
                        },
                    )
                else:
                    run_after = 0.0 if all_running else time.time() + self.requeue_delay_s
                    db.execute(
                        Q["requeue_lost"],
                        {"id": r["id"], "error": lost_error(reason), "run_after": run_after},
                    )
            return [_job(db, r["id"]) for r in rows]

        jobs = await self.db.run(op)
        if any(j.status == JobStatus.queued for j in jobs):
            self._wake.notify()
        return jobs

    async def release(self, job_id: str, attempt: int, reason: str) -> Job | None:
        def op(db: sqlite3.Connection) -> Job | None:
            params = {"id": job_id, "attempt": attempt, "reason": reason}
            return _job(db, job_id) if db.execute(Q["release"], params).rowcount == 1 else None

        job = await self.db.run(op)
        if job is not None:
            self._wake.notify()
        return job

    async def purge(self, retention_s: float, *, batch: int = 500) -> int:
        cutoff = _iso(datetime.now(UTC) - timedelta(seconds=retention_s))
        params = {"cutoff": cutoff, "batch": batch}

        def op(db: sqlite3.Connection) -> int:
            ids = [r["id"] for r in db.execute(Q["expired_jobs"], params).fetchall()]
            for job_id in ids:  # the job, its idempotency key (a column) and its patch
                db.execute(Q["purge_job"], {"id": job_id})
                db.execute(Q["purge_patch"], {"id": job_id})
            return len(ids)

        return await self.db.run(op)

    async def queue_stats(self) -> dict[str, tuple[int, datetime | None]]:
        def op(db: sqlite3.Connection) -> dict[str, tuple[int, datetime | None]]:
            rows = db.execute(Q["queue_stats"]).fetchall()
            return {r["provider"]: (r["queued"], datetime.fromisoformat(r["oldest"])) for r in rows}

        return await self.db.run(op)

    async def close(self) -> None:
        await self.db.close()
