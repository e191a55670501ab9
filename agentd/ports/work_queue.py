"""The WorkQueue port: durable storage of jobs and the hand-out of jobs to workers."""

from __future__ import annotations

from abc import abstractmethod
from typing import Protocol

from agentd.domain.models import AgentRequest, AgentResult, Job, JobStatus


class WorkQueue(Protocol):
    """Jobs in, jobs out. Every adapter passes tests/contract/test_work_queue.py.

    Rules every adapter keeps:
    - a job is handed to at most one worker at a time (`claim`);
    - at most one job per project runs at a time (a busy project's jobs wait);
    - `finish` is accepted once; a finished job never changes again;
    - nothing is lost when the process restarts (`recover` puts orphaned running jobs back).
    """

    @abstractmethod
    async def enqueue(
        self, request: AgentRequest, *, provider: str, job_id: str, stream_id: str
    ) -> Job: ...

    @abstractmethod
    async def claim(self, worker_id: str) -> Job | None:
        """Hand the oldest runnable queued job to `worker_id` (status → running), or None."""
        ...

    @abstractmethod
    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become runnable, or after `timeout` seconds."""
        ...

    @abstractmethod
    async def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Renew the worker's hold on a running job. False when the job is no longer this worker's."""
        ...

    @abstractmethod
    async def finish(self, job_id: str, result: AgentResult) -> Job:
        """Record the final result (status from `result.status`). Idempotent for an already final job."""
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
    async def list_jobs(
        self,
        project_id: str,
        *,
        status: JobStatus | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Job]:
        """Newest first; `before` is a job id to page from."""
        ...

    @abstractmethod
    async def recover(self) -> list[Job]:
        """Return jobs whose worker is gone to the queue; returns what was recovered."""
        ...

    @abstractmethod
    async def close(self) -> None: ...
