"""The runner sends results waiting to be stored with the claim it sends (a run journal: one transaction), and
a combined step that fails loses no result: they go by themselves, the ordinary way."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from agentd.domain.errors import JobNotFound, QueueUnavailable
from agentd.domain.models import AgentEvent, AgentResult, Job, StatusEvent
from agentd.ports.work_queue import Limits
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import Runner


class FakeJournal:
    def __init__(self, fail: list[BaseException] | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail = fail or []

    def _stored(self, results: Sequence[tuple[str, AgentResult]]) -> list[tuple[Job, bool]]:
        return [(SimpleNamespace(id=job_id, stored=r.status), True) for job_id, r in results]  # type: ignore[misc]

    async def claim_started(
        self,
        worker_id: str,
        n: int,
        *,
        running: StatusEvent,
        limits: Limits | None = None,
        exclude: Collection[str] = (),
    ) -> list[tuple[Job, bool]]:
        self.calls.append(("claim", []))
        return []

    async def finish_ended(
        self,
        results: Sequence[tuple[str, AgentResult]],
        *,
        worker_id: str,
        attempts: Mapping[str, int],
        events: Mapping[str, Sequence[AgentEvent]] | None = None,
    ) -> list[tuple[Job, bool]]:
        self.calls.append(("finish", [job_id for job_id, _ in results]))
        return self._stored(results)

    async def finish_ended_and_claim(
        self,
        results: Sequence[tuple[str, AgentResult]],
        n: int,
        *,
        worker_id: str,
        attempts: Mapping[str, int],
        events: Mapping[str, Sequence[AgentEvent]] | None = None,
        running: StatusEvent,
        limits: Limits | None = None,
        exclude: Collection[str] = (),
    ) -> tuple[list[tuple[Job, bool]] | JobNotFound, list[tuple[Job, bool]]]:
        self.calls.append(("finish+claim", [job_id for job_id, _ in results]))
        assert attempts == {job_id: 1 for job_id, _ in results}
        if self.fail:
            raise self.fail.pop(0)
        return self._stored(results), []


def _runner(journal: FakeJournal) -> Runner:
    queue: Any = SimpleNamespace()
    streams: Any = SimpleNamespace()
    return Runner(queue, streams, ProviderRegistry(), journal=journal)


def _job(job_id: str) -> Any:
    return SimpleNamespace(id=job_id, attempts=1)


async def _queue_results(runner: Runner, *ids: str) -> list[asyncio.Task[tuple[Job, bool]]]:
    """Results queued to be stored (`_finish`), not on their way yet: their finisher has not run."""
    tasks = [asyncio.create_task(runner._finish(_job(i), AgentResult(status="succeeded"), "w")) for i in ids]
    await asyncio.sleep(0)
    return tasks


async def test_waiting_results_go_with_the_claim() -> None:
    journal = FakeJournal()
    runner = _runner(journal)
    tasks = await _queue_results(runner, "j1", "j2")
    assert await runner._claim("w", 2, runner._take_finishing("w")) == []
    stored = await asyncio.gather(*tasks)
    assert [(job.id, done) for job, done in stored] == [("j1", True), ("j2", True)]
    await asyncio.sleep(0)
    assert journal.calls == [("finish+claim", ["j1", "j2"])]  # one step: no finish of their own


async def test_no_waiting_results_the_claim_goes_alone() -> None:
    journal = FakeJournal()
    runner = _runner(journal)
    assert runner._take_finishing("w") == []
    assert await runner._claim("w", 2, []) == []
    assert journal.calls == [("claim", [])]


@pytest.mark.parametrize("error", [QueueUnavailable("down"), RuntimeError("a bug in the claim")])
async def test_a_failed_combined_step_loses_no_result(error: BaseException) -> None:
    journal = FakeJournal(fail=[error])
    runner = _runner(journal)
    tasks = await _queue_results(runner, "j1", "j2")
    with pytest.raises(type(error)):
        await runner._claim("w", 2, runner._take_finishing("w"))
    stored = await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert [(job.id, done) for job, done in stored] == [("j1", True), ("j2", True)]
    # Neither was stored by the failed step (one transaction): the results went by themselves, once.
    assert journal.calls == [("finish+claim", ["j1", "j2"]), ("finish", ["j1", "j2"])]


async def test_results_of_another_worker_id_stay_for_the_finisher() -> None:
    journal = FakeJournal()
    runner = _runner(journal)
    mine = asyncio.create_task(runner._finish(_job("j1"), AgentResult(status="succeeded"), "w"))
    other = asyncio.create_task(runner._finish(_job("j9"), AgentResult(status="failed"), "other"))
    await asyncio.sleep(0)  # both queued, their finisher not run yet
    finishing = runner._take_finishing("w")
    assert [item[0] for item in finishing] == ["j1"]
    await runner._claim("w", 1, finishing)
    await asyncio.gather(mine, other)
    assert ("finish", ["j9"]) in journal.calls and ("finish+claim", ["j1"]) in journal.calls
