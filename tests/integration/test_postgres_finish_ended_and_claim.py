"""The run journal's finish_ended_and_claim: a batch's results (with their `done` and the end of their
streams) and the next claim (with its `running` events) in ONE transaction: one commit, both or neither."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from agentd.adapters.postgres import (
    PgDatabase,
    PostgresEventStream,
    PostgresProjectStore,
    PostgresRunJournal,
    PostgresWorkQueue,
)
from agentd.domain.models import AgentRequest, AgentResult, JobStatus, StatusEvent, TextEvent
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
    await q.enqueue(
        AgentRequest(project_id=project, prompt="x"), provider="p", job_id=f"j{n}", stream_id=f"s{n}"
    )


async def _xmins(dsn: str) -> dict[str, Any]:
    """The transaction that last wrote each job row and each stream's last event."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        jobs = await (await conn.execute("SELECT id, xmin::text, status FROM agentd_jobs")).fetchall()
        events = await (
            await conn.execute(
                "SELECT DISTINCT ON (stream_id) stream_id, xmin::text, type FROM agentd_events"
                " ORDER BY stream_id, seq DESC"
            )
        ).fetchall()
    return {**{r[0]: (r[1], r[2]) for r in jobs}, **{r[0]: (r[1], r[2]) for r in events}}


async def test_results_and_the_claim_in_one_transaction(pg_dsn: str) -> None:  # noqa: F811
    q, s, p = await _open(pg_dsn)
    try:
        for n, project in enumerate(["a", "b", "a", "c"]):
            await _submit(q, s, project, n)
        journal = PostgresRunJournal(q, s, p)
        first = await journal.claim_started("w", 2, running=RUNNING)
        assert [j.id for j, _ in first] == ["j0", "j1"]
        await s.publish("s0", [TextEvent(message_id="m", chunk="hi")], run=1)
        finished, claimed = await journal.finish_ended_and_claim(
            [("j0", AgentResult(status="succeeded", result="hi")), ("j1", AgentResult(status="failed"))],
            10,
            worker_id="w",
            attempts={"j0": 1, "j1": 1},
            events={"j1": [TextEvent(message_id="m", chunk="last")]},
            running=RUNNING,
        )
        assert not isinstance(finished, Exception)
        assert [(j.id, j.status, done) for j, done in finished] == [
            ("j0", JobStatus.succeeded, True),
            ("j1", JobStatus.failed, True),
        ]
        # The claim saw project a free again (its job finished earlier in the same transaction).
        assert [(j.id, started) for j, started in claimed] == [("j2", True), ("j3", True)]
        x = await _xmins(pg_dsn)
        assert x["j0"][1] == "succeeded" and x["s0"][1] == "done" and x["s1"][1] == "done"
        assert x["j2"][1] == "running" and x["s2"][1] == "status" and x["s3"][1] == "status"
        # One transaction wrote the results, their `done` events, the claims and their `running` events.
        assert len({x[k][0] for k in ("j0", "j1", "s0", "s1", "j2", "j3", "s2", "s3")}) == 1
        events = [(e.seq, e.event.event) async for e in s.subscribe("s1")]
        assert events == [(1, "status"), (2, "status"), (3, "text"), (4, "done")]
    finally:
        await p.close()
        await s.close()
        await q.close()


async def test_a_failed_claim_stores_no_result_and_no_done(
    pg_dsn: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both or neither: a claim that fails rolls its results back (the caller then stores them on their own),
    so `done` is never visible without its result, nor a result stored twice."""
    q, s, p = await _open(pg_dsn)
    try:
        for n, project in enumerate(["a", "b"]):
            await _submit(q, s, project, n)
        journal = PostgresRunJournal(q, s, p)
        await journal.claim_started("w", 1, running=RUNNING)
        claim_params = journal._claim_params

        def broken(*args: Any) -> dict[str, Any]:
            return {**claim_params(*args), "lease_s": "not a number"}

        monkeypatch.setattr(journal, "_claim_params", broken)
        with pytest.raises(psycopg.Error):
            await journal.finish_ended_and_claim(
                [("j0", AgentResult(status="succeeded"))],
                1,
                worker_id="w",
                attempts={"j0": 1},
                running=RUNNING,
            )
        monkeypatch.undo()
        x = await _xmins(pg_dsn)
        assert x["j0"][1] == "running" and x["s0"][1] == "status"  # no result, no `done`
        assert x["j1"][1] == "queued"
        # The results alone, as the runner's fallback stores them: stored once, with their `done`.
        stored = await journal.finish_ended(
            [("j0", AgentResult(status="succeeded"))], worker_id="w", attempts={"j0": 1}
        )
        assert [(j.status, done) for j, done in stored] == [(JobStatus.succeeded, True)]
    finally:
        await p.close()
        await s.close()
        await q.close()


async def test_the_pipelined_finish_and_claim_is_one_transaction(pg_dsn: str) -> None:  # noqa: F811
    q, s, _ = await _open(pg_dsn)
    try:
        for n, project in enumerate(["a", "b"]):
            await _submit(q, s, project, n)
        await q.claim_many("w", 1)
        await q.finish_and_claim([("j0", AgentResult(status="succeeded"))], 1, worker_id="w")
        x = await _xmins(pg_dsn)
        assert x["j0"][1] == "succeeded" and x["j1"][1] == "running" and x["j0"][0] == x["j1"][0]
    finally:
        await s.close()
        await q.close()
