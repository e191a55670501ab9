"""The WorkQueue contract (ports/work_queue.py), run against every adapter."""

from __future__ import annotations

import asyncio

import pytest

from agentd.domain.errors import JobNotFound
from agentd.domain.ids import new_job_ids
from agentd.domain.models import AgentRequest, AgentResult, Job, JobStatus
from agentd.ports.work_queue import WorkQueue


async def put(q: WorkQueue, project: str = "p", prompt: str = "x", provider: str = "scripted") -> Job:
    job_id, stream_id = new_job_ids()
    return await q.enqueue(
        AgentRequest(project_id=project, prompt=prompt), provider=provider, job_id=job_id, stream_id=stream_id
    )


async def test_enqueue_then_get(queue: WorkQueue) -> None:
    job = await put(queue, prompt="hello")
    assert job.status == JobStatus.queued and job.attempts == 0 and job.result is None
    got = await queue.get("p", job.id)
    assert got == job and got.request.prompt == "hello" and got.provider == "scripted"


async def test_get_checks_the_project(queue: WorkQueue) -> None:
    job = await put(queue, project="a")
    with pytest.raises(JobNotFound):
        await queue.get("b", job.id)
    with pytest.raises(JobNotFound):
        await queue.get("a", "job_nope")


async def test_claim_is_fifo_and_marks_running(queue: WorkQueue) -> None:
    first = await put(queue, project="a")
    await put(queue, project="b")
    job = await queue.claim("w1")
    assert job is not None and job.id == first.id
    assert job.status == JobStatus.running and job.worker_id == "w1" and job.attempts == 1
    assert job.started_at is not None


async def test_claim_on_empty_queue(queue: WorkQueue) -> None:
    assert await queue.claim("w1") is None


async def test_one_running_job_per_project(queue: WorkQueue) -> None:
    a1 = await put(queue, project="a")
    a2 = await put(queue, project="a")
    b1 = await put(queue, project="b")
    got1 = await queue.claim("w1")
    got2 = await queue.claim("w2")
    assert got1 is not None and got2 is not None
    assert (got1.id, got2.id) == (a1.id, b1.id)  # a2 waits: project a is busy
    assert await queue.claim("w3") is None
    await queue.finish(a1.id, AgentResult(status="succeeded"))
    got3 = await queue.claim("w3")
    assert got3 is not None and got3.id == a2.id


async def test_concurrent_claims_never_hand_out_a_job_twice(queue: WorkQueue) -> None:
    jobs = [await put(queue, project=f"p{i}") for i in range(30)]
    claimed: list[str] = []

    async def worker(n: int) -> None:
        while (job := await queue.claim(f"w{n}")) is not None:
            claimed.append(job.id)

    await asyncio.gather(*(worker(n) for n in range(6)))
    assert sorted(claimed) == sorted(j.id for j in jobs)


async def test_finish_is_final(queue: WorkQueue) -> None:
    job = await put(queue)
    await queue.claim("w1")
    done = await queue.finish(job.id, AgentResult(status="failed", error="boom", exit_code=1))
    assert done.status == JobStatus.failed and done.result is not None and done.result.error == "boom"
    assert done.finished_at is not None
    again = await queue.finish(job.id, AgentResult(status="succeeded"))
    assert again.status == JobStatus.failed and again.result == done.result


async def test_cancel_queued_ends_it_once(queue: WorkQueue) -> None:
    job = await put(queue)
    got, ended = await queue.request_cancel("p", job.id)
    assert ended and got.status == JobStatus.cancelled and got.result is not None
    assert got.result.status == "cancelled"
    got2, ended2 = await queue.request_cancel("p", job.id)
    assert not ended2 and got2.status == JobStatus.cancelled
    assert await queue.claim("w") is None


async def test_cancel_running_sets_the_flag(queue: WorkQueue) -> None:
    job = await put(queue)
    await queue.claim("w1")
    got, ended = await queue.request_cancel("p", job.id)
    assert not ended and got.status == JobStatus.running and got.cancel_requested
    assert (await queue.get("p", job.id)).cancel_requested


async def test_cancel_unknown_job(queue: WorkQueue) -> None:
    with pytest.raises(JobNotFound):
        await queue.request_cancel("p", "job_missing")


async def test_heartbeat_only_for_the_owner(queue: WorkQueue) -> None:
    job = await put(queue)
    await queue.claim("w1")
    assert await queue.heartbeat(job.id, "w1")
    assert not await queue.heartbeat(job.id, "w2")
    await queue.finish(job.id, AgentResult(status="succeeded"))
    assert not await queue.heartbeat(job.id, "w1")


async def test_list_newest_first_with_filters_and_paging(queue: WorkQueue) -> None:
    jobs = [await put(queue, project="p", prompt=f"n{i}") for i in range(5)]
    await put(queue, project="other")
    listed = await queue.list_jobs("p")
    assert [j.id for j in listed] == [j.id for j in reversed(jobs)]
    page1 = await queue.list_jobs("p", limit=2)
    page2 = await queue.list_jobs("p", limit=2, before=page1[-1].id)
    assert [j.id for j in page1 + page2] == [j.id for j in reversed(jobs)][:4]
    await queue.claim("w")
    running = await queue.list_jobs("p", status=JobStatus.running)
    assert [j.id for j in running] == [jobs[0].id]


async def test_recover_returns_orphaned_running_jobs(queue: WorkQueue) -> None:
    job = await put(queue)
    await queue.claim("w-dead")
    recovered = await queue.recover()
    assert [j.id for j in recovered] == [job.id]
    again = await queue.claim("w-new")
    assert again is not None and again.id == job.id and again.attempts == 2


async def test_recover_gives_up_after_the_attempt_limit(queue: WorkQueue) -> None:
    job = await put(queue)
    for _ in range(3):
        claimed = await queue.claim("w")
        assert claimed is not None
        await queue.recover()
    final = await queue.get("p", job.id)
    assert final.status == JobStatus.failed and final.result is not None
    assert "died" in (final.result.error or "")


async def test_wait_for_work_wakes_on_enqueue(queue: WorkQueue) -> None:
    waiter = asyncio.create_task(queue.wait_for_work(5))
    await asyncio.sleep(0.05)
    await put(queue)
    await asyncio.wait_for(waiter, 2)
