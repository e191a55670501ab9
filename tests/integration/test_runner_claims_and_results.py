"""How a worker orders its two statements: results never go out while a claim is on its way (they slowed each
other down on the database, issue 16); they go as soon as it returns, and none is left waiting."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from agentd.adapters.embedded.database import SqliteDatabase
from agentd.adapters.embedded.sqlite_event_stream import SqliteEventStream
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.domain.models import AgentRequest, AgentResult, Job, JobStatus
from agentd.ports.work_queue import Limits
from agentd.services.jobs import JobService
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import RESULTS_WAIT_S, Runner


class SlowClaims(SqliteWorkQueue):
    """A queue whose claims take a round trip of `claim_s`; it notes how many claims were on their way when
    each batch of results was sent."""

    def __init__(self, db: SqliteDatabase, claim_s: float) -> None:
        super().__init__(db)
        self.claim_s = claim_s
        self.claims_out = 0
        self.claims = 0
        self.finishes: list[tuple[int, int]] = []  # (claims on their way, results in the batch)

    async def claim_many(
        self, worker_id: str, n: int, *, limits: Limits | None = None, exclude: Collection[str] = ()
    ) -> list[Job]:
        self.claims_out += 1
        self.claims += 1
        try:
            await asyncio.sleep(self.claim_s)
            return await super().claim_many(worker_id, n, limits=limits, exclude=exclude)
        finally:
            self.claims_out -= 1

    async def finish_many(
        self,
        results: Sequence[tuple[str, AgentResult]],
        *,
        worker_id: str | None = None,
        attempts: Mapping[str, int] | None = None,
    ) -> list[Job]:
        self.finishes.append((self.claims_out, len(results)))
        return await super().finish_many(results, worker_id=worker_id, attempts=attempts)


async def one_slot(
    tmp_path: Path, claim_s: float, jobs: int
) -> tuple[SlowClaims, SqliteEventStream, Runner, list[Job]]:
    """A runner with one slot on a queue whose claims take `claim_s`, and `jobs` queued jobs: a run's end
    frees the slot, so a claim goes out at that moment, beside which its result must not go."""
    db = SqliteDatabase(tmp_path / "queue.sqlite3")
    queue, streams = SlowClaims(db, claim_s=claim_s), SqliteEventStream(db, poll_s=0.05)
    registry = ProviderRegistry()
    registry.register(ScriptedCodeAgent())
    runner = Runner(queue, streams, registry, workers=1, poll_s=5.0, heartbeat_s=5.0)
    service = JobService(queue, streams, registry, runner)
    queued = [(await service.submit(AgentRequest(project_id=f"p{i}", prompt="hi")))[0] for i in range(jobs)]
    return queue, streams, runner, queued


async def test_results_wait_for_the_claim_on_its_way_and_then_go_at_once(tmp_path: Path) -> None:
    queue, streams, runner, jobs = await one_slot(tmp_path, claim_s=0.02, jobs=12)
    await runner.start()
    try:
        async with asyncio.timeout(20):
            while True:
                if all([(await queue.get(j.project_id, j.id)).status.is_final for j in jobs]):
                    break
                await asyncio.sleep(0.01)
        statuses = [(await queue.get(j.project_id, j.id)).status for j in jobs]
    finally:
        await runner.stop(1)
        await streams.close()
        await queue.close()
    assert statuses == [JobStatus.succeeded] * len(jobs)
    assert sum(n for _, n in queue.finishes) == len(jobs)  # every result stored, once
    assert queue.claims >= len(jobs)  # one claim per freed slot (the last one finds the queue empty)
    # No batch of results went out beside a claim. (Before, each went out with the claim its run's end
    # had just sent: `claims on their way` was 1 for nearly every batch.)
    assert [out for out, _ in queue.finishes] == [0] * len(queue.finishes)


async def test_a_slow_claim_holds_results_back_half_a_second_at_most(tmp_path: Path) -> None:
    """Their jobs' leases are not renewed while results wait: a claim that takes long (a busy pool, a lock)
    does not keep them (RESULTS_WAIT_S)."""
    queue, streams, runner, jobs = await one_slot(tmp_path, claim_s=3 * RESULTS_WAIT_S, jobs=2)
    await runner.start()
    try:
        async with asyncio.timeout(20):
            while True:
                if (await queue.get(jobs[0].project_id, jobs[0].id)).status.is_final:
                    break
                await asyncio.sleep(0.01)
    finally:
        await runner.stop(1)
        await streams.close()
        await queue.close()
    # The first result went while the claim after its run was on its way (that takes three times the wait).
    assert queue.finishes[0] == (1, 1)
