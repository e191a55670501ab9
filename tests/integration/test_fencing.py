"""The runner under fencing (issue 10), on both storages: a lease that expires under a running job, a
shutdown that hands jobs back, retention, and a storage that waits (back-pressure).

The lease is shortened under a running job by writing its expiry into the past: the stand-in for a clock
jump, a suspended VM or a database outage longer than the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agentd.adapters.embedded.database import SqliteDatabase
from agentd.adapters.embedded.sqlite_event_stream import SqliteEventStream
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.postgres import open_postgres
from agentd.domain.errors import JobNotFound, QueueUnavailable
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    Availability,
    Capabilities,
    DoneEvent,
    JobStatus,
    StatusEvent,
    StoredEvent,
    TextEvent,
)
from agentd.ports.code_agent import CodeAgent
from agentd.ports.event_stream import EventStream
from agentd.ports.work_queue import WorkQueue
from agentd.services.jobs import JobService
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import OUTBOX_WINDOW, Runner
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures


class Ticker(CodeAgent):
    """Emits a text event naming its run every `tick_s` until `ticks` are out (then succeeds) or it is
    cancelled. Records which runs started, how many ran at once per job, and which were cancelled."""

    name = "ticker"

    def __init__(self, ticks: int = 40, tick_s: float = 0.03, stop_s: float = 0.0) -> None:
        self.ticks, self.tick_s, self.stop_s = ticks, tick_s, stop_s  # stop_s: how long a cancel takes
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.live: Counter[str] = Counter()
        self.most_at_once: Counter[str] = Counter()
        self.yielded = 0
        self._stop: dict[str, asyncio.Event] = {}

    def capabilities(self) -> Capabilities:
        return Capabilities()

    async def is_available(self) -> Availability:
        return Availability(available=True)

    async def cancel(self, run_id: str) -> bool:
        ev = self._stop.get(run_id)
        if ev is None:
            return False
        self.cancelled.append(run_id)
        ev.set()
        return True

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        job_id = run_id.rsplit(".", 1)[0]
        self.started.append(run_id)
        stop = self._stop.setdefault(run_id, asyncio.Event())
        self.live[job_id] += 1
        self.most_at_once[job_id] = max(self.most_at_once[job_id], self.live[job_id])
        try:
            for i in range(int(request.prompt) if request.prompt.isdigit() else self.ticks):
                if stop.is_set():
                    await asyncio.sleep(self.stop_s)  # a CLI that takes its time to exit
                    yield DoneEvent(status="cancelled", error="cancelled by request")
                    return
                self.yielded += 1
                yield TextEvent(message_id=run_id, chunk=f"{run_id}:{i} ")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.tick_s)
            yield DoneEvent(status="succeeded", result="ticked")
        finally:
            self.live[job_id] -= 1
            self._stop.pop(run_id, None)


@dataclass
class Storage:
    kind: str
    queue: WorkQueue
    streams: EventStream
    expire: Callable[[str], Awaitable[None]]  # move a running job's lease into the past
    reopen: Callable[[], Awaitable[tuple[WorkQueue, EventStream]]]
    opened: list[Any] = field(default_factory=list)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "sqlite":
        path = tmp_path / "queue.sqlite3"

        async def open_sqlite() -> tuple[WorkQueue, EventStream]:
            db = SqliteDatabase(path)
            return SqliteWorkQueue(db, retry_base_s=0.1, requeue_delay_s=0.3), SqliteEventStream(
                db, poll_s=0.05
            )

        async def expire_sqlite(job_id: str) -> None:
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute("UPDATE jobs SET lease_expires_at = 0 WHERE id = ?", (job_id,))
                db.commit()

        q, s = await open_sqlite()
        st = Storage("sqlite", q, s, expire_sqlite, open_sqlite)
    else:
        dsn = str(request.getfixturevalue("pg_dsn"))

        async def open_pg() -> tuple[WorkQueue, EventStream]:
            return await open_postgres(dsn, retry_base_s=0.1, requeue_delay_s=0.3, pool_size=4)

        async def expire_pg(job_id: str) -> None:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
                await conn.execute(
                    "UPDATE agentd_jobs SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
                    (job_id,),
                )

        q, s = await open_pg()
        st = Storage("postgres", q, s, expire_pg, open_pg)
    st.opened.append((st.queue, st.streams))
    yield st
    for q, s in reversed(st.opened):
        await s.close()
        await q.close()


def runner_for(queue: WorkQueue, streams: EventStream, agent: CodeAgent, **kw: Any) -> Runner:
    registry = ProviderRegistry()
    registry.register(agent)
    opts: dict[str, Any] = {"workers": 2, "poll_s": 0.05, "heartbeat_s": 5.0, "sweep_s": 0.1, **kw}
    return Runner(queue, streams, registry, **opts)


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def events_of(streams: EventStream, stream_id: str) -> list[StoredEvent]:
    return [e async for e in streams.subscribe(stream_id)]


def check_no_interleaving(events: Sequence[StoredEvent]) -> list[str]:
    """The runs whose text appears, in order; fails when an older run's event follows a newer one's."""
    runs = [e.event.message_id for e in events if isinstance(e.event, TextEvent)]
    order = list(dict.fromkeys(runs))
    attempts = [int(r.rsplit(".", 1)[1]) for r in runs]
    assert attempts == sorted(attempts), f"runs interleave in the stream: {runs}"
    return order


async def test_a_lease_that_expires_under_a_running_job_never_runs_it_twice(storage: Storage) -> None:
    agent = Ticker()
    runner = runner_for(storage.queue, storage.streams, agent)
    service = JobService(storage.queue, storage.streams, runner.registry, runner)
    await runner.start()
    try:
        job, _ = await service.submit(AgentRequest(project_id="p", prompt="40"))
        await until(lambda: agent.yielded >= 3, "the first run to tick")
        await storage.expire(job.id)
        await until(
            lambda: _is_final(storage.queue, job.id), "the job to finish after its lease expired", timeout=20
        )
    finally:
        await runner.stop(1)
    final = await storage.queue.get("p", job.id)
    assert final.status == JobStatus.succeeded and final.attempts == 2
    assert agent.started == [f"{job.id}.1", f"{job.id}.2"]
    assert agent.most_at_once[job.id] == 1  # the process never claimed the job it was still running
    assert f"{job.id}.1" in agent.cancelled  # the superseded run was stopped
    events = await events_of(storage.streams, job.stream_id)
    assert check_no_interleaving(events) == [f"{job.id}.1", f"{job.id}.2"]
    statuses = [e.event for e in events if isinstance(e.event, StatusEvent)]
    requeued = [s for s in statuses if s.status == "requeued"]
    assert len(requeued) == 1 and "lease expired" in (requeued[0].detail or "")
    kinds = [e.event.event for e in events]
    assert kinds.count("done") == 1 and kinds[-1] == "done"
    last = events[-1].event
    assert isinstance(last, DoneEvent) and last.status == "succeeded"
    # the requeued event sits between the two runs' events
    req_seq = next(e.seq for e in events if isinstance(e.event, StatusEvent) and e.event.status == "requeued")
    run2_first = next(
        e.seq for e in events if isinstance(e.event, TextEvent) and e.event.message_id.endswith(".2")
    )
    assert req_seq < run2_first


async def _is_final(queue: WorkQueue, job_id: str) -> bool:
    return (await queue.get("p", job_id)).status.is_final


async def test_shutdown_hands_running_jobs_back_and_the_next_process_runs_them(storage: Storage) -> None:
    agent = Ticker(ticks=10_000)
    runner = runner_for(storage.queue, storage.streams, agent)
    service = JobService(storage.queue, storage.streams, runner.registry, runner)
    await runner.start()
    job, _ = await service.submit(AgentRequest(project_id="p", prompt="x"))
    await until(lambda: agent.yielded >= 2, "the run to tick")
    await runner.stop(grace_s=0.2)  # a deploy: the job does not end within the grace period
    held = await storage.queue.get("p", job.id)
    assert held.status == JobStatus.queued and held.result is None  # handed back, not cancelled
    assert f"{job.id}.1" in agent.cancelled
    # The next process (a new instance on the same storage) runs it as attempt 2.
    q2, s2 = await storage.reopen()
    storage.opened.append((q2, s2))
    agent2 = Ticker(ticks=3)
    runner2 = runner_for(q2, s2, agent2)
    await runner2.start()
    try:
        await until(lambda: _is_final(q2, job.id), "the next attempt to finish")
    finally:
        await runner2.stop(1)
    final = await q2.get("p", job.id)
    assert final.status == JobStatus.succeeded and final.attempts == 2
    events = await events_of(s2, job.stream_id)
    check_no_interleaving(events)
    statuses = [(e.event.status, e.event.detail) for e in events if isinstance(e.event, StatusEvent)]
    assert [s for s, _ in statuses].count("requeued") == 1
    assert ("requeued", "attempt 1: worker shutting down") in statuses
    assert not any(isinstance(e.event, DoneEvent) and e.event.status == "cancelled" for e in events)


async def test_a_handed_back_job_starts_elsewhere_only_after_its_run_has_stopped(storage: Storage) -> None:
    agent = Ticker(ticks=10_000, stop_s=0.5)  # one agent object seen by both processes: it counts overlaps
    runner = runner_for(storage.queue, storage.streams, agent)
    service = JobService(storage.queue, storage.streams, runner.registry, runner)
    await runner.start()
    q2, s2 = await storage.reopen()
    storage.opened.append((q2, s2))
    # Another worker, idle, waiting for work. (On SQLite a second process would recover every running job at
    # its start: the data dir lock rules that out in agentd; here it only plays a second worker.)
    q2.recover_all_at_start = False
    other = runner_for(q2, s2, agent)
    job, _ = await service.submit(AgentRequest(project_id="p", prompt="x"))
    await until(lambda: agent.yielded >= 2, "the run to tick")
    await other.start()
    try:
        await runner.stop(grace_s=0.1)  # a deploy: the job is handed back to the other worker
        await until(lambda: f"{job.id}.2" in agent.started, "the other worker to run it")
    finally:
        await other.stop(0.1)
    assert agent.most_at_once[job.id] == 1


async def test_finished_jobs_are_purged_after_their_retention(storage: Storage) -> None:
    agent = Ticker(ticks=1)
    runner = runner_for(storage.queue, storage.streams, agent, job_retention_s=0.2, prune_s=0.1)
    service = JobService(storage.queue, storage.streams, runner.registry, runner)
    await runner.start()
    try:
        job, _ = await service.submit(AgentRequest(project_id="p", prompt="1"))

        async def gone() -> bool:
            try:
                await storage.queue.get("p", job.id)
            except JobNotFound:
                return True
            return False

        await until(gone, "the finished job to be purged")
    finally:
        await runner.stop(1)


class SlowStreams:
    """An event stream whose every publish takes `delay_s` (slow storage); counts what it stored."""

    def __init__(self, inner: EventStream, delay_s: float) -> None:
        self.inner, self.delay_s, self.published = inner, delay_s, 0

    async def publish(self, stream_id: str, events: Sequence[AgentEvent], *, run: int = 0) -> list[int]:
        await asyncio.sleep(self.delay_s)
        out = await self.inner.publish(stream_id, events, run=run)
        self.published += len(events)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_slow_storage_holds_the_agent_back_instead_of_buffering_its_output(storage: Storage) -> None:
    agent = Ticker(ticks=30, tick_s=0.0)
    slow = SlowStreams(storage.streams, 0.02)
    runner = runner_for(storage.queue, slow, agent)
    service = JobService(storage.queue, storage.streams, runner.registry, runner)
    await runner.start()
    ahead = 0
    try:
        job, _ = await service.submit(AgentRequest(project_id="p", prompt="30"))
        while not await _is_final(storage.queue, job.id):
            ahead = max(ahead, agent.yielded - slow.published)
            await asyncio.sleep(0.005)
    finally:
        await runner.stop(1)
    assert agent.yielded == 30
    # Bounded: the run's outbox holds at most OUTBOX_WINDOW events on their way to storage.
    assert ahead <= OUTBOX_WINDOW + 1, f"the runner read {ahead} events ahead of storage"


async def test_a_run_that_cannot_renew_its_lease_stops_before_the_lease_ends(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Ticker(ticks=10_000)
    runner = runner_for(storage.queue, storage.streams, agent, lease_s=1.0, heartbeat_s=0.2)
    service = JobService(storage.queue, storage.streams, runner.registry, runner)
    await runner.start()
    try:
        job, _ = await service.submit(AgentRequest(project_id="p", prompt="x"))
        await until(lambda: agent.yielded >= 2, "the run to tick")

        async def down(*_: Any, **__: Any) -> Any:
            raise QueueUnavailable("storage is down (test)")

        t0 = time.monotonic()
        monkeypatch.setattr(storage.queue, "get", down)
        monkeypatch.setattr(storage.queue, "heartbeat", down)
        await until(lambda: f"{job.id}.1" in agent.cancelled, "the run to stop itself", timeout=5)
        assert time.monotonic() - t0 < 1.0  # before its lease (1 s from the last renewal) ends
        await until(lambda: agent.live[job.id] == 0, "the agent to end")
        monkeypatch.undo()
        assert (
            await storage.queue.get("p", job.id)
        ).result is None  # no result from a run that lost its lease
    finally:
        monkeypatch.undo()
        await runner.stop(1)
