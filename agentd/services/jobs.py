"""Use cases the API offers: submit, cancel, look up jobs, follow their streams, list the providers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import structlog

from agentd.domain.ids import job_id_for_stream, new_job_ids
from agentd.domain.models import AgentRequest, DoneEvent, Job, JobStatus, StatusEvent, StoredEvent
from agentd.ports.code_agent import CodeAgent
from agentd.ports.event_stream import EventStream
from agentd.ports.work_queue import BusyPolicy, JobFilter, WorkQueue
from agentd.services.projects import ProjectService
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import Runner

log = structlog.get_logger(__name__)

AVAILABILITY_TIMEOUT_S = 10.0


class JobService:
    def __init__(
        self,
        queue: WorkQueue,
        streams: EventStream,
        registry: ProviderRegistry,
        runner: Runner | None = None,
        *,
        projects: ProjectService | None = None,
    ) -> None:
        self.projects = projects
        self.queue = queue
        self.streams = streams
        self.registry = registry
        self.runner = runner

    async def submit(
        self, request: AgentRequest, *, idempotency_key: str | None = None, busy: BusyPolicy = "enqueue"
    ) -> tuple[Job, bool]:
        """Queue a job. Returns (job, created): an idempotent repeat returns the first job, created=False."""
        provider = self.registry.resolve(request.provider)
        if self.projects is not None:
            await self.projects.check_request(request)  # `ref` / `push` need a repository
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

    async def list_jobs(self, project_id: str | None, flt: JobFilter) -> list[Job]:
        """A project's jobs, newest first; with `project_id` None, every project's."""
        return await self.queue.list_jobs(project_id, flt)

    async def subscribe(
        self, project_id: str, stream_id: str, *, after: int = 0
    ) -> AsyncIterator[StoredEvent]:
        """A job's events with seq > `after` (replay, then live), ending after the last one.

        Checked before the first event: the stream exists and belongs to a job of this project
        (JobNotFound / StreamNotFound otherwise). A subscriber that falls too far behind gets
        SubscriberTooSlow from the stream (it resumes with `after=<last seq it saw>`).
        """
        await asyncio.gather(
            self.queue.get(project_id, job_id_for_stream(stream_id)), self.streams.last_seq(stream_id)
        )
        return self.streams.subscribe(stream_id, after=after)

    def check_provider(self, name: str) -> None:
        """UnknownProvider (listing the known ones) unless a provider of that name is registered."""
        self.registry.get(name)

    async def providers(self) -> dict[str, Any]:
        """Every provider with its capabilities and availability (probed at once, each bounded)."""
        default = self.registry.default if self.registry.names() else None
        items = self.registry.items()
        probes = await asyncio.gather(*(_availability(agent) for _, agent in items))
        return {
            "default": default,
            "providers": [
                {
                    "name": name,
                    "default": name == default,
                    "capabilities": agent.capabilities().model_dump(),
                    "availability": availability,
                }
                for (name, agent), availability in zip(items, probes, strict=True)
            ],
        }


async def _availability(agent: CodeAgent) -> dict[str, Any]:
    try:
        avail = await asyncio.wait_for(agent.is_available(), AVAILABILITY_TIMEOUT_S)
        return avail.model_dump()
    except Exception as e:  # availability probes must never break the listing
        return {"available": False, "detail": f"availability check failed: {e}", "version": None}
