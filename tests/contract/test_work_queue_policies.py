"""The WorkQueue contract, continued: idempotency, busy policy, limits, listing filters, wake-ups."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from agentd.domain.errors import IdempotencyConflict, ProjectBusy
from agentd.domain.ids import new_job_ids
from agentd.domain.models import AgentRequest, AgentResult, Job, JobStatus
from agentd.ports.work_queue import JobFilter, Limits, WorkQueue
from tests.contract.conftest import QueueFactory
from tests.contract.test_work_queue import claim, claim_one, finish_one, put


async def submit(
    q: WorkQueue,
    project: str = "p",
    *,
    key: str | None = None,
    model: str | None = None,
    reject: bool = False,
) -> tuple[Job, bool]:
    job_id, stream_id = new_job_ids()
    return await q.enqueue(
        AgentRequest(project_id=project, prompt="same prompt", model=model),
        provider="scripted",
        job_id=job_id,
        stream_id=stream_id,
        idempotency_key=key,
        busy="reject" if reject else "enqueue",
    )


async def test_idempotent_repeat_returns_the_first_job(queue: WorkQueue) -> None:
    first, created = await submit(queue, key="k1")
    assert created
    await claim(queue)
    again, created_again = await submit(queue, key="k1")
    assert not created_again and again.id == first.id and again.status == JobStatus.running
    assert [j.id for j in await queue.list_jobs("p")] == [first.id]


async def test_same_key_with_another_request_conflicts(queue: WorkQueue) -> None:
    first, _ = await submit(queue, key="k1", model="a")
    with pytest.raises(IdempotencyConflict) as info:
        await submit(queue, key="k1", model="b")
    assert first.id in info.value.message
    assert [j.id for j in await queue.list_jobs("p")] == [first.id]


async def test_idempotency_keys_are_per_project(queue: WorkQueue) -> None:
    a, _ = await submit(queue, "a", key="k")
    b, created = await submit(queue, "b", key="k")
    assert created and a.id != b.id
    _, created_plain = await submit(queue, "a")  # no key: always a new job
    assert created_plain


async def test_busy_reject(queue: WorkQueue) -> None:
    first, _ = await submit(queue, "a", reject=True)
    with pytest.raises(ProjectBusy):
        await submit(queue, "a", reject=True)  # queued
    await claim(queue)
    with pytest.raises(ProjectBusy):
        await submit(queue, "a", reject=True)  # running
    _, created_elsewhere = await submit(queue, "b", reject=True)
    assert created_elsewhere
    queued, created_enqueue = await submit(queue, "a")  # busy="enqueue" waits its turn
    assert created_enqueue and queued.status == JobStatus.queued
    await queue.request_cancel("a", queued.id)
    await finish_one(queue, first.id, AgentResult(status="succeeded"))
    _, created_free = await submit(queue, "a", reject=True)
    assert created_free


async def test_idempotent_repeat_wins_over_busy_reject(queue: WorkQueue) -> None:
    first, _ = await submit(queue, key="k", reject=True)
    again, created = await submit(queue, key="k", reject=True)
    assert not created and again.id == first.id


async def test_global_limit(queue: WorkQueue) -> None:
    jobs = [await put(queue, project=f"p{i}") for i in range(3)]
    limits = Limits(global_max=2)
    assert (await claim_one(queue, "w1", limits=limits)) is not None
    assert (await claim_one(queue, "w2", limits=limits)) is not None
    assert await claim_one(queue, "w3", limits=limits) is None
    await finish_one(queue, jobs[0].id, AgentResult(status="succeeded"))
    third = await claim_one(queue, "w3", limits=limits)
    assert third is not None and third.id == jobs[2].id


async def test_per_provider_limit(queue: WorkQueue) -> None:
    a1 = await put(queue, project="p1", provider="alpha")
    a2 = await put(queue, project="p2", provider="alpha")
    b1 = await put(queue, project="p3", provider="beta")
    limits = Limits(per_provider={"alpha": 1})
    got = [await claim_one(queue, f"w{i}", limits=limits) for i in range(3)]
    assert [j.id if j else None for j in got] == [a1.id, b1.id, None]  # a2 waits for alpha
    await finish_one(queue, a1.id, AgentResult(status="succeeded"))
    again = await claim_one(queue, "w9", limits=limits)
    assert again is not None and again.id == a2.id


async def test_list_newest_first_with_paging(queue: WorkQueue) -> None:
    jobs = [await put(queue, project="p", prompt=f"n{i}") for i in range(5)]
    await put(queue, project="other")
    newest_first = [j.id for j in reversed(jobs)]
    assert [j.id for j in await queue.list_jobs("p")] == newest_first
    page1 = await queue.list_jobs("p", JobFilter(limit=2))
    page2 = await queue.list_jobs("p", JobFilter(limit=2, before=page1[-1].id))
    page3 = await queue.list_jobs("p", JobFilter(limit=2, before=page2[-1].id))
    assert [j.id for j in page1 + page2 + page3] == newest_first
    assert await queue.list_jobs("p", JobFilter(before="job_unknown")) == []


async def test_list_across_projects(queue: WorkQueue) -> None:
    """project_id None: every project's jobs, newest first, with the same filters and paging."""
    a = await put(queue, project="pa", provider="alpha")
    b = await put(queue, project="pb", provider="beta")
    c = await put(queue, project="pc", provider="alpha")
    assert [j.id for j in await queue.list_jobs(None)] == [c.id, b.id, a.id]
    assert [j.project_id for j in await queue.list_jobs(None)] == ["pc", "pb", "pa"]
    assert [j.id for j in await queue.list_jobs(None, JobFilter(provider="alpha"))] == [c.id, a.id]
    page1 = await queue.list_jobs(None, JobFilter(limit=2))
    page2 = await queue.list_jobs(None, JobFilter(limit=2, before=page1[-1].id))
    assert [j.id for j in page1 + page2] == [c.id, b.id, a.id]
    assert (await claim(queue)).id == a.id
    running = await queue.list_jobs(None, JobFilter(status=JobStatus.running))
    assert [j.id for j in running] == [a.id]
    assert [j.id for j in await queue.list_jobs("pb")] == [b.id]


async def test_list_filters(queue: WorkQueue) -> None:
    early = await put(queue, provider="alpha")
    middle = await put(queue, provider="beta")
    late = await put(queue, provider="alpha")
    assert early.created_at < middle.created_at < late.created_at  # microseconds apart at least
    await claim(queue)

    async def ids(**flt: object) -> list[str]:
        return [j.id for j in await queue.list_jobs("p", JobFilter(**flt))]  # type: ignore[arg-type]

    assert await ids(status=JobStatus.running) == [early.id]
    assert await ids(status=JobStatus.queued) == [late.id, middle.id]
    assert await ids(provider="alpha") == [late.id, early.id]
    assert await ids(provider="alpha", status=JobStatus.queued) == [late.id]
    assert await ids(created_after=early.created_at) == [late.id, middle.id]
    assert await ids(created_before=late.created_at) == [middle.id, early.id]
    assert await ids(created_after=early.created_at, created_before=late.created_at) == [middle.id]
    naive_future = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)  # naive means UTC
    assert await ids(created_after=naive_future) == []
    assert len(await ids(created_before=naive_future)) == 3


async def one_loop_turn() -> None:
    """Lets a task just created run up to its first wait: `wait_for_work` does no I/O before it waits, so
    one turn is enough (and a wait that returns at once is done after it)."""
    await asyncio.sleep(0)


async def test_wait_for_work_wakes_on_enqueue(queue: WorkQueue) -> None:
    waiter = asyncio.create_task(queue.wait_for_work(5))
    await one_loop_turn()
    assert not waiter.done()
    await put(queue)
    await asyncio.wait_for(waiter, 2)


async def test_wait_for_work_wakes_when_a_busy_project_frees_up(queue: WorkQueue) -> None:
    first = await put(queue)
    await put(queue)
    await claim(queue, "w1")
    assert await claim_one(queue, "w2") is None
    waiter = asyncio.create_task(queue.wait_for_work(5))
    await one_loop_turn()
    assert not waiter.done()
    await finish_one(queue, first.id, AgentResult(status="succeeded"))
    await asyncio.wait_for(waiter, 2)
    assert await claim_one(queue, "w2") is not None


async def test_a_wake_up_between_claim_and_wait_is_not_lost(queue: WorkQueue) -> None:
    assert await claim_one(queue, "w1") is None
    probe = asyncio.create_task(queue.wait_for_work(5))
    await one_loop_turn()
    await put(queue)  # arrives after the claim looked, before the worker waits
    await asyncio.wait_for(probe, 4)  # the wake-up has arrived (PostgreSQL: the NOTIFY was heard)
    started = time.monotonic()
    await asyncio.create_task(queue.wait_for_work(5))  # the runner waits in a task, like this
    assert time.monotonic() - started < 1


async def test_wait_for_work_times_out(queue: WorkQueue) -> None:
    started = time.monotonic()
    await queue.wait_for_work(0.2)
    assert 0.15 <= time.monotonic() - started < 2


async def test_nothing_is_lost_when_a_process_restarts(make_queue: QueueFactory) -> None:
    first = await make_queue()
    a, b = await put(first, project="a"), await put(first, project="b")
    await claim(first, "w1")
    await first.close()
    second = await make_queue()
    assert (await second.get("a", a.id)).status == JobStatus.running
    assert (await second.get("b", b.id)).status == JobStatus.queued
    assert [j.id for j in await second.recover(all_running=True)] == [a.id]
