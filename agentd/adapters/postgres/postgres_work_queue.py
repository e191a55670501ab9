"""The work queue on PostgreSQL: many worker processes on many machines share one table of jobs.

- `claim_many` is one statement (the `agentd_claim` function): FOR UPDATE SKIP LOCKED, one running job per
  project and the `Limits` enforced fleet-wide and race-free (see sql/migrations/0001_initial.sql);
  `finish_many` is one statement too.
- Idle workers wake on NOTIFY (one per enqueue transaction, and one when a finish lets a queued job run),
  heard on the process's dedicated listener connection, with polling as the fallback
  (`wait_for_work(timeout)`).
- Leases: `heartbeat` renews `lease_expires_at`; `recover` re-queues expired jobs, or fails them after
  their attempts. Retryable failures go back to the queue with exponential backoff.

The rules shared with the SQLite queue (retry, backoff, idempotency, wake-ups): agentd.adapters.queue_policy.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import DictRow

from agentd.adapters.postgres.database import JOBS_CHANNEL, PgDatabase
from agentd.adapters.postgres.nul import from_jsonb, text_safe, to_jsonb
from agentd.adapters.postgres.queries import QUERIES
from agentd.adapters.queue_policy import (
    CANCELLED_JSON,
    MAX_BACKOFF_S,
    WakeUps,
    distinct_ids,
    idempotency_conflict,
    lost_reason,
    project_busy,
    request_hash,
    requeue_delay,
    wants_retry,
)
from agentd.domain.errors import JobNotFound
from agentd.domain.models import AgentEvent, AgentRequest, AgentResult, Job, JobStatus
from agentd.ports.work_queue import BusyPolicy, JobFilter, Limits, WorkQueue


def _utc(dt: datetime | None) -> datetime | None:
    return dt.astimezone(UTC) if dt is not None else None


def _aware(dt: datetime | None) -> datetime | None:
    """Filter bounds: a naive datetime means UTC."""
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def row_to_job(
    row: Mapping[str, Any], *, request: AgentRequest | None = None, result_as_sent: AgentResult | None = None
) -> Job:
    """`request`: the job's request as read before (a job's request never changes: no second validation);
    `result_as_sent`: the result the statement that returned `row` just stored."""
    result = row["result"]
    return Job(
        id=row["id"],
        project_id=row["project_id"],
        provider=row["provider"],
        stream_id=row["stream_id"],
        request=request if request is not None else AgentRequest.model_validate(row["request"]),
        status=JobStatus(row["status"]),
        created_at=row["created_at"].astimezone(UTC),
        started_at=_utc(row["started_at"]),
        finished_at=_utc(row["finished_at"]),
        attempts=row["attempts"],
        cancel_requested=row["cancel_requested"],
        worker_id=row["worker_id"],
        result=(
            None
            if result is None
            else result_as_sent
            if result_as_sent is not None
            else AgentResult.model_validate(from_jsonb(result))
        ),
    )


def _finish_input(
    job_id: str,
    result: AgentResult,
    attempt: int | None,
    *,
    done: bool = False,
    events: Sequence[AgentEvent] = (),
) -> str:
    """One element of `finish`'s input; with `done`, the data of the job's `done` event too, and `events`, the
    run's events to write before it (finish_ended)."""
    stored = to_jsonb(result.model_dump_json())  # U+0000 in the output: escaped, not a failed batch
    error = json.dumps(text_safe(result.error))
    retryable = "true" if wants_retry(result) else "false"
    end = ""
    if done:
        # The data of DoneEvent.from_result(result): the result's fields but `retryable`.
        event = result.model_dump_json(exclude={"retryable"})
        end = f',"done":{to_jsonb(event)}'
        if events:
            rows = ",".join(
                f"[{json.dumps(ev.event)},{to_jsonb(ev.model_dump_json(exclude={'event'}))}]" for ev in events
            )
            end += f',"events":[{rows}]'
    return (
        f'{{"id":{json.dumps(job_id)},"status":"{result.status}","result":{stored},'
        f'"retryable":{retryable},"error":{error},"attempt":{json.dumps(attempt)}{end}}}'
    )


class PostgresWorkQueue(WorkQueue):
    def __init__(
        self,
        db: PgDatabase,
        *,
        lease_s: float = 30.0,
        max_attempts: int = 3,
        retry_base_s: float = 2.0,
        requeue_delay_s: float | None = None,
    ) -> None:
        self.db = db
        self.lease_s = lease_s
        self.requeue_delay_s = requeue_delay(lease_s, requeue_delay_s)
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self._wake = WakeUps()
        # Once this process claims with limits, a finish may free a slot for any queued job: wake everyone.
        self._limits_in_use = False
        db.on_notify(JOBS_CHANNEL, lambda _payload: self._wake.notify())
        db.on_gap(self._wake.notify)

    async def open(self) -> None:
        """Open (or share) the pool and listener; SchemaMismatch when the schema is not this agentd's."""
        await self.db.open()

    async def queue_stats(self) -> dict[str, tuple[int, datetime | None]]:
        return {r["provider"]: (r["queued"], r["oldest"]) for r in await self._all("queue_stats", {})}

    async def close(self) -> None:
        await self.db.close()

    async def _one(self, query: str, params: dict[str, Any]) -> DictRow | None:
        async with self.db.connection() as conn:
            cur = await conn.execute(QUERIES[query], params)
            return await cur.fetchone()

    async def _all(self, query: str, params: dict[str, Any]) -> list[DictRow]:
        async with self.db.connection() as conn:
            cur = await conn.execute(QUERIES[query], params)
            return await cur.fetchall()

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
        body = request.model_dump_json()
        params: dict[str, Any] = {
            "id": job_id,
            "project_id": request.project_id,
            "provider": provider,
            "stream_id": stream_id,
            "request": body,
            "max_attempts": self.max_attempts,
            "idempotency_key": idempotency_key,
            "request_hash": request_hash(request) if idempotency_key is not None else None,
        }
        if idempotency_key is None and busy == "enqueue":
            row = await self._one("enqueue", params)  # the common case: one statement
            assert row is not None
            return row_to_job(row), True
        async with self.db.connection() as conn, conn.transaction():
            # Checks and insert happen under a per-project lock, each check with a fresh snapshot.
            await conn.execute(QUERIES["lock_project_enqueue"], params)
            if idempotency_key is not None:
                cur = await conn.execute(QUERIES["job_by_idempotency_key"], params)
                existing = await cur.fetchone()
                if existing is not None:
                    if existing["request_hash"] != params["request_hash"]:
                        raise idempotency_conflict(idempotency_key, request.project_id, existing["id"])
                    return row_to_job(existing), False
            if busy == "reject":
                cur = await conn.execute(QUERIES["project_busy"], params)
                busy_row = await cur.fetchone()
                if busy_row is not None and busy_row["busy"]:
                    raise project_busy(request.project_id)
            cur = await conn.execute(QUERIES["enqueue"], params)
            row = await cur.fetchone()
            assert row is not None
            return row_to_job(row), True

    async def claim_many(
        self, worker_id: str, n: int, *, limits: Limits | None = None, exclude: Collection[str] = ()
    ) -> list[Job]:
        """Up to `n` jobs in one statement (each under its own lease, never two of one project)."""
        rows = await self._all("claim", self._claim_params(worker_id, n, limits, exclude))
        return [row_to_job(r) for r in rows]

    def _claim_params(
        self, worker_id: str, n: int, limits: Limits | None, exclude: Collection[str]
    ) -> dict[str, Any]:
        self._wake.claiming()
        caps = limits.per_provider if limits is not None else {}
        global_max = limits.global_max if limits is not None else None
        if caps or global_max is not None:
            self._limits_in_use = True
        return {
            "worker_id": worker_id,
            "lease_s": self.lease_s,
            "max": n,
            "global_max": global_max,
            "provider_caps": json.dumps(caps) if caps else None,
            "exclude": sorted(exclude),
        }

    async def finish_and_claim(
        self,
        results: Sequence[tuple[str, AgentResult]],
        n: int,
        *,
        worker_id: str,
        limits: Limits | None = None,
        attempts: Mapping[str, int] | None = None,
        exclude: Collection[str] = (),
    ) -> tuple[list[Job], list[Job]]:
        """`finish_many(results)`, then `claim_many(n)`: both statements sent at once in psycopg's pipeline
        mode with no Sync between them, so one round trip and ONE transaction (the extended protocol's
        implicit one, up to the Sync at the pipeline's end): one commit, and either failing rolls back both.
        The claim sees the finished jobs' projects free; `exclude` as in `claim_many`. Returns (the finished
        jobs in the order given, the claimed jobs)."""
        ids = distinct_ids(results)
        async with self.db.connection() as conn, conn.pipeline():
            fin = await conn.execute(QUERIES["finish"], self._finish_params(results, worker_id, attempts))
            claim = await conn.execute(QUERIES["claim"], self._claim_params(worker_id, n, limits, exclude))
            finished_rows = await fin.fetchall()
            claimed_rows = await claim.fetchall()
        return self._finished(ids, finished_rows), [row_to_job(r) for r in claimed_rows]

    async def wait_for_work(self, timeout: float) -> None:
        await self._wake.wait(timeout)

    async def heartbeat(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> bool:
        row = await self._one(
            "heartbeat", {"id": job_id, "worker_id": worker_id, "attempt": attempt, "lease_s": self.lease_s}
        )
        return row is not None

    async def finish_many(
        self,
        results: Sequence[tuple[str, AgentResult]],
        *,
        worker_id: str | None = None,
        attempts: Mapping[str, int] | None = None,
    ) -> list[Job]:
        """Several results in one statement; the jobs come back in the order given."""
        rows = await self._all("finish", self._finish_params(results, worker_id, attempts))
        return self._finished(distinct_ids(results), rows)

    def _finish_params(
        self,
        results: Sequence[tuple[str, AgentResult]],
        worker_id: str | None,
        attempts: Mapping[str, int] | None,
        *,
        done: bool = False,
        events: Mapping[str, Sequence[AgentEvent]] | None = None,
    ) -> dict[str, Any]:
        return {
            "ids": distinct_ids(results),
            "input": "["
            + ",".join(
                _finish_input(
                    job_id,
                    r,
                    attempts.get(job_id) if attempts else None,
                    done=done,
                    events=events.get(job_id, ()) if events else (),
                )
                for job_id, r in results
            )
            + "]",
            "worker_id": worker_id,
            "retry_base_s": self.retry_base_s,
            "retry_max_s": MAX_BACKOFF_S,
            "wake_any": self._limits_in_use,
        }

    @staticmethod
    def _finished(ids: list[str], rows: list[DictRow]) -> list[Job]:
        by_id = {r["id"]: r for r in rows}
        missing = [job_id for job_id in ids if job_id not in by_id]
        if missing:
            raise JobNotFound(f"no job {missing[0]!r}")
        return [row_to_job(by_id[job_id]) for job_id in ids]

    async def request_cancel(self, project_id: str, job_id: str) -> tuple[Job, bool]:
        params = {"id": job_id, "project_id": project_id, "cancelled": CANCELLED_JSON}
        row = await self._one("request_cancel", params)
        if row is None:
            raise JobNotFound(f"no job {job_id!r} in project {project_id!r}")
        return row_to_job(row), bool(row["ended"])

    async def get(self, project_id: str, job_id: str) -> Job:
        row = await self._one("get", {"id": job_id, "project_id": project_id})
        if row is None:
            raise JobNotFound(f"no job {job_id!r} in project {project_id!r}")
        return row_to_job(row)

    async def list_jobs(self, project_id: str | None, flt: JobFilter | None = None) -> list[Job]:
        f = flt or JobFilter()
        rows = await self._all(
            "list_jobs" if project_id is not None else "list_all_jobs",
            {
                "project_id": project_id,
                "status": f.status.value if f.status is not None else None,
                "provider": f.provider,
                "created_after": _aware(f.created_after),
                "created_before": _aware(f.created_before),
                "before": f.before,
                "limit": max(0, f.limit),
            },
        )
        return [row_to_job(r) for r in rows]

    async def recover(self, *, all_running: bool = False) -> list[Job]:
        rows = await self._all(
            "recover",
            {
                "all_running": all_running,
                "reason": lost_reason(all_running),
                "delay_s": 0.0 if all_running else self.requeue_delay_s,
            },
        )
        return [row_to_job(r) for r in rows]

    async def release(self, job_id: str, attempt: int, reason: str) -> Job | None:
        row = await self._one("release", {"id": job_id, "attempt": attempt, "reason": reason})
        return row_to_job(row) if row is not None else None

    async def purge(self, retention_s: float, *, batch: int = 500) -> int:
        row = await self._one("purge", {"retention_s": retention_s, "batch": batch})
        return int(row["n"]) if row is not None else 0
