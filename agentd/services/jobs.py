"""Use cases the API offers: submit, cancel, look up jobs, follow their streams, list the providers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any

import structlog

from agentd.domain.errors import QueueFull, SubscriberTooSlow
from agentd.domain.ids import job_id_for_stream, new_job_ids
from agentd.domain.models import AgentRequest, DoneEvent, Job, JobStatus, StatusEvent, StoredEvent
from agentd.domain.webhooks import Delivery
from agentd.domain.workspace import workspace_path
from agentd.ports.code_agent import CodeAgent
from agentd.ports.event_stream import EventStream
from agentd.ports.metrics import NO_METRICS, Metrics
from agentd.ports.work_queue import BusyPolicy, JobFilter, WorkQueue
from agentd.services.projects import ProjectService
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import Runner
from agentd.services.webhooks import WebhookService

log = structlog.get_logger(__name__)

AVAILABILITY_TIMEOUT_S = 10.0
# How long "stream S is a job of project P" (a fact that never changes while the job exists) is taken as
# checked: 1,000 clients following one job ask the queue once, not 1,000 times.
JOB_SEEN_S = 5.0


class JobService:
    def __init__(
        self,
        queue: WorkQueue,
        streams: EventStream,
        registry: ProviderRegistry,
        runner: Runner | None = None,
        *,
        webhooks: WebhookService | None = None,
        max_queued_per_project: int | None = None,
        workspaces_dir: Path | None = None,
        projects: ProjectService | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.projects = projects
        self.metrics = metrics
        self.queue = queue
        self.streams = streams
        self.registry = registry
        self.runner = runner
        self.webhooks = webhooks
        self.max_queued_per_project = max_queued_per_project
        self.workspaces_dir = workspaces_dir
        self._jobs_seen: dict[tuple[str, str], float] = {}  # (project, stream) → when the queue said so

    async def submit(
        self, request: AgentRequest, *, idempotency_key: str | None = None, busy: BusyPolicy = "enqueue"
    ) -> tuple[Job, bool]:
        """Queue a job. Returns (job, created): an idempotent repeat returns the first job, created=False."""
        provider = self.registry.resolve(request.provider)
        if self.workspaces_dir is not None:
            for f in request.files:
                if f.path is not None:  # inside the workspace after symlinks, or a 400 now
                    workspace_path(self.workspaces_dir / request.project_id, f.path)
        if self.projects is not None:
            await self.projects.check_request(request)  # `ref` / `push` need a repository
        await self._check_queue_room(request.project_id)
        request_id = structlog.contextvars.get_contextvars().get("request_id")
        if request_id and request.request_id is None:  # bound by the HTTP request-log middleware
            request = request.model_copy(update={"request_id": request_id})
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
        self.metrics.job_submitted(provider)
        self.metrics.events_published("status")  # the "queued" event the stream was created with
        log.info("job.submitted", job_id=job.id, project_id=job.project_id, provider=provider)
        return job, True

    async def _check_queue_room(self, project_id: str) -> None:
        cap = self.max_queued_per_project
        if cap is None:
            return
        queued = await self.queue.list_jobs(project_id, JobFilter(status=JobStatus.queued, limit=cap))
        if len(queued) >= cap:
            log.info("limit.queue_full", project_id=project_id, limit=cap)
            raise QueueFull(
                f"project {project_id} has {cap} queued jobs, the most AGENTD_MAX_QUEUED_PER_PROJECT allows; "
                "retry when some have started",
                limit="AGENTD_MAX_QUEUED_PER_PROJECT",
                retry_after_s=5,
            )

    async def cancel(self, project_id: str, job_id: str) -> Job:
        job, ended = await self.queue.request_cancel(project_id, job_id)
        if ended and job.result is not None:
            done = DoneEvent.from_result(job.result)
            await self.streams.publish(job.stream_id, [done])
            self.metrics.events_published("done")
            self.metrics.job_finished(job.provider, job.result.status)
            await self.streams.close_stream(job.stream_id)
            if self.webhooks is not None:
                await self.webhooks.notify(job, done)
            log.info("job.cancelled", job_id=job.id, while_status="queued")
        elif job.status == JobStatus.running and self.runner is not None:
            # Fast path when this process runs it; other processes see cancel_requested when they poll.
            await self.runner.cancel_local(job.id)
            log.info("job.cancel_requested", job_id=job.id)
        return job

    async def get(self, project_id: str, job_id: str) -> Job:
        return await self.queue.get(project_id, job_id)

    async def deliveries(self, project_id: str, job_id: str) -> list[Delivery]:
        """The job's webhook deliveries (JobNotFound unless the job is this project's)."""
        await self.queue.get(project_id, job_id)
        return await self.webhooks.deliveries(job_id) if self.webhooks is not None else []

    async def list_jobs(self, project_id: str | None, flt: JobFilter) -> list[Job]:
        """A project's jobs, newest first; with `project_id` None, every project's."""
        return await self.queue.list_jobs(project_id, flt)

    async def subscribe(self, project_id: str, stream_id: str, *, after: int = 0) -> Subscription:
        """A job's events with seq > `after` (replay, then live), ending after the last one.

        Checked before the first event: the stream exists and belongs to a job of this project
        (JobNotFound / StreamNotFound otherwise). A subscriber that falls too far behind gets
        SubscriberTooSlow from the stream (it resumes with `after=<last seq it saw>`). That the stream is
        this project's job's is asked of the queue once per JOB_SEEN_S (many clients follow one job).
        """
        key = (project_id, stream_id)
        seen = self._jobs_seen.get(key)
        if seen is None or time.monotonic() - seen > JOB_SEEN_S:
            await self.queue.get(project_id, job_id_for_stream(stream_id))  # the job first: one answer each
            if len(self._jobs_seen) >= 1000:
                self._jobs_seen.clear()
            self._jobs_seen[key] = time.monotonic()
        inner = self.streams.subscribe(stream_id, after=after)
        start = getattr(inner, "start", None)  # a stream that checks (and joins) itself
        try:
            if callable(start):
                await start()
            else:
                await self.streams.last_seq(stream_id)
        except BaseException:
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                await aclose()
            raise
        return Subscription(inner, self.metrics)

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


class Subscription:
    """A job's events for one subscriber, counted in the metrics while open.

    Two ways to read it: `async for` (one event at a time), or in batches: `take()` returns the events ready
    now (empty: none yet, then `await wait()`; None: the stream has ended) and raises what the stream raises
    (SubscriberTooSlow, storage errors). A stream that offers `take`/`wait` itself (the fan-out in front of
    the durable logs) is read through them, so a quiet subscriber waits on the stream's own waiter with no
    frame of its own; any other async iterator is read one event per `wait()`. `aclose()` always.
    """

    __slots__ = ("_ahead", "_batched", "_inner", "_metrics", "_open")

    def __init__(self, inner: AsyncIterator[StoredEvent], metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._batched = callable(getattr(inner, "take", None)) and callable(getattr(inner, "wait", None))
        self._ahead: list[StoredEvent] | None = None if self._batched else []  # for the next take()
        self._open = True
        metrics.subscriber_added()

    def take(self) -> Sequence[StoredEvent] | None:
        if self._batched:
            try:
                got: Sequence[StoredEvent] | None = self._inner.take()  # type: ignore[attr-defined]
            except SubscriberTooSlow:
                self._metrics.slow_subscriber_disconnected()
                raise
            return got
        ahead = self._ahead
        if ahead is None:
            return None  # the end
        if not ahead:
            return ()
        self._ahead = []
        return ahead

    def wait(self) -> Awaitable[Any]:
        if self._batched:
            return self._inner.wait()  # type: ignore[attr-defined,no-any-return]
        return self._pull()

    async def _pull(self) -> None:
        try:
            stored = await anext(self._inner)
        except StopAsyncIteration:
            self._ahead = None
            return
        except SubscriberTooSlow:
            self._metrics.slow_subscriber_disconnected()
            raise
        if self._ahead is not None:
            self._ahead.append(stored)

    def __aiter__(self) -> AsyncIterator[StoredEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[StoredEvent]:
        try:
            while (batch := self.take()) is not None:
                if not batch:
                    await self.wait()
                for stored in batch:
                    yield stored
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            self._metrics.subscriber_removed()
            aclose = getattr(self._inner, "aclose", None)
            if aclose is not None:
                await aclose()


async def _availability(agent: CodeAgent) -> dict[str, Any]:
    try:
        avail = await asyncio.wait_for(agent.is_available(), AVAILABILITY_TIMEOUT_S)
        return avail.model_dump()
    except Exception as e:  # availability probes must never break the listing
        return {"available": False, "detail": f"availability check failed: {e}", "version": None}
