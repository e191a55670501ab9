"""Workers: claim a job, run it through its provider, publish every event, record the result.

Guarantees: exactly one `done` event per job, published after the result is stored (a client that saw
`done` always finds the final status); cancel requests reach the run within `poll_s`; a run that ignores
its own deadline is cancelled by the runner's safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from agentd.domain.errors import AgentdError, QueueUnavailable, SecretsUnavailable, WorkspaceFailed
from agentd.domain.models import AgentEvent, AgentResult, DoneEvent, ErrorEvent, Job, JobStatus, StatusEvent
from agentd.ports.code_agent import CodeAgent
from agentd.ports.event_stream import EventStream
from agentd.ports.metrics import NO_METRICS, Metrics
from agentd.ports.secret_store import SecretStore
from agentd.ports.work_queue import Limits, WorkQueue
from agentd.services.git_runs import GitRun, GitRuns
from agentd.services.redaction import LOG_SECRETS, RunRedactor
from agentd.services.registry import ProviderRegistry

log = structlog.get_logger(__name__)

SAFETY_GRACE_S = 30.0
T = TypeVar("T")


def _since(t: datetime) -> float:
    """Seconds from `t` (a job's created_at, UTC) to now, for the metrics."""
    return (datetime.now(UTC) - t).total_seconds()


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
        prune_s: float = 60.0,
        sweep_s: float = 10.0,
        limits: Limits | None = None,
        secrets: SecretStore | None = None,
        service_secrets: Mapping[str, str] | None = None,
        git_runs: GitRuns | None = None,
        metrics: Metrics = NO_METRICS,
    ) -> None:
        self.metrics = metrics
        self.queue = queue
        self.streams = streams
        self.registry = registry
        self.workers = workers
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.prune_s = prune_s
        self.sweep_s = sweep_s
        self.limits = limits
        self.secrets = secrets
        self.service_secrets = dict(service_secrets or {})  # redacted from every run's output
        self.git_runs = git_runs  # projects with a repository: a working tree per job, a patch after
        self.worker_prefix = f"{socket.gethostname()}:{os.getpid()}"
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._to_finish: list[tuple[str, AgentResult, str, asyncio.Future[Job]]] = []
        self._finisher: asyncio.Task[None] | None = None
        self._slot_free = asyncio.Event()
        self._active: dict[str, tuple[Job, CodeAgent]] = {}
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()  # set whenever no job runs in this process
        self._idle.set()

    async def start(self) -> None:
        if self.queue.recover_all_at_start:
            # Single-process queue: every job still "running" lost its worker with the last process.
            recovered = await self.queue.recover(all_running=True)
            self._log_recovered(recovered)
            for job in recovered:
                await self._announce_recovered(job)
        self._tasks.append(asyncio.create_task(self._dispatch(self.worker_prefix)))
        self._tasks.append(asyncio.create_task(self._housekeeping()))

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
        """Stop claiming; let running jobs finish within `grace_s`, then cancel them."""
        self._stopping.set()
        if self._running:
            # The job tasks, not only the active runs: a job claimed just before the stop may not have
            # registered its run yet (it is creating its stream, or fetching its git tree).
            await asyncio.wait(list(self._running), timeout=grace_s)
        for job_id in list(self._active):
            log.warning("job.cancel_on_shutdown", job_id=job_id)
            await self.cancel_local(job_id)
        everything = self._tasks + list(self._running)
        _, pending = await asyncio.wait(everything, timeout=SAFETY_GRACE_S) if everything else ((), ())
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        self._tasks.clear()

    async def cancel_local(self, job_id: str) -> bool:
        entry = self._active.get(job_id)
        if entry is None:
            return False
        return await entry[1].cancel(job_id)

    async def _dispatch(self, worker_id: str) -> None:
        """Fill free slots: one claim for as many jobs as there is room for, each run in its own task."""
        while not self._stopping.is_set():
            self._slot_free.clear()
            free = self.workers - len(self._running)
            jobs: list[Job] = []
            if free > 0:
                try:
                    jobs = await self.queue.claim_many(worker_id, free, limits=self.limits)
                except AgentdError as e:  # storage down: wait and retry, never die
                    log.error("worker.claim_failed", worker_id=worker_id, error=str(e))
                    await asyncio.sleep(self.poll_s)
                    continue
                except Exception:  # a bug must not stop this process from ever claiming again
                    log.exception("worker.claim_crashed", worker_id=worker_id)
                    await asyncio.sleep(self.poll_s)
                    continue
            for job in jobs:
                task = asyncio.create_task(self._run_guarded(job, worker_id))
                self._running.add(task)
                task.add_done_callback(self._slot_freed)
            if jobs:
                continue  # look again right away: more may be runnable, or the slots are full now
            # Nothing to claim (or no free slot): sleep until new work, a free slot, or shutdown.
            waits: list[asyncio.Task[Any]] = [
                asyncio.create_task(self._stopping.wait()),
                asyncio.create_task(self._slot_free.wait()),
            ]
            if free > 0:
                waits.append(asyncio.create_task(self.queue.wait_for_work(self.poll_s)))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED, timeout=self.poll_s)
            for t in waits:
                t.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _slot_freed(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._slot_free.set()

    async def _run_guarded(self, job: Job, worker_id: str) -> None:
        try:
            await self.run_job(job, worker_id)
        except Exception:  # a bug in one job must not kill the worker
            log.exception("job.crashed", job_id=job.id)

    async def run_job(self, job: Job, worker_id: str) -> AgentResult:
        structlog.contextvars.bind_contextvars(
            job_id=job.id, project_id=job.project_id, request_id=job.request.request_id
        )
        started = time.monotonic()
        self.metrics.run_started(job.provider, since_submit_s=_since(job.created_at))
        ended = False
        try:
            await self._durably(lambda: self.streams.create(job.stream_id), "create_stream")
            try:
                agent = self.registry.get(job.provider)
            except AgentdError as e:
                result = AgentResult(status="failed", error=e.message)
            else:
                self._active[job.id] = (job, agent)
                self._idle.clear()
                try:
                    result = await self._drive(job, agent, worker_id)
                finally:
                    self._active.pop(job.id, None)
                    if not self._active:
                        self._idle.set()
            stored = await self._finish(job.id, result, worker_id)
            ended = True
            self.metrics.run_ended(job.provider, result.status, run_s=time.monotonic() - started)
            if stored.status == JobStatus.queued:
                self.metrics.job_retried(job.provider)
                # A retryable failure (rate limit, overload): the queue runs it again after a backoff.
                await self._publish(
                    job,
                    StatusEvent(
                        status="retrying",
                        detail=f"attempt {job.attempts} failed: {result.error}",
                        attempt=job.attempts,
                    ),
                )
                log.warning("job.retry_scheduled", attempts=job.attempts, error=result.error)
                return result
            if stored.status == JobStatus.running or stored.result is None:
                # Our lease expired and another worker owns the job now: its result will count.
                self.metrics.run_fenced(job.provider)
                log.warning("job.result_discarded", reason="lease lost", owner=stored.worker_id)
                return result
            final = stored.result
            self.metrics.job_finished(job.provider, final.status)
            await self._publish(job, DoneEvent.from_result(final))
            await self._durably(lambda: self.streams.close_stream(job.stream_id), "close_stream")
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
        finally:
            if not ended:  # crashed before its result was stored
                self.metrics.run_ended(job.provider, "failed", run_s=time.monotonic() - started)
            structlog.contextvars.unbind_contextvars("job_id", "project_id", "request_id")

    async def _drive(self, job: Job, agent: CodeAgent, worker_id: str) -> AgentResult:
        await self._publish(
            job, StatusEvent(status="running", detail=f"worker {worker_id}, attempt {job.attempts}")
        )
        try:
            env = await self._run_env(job)
        except Exception as e:  # storage trouble: try again later rather than run without the secrets
            log.exception("job.secrets_failed")
            return AgentResult(
                status="failed", error=f"could not read the project's secrets: {e}", retryable=True
            )
        try:
            git = await self._leased(job, worker_id, self.git_runs.open(job)) if self.git_runs else None
        except WorkspaceFailed as e:
            log.error("job.workspace_failed", error=e.message, retryable=e.retryable)
            return AgentResult(status="failed", error=e.message, retryable=e.retryable)
        except AgentdError as e:  # storage trouble: try again later
            log.error("job.workspace_failed", error=e.message, retryable=True)
            return AgentResult(status="failed", error=f"could not prepare the workspace: {e}", retryable=True)
        try:
            return await self._drive_in(job, agent, worker_id, env, git)
        finally:
            if git is not None:
                await git.close()

    async def _drive_in(
        self, job: Job, agent: CodeAgent, worker_id: str, env: dict[str, str], git: GitRun | None
    ) -> AgentResult:
        git_secrets = git.secrets if git is not None else {}
        if git is not None:
            env = git.scrub(env)
            ws = git.workspace
            await self._publish(job, StatusEvent(status="workspace", detail=f"{ws.ref} at {ws.base[:12]}"))
        redactor = RunRedactor({**self.service_secrets, **env, **git_secrets})
        with LOG_SECRETS.holding({**env, **git_secrets}):
            workdir = git.workdir if git is not None else None
            result = await self._supervise(job, agent, worker_id, env, redactor, workdir)
            if git is not None:
                result = await self._leased(job, worker_id, git.record(job, result))
            return redactor.result(result)

    async def _leased(self, job: Job, worker_id: str, work: Awaitable[T]) -> T:
        """Await `work` (a fetch, recording a large patch) while renewing the job's lease, so a slow git
        server never makes the fleet think this worker is gone."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(self.heartbeat_s)
                with contextlib.suppress(AgentdError):
                    await self.queue.heartbeat(job.id, worker_id)

        beater = asyncio.create_task(beat())
        try:
            return await work
        finally:
            beater.cancel()
            await asyncio.gather(beater, return_exceptions=True)

    async def _run_env(self, job: Job) -> dict[str, str]:
        """The project's secrets (over the global ones), for the agent process's environment only."""
        if self.secrets is None:
            return {}
        try:
            return await self.secrets.resolve(job.project_id)
        except SecretsUnavailable:  # no master key: there are no secrets to give
            return {}

    async def _supervise(
        self,
        job: Job,
        agent: CodeAgent,
        worker_id: str,
        env: dict[str, str],
        redactor: RunRedactor,
        workdir: Path | None = None,
    ) -> AgentResult:
        run_over = asyncio.Event()
        watcher = asyncio.create_task(self._watch(job, agent, worker_id, run_over))
        try:
            async with asyncio.timeout(job.request.timeout_s + SAFETY_GRACE_S * 2):
                done = await self._stream(job, agent, env, redactor, workdir)
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
            watcher.cancel()
            await asyncio.wait({watcher}, timeout=10)
        if done is None:
            return AgentResult(status="failed", error=f"provider {job.provider} ended without a result")
        return done.to_result()

    async def _stream(
        self,
        job: Job,
        agent: CodeAgent,
        env: dict[str, str],
        redactor: RunRedactor,
        workdir: Path | None = None,
    ) -> DoneEvent | None:
        """Publish the run's events, redacted, until its `done` (returned, not published: the runner
        publishes the stored result). `workdir`: the job's own working tree, where the agent runs."""
        where = {"workdir": workdir} if workdir is not None else {}  # adapters without it run as before
        events = agent.execute(job.request, run_id=job.id, env=env or None, **where)
        first = True
        try:
            async for ev in events:
                if first:
                    first = False
                    self.metrics.first_event(job.provider, since_submit_s=_since(job.created_at))
                if isinstance(ev, DoneEvent):
                    return ev
                if isinstance(ev, ErrorEvent):
                    self.metrics.provider_error(job.provider, ev.code)
                for out in redactor.feed(ev):
                    await self._publish(job, out)
            return None
        finally:
            for out in redactor.flush():  # text held back at the end of an unfinished message
                await self._publish(job, out)
            # Closing the iterator makes the adapter clean up (processes, sessions) right away.
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _finish(self, job_id: str, result: AgentResult, worker_id: str) -> Job:
        """Record a result. Results that arrive while one write is in flight go out together in the next
        `finish_many` (no added delay): many short jobs cost a round trip per batch, not per job."""
        done: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._to_finish.append((job_id, result, worker_id, done))
        if self._finisher is None or self._finisher.done():
            self._finisher = asyncio.create_task(self._flush_finished())
        return await done

    async def _flush_finished(self) -> None:
        while self._to_finish:
            batch, self._to_finish = self._to_finish, []
            by_worker: dict[str, list[tuple[str, AgentResult, asyncio.Future[Job]]]] = {}
            for job_id, result, worker_id, fut in batch:
                by_worker.setdefault(worker_id, []).append((job_id, result, fut))
            for worker_id, items in by_worker.items():
                pairs = [(job_id, result) for job_id, result, _ in items]
                try:
                    jobs = await self._durably(
                        functools.partial(self.queue.finish_many, pairs, worker_id=worker_id), "finish"
                    )
                except Exception as e:
                    for *_, fut in items:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (*_, fut), job in zip(items, jobs, strict=True):
                    if not fut.done():
                        fut.set_result(job)

    async def _publish(self, job: Job, ev: AgentEvent) -> None:
        await self._durably(lambda: self.streams.publish(job.stream_id, [ev]), "publish")
        self.metrics.events_published(ev.event)

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

    async def _watch(self, job: Job, agent: CodeAgent, worker_id: str, run_over: asyncio.Event) -> None:
        """Poll for cancel requests, renew the lease, and enforce the deadline as a safety net."""
        last_beat = time.monotonic()
        deadline = time.monotonic() + job.request.timeout_s + SAFETY_GRACE_S
        cancelled = False
        while not run_over.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run_over.wait(), self.poll_s)
            if run_over.is_set():
                return
            now = time.monotonic()
            with contextlib.suppress(AgentdError):
                if not cancelled:
                    current = await self.queue.get(job.project_id, job.id)
                    if current.cancel_requested:
                        cancelled = True
                        log.info("job.cancelling", reason="requested")
                        await agent.cancel(job.id)
                if now - last_beat >= self.heartbeat_s:
                    last_beat = now
                    if not await self.queue.heartbeat(job.id, worker_id) and not cancelled:
                        # The fleet gave the job to another worker (our lease expired, e.g. during a
                        # network split): stop ours so that two agents never work on one job.
                        cancelled = True
                        log.warning("job.lease_lost", action="cancelling the local run")
                        await agent.cancel(job.id)
            if now > deadline and not cancelled:
                cancelled = True
                log.warning("job.safety_timeout")
                await agent.cancel(job.id)

    async def _housekeeping(self) -> None:
        """Sweep expired leases (jobs whose worker died anywhere in the fleet) and prune old streams."""
        last_prune = time.monotonic()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.sweep_s)
            if self._stopping.is_set():
                return
            try:
                recovered = await self.queue.recover()
                self._log_recovered(recovered)
                for job in recovered:
                    await self._announce_recovered(job)
                if time.monotonic() - last_prune >= self.prune_s:
                    last_prune = time.monotonic()
                    n = await self.streams.prune()
                    if n:
                        log.info("streams.pruned", count=n)
            except AgentdError as e:
                log.error("housekeeping.failed", error=str(e))
            except Exception:
                log.exception("housekeeping.crashed")

    async def _announce_recovered(self, job: Job) -> None:
        # Bounded: the sweeper must keep sweeping even if one stream cannot be written right now.
        with contextlib.suppress(AgentdError, TimeoutError):
            async with asyncio.timeout(10):
                await self._announce(job)

    async def _announce(self, job: Job) -> None:
        if job.status == JobStatus.queued:
            await self.streams.publish(
                job.stream_id, [StatusEvent(status="requeued", detail="its worker was lost; will retry")]
            )
            self.metrics.events_published("status")
        elif job.result is not None:
            await self.streams.publish(job.stream_id, [DoneEvent.from_result(job.result)])
            self.metrics.events_published("done")
            self.metrics.job_finished(job.provider, job.result.status)
            await self.streams.close_stream(job.stream_id)
