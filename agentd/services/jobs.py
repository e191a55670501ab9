"""Use cases the API offers: submit, cancel, look up jobs."""

from __future__ import annotations

import structlog

from agentd.domain.ids import new_job_ids
from agentd.domain.models import AgentRequest, DoneEvent, Job, JobStatus, StatusEvent
from agentd.ports.event_stream import EventStream
from agentd.ports.work_queue import BusyPolicy, JobFilter, WorkQueue
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import Runner

log = structlog.get_logger(__name__)


class JobService:
    def __init__(
        self,
        queue: WorkQueue,
        streams: EventStream,
        registry: ProviderRegistry,
        runner: Runner | None = None,
    ) -> None:
        self.queue = queue
        self.streams = streams
        self.registry = registry
        self.runner = runner

    async def submit(
        self, request: AgentRequest, *, idempotency_key: str | None = None, busy: BusyPolicy = "enqueue"
    ) -> tuple[Job, bool]:
        """Queue a job. Returns (job, created): an idempotent repeat returns the first job, created=False."""
        provider = self.registry.resolve(request.provider)
        job_id, stream_id = new_job_ids()
        # The stream exists before the job can be claimed, so "queued" is always its first event.
        await self.streams.create(stream_id, [StatusEvent(status="queued", detail=f"provider {provider}")])
        try:
            job, created = await self.queue.enqueue(
                request,
                provider=provider,
                job_id=job_id,
                stream_id=stream_id,
                idempotency_key=idempotency_key,
                busy=busy,
            )
        except BaseException:
            await self.streams.close_stream(stream_id)  # nobody will ever publish to it: let it be pruned
            raise
        if not created:
            await self.streams.close_stream(stream_id)
            log.info("job.idempotent_repeat", job_id=job.id, idempotency_key=idempotency_key)
            return job, False
        log.info("job.submitted", job_id=job.id, project_id=job.project_id, provider=provider)
        return job, True

    async def cancel(self, project_id: str, job_id: str) -> Job:
        job, ended = await self.queue.request_cancel(project_id, job_id)
        if ended and job.result is not None:
            await self.streams.publish(job.stream_id, [DoneEvent.from_result(job.result)])
            await self.streams.close_stream(job.stream_id)
            log.info("job.cancelled", job_id=job.id, while_status="queued")
        elif job.status == JobStatus.running and self.runner is not None:
            # Fast path when this process runs it; other processes see cancel_requested when they poll.
            await self.runner.cancel_local(job.id)
            log.info("job.cancel_requested", job_id=job.id)
        return job

    async def get(self, project_id: str, job_id: str) -> Job:
        return await self.queue.get(project_id, job_id)

    async def list_jobs(self, project_id: str, flt: JobFilter) -> list[Job]:
        return await self.queue.list_jobs(project_id, flt)
