"""The WorkQueue port: durable storage of jobs and the hand-out of jobs to workers."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from agentd.domain.models import AgentEvent, AgentRequest, AgentResult, Job, JobStatus, StatusEvent

BusyPolicy = Literal["enqueue", "reject"]


@dataclass(frozen=True)
class Limits:
    """Fleet-wide concurrency limits, enforced by the queue at claim time (not per worker)."""

    global_max: int | None = None
    per_provider: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class JobFilter:
    status: JobStatus | None = None
    provider: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    limit: int = 50
    before: str | None = None  # a job id: return jobs older than it (paging)


class WorkQueue(Protocol):
    """Jobs in, jobs out. Every adapter passes tests/contract/test_work_queue.py.

    Rules every adapter keeps:
    - a job is handed to at most one worker at a time (`claim_many`), under a lease the worker renews
      (`heartbeat`); `recover` returns jobs whose lease expired to the queue (or fails them after
      `max_attempts`), so no job stays "running" with nobody running it;
    - at most one job per project runs at a time, fleet-wide (a busy project's jobs wait), or the
      project's `max_running` when a project store shares the queue's database; `Limits` cap running
      jobs globally and per provider;
    - `finish_many` records a final result once; a result marked `retryable` is instead re-queued with
      backoff while attempts remain;
    - `enqueue` with an idempotency key returns the existing job for the same key and request, and
      raises IdempotencyConflict for the same key with a different request;
    - nothing is lost when a process restarts;
    - fencing: every claim starts a new attempt (`Job.attempts`, the run is `Job.run_id`); a heartbeat or a
      result that names an attempt is refused once the job has moved on (re-queued, handed back, claimed
      again, final), so a run that lost its job can never renew it or store its result;
    - finished jobs (with their idempotency keys) are deleted by `purge` after their retention.
    """

    recover_all_at_start: bool = False  # one process owns every job: at its start, "running" ones are orphans

    @abstractmethod
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
        """Store a new queued job. Returns (job, created); created is False for an idempotent repeat.

        With busy="reject", raises ProjectBusy when the project has a queued or running job.
        """
        ...

    @abstractmethod
    async def claim_many(
        self, worker_id: str, n: int, *, limits: Limits | None = None, exclude: Collection[str] = ()
    ) -> list[Job]:
        """Hand up to `n` of the oldest runnable queued jobs to `worker_id` (status → running, attempts + 1, a
        lease each), never two of one project: how a worker process fills its free slots with one round trip.
        Jobs in `exclude` (the ones this process is still running, e.g. after its lease expired under it)
        are left for later; their project's newer jobs wait too."""
        ...

    @abstractmethod
    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become runnable, or after `timeout` seconds."""
        ...

    @abstractmethod
    async def heartbeat(self, job_id: str, worker_id: str, *, attempt: int | None = None) -> bool:
        """Renew the worker's lease on a running job. False when the job is no longer this worker's (or,
        with `attempt`, no longer running that attempt)."""
        ...

    @abstractmethod
    async def finish_many(
        self,
        results: Sequence[tuple[str, AgentResult]],
        *,
        worker_id: str | None = None,
        attempts: Mapping[str, int] | None = None,
    ) -> list[Job]:
        """Record how runs ended, in one step; the jobs come back in the order given (JobNotFound for an
        unknown one, ValueError when a job appears twice).

        A final result sets the job's final status (idempotent: a final job never changes again). A
        `retryable` failed result with attempts left re-queues the job (status queued, run after a
        backoff) and returns it queued. With `worker_id`, only that worker's running jobs are changed; with
        `attempts` (job id → attempt), only jobs still running that attempt (the others come back unchanged).
        """
        ...

    @abstractmethod
    async def request_cancel(self, project_id: str, job_id: str) -> tuple[Job, bool]:
        """Cancel a job: a queued job ends cancelled at once; a running one gets `cancel_requested`.

        Returns the job and whether THIS call ended it (a queued job), so exactly one caller announces it.
        """
        ...

    @abstractmethod
    async def get(self, project_id: str, job_id: str) -> Job:
        """The job, or JobNotFound."""
        ...

    @abstractmethod
    async def list_jobs(self, project_id: str | None, flt: JobFilter | None = None) -> list[Job]:
        """Newest first; `project_id` None lists the jobs of every project."""
        ...

    @abstractmethod
    async def recover(self, *, all_running: bool = False) -> list[Job]:
        """Return running jobs whose lease expired (or every running job, when the caller knows their
        workers are gone) to the queue, or fail them after the attempt limit. Returns what changed."""
        ...

    @abstractmethod
    async def release(self, job_id: str, attempt: int, reason: str) -> Job | None:
        """Hand a running job back to the queue (a worker shutting down): status queued, runnable at once,
        when it is still running `attempt`; the hand-back does not use up one of its attempts. Returns the
        queued job, or None when the job had moved on already."""
        ...

    @abstractmethod
    async def purge(self, retention_s: float, *, batch: int = 500) -> int:
        """Delete up to `batch` final jobs (and so their idempotency keys) that finished more than
        `retention_s` ago; returns how many. Callers loop while the answer equals `batch`."""
        ...

    @abstractmethod
    async def queue_stats(self) -> dict[str, tuple[int, datetime | None]]:
        """Per provider with queued jobs, fleet-wide: (how many are queued, the oldest one's created_at).
        Read at every metrics scrape: one query over the queued rows only."""
        ...

    @abstractmethod
    async def close(self) -> None: ...


class RunJournal(Protocol):
    """Optional: a queue whose database holds the event log too writes a run's first event with its claim
    and its last with its result, each in the same transaction (PostgreSQL, and the embedded SQLite file).

    A worker on such storage makes one commit per batch of claims and one per batch of results, instead of a
    commit more for each job's `running`, and another for its `done` and the end of its stream. The runner
    uses it when storage offers one (agentd.bootstrap), else the queue and the log one after the other. The
    log's rules hold as for any writer: events are stored in order, fenced by the run (the job's attempt),
    and nobody sees one before it is committed; a client that sees `done` finds the final status.
    """

    @abstractmethod
    async def claim_started(
        self,
        worker_id: str,
        n: int,
        *,
        running: StatusEvent,
        limits: Limits | None = None,
        exclude: Collection[str] = (),
    ) -> list[tuple[Job, bool]]:
        """`claim_many`, and for each job claimed for its first attempt its `running` event in its stream:
        `running` with `attempt` set to the job's attempt and `, attempt <n>` after its `detail`, written as
        that run. Each job comes with True when that event was written, False when it was not (a later
        attempt; a stream that is missing, closed or taken by a later run): the caller then writes it itself
        the ordinary way (which also finds out why)."""
        ...

    @abstractmethod
    async def finish_ended(
        self,
        results: Sequence[tuple[str, AgentResult]],
        *,
        worker_id: str,
        attempts: Mapping[str, int],
        events: Mapping[str, Sequence[AgentEvent]] | None = None,
    ) -> list[tuple[Job, bool]]:
        """`finish_many`, and for each job this call stored final, its `done` event (DoneEvent.from_result of
        the result) written as the run and the end of its stream. Each job comes with True when `done` was
        written and its stream closed, False otherwise (not stored final by this call, or the stream refused
        it): the caller then goes the ordinary way. `events` (job id → events): the run's events not written
        yet, written in order right before its `done`, in the same step, or not at all when `done` is not
        (the caller then publishes them the ordinary way)."""
        ...
