"""The run journal on PostgreSQL: `running` with the claim, `done` and the end of the stream with the result,
each in one transaction, as the run (fenced), with the log's writer in this process told."""

from __future__ import annotations

import pytest

from agentd.adapters.postgres import (
    PgDatabase,
    PostgresEventStream,
    PostgresProjectStore,
    PostgresRunJournal,
    PostgresWorkQueue,
)
from agentd.domain.errors import StreamNotFound
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    DoneEvent,
    JobStatus,
    StatusEvent,
    TextEvent,
)
from agentd.domain.projects import ProjectSpec
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres

RUNNING = StatusEvent(status="running", detail="worker w")


async def _open(dsn: str) -> tuple[PostgresWorkQueue, PostgresEventStream, PostgresProjectStore]:
    db = PgDatabase(dsn, pool_size=3)
    q, s, p = PostgresWorkQueue(db), PostgresEventStream(db), PostgresProjectStore(db)
    await q.open()
    await s.open()
    await p.open()
    return q, s, p


async def _submit(q: PostgresWorkQueue, s: PostgresEventStream, project: str, n: int) -> None:
    await s.create(f"s{n}", [StatusEvent(status="queued")])
    req = AgentRequest(project_id=project, prompt="x")
    await q.enqueue(req, provider="p", job_id=f"j{n}", stream_id=f"s{n}")


async def _events(s: PostgresEventStream, stream_id: str) -> list[tuple[int, str, str | None]]:
    out: list[tuple[int, str, str | None]] = []
    async for e in s.subscribe(stream_id):
        out.append((e.seq, e.event.event, getattr(e.event, "status", None)))
    return out


async def test_running_with_the_claim_done_with_the_result(pg_dsn: str) -> None:  # noqa: F811
    q, s, p = await _open(pg_dsn)
    try:
        await p.put("a", ProjectSpec())
        await _submit(q, s, "a", 0)
        await _submit(q, s, "b", 1)
        journal = PostgresRunJournal(q, s, p)
        claimed = await journal.claim_started("w", 10, running=RUNNING)
        assert [(j.id, started) for j, started in claimed] == [("j0", True), ("j1", True)]
        # The claim read the projects: the worker's next `find` answers from that, once.
        assert (await p.find("a")) is not None and (await p.find("b")) is None
        await s.publish("s0", [TextEvent(message_id="m", chunk="hi")], run=1)  # numbered after `running`
        stored = await journal.finish_ended(
            [("j0", AgentResult(status="succeeded", result="hi")), ("j1", AgentResult(status="failed"))],
            worker_id="w",
            attempts={"j0": 1, "j1": 1},
        )
        assert [(j.status, ended) for j, ended in stored] == [
            (JobStatus.succeeded, True),
            (JobStatus.failed, True),
        ]
        assert await _events(s, "s0") == [
            (1, "status", "queued"),
            (2, "status", "running"),
            (3, "text", None),
            (4, "done", "succeeded"),
        ]
        assert await _events(s, "s1") == [
            (1, "status", "queued"),
            (2, "status", "running"),
            (3, "done", "failed"),
        ]
        async for e in s.subscribe("s0", after=1):
            assert e.event == StatusEvent(status="running", detail="worker w, attempt 1", attempt=1)
            break
        async for e in s.subscribe("s0", after=3):
            assert isinstance(e.event, DoneEvent) and e.event.result == "hi"
        with pytest.raises(StreamNotFound):  # closed with `done`
            await s.publish("s0", [TextEvent(message_id="m", chunk="late")], run=1)
    finally:
        await p.close()
        await s.close()
        await q.close()


async def test_a_run_that_lost_its_job_writes_no_done(pg_dsn: str) -> None:  # noqa: F811
    q, s, _p = await _open(pg_dsn)
    try:
        await _submit(q, s, "a", 0)
        journal = PostgresRunJournal(q, s)
        [(job, _)] = await journal.claim_started("w", 1, running=RUNNING)
        assert await q.release(job.id, job.attempts, "shutting down") is not None  # the job moved on
        [(stored, ended)] = await journal.finish_ended(
            [(job.id, AgentResult(status="succeeded"))], worker_id="w", attempts={job.id: job.attempts}
        )
        assert stored.status == JobStatus.queued and not ended
        # Its next attempt: `running` is left to the runner (it says first that the last attempt was lost).
        [(again, started)] = await journal.claim_started("w", 1, running=RUNNING)
        assert again.attempts == 2 and not started
        assert [e for _, e, _ in await _first(s, "s0")] == ["status", "status"]
    finally:
        await s.close()
        await q.close()


async def test_a_stream_taken_by_a_later_run_is_left_alone(pg_dsn: str) -> None:  # noqa: F811
    q, s, _ = await _open(pg_dsn)
    try:
        await _submit(q, s, "a", 0)
        assert await s.supersede("s0", 5, [StatusEvent(status="requeued")])
        journal = PostgresRunJournal(q, s)
        [(job, started)] = await journal.claim_started("w", 1, running=RUNNING)
        assert job.attempts == 1 and not started  # the runner's own publish finds out why (RunSuperseded)
        [(stored, ended)] = await journal.finish_ended(
            [(job.id, AgentResult(status="succeeded"))], worker_id="w", attempts={job.id: 1}
        )
        assert stored.status == JobStatus.succeeded and not ended
        assert [t for _, t, _ in await _first(s, "s0")] == ["status", "status"]
    finally:
        await s.close()
        await q.close()


async def _first(s: PostgresEventStream, stream_id: str) -> list[tuple[int, str, str | None]]:
    """The stream's events so far (it is still open)."""
    out: list[tuple[int, str, str | None]] = []
    head = await s.last_seq(stream_id)
    async for e in s.subscribe(stream_id):
        out.append((e.seq, e.event.event, getattr(e.event, "status", None)))
        if e.seq >= head:
            break
    return out


async def test_the_claim_says_which_runs_get_no_secret(pg_dsn: str) -> None:  # noqa: F811
    """The claim reads whether a job's run would get any secret: none, and the run needs no query for them;
    a secret put before the claim is seen (its run asks `resolve`); a wrong master key is never hidden."""
    from agentd.adapters.postgres import PostgresSecretStore
    from agentd.adapters.secret_crypto import WrongMasterKey

    q, s, p = await _open(pg_dsn)
    secrets = PostgresSecretStore(q.db, b"k" * 32)
    await secrets.open()
    try:
        for n, project in enumerate(["quiet", "loud", "other"]):
            await _submit(q, s, project, n)
        await secrets.put("loud", "TOKEN", "v1")
        journal = PostgresRunJournal(q, s, p, secrets)
        await journal.claim_started("w", 1, running=RUNNING)  # j0, project "quiet"
        await journal.claim_started("w", 1, running=RUNNING)  # j1, project "loud"
        assert secrets.claimed_without_secrets("quiet") is True
        assert secrets.claimed_without_secrets("quiet") is False  # once
        assert secrets.claimed_without_secrets("loud") is False
        assert await secrets.resolve("loud") == {"TOKEN": "v1"}
        # A global secret put before the claim: every project's run gets it.
        await secrets.put(None, "GLOBAL", "g")
        await journal.claim_started("w", 1, running=RUNNING)  # j2, project "other"
        assert secrets.claimed_without_secrets("other") is False
        # Another key: no hint, so the run's `resolve` says the key is wrong, as before.
        wrong = PostgresSecretStore(q.db, b"w" * 32)
        await wrong.open()
        try:
            await _submit(q, s, "quiet2", 3)
            await PostgresRunJournal(q, s, p, wrong).claim_started("w", 1, running=RUNNING)
            assert wrong.claimed_without_secrets("quiet2") is False
            with pytest.raises(WrongMasterKey):
                await wrong.resolve("quiet2")
        finally:
            await wrong.close()
    finally:
        await secrets.close()
        await p.close()
        await s.close()
        await q.close()


async def test_a_runs_last_events_go_with_its_result(pg_dsn: str) -> None:  # noqa: F811
    """`events`: written in order right before `done`, in the same statement; none of them when `done` is
    refused (the caller then publishes them the ordinary way, and the stream says why)."""
    q, s, p = await _open(pg_dsn)
    try:
        await _submit(q, s, "a", 0)
        await _submit(q, s, "b", 1)
        journal = PostgresRunJournal(q, s, p)
        await journal.claim_started("w", 10, running=RUNNING)
        await s.publish("s0", [TextEvent(message_id="m", chunk="a")], run=1)
        await s.close_stream("s1")  # closed under the run: its end is refused
        tail: list[AgentEvent] = [
            TextEvent(message_id="m", chunk="b\0c"),
            StatusEvent(status="late", detail="x"),
        ]
        stored = await journal.finish_ended(
            [("j0", AgentResult(status="succeeded")), ("j1", AgentResult(status="succeeded"))],
            worker_id="w",
            attempts={"j0": 1, "j1": 1},
            events={"j0": tail, "j1": tail},
        )
        assert [(j.status, ended) for j, ended in stored] == [
            (JobStatus.succeeded, True),
            (JobStatus.succeeded, False),
        ]
        assert await _events(s, "s0") == [
            (1, "status", "queued"),
            (2, "status", "running"),
            (3, "text", None),
            (4, "text", None),
            (5, "status", "late"),
            (6, "done", "succeeded"),
        ]
        async for e in s.subscribe("s0", after=3):
            assert e.event == tail[0]  # U+0000 and all
            break
        assert await _events(s, "s1") == [(1, "status", "queued"), (2, "status", "running")]
    finally:
        await p.close()
        await s.close()
        await q.close()
