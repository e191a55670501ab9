"""finish_and_claim: a batch's results and the next claim in one round trip (psycopg pipeline mode)."""

from __future__ import annotations

import psycopg
import pytest

from agentd.adapters.postgres import PgDatabase, PostgresWorkQueue
from agentd.domain.models import AgentRequest, AgentResult, JobStatus
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres


async def test_results_stored_and_the_next_jobs_claimed(pg_dsn: str) -> None:  # noqa: F811
    q = PostgresWorkQueue(PgDatabase(pg_dsn, pool_size=2))
    await q.open()
    try:
        for i, project in enumerate(["a", "a", "b"]):
            await q.enqueue(
                AgentRequest(project_id=project, prompt="x"), provider="p", job_id=f"j{i}", stream_id=f"s{i}"
            )
        first = await q.claim_many("w", 10)
        assert [j.id for j in first] == ["j0", "j2"]  # j1 waits: its project runs j0
        finished, claimed = await q.finish_and_claim(
            [(j.id, AgentResult(status="succeeded")) for j in first], 10, worker_id="w"
        )
        assert [(j.id, j.status) for j in finished] == [
            ("j0", JobStatus.succeeded),
            ("j2", JobStatus.succeeded),
        ]
        assert [j.id for j in claimed] == ["j1"]  # the claim saw project a free again
        assert (await q.get("a", "j1")).status == JobStatus.running
        finished, claimed = await q.finish_and_claim(
            [("j1", AgentResult(status="failed", error="no"))], 10, worker_id="w"
        )
        assert finished[0].status == JobStatus.failed and claimed == []
    finally:
        await q.close()


async def test_results_and_claim_are_one_transaction(
    pg_dsn: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No Sync between the two statements: one commit, so either failing rolls back both."""
    q = PostgresWorkQueue(PgDatabase(pg_dsn, pool_size=2))
    await q.open()
    try:
        for i, project in enumerate(["a", "b", "c"]):
            await q.enqueue(
                AgentRequest(project_id=project, prompt="x"), provider="p", job_id=f"j{i}", stream_id=f"s{i}"
            )
        await q.claim_many("w", 1)
        await q.finish_and_claim([("j0", AgentResult(status="succeeded"))], 1, worker_id="w")

        async def jobs() -> list[tuple[str, str, str]]:
            async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
                cur = await conn.execute("SELECT id, status, xmin::text FROM agentd_jobs ORDER BY id")
                return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

        rows = await jobs()
        assert [r[:2] for r in rows] == [("j0", "succeeded"), ("j1", "running"), ("j2", "queued")]
        assert rows[0][2] == rows[1][2]  # written by one transaction
        claim_params = q._claim_params
        monkeypatch.setattr(q, "_claim_params", lambda *a: {**claim_params(*a), "lease_s": "not a number"})
        with pytest.raises(psycopg.Error):  # a claim that fails takes the results down with it
            await q.finish_and_claim([("j1", AgentResult(status="succeeded"))], 1, worker_id="w")
        monkeypatch.undo()
        assert [r[:2] for r in await jobs()] == [("j0", "succeeded"), ("j1", "running"), ("j2", "queued")]
    finally:
        await q.close()
