"""Per-project limits: a queue in the same database as the project store lets a project run up to its
`max_running` jobs at once, fleet-wide; a project that was never created runs one at a time, as before."""

from __future__ import annotations

import asyncio

from agentd.adapters.embedded.sqlite_project_store import SqliteProjectStore
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.postgres import PostgresProjectStore, PostgresWorkQueue
from agentd.domain.models import AgentResult
from agentd.domain.projects import ProjectSpec
from agentd.ports.project_store import ProjectStore
from agentd.ports.work_queue import WorkQueue
from tests.contract.conftest import QueueFactory
from tests.contract.test_work_queue import claim_one, finish_one, put


async def store_for(q: WorkQueue) -> ProjectStore:
    if isinstance(q, SqliteWorkQueue):
        return SqliteProjectStore(q.db)
    assert isinstance(q, PostgresWorkQueue)
    store = PostgresProjectStore(q.db)
    await store.open()
    return store


async def test_a_project_runs_up_to_its_max_running(queue: WorkQueue) -> None:
    store = await store_for(queue)
    try:
        await store.put("wide", ProjectSpec(template="empty", max_running=3))
        wide = [await put(queue, project="wide") for _ in range(4)]
        plain = [await put(queue, project="plain") for _ in range(2)]
        got = [await claim_one(queue, f"w{i}") for i in range(6)]
        ids = [j.id for j in got if j is not None]
        assert sorted(ids) == sorted([w.id for w in wide[:3]] + [plain[0].id])
        await finish_one(queue, wide[1].id, AgentResult(status="succeeded"))
        nxt = await claim_one(queue, "w9")
        assert nxt is not None and nxt.id == wide[3].id  # a slot of the project came free
        # Lowering the limit lets the running jobs finish but starts no more.
        await store.put("wide", ProjectSpec(max_running=1))
        await finish_one(queue, plain[0].id, AgentResult(status="succeeded"))
        nxt = await claim_one(queue, "w10")
        assert nxt is not None and nxt.id == plain[1].id
    finally:
        await store.close()


async def test_max_running_holds_across_instances(make_queue: QueueFactory) -> None:
    q1, q2 = await make_queue(), await make_queue()
    store = await store_for(q1)
    try:
        await store.put("same", ProjectSpec(template="empty", max_running=2))
        jobs = [await put(q1, project="same") for _ in range(6)]
        for _ in range(3):  # several rounds of racing claimers
            got = await asyncio.gather(*(claim_one(q, f"w{i}") for i, q in enumerate([q1, q2, q1, q2])))
            running = [j for j in got if j is not None]
            assert len(running) <= 2
            for j in running:
                await finish_one(q1, j.id, AgentResult(status="succeeded"))
        assert all(j.id for j in jobs)
    finally:
        await store.close()
