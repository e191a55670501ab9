"""Workers: claim a job, run it through its provider, publish every event, record the result.

Guarantees: exactly one `done` event per job, published after the result is stored (a client that saw
`done` always finds the final status); cancel requests reach the run within `poll_s`; a run that ignores
its own deadline is cancelled by the runner's safety net.

Fencing: a run is one attempt of a job (`Job.run_id`). Its heartbeats, events and result carry the attempt;
once the job has moved on (lease expired and re-queued, handed back, claimed again) the queue or the stream
refuses them, and the run is stopped at once: the agent is cancelled, its later output dropped, its result
not stored. Whoever moves a job back to the queue says so in its stream with one `status` event (`requeued`
or `retrying`, with the reason), written with `supersede(run=next attempt)`: exactly one such event, and no
event of the old run after it. A process never claims a job it is still running (`exclude`).

Back-pressure: the runner reads the agent's events one at a time and publishes each before it reads the
next, so while storage is slow or down the agent's output waits in the adapter (and, when the adapter reads
its pipe only as fast as it is asked to, in the pipe).

Shutdown (a deploy): stop claiming, let running jobs finish within the grace period, then hand the rest back
to the queue (`requeued`, "worker shutting down"); the next attempt runs them. `cancelled` means a user asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agentd.domain.errors import (
    AgentdError,
    QueueUnavailable,
    RunSuperseded,
    SecretsUnavailable,
    StreamNotFound,
    WorkspaceFailed,
)
from agentd.domain.models import AgentEvent, AgentResult, DoneEvent, ErrorEvent, Job, JobStatus, StatusEvent
from agentd.domain.webhooks import PROJECT_SECRET_NAME as WEBHOOK_SECRET_NAME
from agentd.ports.code_agent import CodeAgent
from agentd.ports.event_stream import EventStream
from agentd.ports.metrics import NO_METRICS, Metrics
from agentd.ports.secret_store import SecretStore
from agentd.ports.work_queue import Limits, RunJournal, WorkQueue
from agentd.services.git_runs import GitRun, GitRuns
from agentd.services.redaction import LOG_SECRETS, RunRedactor
from agentd.services.registry import ProviderRegistry
from agentd.services.webhooks import WebhookService

log = structlog.get_logger(__name__)

SAFETY_GRACE_S = 30.0
SUPERSEDED_GRACE_S = 5.0  # a superseded run's agent gets this long to stop on its cancel, then its task ends
SHUTDOWN_REASON = "worker shutting down"
PURGE_BATCH = 500
T = TypeVar("T")


def _since(t: datetime) -> float:
    """Seconds from `t` (a job's created_at, UTC) to now, for the metrics."""
    return (datetime.now(UTC) - t).total_seconds()


def _running(worker_id: str, attempt: int | None = None) -> StatusEvent:
    """A run's `running` event; without `attempt`, the run journal's template (it adds the attempt)."""
    if attempt is None:
        return StatusEvent(status="running", detail=f"worker {worker_id}")
    return StatusEvent(status="running", detail=f"worker {worker_id}, attempt {attempt}", attempt=attempt)


@dataclass
class _Run:
    """One attempt of a job in this process."""

    job: Job
    agent: CodeAgent
    leased_at: float = field(default_factory=time.monotonic)  # before the call that last set the lease
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the agent has stopped
    why: str = ""
    _waiters: list[asyncio.Future[None]] = field(default_factory=list)  # resolved when superseded
    # With the run journal and no git workspace, the run's events that were not on their way to storage when
    # its agent ended (`tail`) go with its result: written before `done`, in the same step.
    defer_tail: bool = False
    tail: list[AgentEvent] = field(default_factory=list)

    def superseded_future(self) -> asyncio.Future[None]:
        """Done once the run is superseded (a future, not a task waiting on `superseded`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.superseded.is_set():
            fut.set_result(None)
        else:
            self._waiters.append(fut)
        return fut

    @property
    def run_id(self) -> str:
        return self.job.run_id

    async def supersede(self, why: str) -> None:
        """The job moved on: drop this run's output from now on and stop its agent."""
        if self.superseded.is_set():
            return
        self.why = why
        self.superseded.set()
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters.clear()
        log.warning("job.run_superseded", job_id=self.job.id, run_id=self.run_id, reason=why)
        with contextlib.suppress(Exception):
            await self.agent.cancel(self.run_id)


class _Deferred:
    """A helper task that only a long run needs (a lease renewer, a watcher): a timer until `delay` has
    passed, then the task. A run over before that (most are) never makes the task."""

    def __init__(self, delay: float, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.task: asyncio.Task[None] | None = None
        self._handle = asyncio.get_running_loop().call_later(delay, self._start, factory)

    def _start(self, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self.task = asyncio.create_task(factory())

    async def stop(self, timeout: float | None = None) -> None:
        self._handle.cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=timeout)


# A result on its way to storage: job id, result, attempt, the run's events not stored yet, who waits for it.
_Finishing = tuple[str, AgentResult, int, list[AgentEvent], asyncio.Future[tuple[Job, bool]]]
CLAIMS_IN_FLIGHT = 2  # a worker process's claims on their way at once (each for slots no other one may fill)
RESULTS_WAIT_S = 0.5  # results held back while a claim is on its way, at most (its lease is not renewed)
OUTBOX_WINDOW = 8  # a run's events on their way to storage, at most, before its agent's output waits


class _Outbox:
    """A run's events on their way to the stream: one writer task publishes everything waiting, in order, in
    one call (one statement on PostgreSQL), while the run goes on producing; `put` waits while `window` events
    are waiting or being written (back-pressure); `flush` returns when all are stored, and raises what a write
    raised."""

    def __init__(self, publish: Callable[[list[AgentEvent]], Awaitable[None]], window: int) -> None:
        self._publish = publish
        self._window = window
        self._waiting: list[AgentEvent] = []
        self._writing = 0  # events in the write in progress
        self._writer: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()

    async def put(self, ev: AgentEvent) -> None:
        self._waiting.append(ev)
        if self._writer is None or self._writer.done():
            self._check()
            self._writer = asyncio.create_task(self._write())
        while (
            len(self._waiting) + self._writing >= self._window
            and self._writer is not None
            and not self._writer.done()
        ):
            self._drained.clear()
            await self._drained.wait()
        self._check()

    async def _write(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                self._writing = len(batch)
                await self._publish(batch)
                self._writing = 0
                self._drained.set()
        finally:
            self._writing = 0
            self._drained.set()

    def take_unwritten(self) -> list[AgentEvent]:
        """The events waiting while no write is in progress (the writer has not started on them): taken out,
        to be stored some other way, in order after everything this outbox stored. [] otherwise."""
        if self._writing or not self._waiting:
            return []
        # Between two batches the writer takes the next one without a pause: events waiting while nothing is
        # being written mean that the writer task has not run yet.
        events, self._waiting = self._waiting, []
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()
        self._writer = None
        return events

    def _check(self) -> None:
        if self._writer is not None and self._writer.done() and not self._writer.cancelled():
            exc = self._writer.exception()
            if exc is not None:
                raise exc

    async def flush(self) -> None:
        while self._writer is not None:
            writer = self._writer
            try:
                await asyncio.shield(writer)
            except asyncio.CancelledError:
                writer.cancel()
                raise
            if self._writer is writer:
                self._writer = None if not self._waiting else asyncio.create_task(self._write())


class Runner:
    def __init__(
        self,
        queue: WorkQueue,
        streams: EventStream,
        registry: ProviderRegistry,
        *,
        workers: int = 2,
        poll_s: float = 1.0,
        heartbeat_s: float = 15.0,
        lease_s: float | None = None,
        prune_s: float = 60.0,
        sweep_s: float = 10.0,
        limits: Limits | None = None,
        secrets: SecretStore | None = None,
        service_secrets: Mapping[str, str] | None = None,
        job_retention_s: float | None = None,
        webhooks: WebhookService | None = None,
        git_runs: GitRuns | None = None,
        metrics: Metrics = NO_METRICS,
        journal: RunJournal | None = None,
    ) -> None:
        self.metrics = metrics
        # Storage that writes a run's `running` with its claim and its `done` with its result (one commit for
        # each, not two): see agentd.ports.work_queue.RunJournal. None: the queue, then the log.
        self.journal = journal
        self.queue = queue
        self.streams = streams
        self.registry = registry
        self.workers = workers
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s  # known: a run whose lease could not be renewed stops before it expires
        self.prune_s = prune_s
        self.sweep_s = sweep_s
        self.limits = limits
        self.secrets = secrets
        self.service_secrets = dict(service_secrets or {})  # redacted from every run's output
        self.job_retention_s = job_retention_s  # None: finished jobs are kept
        self.webhooks = webhooks  # deliveries enqueued on status changes and at the end (if asked)
        self.git_runs = git_runs  # projects with a repository: a working tree per job, a patch after
        self.worker_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._to_finish: list[
            tuple[str, AgentResult, str, int, list[AgentEvent], asyncio.Future[tuple[Job, bool]]]
        ] = []
        self._finisher: asyncio.Task[None] | None = None
        self._claims_out: set[asyncio.Task[int]] = set()  # claims on their way (`_dispatch`)
        self._results_overdue: asyncio.TimerHandle | None = None  # sends held-back results (RESULTS_WAIT_S)
        self._tree_sweep: asyncio.Task[None] | None = None
        self._slot_free = asyncio.Event()
        # Jobs holding one of the `workers` slots: from their claim until their run (the agent) has ended.
        # Recording the result and ending the stream go on after that, while the slot already runs the next.
        self._holding: set[str] = set()
        self._active: dict[str, _Run] = {}  # job id → its run here (never two runs of one job: `exclude`)
        self._stopping = asyncio.Event()
        self._handing_back = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever no job runs in this process
        self._idle.set()

    async def start(self) -> None:
        if self.queue.recover_all_at_start:
            # Single-process queue: every job still "running" lost its worker with the last process.
            recovered = await self.queue.recover(all_running=True)
            self._log_recovered(recovered)
            for job in recovered:
                await self._announce_recovered(job, "agentd restarted; its worker was lost")
        self._tasks.append(asyncio.create_task(self._dispatch(self.worker_prefix)))
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        if self.webhooks is not None:
            self._tasks.append(asyncio.create_task(self.webhooks.run(self.worker_prefix, self._stopping)))

    def _log_recovered(self, jobs: list[Job]) -> None:
        if jobs:
            self.metrics.lease_recovered(len(jobs))
        for job in jobs:
            log.warning(
                "job.recovered",
                job_id=job.id,
                status=job.status.value,
                attempts=job.attempts,
                error=job.result.error if job.result else None,
            )

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; let running jobs finish within `grace_s`, then hand the rest back to the queue."""
        self._stopping.set()
        self._slot_free.set()  # the dispatcher may be waiting for a slot
        if self._running:
            # The job tasks, not only the active runs: a job claimed just before the stop may not have
            # registered its run yet (it is creating its stream).
            await asyncio.wait(list(self._running), timeout=grace_s)
        self._handing_back.set()  # a job that registers its run from now on is handed back at once
        if self._active:
            await asyncio.gather(*(self._hand_back(run) for run in list(self._active.values())))
        everything = self._tasks + list(self._running)
        _, pending = await asyncio.wait(everything, timeout=SAFETY_GRACE_S) if everything else ((), ())
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        self._tasks.clear()

    async def _hand_back(self, run: _Run) -> None:
        """Shutdown: stop the run (its output dropped, no result stored) and, once its agent has stopped, give
        the job back to the queue for its next attempt: never two agents on one job, not even briefly."""
        job = run.job
        try:
            async with asyncio.timeout(10):
                current: Job | None = await self.queue.get(job.project_id, job.id)
        except (AgentdError, TimeoutError):
            current = None
        if current is not None and current.cancel_requested:
            # A user asked to cancel it: it ends cancelled, as usual.
            log.warning("job.cancel_on_shutdown", job_id=job.id)
            with contextlib.suppress(Exception):
                await run.agent.cancel(run.run_id)
            return
        await run.supersede(SHUTDOWN_REASON)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.ended.wait(), SUPERSEDED_GRACE_S * 3)
        try:
            async with asyncio.timeout(10):
                released = await self.queue.release(job.id, job.attempts, SHUTDOWN_REASON)
        except (AgentdError, TimeoutError) as e:
            # Storage down: its lease expires and a sweeper re-queues it.
            log.error("job.hand_back_failed", job_id=job.id, error=str(e), then="the lease will expire")
            return
        if released is None:
            # It moved on already, or a cancel request came in meanwhile: its lease ends it.
            log.warning("job.hand_back_refused", job_id=job.id, attempt=job.attempts)
            return
        log.warning("job.handed_back", job_id=job.id, attempt=job.attempts, reason=SHUTDOWN_REASON)
        await self._say_requeued(job, SHUTDOWN_REASON)

    async def _say_requeued(self, job: Job, reason: str) -> None:
        """The one `requeued` event of a run that lost its job (bounded: never blocks a shutdown or sweep)."""
        with contextlib.suppress(AgentdError, TimeoutError):
            async with asyncio.timeout(10):
                await self.streams.supersede(
                    job.stream_id,
                    job.attempts + 1,
                    [
                        StatusEvent(
                            status="requeued",
                            detail=f"attempt {job.attempts}: {reason}",
                            attempt=job.attempts,
                        )
                    ],
                )

    async def cancel_local(self, job_id: str) -> bool:
        run = self._active.get(job_id)
        if run is None:
            return False
        return await run.agent.cancel(run.run_id)

    async def _dispatch(self, worker_id: str) -> None:
        """Fill free slots: one claim for as many jobs as there is room for, each run in its own task.

        While the queue keeps answering full claims, a slot freed while a claim is on its way is claimed for
        at once by a claim of its own (at most CLAIMS_IN_FLIGHT at a time): a slot waits for one round trip,
        not for the one before it to come back. A claim is only ever for slots that are free and not promised
        to another claim in flight: a claimed job is `running`, under a lease, and counts toward its
        project's and the fleet's limits, so no job is claimed before there is room to run it.

        Results are stored by their own statement (`_flush_finished`), not in the claim's transaction:
        storing a slot's result with the claim for that slot (one commit for both) was measured slower on
        PostgreSQL (issue 16): the claim then waits for the results' statement, and the worker's CPU for
        those results no longer overlaps the claim's round trip. Nor do they go out beside a claim: they
        wait for it to return (a round trip or two; RESULTS_WAIT_S at most), then go ahead of the jobs it
        brought."""
        claims: dict[asyncio.Task[int], int] = {}  # claims in flight → the slots each may fill
        # The claims and the waits for work share one context: `wait_for_work` knows of the wake-ups that
        # came since the latest claim started looking (agentd.adapters.queue_policy.WakeUps).
        ctx = contextvars.copy_context()
        short = False  # the latest claim came back with fewer jobs than asked for: wait for work
        try:
            while not self._stopping.is_set():
                self._slot_free.clear()
                failed = False
                for task in [t for t in claims if t.done()]:
                    asked = claims.pop(task)
                    got = self._claimed(task, worker_id)
                    failed = failed or got is None
                    short = got is None or got < asked
                if failed:  # storage down (or a bug): wait and retry, never die
                    await asyncio.sleep(self.poll_s)
                    continue
                free = self.workers - len(self._holding) - sum(claims.values())
                if free > 0 and short and not claims:
                    short = False  # look again once there may be work (or after poll_s)
                    await self._wait_for_work(ctx)
                elif free > 0 and not short and len(claims) < CLAIMS_IN_FLIGHT:
                    task = asyncio.create_task(self._claim_into_slots(worker_id, free), context=ctx)
                    task.add_done_callback(self._claim_done)
                    self._claims_out.add(task)
                    claims[task] = free
                else:
                    await self._slot_free.wait()  # a slot freed, a claim came back, or shutdown
        finally:
            if claims:  # their jobs are this process's now: they run (or are handed back) as usual
                await asyncio.wait(claims)

    def _claim_done(self, task: asyncio.Task[int]) -> None:
        self._claims_out.discard(task)
        self._slot_free.set()
        self._flush_soon(after_claim=True)  # whatever way the claim ended (`_claim_into_slots` may not have)

    def _claimed(self, task: asyncio.Task[int], worker_id: str) -> int | None:
        """How many jobs a finished claim handed out; None when it failed (logged)."""
        try:
            return task.result()
        except AgentdError as e:
            log.error("worker.claim_failed", worker_id=worker_id, error=str(e))
        except Exception:  # a bug must not stop this process from ever claiming again
            log.exception("worker.claim_crashed", worker_id=worker_id)
        return None

    async def _wait_for_work(self, ctx: contextvars.Context) -> None:
        """Nothing was runnable at the last look: wait for new work or shutdown (at most poll_s)."""
        waits: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._stopping.wait()),
            asyncio.create_task(self.queue.wait_for_work(self.poll_s), context=ctx),
        ]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED, timeout=self.poll_s)
        for t in waits:
            t.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    async def _claim_into_slots(self, worker_id: str, n: int) -> int:
        """Claim up to `n` jobs and start each in its own task; how many were claimed."""
        claimed_at = time.monotonic()  # the leases start no earlier than this
        try:
            jobs = await self._claim(worker_id, n)
        finally:
            # The results that waited for this claim go out now, ahead of the jobs it brings.
            self._flush_soon(after_claim=True)
        for job, started in jobs:
            task = asyncio.create_task(self._run_guarded(job, worker_id, claimed_at, started))
            self._running.add(task)
            self._holding.add(job.id)
            task.add_done_callback(functools.partial(self._task_done, job.id))
        return len(jobs)

    async def _claim(self, worker_id: str, n: int) -> list[tuple[Job, bool]]:
        """Up to `n` jobs, each with whether its `running` event is written already (the run journal)."""
        exclude = set(self._active)
        if self.journal is not None:
            return await self.journal.claim_started(
                worker_id, n, running=_running(worker_id), limits=self.limits, exclude=exclude
            )
        jobs = await self.queue.claim_many(worker_id, n, limits=self.limits, exclude=exclude)
        return [(job, False) for job in jobs]

    def _task_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._release_slot(job_id)

    def _release_slot(self, job_id: str) -> None:
        if job_id in self._holding:
            self._holding.discard(job_id)
            self._slot_free.set()

    async def _run_guarded(self, job: Job, worker_id: str, claimed_at: float, started: bool) -> None:
        try:
            await self.run_job(job, worker_id, claimed_at=claimed_at, running_written=started)
        except Exception:  # a bug in one job must not kill the worker
            log.exception("job.crashed", job_id=job.id)

    async def run_job(
        self, job: Job, worker_id: str, *, claimed_at: float | None = None, running_written: bool = False
    ) -> AgentResult:
        # `running_written`: the job's `running` event was written with its claim (the run journal).
        structlog.contextvars.bind_contextvars(
            job_id=job.id, project_id=job.project_id, request_id=job.request.request_id
        )
        started = time.monotonic()
        self.metrics.run_started(job.provider, since_submit_s=_since(job.created_at))
        ended = False
        run: _Run | None = None
        try:
            try:
                agent = self.registry.get(job.provider)
            except AgentdError as e:
                await self._ensure_stream(job)
                result = AgentResult(status="failed", error=e.message)
            else:
                run = _Run(job, agent, leased_at=claimed_at if claimed_at is not None else time.monotonic())
                self._active[job.id] = run
                self._idle.clear()
                if self._handing_back.is_set():  # claimed as the grace ended: straight back to the queue
                    asyncio.create_task(self._hand_back(run))  # noqa: RUF006 - awaited through run.ended
                # run.started / run.ended (wall clock, after the agent has stopped): what the fault suite
                # (bench/faults.py) reads to prove that two runs of one job never overlap.
                log.info("run.started", run_id=job.run_id, at=time.time())
                try:
                    result = await self._drive(run, worker_id, running_written)
                finally:
                    self._run_over(run)
                if run.superseded.is_set():
                    ended = True
                    self.metrics.run_ended(job.provider, "cancelled", run_s=time.monotonic() - started)
                    self.metrics.run_fenced(job.provider)
                    log.warning("job.result_discarded", reason=run.why, run_id=job.run_id)
                    return result
            stored, done_written = await self._store(job, result, worker_id, run)
            ended = True
            self.metrics.run_ended(job.provider, result.status, run_s=time.monotonic() - started)
            if stored.status == JobStatus.queued:
                await self._requeued_by_us(job, result)
                return result
            if stored.status == JobStatus.running or stored.result is None:
                # Our lease expired and another worker owns the job now: its result will count.
                self.metrics.run_fenced(job.provider)
                log.warning("job.result_discarded", reason="lease lost", owner=stored.worker_id)
                return result
            return await self._publish_final(job, stored, worker_id, started, done_written)
        finally:
            if not ended:  # crashed before its result was stored
                self.metrics.run_ended(job.provider, "failed", run_s=time.monotonic() - started)
            structlog.contextvars.unbind_contextvars("job_id", "project_id", "request_id")

    def _run_over(self, run: _Run) -> None:
        """The run's agent has stopped: its slot may take the next job."""
        job = run.job
        log.info("run.ended", run_id=job.run_id, at=time.time(), superseded=run.superseded.is_set())
        run.ended.set()
        self._active.pop(job.id, None)
        self._release_slot(job.id)
        if not self._active:
            self._idle.set()

    async def _store(
        self, job: Job, result: AgentResult, worker_id: str, run: _Run | None
    ) -> tuple[Job, bool]:
        """`_finish`, with the run's events not stored yet (its tail)."""
        tail = run.tail if run is not None else []
        stored, done_written = await self._finish(job, result, worker_id, tail)
        if tail and run is not None:
            await self._tail_stored(run, tail, done_written)
        return stored, done_written

    async def _tail_stored(self, run: _Run, tail: list[AgentEvent], done_written: bool) -> None:
        """The run's last events went with its result (`done_written`), or go now the ordinary way (fenced:
        the stream refuses them once the job has moved on)."""
        if not done_written:
            try:
                await self._publish_run(run, tail)
            except StreamNotFound:  # closed meanwhile (the result is stored): nobody may write any more
                log.warning("job.events_refused", run_id=run.run_id, count=len(tail))
            return
        for ev in tail:
            self.metrics.events_published(ev.event)
            if isinstance(ev, StatusEvent):
                await self._notify(run.job, ev)

    async def _publish_final(
        self, job: Job, stored: Job, worker_id: str, started: float, done_written: bool = False
    ) -> AgentResult:
        """The job's final result is stored: say `done` (after the store, so a client that saw it finds the
        final status) and close the stream. `done_written`: the run journal did both with the store."""
        assert stored.result is not None
        final = stored.result
        self.metrics.job_finished(job.provider, final.status)
        try:
            if done_written:
                self.metrics.events_published("done")
                if job.request.webhook is not None:
                    await self._notify(job, DoneEvent.from_result(final))
            else:
                await self._end_stream(job, DoneEvent.from_result(final))
        except RunSuperseded:  # the job was stored final by this run: nobody else may write; a bug
            log.error("job.done_refused", run_id=job.run_id)
            return final
        except StreamNotFound:  # closed already: the journal wrote `done` but its answer was lost (retried)
            log.warning("job.stream_closed_already", run_id=job.run_id)
            return final
        log.info(
            "job.finished",
            status=final.status,
            provider=job.provider,
            attempts=stored.attempts,
            worker_id=worker_id,
            duration_ms=int((time.monotonic() - started) * 1000),
            cost_usd=final.cost_usd,
            error=final.error,
        )
        return final

    async def _requeued_by_us(self, job: Job, result: AgentResult) -> None:
        """The stored job is queued again: our retryable failure (announce the retry), or it had moved on."""
        if not result.retryable:
            self.metrics.run_fenced(job.provider)
            log.warning("job.result_discarded", reason="the job moved on", run_id=job.run_id)
            return
        self.metrics.job_retried(job.provider)
        # A retryable failure (rate limit, overload): the queue runs it again after a backoff.
        with contextlib.suppress(AgentdError):
            await self.streams.supersede(
                job.stream_id,
                job.attempts + 1,
                [
                    StatusEvent(
                        status="retrying",
                        detail=f"attempt {job.attempts} failed: {result.error}",
                        attempt=job.attempts,
                    )
                ],
            )
        log.warning("job.retry_scheduled", attempts=job.attempts, error=result.error)

    async def _drive(self, run: _Run, worker_id: str, running_written: bool = False) -> AgentResult:
        job = run.job
        if running_written:  # `running` was stored with the claim (the run journal)
            self.metrics.events_published("status")
            if job.request.webhook is not None:
                await self._notify(job, _running(worker_id, job.attempts))
        elif not await self._start(run, worker_id):
            return AgentResult(status="failed", error="superseded before it started")
        try:
            env = await self._run_env(job)
        except Exception as e:  # storage trouble: try again later rather than run without the secrets
            log.exception("job.secrets_failed")
            return AgentResult(
                status="failed", error=f"could not read the project's secrets: {e}", retryable=True
            )
        try:
            git = await self._leased(run, worker_id, self.git_runs.open(job)) if self.git_runs else None
        except WorkspaceFailed as e:
            log.error("job.workspace_failed", error=e.message, retryable=e.retryable)
            return AgentResult(status="failed", error=e.message, retryable=e.retryable)
        except AgentdError as e:  # storage trouble: try again later
            log.error("job.workspace_failed", error=e.message, retryable=True)
            return AgentResult(status="failed", error=f"could not prepare the workspace: {e}", retryable=True)
        try:
            return await self._drive_in(run, worker_id, env, git)
        finally:
            if git is not None:
                await git.close()

    async def _start(self, run: _Run, worker_id: str) -> bool:
        """The run's `running` event (after the backstop `requeued` of a lost earlier attempt); False when a
        later attempt has started (the run is superseded)."""
        job = run.job
        if job.attempts > 1:
            # Backstop: when the previous attempt's end was not announced (its announcer crashed or could not
            # reach storage), say so before this attempt writes anything.
            await self._durably(
                lambda: self.streams.supersede(
                    job.stream_id,
                    job.attempts,
                    [
                        StatusEvent(
                            status="requeued",
                            detail=f"attempt {job.attempts - 1}: its worker was lost",
                            attempt=job.attempts - 1,
                        )
                    ],
                ),
                "supersede",
            )
        running = _running(worker_id, job.attempts)
        try:
            try:
                await self._publish(job, running)
            except StreamNotFound:  # the API makes the stream before the job; should it be missing, make it
                await self._ensure_stream(job)
                await self._publish(job, running)
        except RunSuperseded:
            await run.supersede("a later attempt has started")
            return False
        return True

    async def _drive_in(
        self, run: _Run, worker_id: str, env: dict[str, str], git: GitRun | None
    ) -> AgentResult:
        job = run.job
        git_secrets = git.secrets if git is not None else {}
        if git is not None:
            env = git.scrub(env)
            ws = git.workspace
            await self._publish_run(
                run, [StatusEvent(status="workspace", detail=f"{ws.ref} at {ws.base[:12]}")]
            )
        run.defer_tail = self.journal is not None and git is None
        redactor = RunRedactor({**self.service_secrets, **env, **git_secrets})
        with LOG_SECRETS.holding({**env, **git_secrets}):
            workdir = git.workdir if git is not None else None
            result = await self._supervise(run, worker_id, env, redactor, workdir)
            if git is not None and not run.superseded.is_set():  # a superseded run records nothing
                result = await self._leased(run, worker_id, git.record(job, result))
            return redactor.result(result)

    async def _leased(self, run: _Run, worker_id: str, work: Awaitable[T]) -> T:
        """Await `work` (a fetch, recording a large patch) while renewing the job's lease (fenced by the
        attempt), so a slow git server never makes the fleet think this worker is gone."""
        job = run.job

        async def beat() -> None:  # first after heartbeat_s (_Deferred), then every heartbeat_s
            while True:
                sent = time.monotonic()
                with contextlib.suppress(AgentdError):
                    if await self.queue.heartbeat(job.id, worker_id, attempt=job.attempts):
                        run.leased_at = sent
                    else:
                        await run.supersede("lease lost")
                await asyncio.sleep(self.heartbeat_s)

        beater = _Deferred(self.heartbeat_s, beat)
        try:
            return await work
        finally:
            await beater.stop()

    async def _run_env(self, job: Job) -> dict[str, str]:
        """The project's secrets (over the global ones), for the agent process's environment only."""
        if self.secrets is None:
            return {}
        # Storage that read, with the job's claim, that no secret applies to it (the run journal) says so
        # once: no query of its own.
        hint: Callable[[str], bool] | None = getattr(self.secrets, "claimed_without_secrets", None)
        if hint is not None and hint(job.project_id):
            return {}
        try:
            env = await self.secrets.resolve(job.project_id)
        except SecretsUnavailable:  # no master key: there are no secrets to give
            return {}
        env.pop(WEBHOOK_SECRET_NAME, None)  # signs the project's webhooks: never the run's to see
        return env

    async def _supervise(
        self,
        run: _Run,
        worker_id: str,
        env: dict[str, str],
        redactor: RunRedactor,
        workdir: Path | None = None,
    ) -> AgentResult:
        job = run.job
        if run.superseded.is_set():  # handed back before its agent started: do not start it
            return AgentResult(status="failed", error=f"superseded before it started: {run.why}")
        run_over = asyncio.Event()
        deadline = time.monotonic() + job.request.timeout_s + SAFETY_GRACE_S
        # Its first look is after poll_s: until then a timer, not a task (most runs of a busy worker are over
        # by then).
        watcher = _Deferred(self.poll_s, functools.partial(self._watch, run, worker_id, run_over, deadline))
        try:
            async with asyncio.timeout(job.request.timeout_s + SAFETY_GRACE_S * 2):
                done = await self._stream_fenced(run, env, redactor, workdir)
        except TimeoutError:
            return AgentResult(
                status="timed_out", error=f"the provider did not stop within {job.request.timeout_s:g} s"
            )
        except Exception as e:
            log.exception("job.provider_error", provider=job.provider)
            self.metrics.provider_error(job.provider, "exception")
            return AgentResult(status="failed", error=f"provider {job.provider} failed: {e}")
        finally:
            # Stop the watcher by its own flag, not only by cancellation: a cancel that lands while one of
            # its queries completes can be swallowed (asyncio.wait_for in 3.11), and then a watcher that
            # loops on would heartbeat a finished run forever.
            run_over.set()
            await watcher.stop(timeout=10)
        if done is None:
            return AgentResult(status="failed", error=f"provider {job.provider} ended without a result")
        return done.to_result()

    async def _stream_fenced(
        self, run: _Run, env: dict[str, str], redactor: RunRedactor, workdir: Path | None
    ) -> DoneEvent | None:
        """`_stream`, ended when the run is superseded: its agent was told to stop; if it does not end within
        SUPERSEDED_GRACE_S its task is cancelled (the adapter's cleanup runs either way)."""
        streaming = asyncio.create_task(self._stream(run, env, redactor, workdir))
        superseded = run.superseded_future()
        either: set[asyncio.Future[Any]] = {streaming, superseded}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not streaming.done():
                await asyncio.wait({streaming}, timeout=SUPERSEDED_GRACE_S)
            if not streaming.done():
                streaming.cancel()
                await asyncio.wait({streaming}, timeout=SUPERSEDED_GRACE_S)
                return None
            return streaming.result()
        finally:
            superseded.cancel()
            if not streaming.done():
                streaming.cancel()
                await asyncio.wait({streaming}, timeout=SUPERSEDED_GRACE_S)

    async def _stream(
        self, run: _Run, env: dict[str, str], redactor: RunRedactor, workdir: Path | None
    ) -> DoneEvent | None:
        """Publish the run's events, redacted, until its `done` (returned, not published: the runner
        publishes the stored result). Events go out through the run's outbox: in order, as many per write
        as have come meanwhile, at most OUTBOX_WINDOW on their way (back-pressure: beyond that the agent's
        output waits in the adapter). Every event is stored before `_stream` returns, except, with
        `run.defer_tail`, those not yet on their way when the agent ended: they go with the result (`tail`,
        written before `done` in the result's transaction). Once the run is superseded its output is dropped.
        `workdir`: the job's own working tree."""
        job = run.job
        outbox = _Outbox(functools.partial(self._publish_run, run), OUTBOX_WINDOW)
        where = {"workdir": workdir} if workdir is not None else {}  # adapters without it run as before
        events = run.agent.execute(job.request, run_id=run.run_id, env=env or None, **where)
        first = True
        ended = False
        try:
            async for ev in events:
                if first:
                    first = False
                    self.metrics.first_event(job.provider, since_submit_s=_since(job.created_at))
                if isinstance(ev, DoneEvent):
                    ended = True
                    return ev
                if isinstance(ev, ErrorEvent):
                    self.metrics.provider_error(job.provider, ev.code)
                for out in redactor.feed(ev):
                    await outbox.put(out)
            return None
        finally:
            try:
                # Closing the iterator makes the adapter clean up (processes, sessions) right away.
                aclose = getattr(events, "aclose", None)
                if aclose is not None:
                    await aclose()
            finally:
                # The agent has stopped: its slot may take the next job while its last events are stored.
                self._release_slot(job.id)
                for out in redactor.flush():  # text held back at the end of an unfinished message
                    await outbox.put(out)
                if ended and run.defer_tail and not run.superseded.is_set():
                    run.tail = outbox.take_unwritten()  # stored with the result, before `done`
                await outbox.flush()

    async def _publish_run(self, run: _Run, events: list[AgentEvent]) -> None:
        if run.superseded.is_set():
            return
        try:
            await self._durably(
                lambda: self.streams.publish(run.job.stream_id, events, run=run.job.attempts), "publish"
            )
        except RunSuperseded:
            await run.supersede("a later attempt has written to the stream")
            return
        for ev in events:
            self.metrics.events_published(ev.event)
            if isinstance(ev, StatusEvent | DoneEvent):
                await self._notify(run.job, ev)

    async def _end_stream(self, job: Job, done: DoneEvent) -> None:
        """`done`, then the end of the stream. A log that stores its writes in the order they were issued,
        batched (`writes_in_order`: PostgreSQL), gets both at once and stores them in one statement (one
        round trip); should storage fail, each is retried on its own, in order."""
        sid = job.stream_id
        if not getattr(self.streams, "writes_in_order", False):
            await self._publish(job, done)
            await self._durably(lambda: self.streams.close_stream(sid), "close_stream")
            return
        publish = asyncio.ensure_future(self.streams.publish(sid, [done], run=job.attempts))
        close = asyncio.ensure_future(self.streams.close_stream(sid))
        published, closed = await asyncio.gather(publish, close, return_exceptions=True)
        if isinstance(published, QueueUnavailable):
            if not isinstance(closed, BaseException):  # only when storage failed between two batches
                log.error("job.stream_closed_without_done", stream_id=sid)
                return
            await self._publish(job, done)
        elif isinstance(published, BaseException):
            raise published
        else:
            self.metrics.events_published(done.event)
            await self._notify(job, done)
        if isinstance(closed, QueueUnavailable):
            await self._durably(lambda: self.streams.close_stream(sid), "close_stream")
        elif isinstance(closed, BaseException):
            raise closed

    async def _ensure_stream(self, job: Job) -> None:
        await self._durably(lambda: self.streams.create(job.stream_id), "create_stream")

    async def _finish(
        self, job: Job, result: AgentResult, worker_id: str, tail: list[AgentEvent] | None = None
    ) -> tuple[Job, bool]:
        """Record a result (refused when the job has moved on from this attempt). Results that arrive while
        one write is in flight go out together in the next `finish_many` (no added delay): many short jobs
        cost a round trip per batch, not per job. Returns the stored job, and whether its `done` is written
        and its stream closed with it (the run journal; `tail`, the run's events not stored yet, with
        them)."""
        done: asyncio.Future[tuple[Job, bool]] = asyncio.get_running_loop().create_future()
        self._to_finish.append((job.id, result, worker_id, job.attempts, tail or [], done))
        self._flush_soon(after_claim=False)
        return await done

    def _flush_overdue(self) -> None:
        self._results_overdue = None
        self._flush_soon(after_claim=True)

    def _flush_soon(self, *, after_claim: bool) -> None:
        """Send the waiting results unless a write of results is on its way (they follow it)."""
        if self._to_finish and (self._finisher is None or self._finisher.done()):
            self._finisher = asyncio.create_task(self._flush_finished(after_claim))

    async def _flush_finished(self, after_claim: bool = True) -> None:
        """Store the waiting results, a batch per round trip, until none wait.

        Results do not go out while a claim is on its way: the two statements slowed each other down on
        the database (a claim of 4 took 1.04 ms instead of 0.70 ms with a result statement running beside
        it; issue 16), and the claim is what the free slots wait for. They go when it returns, ahead of
        the jobs it brings (`_claim_into_slots`), so their round trip overlaps those runs instead. Checked
        here, one step after `_finish`: by then a slot freed by the same run has had its claim sent."""
        while self._to_finish:
            if not after_claim and any(not t.done() for t in self._claims_out):
                # The claim's return sends them (`_claim_into_slots`, `_claim_done`); a claim that takes
                # long (a busy pool, a lock) holds them RESULTS_WAIT_S at most: their jobs' leases are not
                # renewed meanwhile.
                if self._results_overdue is None:
                    self._results_overdue = asyncio.get_running_loop().call_later(
                        RESULTS_WAIT_S, self._flush_overdue
                    )
                return
            after_claim = False
            if self._results_overdue is not None:
                self._results_overdue.cancel()
                self._results_overdue = None
            batch, self._to_finish = self._to_finish, []
            by_worker: dict[str, list[_Finishing]] = {}
            for job_id, result, worker_id, attempt, tail, fut in batch:
                by_worker.setdefault(worker_id, []).append((job_id, result, attempt, tail, fut))
            for worker_id, items in by_worker.items():
                pairs = [(job_id, result) for job_id, result, *_ in items]
                attempts = {job_id: attempt for job_id, _, attempt, *_ in items}
                tails = {job_id: tail for job_id, _, _, tail, _ in items if tail}
                try:
                    jobs = await self._durably(
                        functools.partial(self._store_results, pairs, worker_id, attempts, tails), "finish"
                    )
                except Exception as e:
                    for *_, fut in items:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (*_, fut), job in zip(items, jobs, strict=True):
                    if not fut.done():
                        fut.set_result(job)

    async def _store_results(
        self,
        pairs: list[tuple[str, AgentResult]],
        worker_id: str,
        attempts: dict[str, int],
        tails: dict[str, list[AgentEvent]],
    ) -> list[tuple[Job, bool]]:
        if self.journal is not None:
            return await self.journal.finish_ended(
                pairs, worker_id=worker_id, attempts=attempts, events=tails or None
            )
        # No journal, no tails (`defer_tail`): a run's events are all stored before its result.
        jobs = await self.queue.finish_many(pairs, worker_id=worker_id, attempts=attempts)
        return [(job, False) for job in jobs]

    async def _publish(self, job: Job, ev: AgentEvent) -> None:
        await self._durably(lambda: self.streams.publish(job.stream_id, [ev], run=job.attempts), "publish")
        self.metrics.events_published(ev.event)
        if isinstance(ev, StatusEvent | DoneEvent):
            await self._notify(job, ev)

    async def _notify(self, job: Job, ev: StatusEvent | DoneEvent) -> None:
        """The job's webhook, if it asked for this event: stored durably, sent by the dispatcher."""
        webhooks = self.webhooks
        if webhooks is None or job.request.webhook is None:
            return
        try:
            await self._durably(lambda: webhooks.notify(job, ev), "webhook")
        except Exception:  # never let a webhook break the job
            log.exception("webhook.enqueue_failed", event=ev.event)

    async def _durably(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """Retry `op` while storage is unreachable (a database restart): the run waits, nothing is lost.

        While we wait, the agent's output waits in its pipe (back-pressure); the job's own deadline and
        the safety net still apply.
        """
        delay = 0.2
        while True:
            try:
                return await op()
            except QueueUnavailable as e:
                log.warning("storage.unavailable", op=what, error=str(e), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _watch(self, run: _Run, worker_id: str, run_over: asyncio.Event, deadline: float) -> None:
        """Poll for cancel requests and for the job moving on, renew the lease (fenced by the attempt), stop
        the run before a lease it could not renew ends, enforce the deadline. Started poll_s after the run
        (`_Deferred`): it looks at once, then every poll_s."""
        job, agent = run.job, run.agent
        cancelled = False
        first = True
        while not run_over.is_set():
            if not first:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(run_over.wait(), self.poll_s)
            first = False
            if run_over.is_set() or run.superseded.is_set():
                return
            now = time.monotonic()
            if self.lease_s is not None and now - run.leased_at > self.lease_s - 2 * self.poll_s:
                # Storage unreachable for about a lease: the job will go to another attempt. Stop first, so
                # that two agents never work on one job.
                await run.supersede("its lease could not be renewed (storage unreachable)")
                return
            with contextlib.suppress(AgentdError):
                if not cancelled:
                    current = await self.queue.get(job.project_id, job.id)
                    if current.status != JobStatus.running or current.attempts != job.attempts:
                        # Re-queued (lease expired), handed back or claimed again: this run lost the job.
                        await run.supersede(
                            f"the job moved on (now {current.status.value}, attempt {current.attempts})"
                        )
                        return
                    if current.cancel_requested:
                        cancelled = True
                        log.info("job.cancelling", reason="requested")
                        await agent.cancel(run.run_id)
                if time.monotonic() - run.leased_at >= self.heartbeat_s:
                    sent = time.monotonic()
                    if not await self.queue.heartbeat(job.id, worker_id, attempt=job.attempts):
                        # Our lease expired (a network split, a clock jump) or the job moved on: stop ours so
                        # that two agents never work on one job.
                        await run.supersede("lease lost")
                        return
                    run.leased_at = sent
            if now > deadline and not cancelled:
                cancelled = True
                log.warning("job.safety_timeout")
                await agent.cancel(run.run_id)

    async def _housekeeping(self) -> None:
        """Sweep expired leases (jobs whose worker died anywhere in the fleet), prune old streams, purge
        finished jobs past their retention, remove working trees left by killed workers (at start too)."""
        last_prune = time.monotonic()
        self._sweep_trees_soon()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.sweep_s)
            if self._stopping.is_set():
                return
            try:
                recovered = await self.queue.recover()
                self._log_recovered(recovered)
                for job in recovered:
                    mine = self._active.get(job.id)
                    if mine is not None and mine.job.attempts == job.attempts:
                        # Our own run's lease expired under it (a clock jump, a stalled process): stop it now.
                        await mine.supersede("lease expired")
                    await self._announce_recovered(job, "lease expired")
                if time.monotonic() - last_prune >= self.prune_s:
                    last_prune = time.monotonic()
                    n = await self.streams.prune()
                    if n:
                        log.info("streams.pruned", count=n)
                    await self._purge()
                    self._sweep_trees_soon()
            except AgentdError as e:
                log.error("housekeeping.failed", error=str(e))
            except Exception:
                log.exception("housekeeping.crashed")

    def _sweep_trees_soon(self) -> None:
        """Sweep left-behind trees in a task of its own (removing big trees takes a while: the lease sweep
        must not wait for it), one sweep at a time."""
        if self.git_runs is None or (self._tree_sweep is not None and not self._tree_sweep.done()):
            return
        self._tree_sweep = asyncio.create_task(self._sweep_trees())
        self._tasks.append(self._tree_sweep)
        self._tree_sweep.add_done_callback(self._forget_task)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _sweep_trees(self) -> None:
        if self.git_runs is None:
            return
        try:
            n = await self.git_runs.sweep(self.queue, busy=set(self._active) | self._holding)
        except AgentdError as e:  # storage down: next time
            log.error("workspace.sweep_failed", error=str(e))
            return
        except Exception:  # a bug must not stop the housekeeping
            log.exception("workspace.sweep_crashed")
            return
        if n:
            log.info("workspaces.swept", count=n)

    async def _purge(self) -> None:
        """Finished jobs (and their idempotency keys) past AGENTD_JOB_RETENTION_S, in bounded batches."""
        if self.job_retention_s is None:
            return
        total = 0
        for _ in range(20):  # at most 20 batches a round: the sweeper must get back to its leases
            n = await self.queue.purge(self.job_retention_s, batch=PURGE_BATCH)
            total += n
            if n < PURGE_BATCH:
                break
        if total:
            log.info("jobs.purged", count=total)

    async def _announce_recovered(self, job: Job, reason: str) -> None:
        # Bounded: the sweeper must keep sweeping even if one stream cannot be written right now.
        with contextlib.suppress(AgentdError, TimeoutError):
            async with asyncio.timeout(10):
                await self._announce(job, reason)

    async def _announce(self, job: Job, reason: str) -> None:
        if job.status == JobStatus.queued:
            await self._say_requeued(job, reason)
            self.metrics.events_published("status")
        elif job.result is not None:
            # Written as the next run: the lost run can write nothing after it.
            done = DoneEvent.from_result(job.result)
            await self.streams.publish(job.stream_id, [done], run=job.attempts + 1)
            self.metrics.events_published("done")
            self.metrics.job_finished(job.provider, job.result.status)
            await self.streams.close_stream(job.stream_id)
            await self._notify(job, done)
