"""The WorkQueue contract (ports/work_queue.py), run against every adapter.

Behaviours that need time to pass (leases, backoff) use short leases and delays, never a fake clock: the
PostgreSQL queue keeps time with the database's clock.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from agentd.domain.errors import JobNotFound
from agentd.domain.ids import new_job_ids
from agentd.domain.models import AgentRequest, AgentResult, Job, JobStatus
from agentd.ports.work_queue import Limits, WorkQueue
from tests.contract.conftest import QueueFactory


async def put(q: WorkQueue, project: str = "p", prompt: str = "x", provider: str = "scripted") -> Job:
    job_id, stream_id = new_job_ids()
    job, created = await q.enqueue(
        AgentRequest(project_id=project, prompt=prompt), provider=provider, job_id=job_id, stream_id=stream_id
    )
    assert created
    return job


async def claim_one(q: WorkQueue, worker: str = "w", *, limits: Limits | None = None) -> Job | None:
    """The oldest runnable job, or None (the port hands out jobs in batches: this is a batch of one)."""
    jobs = await q.claim_many(worker, 1, limits=limits)
    assert len(jobs) <= 1
    return jobs[0] if jobs else None


async def claim(q: WorkQueue, worker: str = "w") -> Job:
    job = await claim_one(q, worker)
    assert job is not None
    return job


async def finish_one(q: WorkQueue, job_id: str, result: AgentResult, *, worker_id: str | None = None) -> Job:
    (job,) = await q.finish_many([(job_id, result)], worker_id=worker_id)
    return job


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
    job = await claim_one(queue, "w1")
    assert job is not None and job.id == first.id
    assert job.status == JobStatus.running and job.worker_id == "w1" and job.attempts == 1
    assert job.started_at is not None and job.started_at >= job.created_at


async def test_claim_on_empty_queue(queue: WorkQueue) -> None:
    assert await claim_one(queue, "w1") is None


async def test_one_running_job_per_project(queue: WorkQueue) -> None:
    a1 = await put(queue, project="a")
    a2 = await put(queue, project="a")
    b1 = await put(queue, project="b")
    got1 = await claim_one(queue, "w1")
    got2 = await claim_one(queue, "w2")
    assert got1 is not None and got2 is not None
    assert (got1.id, got2.id) == (a1.id, b1.id)  # a2 waits: project a is busy
    assert await claim_one(queue, "w3") is None
    await finish_one(queue, a1.id, AgentResult(status="succeeded"))
    got3 = await claim_one(queue, "w3")
    assert got3 is not None and got3.id == a2.id


async def test_one_running_job_per_project_across_instances(make_queue: QueueFactory) -> None:
    q1, q2 = await make_queue(), await make_queue()
    jobs = [await put(q1, project="same") for _ in range(4)]
    got = await asyncio.gather(*(claim_one(q, f"w{i}") for i, q in enumerate([q1, q2, q1, q2])))
    assert [j.id for j in got if j is not None] == [jobs[0].id]


async def test_concurrent_claims_never_hand_out_a_job_twice(queue: WorkQueue) -> None:
    jobs = [await put(queue, project=f"p{i}") for i in range(30)]
    claimed: list[str] = []

    async def worker(n: int) -> None:
        while (job := await claim_one(queue, f"w{n}")) is not None:
            claimed.append(job.id)

    await asyncio.gather(*(worker(n) for n in range(6)))
    assert sorted(claimed) == sorted(j.id for j in jobs)


async def test_finish_is_final(queue: WorkQueue) -> None:
    job = await put(queue)
    await claim(queue, "w1")
    done = await finish_one(queue, job.id, AgentResult(status="failed", error="boom", exit_code=1))
    assert done.status == JobStatus.failed and done.result is not None and done.result.error == "boom"
    assert done.finished_at is not None
    again = await finish_one(queue, job.id, AgentResult(status="succeeded"))
    assert again.status == JobStatus.failed and again.result == done.result
    with pytest.raises(JobNotFound):
        await finish_one(queue, "job_missing", AgentResult(status="succeeded"))


async def test_finish_with_worker_id_only_touches_that_workers_job(queue: WorkQueue) -> None:
    job = await put(queue)
    await claim(queue, "w1")
    unchanged = await finish_one(queue, job.id, AgentResult(status="succeeded"), worker_id="w2")
    assert unchanged.status == JobStatus.running and unchanged.result is None
    done = await finish_one(queue, job.id, AgentResult(status="succeeded"), worker_id="w1")
    assert done.status == JobStatus.succeeded and done.worker_id == "w1"


async def test_cancel_queued_ends_it_once(queue: WorkQueue) -> None:
    job = await put(queue)
    got, ended = await queue.request_cancel("p", job.id)
    assert ended and got.status == JobStatus.cancelled and got.result is not None
    assert got.result.status == "cancelled" and got.finished_at is not None
    got2, ended2 = await queue.request_cancel("p", job.id)
    assert not ended2 and got2.status == JobStatus.cancelled
    assert await claim_one(queue, "w") is None


async def test_cancel_running_sets_the_flag(queue: WorkQueue) -> None:
    job = await put(queue)
    await claim(queue, "w1")
    got, ended = await queue.request_cancel("p", job.id)
    assert not ended and got.status == JobStatus.running and got.cancel_requested
    assert (await queue.get("p", job.id)).cancel_requested


async def test_cancel_checks_the_project(queue: WorkQueue) -> None:
    job = await put(queue, project="a")
    with pytest.raises(JobNotFound):
        await queue.request_cancel("p", "job_missing")
    with pytest.raises(JobNotFound):
        await queue.request_cancel("b", job.id)
    assert (await queue.get("a", job.id)).status == JobStatus.queued


async def test_heartbeat_only_for_the_owner(queue: WorkQueue) -> None:
    job = await put(queue)
    await claim(queue, "w1")
    assert await queue.heartbeat(job.id, "w1")
    assert not await queue.heartbeat(job.id, "w2")
    await finish_one(queue, job.id, AgentResult(status="succeeded"))
    assert not await queue.heartbeat(job.id, "w1")


async def test_recover_all_running_returns_orphaned_jobs(queue: WorkQueue) -> None:
    job = await put(queue)
    await claim(queue, "w-dead")
    assert await queue.recover() == []  # the lease (30 s) has not expired
    recovered = await queue.recover(all_running=True)
    assert [(j.id, j.status, j.worker_id) for j in recovered] == [(job.id, JobStatus.queued, None)]
    again = await claim(queue, "w-new")
    assert again.id == job.id and again.attempts == 2 and again.worker_id == "w-new"


async def test_expired_lease_is_recovered_and_heartbeats_keep_it(make_queue: QueueFactory) -> None:
    queue = await make_queue(lease_s=1.0)
    kept, lost = await put(queue, project="kept"), await put(queue, project="lost")
    await claim(queue, "w1")
    await claim(queue, "w2")
    assert await queue.recover() == []
    for _ in range(6):  # w1 heartbeats, w2 is gone
        await asyncio.sleep(0.25)
        assert await queue.heartbeat(kept.id, "w1")
    recovered = await queue.recover()
    assert [(j.id, j.status) for j in recovered] == [(lost.id, JobStatus.queued)]
    assert not await queue.heartbeat(lost.id, "w2")  # the job is no longer w2's
    assert (await queue.get("kept", kept.id)).status == JobStatus.running
    again = await claim(queue, "w3")
    assert again.id == lost.id and again.attempts == 2


async def test_attempt_limit_fails_the_job_with_the_reason(make_queue: QueueFactory) -> None:
    queue = await make_queue(lease_s=0.1, max_attempts=3)
    job = await put(queue)
    for attempt in range(1, 4):
        claimed = await claim(queue)
        assert claimed.attempts == attempt
        await asyncio.sleep(0.2)
        recovered = await queue.recover()
        assert [j.id for j in recovered] == [job.id]
    final = await queue.get("p", job.id)
    assert final.status == JobStatus.failed and final.result is not None and final.finished_at is not None
    assert final.result.error == "worker lost (lease expired) 3 times; giving up"
    assert await claim_one(queue, "w") is None


async def test_retryable_failure_is_requeued_after_backoff(make_queue: QueueFactory) -> None:
    queue = await make_queue(retry_base_s=0.3, max_attempts=2)
    job = await put(queue)
    await claim(queue, "w1")
    retry = AgentResult(status="failed", error="rate limited", retryable=True)
    requeued = await finish_one(queue, job.id, retry, worker_id="w1")
    assert requeued.status == JobStatus.queued and requeued.result is None and requeued.worker_id is None
    assert await claim_one(queue, "w2") is None  # backing off
    started = time.monotonic()
    while (again := await claim_one(queue, "w2")) is None:
        assert time.monotonic() - started < 3
        await asyncio.sleep(0.05)
    assert again.id == job.id and again.attempts == 2
    assert time.monotonic() - started >= 0.1
    # The last attempt: a retryable failure is final now.
    final = await finish_one(queue, job.id, retry, worker_id="w2")
    assert final.status == JobStatus.failed and final.result is not None
    assert final.result.error == "rate limited"


async def test_non_retryable_and_cancelled_results_are_final(queue: WorkQueue) -> None:
    plain, cancelled = await put(queue, project="a"), await put(queue, project="b")
    await claim(queue)
    await claim(queue)
    done = await finish_one(queue, plain.id, AgentResult(status="failed", error="bad prompt"))
    assert done.status == JobStatus.failed
    await queue.request_cancel("b", cancelled.id)
    ended = await finish_one(
        queue, cancelled.id, AgentResult(status="failed", error="killed", retryable=True)
    )
    assert ended.status == JobStatus.failed  # a cancel request wins over a retry
    ok = await finish_one(queue, plain.id, AgentResult(status="succeeded", retryable=True))
    assert ok.status == JobStatus.failed  # final stays final


async def test_claim_many_fills_slots_but_never_two_of_a_project(queue: WorkQueue) -> None:
    a1, _a2, b1, c1, d1 = [await put(queue, project=p) for p in ("a", "a", "b", "c", "d")]
    got = await queue.claim_many("w", 3)
    assert [j.id for j in got] == [a1.id, b1.id, c1.id]
    assert all(j.status == JobStatus.running and j.worker_id == "w" for j in got)
    rest = await queue.claim_many("w", 10)
    assert [j.id for j in rest] == [d1.id]  # a2 waits for a1
    assert await queue.claim_many("w", 10) == []


async def test_a_projects_jobs_start_in_submission_order(make_queue: QueueFactory) -> None:
    queue = await make_queue(retry_base_s=0.3, max_attempts=2)
    first, second = await put(queue, project="ordered"), await put(queue, project="ordered")
    other = await put(queue, project="elsewhere")
    got = await claim_one(queue, "w1")
    assert got is not None and got.id == first.id
    await finish_one(
        queue, first.id, AgentResult(status="failed", error="rate limited", retryable=True), worker_id="w1"
    )
    # The first job backs off before its retry: the second waits its turn, other projects go on.
    nxt = await claim_one(queue, "w2")
    assert nxt is not None and nxt.id == other.id
    assert await claim_one(queue, "w2") is None
    started = time.monotonic()
    while (again := await claim_one(queue, "w3")) is None:
        assert time.monotonic() - started < 3
        await asyncio.sleep(0.05)
    assert again.id == first.id
    await finish_one(queue, first.id, AgentResult(status="succeeded"), worker_id="w3")
    last = await claim_one(queue, "w3")
    assert last is not None and last.id == second.id


# Fencing (issue 10): every claim is a new attempt; writes naming an older attempt are refused.


async def test_heartbeat_and_finish_are_fenced_by_the_attempt(queue: WorkQueue) -> None:
    job = await put(queue)
    first = await claim(queue, "w")
    assert first.attempts == 1 and first.run_id == f"{job.id}.1"
    await queue.recover(all_running=True)  # its lease ended under it (a clock jump, an outage)
    second = await claim(queue, "w")  # the same worker id: only the attempt tells the runs apart
    assert second.attempts == 2
    assert not await queue.heartbeat(job.id, "w", attempt=1)
    assert await queue.heartbeat(job.id, "w", attempt=2)
    stale = await finish_one_attempt(queue, job.id, AgentResult(status="failed", error="old"), attempt=1)
    assert stale.status == JobStatus.running and stale.result is None and stale.attempts == 2
    done = await finish_one_attempt(queue, job.id, AgentResult(status="succeeded"), attempt=2)
    assert done.status == JobStatus.succeeded


async def finish_one_attempt(q: WorkQueue, job_id: str, result: AgentResult, *, attempt: int) -> Job:
    (job,) = await q.finish_many([(job_id, result)], worker_id="w", attempts={job_id: attempt})
    return job


async def test_a_claim_skips_the_jobs_the_claimer_still_runs(queue: WorkQueue) -> None:
    old = await put(queue, project="p")
    newer = await put(queue, project="p")
    other = await put(queue, project="q")
    jobs = await queue.claim_many("w", 5, exclude={old.id})
    assert [j.id for j in jobs] == [other.id]  # `old` is skipped, and its project's newer job waits behind it
    assert (await queue.get("p", newer.id)).status == JobStatus.queued
    (again,) = await queue.claim_many("w", 5)
    assert again.id == old.id


async def test_release_hands_a_job_back_without_using_an_attempt(make_queue: QueueFactory) -> None:
    queue = await make_queue(max_attempts=1)
    job = await put(queue)
    await claim(queue)
    assert await queue.release(job.id, 2, "worker shutting down") is None  # not the running attempt
    released = await queue.release(job.id, 1, "worker shutting down")
    assert released is not None and released.status == JobStatus.queued and released.worker_id is None
    assert not await queue.heartbeat(job.id, "w", attempt=1)
    again = await claim(queue)  # runnable at once, and the hand-back did not use up its only attempt
    assert again.attempts == 2
    await queue.recover(all_running=True)  # a real loss still counts: 2 of 2 attempts used
    assert (await queue.get("p", job.id)).status == JobStatus.failed


async def test_release_leaves_a_job_someone_asked_to_cancel(queue: WorkQueue) -> None:
    job = await put(queue)
    await claim(queue)
    await queue.request_cancel("p", job.id)
    assert await queue.release(job.id, 1, "worker shutting down") is None
    assert (await queue.get("p", job.id)).status == JobStatus.running


async def test_purge_deletes_finished_jobs_and_their_idempotency_keys_in_batches(queue: WorkQueue) -> None:
    req = AgentRequest(project_id="p", prompt="x")
    keyed, _ = await queue.enqueue(
        req, provider="scripted", job_id="job_k", stream_id="stm_k", idempotency_key="k"
    )
    done = [keyed] + [await put(queue, project=f"p{i}") for i in range(2)]
    for _ in done:
        claimed = await claim(queue)
        await finish_one(queue, claimed.id, AgentResult(status="succeeded"))
    waiting = await put(queue, project="waiting")
    running = await put(queue, project="running")
    await claim(queue)  # `waiting` was enqueued first: it runs; `running` stays queued
    assert await queue.purge(3600) == 0  # not old enough
    await asyncio.sleep(0.05)
    assert await queue.purge(0.01, batch=2) == 2
    assert await queue.purge(0.01, batch=2) == 1
    assert await queue.purge(0.01, batch=2) == 0
    for j in done:
        with pytest.raises(JobNotFound):
            await queue.get(j.project_id, j.id)
    assert (await queue.get("waiting", waiting.id)).status == JobStatus.running
    assert (await queue.get("running", running.id)).status == JobStatus.queued
    again, created = await queue.enqueue(
        AgentRequest(project_id="p", prompt="other"),
        provider="scripted",
        job_id="job_k2",
        stream_id="stm_k2",
        idempotency_key="k",
    )
    assert created and again.id == "job_k2"  # the key is free again


async def test_an_expired_lease_is_never_renewed(make_queue: QueueFactory) -> None:
    queue = await make_queue(lease_s=0.2)
    job = await put(queue)
    await claim(queue, "w")
    await asyncio.sleep(0.3)  # no sweep yet: the job still says running
    assert (await queue.get("p", job.id)).status == JobStatus.running
    assert not await queue.heartbeat(job.id, "w", attempt=1)


async def test_a_job_whose_lease_expired_waits_before_its_next_attempt(make_queue: QueueFactory) -> None:
    queue = await make_queue(lease_s=0.1, requeue_delay_s=0.6)
    job = await put(queue)
    await claim(queue)
    await asyncio.sleep(0.2)
    assert [j.id for j in await queue.recover()] == [job.id]
    # The run that held it may still be alive (a clock jump): it gets time to notice and stop first.
    assert await claim_one(queue) is None
    await asyncio.sleep(0.7)
    assert (await claim(queue)).attempts == 2
    await queue.recover(all_running=True)  # its process is known gone: no wait
    assert (await claim(queue)).attempts == 3


async def test_queue_stats_count_queued_jobs_per_provider(queue: WorkQueue) -> None:
    assert await queue.queue_stats() == {}
    first = await put(queue, project="a", provider="claude-code")
    await put(queue, project="b", provider="claude-code")
    await put(queue, project="c", provider="opencode")
    stats = await queue.queue_stats()
    assert set(stats) == {"claude-code", "opencode"}
    assert stats["claude-code"][0] == 2 and stats["opencode"][0] == 1
    oldest = stats["claude-code"][1]
    assert oldest is not None and abs((oldest - first.created_at).total_seconds()) < 1
    assert (await claim(queue)).id == first.id  # a running job is not queued
    assert (await queue.queue_stats())["claude-code"][0] == 1


async def test_the_request_id_does_not_make_an_idempotent_repeat_a_conflict(queue: WorkQueue) -> None:
    """The X-Request-Id the job carries for its logs differs on every retry of the same submission."""
    ids = [new_job_ids() for _ in range(2)]
    jobs = [
        await queue.enqueue(
            AgentRequest(project_id="p", prompt="same", request_id=f"req-{n}"),
            provider="scripted",
            job_id=job_id,
            stream_id=stream_id,
            idempotency_key="retry-1",
        )
        for n, (job_id, stream_id) in enumerate(ids)
    ]
    (first, created), (again, created_again) = jobs
    assert created and not created_again and again.id == first.id
    assert first.request.request_id == "req-0"
