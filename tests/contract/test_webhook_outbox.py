"""The WebhookOutbox contract (ports/webhook_outbox.py), run against every adapter; and the WebhookService
sending through it: signed, retried on 5xx/connection errors with backoff, not on 4xx, one sender per
delivery in a fleet."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.embedded.sqlite_webhook_outbox import SqliteWebhookOutbox
from agentd.adapters.postgres import PgDatabase
from agentd.adapters.postgres.postgres_webhook_outbox import PostgresWebhookOutbox
from agentd.domain.models import AgentRequest, DoneEvent, Job, JobStatus, StatusEvent
from agentd.domain.webhooks import Delivery, DeliveryAttempt, WebhookSpec, new_delivery_id, verify
from agentd.ports.webhook_outbox import WebhookOutbox
from agentd.services.webhooks import WebhookService
from tests.support.postgres import pg_dsn, pg_template

__all__ = ["pg_dsn", "pg_template"]  # fixtures
OutboxFactory = Callable[[], Awaitable[WebhookOutbox]]
SECRET = "whsec-0123456789abcdef"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def make_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OutboxFactory]:
    """Each call opens another instance on the same storage (another process, as far as it can tell)."""
    opened: list[WebhookOutbox] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""

    async def make() -> WebhookOutbox:
        box: WebhookOutbox
        if request.param == "sqlite":
            box = SqliteWebhookOutbox(tmp_path / "queue.sqlite3")
        else:
            pg = PostgresWebhookOutbox(PgDatabase(dsn, pool_size=4, listen=False))
            await pg.open()
            box = pg
        opened.append(box)
        return box

    yield make
    for box in reversed(opened):
        await box.close()


def delivery(job_id: str = "job_1", url: str = "http://127.0.0.1:9/hook") -> Delivery:
    return Delivery(
        id=new_delivery_id(),
        project_id="p",
        job_id=job_id,
        event="done",
        url=url,
        body=json.dumps({"job_id": job_id}),
        created_at=datetime.now(UTC),
    )


def attempt(code: int | None, error: str | None = None) -> DeliveryAttempt:
    return DeliveryAttempt(at=datetime.now(UTC), status_code=code, error=error)


async def test_claim_leases_each_delivery_to_one_worker(make_outbox: OutboxFactory) -> None:
    a, b = await make_outbox(), await make_outbox()
    ds = [delivery(f"job_{i}") for i in range(6)]
    await a.add(ds)
    await a.add(ds[:1])  # adding again changes nothing
    got_a, got_b = await asyncio.gather(a.claim_due("w1", 4, lease_s=30), b.claim_due("w2", 4, lease_s=30))
    ids_a, ids_b = {d.id for d in got_a}, {d.id for d in got_b}
    assert not ids_a & ids_b and ids_a | ids_b == {d.id for d in ds}
    assert await a.claim_due("w3", 10, lease_s=30) == []  # all leased
    assert [d.id for d in await b.list_for_job("job_0")] == [ds[0].id]


async def test_record_delivered_retry_and_failed(make_outbox: OutboxFactory) -> None:
    box = await make_outbox()
    ok, retry, give_up = delivery("job_ok"), delivery("job_retry"), delivery("job_fail")
    await box.add([ok, retry, give_up])
    assert len(await box.claim_due("w", 10, lease_s=30)) == 3
    assert not await box.record(ok.id, attempt(200), worker_id="someone-else", delivered=True, retry_at=None)
    assert await box.record(ok.id, attempt(200), worker_id="w", delivered=True, retry_at=None)
    soon = datetime.now(UTC) + timedelta(seconds=0.3)
    assert await box.record(retry.id, attempt(503), worker_id="w", delivered=False, retry_at=soon)
    assert await box.record(give_up.id, attempt(404), worker_id="w", delivered=False, retry_at=None)
    assert await box.claim_due("w", 10, lease_s=30) == []  # the retry is not due yet
    await asyncio.sleep(0.4)
    (again,) = await box.claim_due("w", 10, lease_s=30)
    assert again.id == retry.id and again.attempts == 1 and again.last_status_code == 503
    (done,) = await box.list_for_job("job_ok")
    assert done.status == "delivered" and done.delivered_at is not None and done.next_attempt_at is None
    (failed,) = await box.list_for_job("job_fail")
    assert failed.status == "failed" and [h.status_code for h in failed.history] == [404]


async def test_a_dead_workers_lease_expires(make_outbox: OutboxFactory) -> None:
    a, b = await make_outbox(), await make_outbox()
    d = delivery()
    await a.add([d])
    assert len(await a.claim_due("dead", 5, lease_s=0.3)) == 1
    assert await b.claim_due("alive", 5, lease_s=30) == []
    await asyncio.sleep(0.4)
    (taken,) = await b.claim_due("alive", 5, lease_s=30)
    assert taken.id == d.id
    assert not await a.record(d.id, attempt(200), worker_id="dead", delivered=True, retry_at=None)


async def test_prune_deletes_only_finished_old_deliveries(make_outbox: OutboxFactory) -> None:
    box = await make_outbox()
    done, pending = delivery("job_a"), delivery("job_b")
    await box.add([done, pending])
    await box.claim_due("w", 5, lease_s=30)
    await box.record(done.id, attempt(200), worker_id="w", delivered=True, retry_at=None)
    assert await box.prune(datetime.now(UTC) - timedelta(hours=1)) == 0  # not old enough
    assert await box.prune(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await box.list_for_job("job_a") == [] and len(await box.list_for_job("job_b")) == 1


async def test_deliveries_survive_a_reopen(make_outbox: OutboxFactory) -> None:
    first = await make_outbox()
    d = delivery()
    await first.add([d])
    await first.close()
    again = await make_outbox()
    assert [x.id for x in await again.claim_due("w", 5, lease_s=30)] == [d.id]


# --- the service over each outbox ------------------------------------------------------------------------


class Receiver:
    """A WebhookSender standing in for the network: answers from a script, verifies every signature."""

    def __init__(self, answers: list[int | Exception] | None = None) -> None:
        self.answers = answers or []
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.lock = asyncio.Lock()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> int:
        assert verify(SECRET, headers["X-Agentd-Signature"], body, now=time.time())
        async with self.lock:
            self.got.append((headers["X-Agentd-Delivery"], json.loads(body)))
            answer = self.answers.pop(0) if self.answers else 200
        await asyncio.sleep(0.01)
        if isinstance(answer, Exception):
            raise answer
        return answer


def job(events: tuple[str, ...] = ("done",), job_id: str = "job_w") -> Job:
    spec = WebhookSpec.model_validate({"url": "http://127.0.0.1:9/hook", "events": events})
    return Job(
        id=job_id,
        project_id="p",
        provider="scripted",
        stream_id="stm_w",
        request=AgentRequest(project_id="p", prompt="x", webhook=spec),
        status=JobStatus.succeeded,
        created_at=datetime.now(UTC),
    )


async def test_service_retries_5xx_and_connection_errors_with_backoff_but_not_4xx(
    make_outbox: OutboxFactory,
) -> None:
    rx = Receiver([ConnectionError("refused"), 502, 200])
    svc = WebhookService(await make_outbox(), rx, fallback_secret=SECRET, retry_base_s=0.1)
    assert await svc.notify(job(), StatusEvent(status="running")) is None  # not asked for
    d = await svc.notify(job(), DoneEvent(status="succeeded", result="ok"))
    assert d is not None
    started = time.monotonic()
    while not (await svc.deliveries("job_w"))[0].status == "delivered":
        assert time.monotonic() - started < 10
        await svc.deliver_due("w")
        await asyncio.sleep(0.02)
    assert time.monotonic() - started >= 0.3  # 0.1 s, then 0.2 s of backoff
    (final,) = await svc.deliveries("job_w")
    assert [h.status_code for h in final.history] == [None, 502, 200] and final.attempts == 3
    assert final.history[0].error == "refused"
    assert [g[0] for g in rx.got] == [d.id] * 3  # one delivery id, sent three times
    body = rx.got[0][1]
    assert body["event"] == "done" and body["job_id"] == "job_w" and body["result"]["result"] == "ok"

    rx.answers = [410]
    await svc.notify(job(job_id="job_x"), DoneEvent(status="failed"))
    await svc.deliver_due("w")
    await asyncio.sleep(0.2)
    assert await svc.deliver_due("w") == 0  # no retry after a 4xx
    assert (await svc.deliveries("job_x"))[-1].status == "failed"


async def test_service_gives_up_after_the_retry_window(make_outbox: OutboxFactory) -> None:
    rx = Receiver([500] * 10)
    svc = WebhookService(await make_outbox(), rx, fallback_secret=SECRET, retry_base_s=0.05, retry_for_s=0.2)
    await svc.notify(job(), DoneEvent(status="succeeded"))
    deadline = time.monotonic() + 5
    while (await svc.deliveries("job_w"))[0].status == "pending":
        assert time.monotonic() < deadline
        await svc.deliver_due("w")
        await asyncio.sleep(0.03)
    (d,) = await svc.deliveries("job_w")
    assert d.status == "failed" and 2 <= d.attempts <= 4


async def test_in_a_fleet_each_delivery_is_sent_once(make_outbox: OutboxFactory) -> None:
    rx = Receiver()
    workers = [
        WebhookService(await make_outbox(), rx, fallback_secret=SECRET, poll_s=0.05, batch=3)
        for _ in range(3)
    ]
    for _ in range(30):
        await workers[0].notify(job(("done", "status")), StatusEvent(status="running"))
    stop = asyncio.Event()
    loops = [asyncio.create_task(w.run(f"w{i}", stop)) for i, w in enumerate(workers)]
    deadline = time.monotonic() + 20
    while len(rx.got) < 30:
        assert time.monotonic() < deadline, len(rx.got)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*loops)
    ids = [g[0] for g in rx.got]
    assert len(ids) == len(set(ids)) == 30


async def test_no_secret_no_send(make_outbox: OutboxFactory) -> None:
    rx = Receiver()
    svc = WebhookService(await make_outbox(), rx, retry_base_s=30)
    await svc.notify(job(), DoneEvent(status="succeeded"))
    await svc.deliver_due("w")
    (d,) = await svc.deliveries("job_w")
    assert rx.got == [] and d.status == "pending" and "WEBHOOK_SECRET" in (d.last_error or "")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def queue_and_outbox(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Any, WebhookOutbox]]:
    """A work queue and an outbox on one storage, as agentd wires them."""
    from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
    from agentd.adapters.postgres import PostgresWorkQueue

    if request.param == "sqlite":
        queue: Any = SqliteWorkQueue(tmp_path / "queue.sqlite3")
        outbox: WebhookOutbox = SqliteWebhookOutbox(queue.db)
    else:
        queue = PostgresWorkQueue(PgDatabase(request.getfixturevalue("pg_dsn"), pool_size=4))
        await queue.open()
        pg = PostgresWebhookOutbox(queue.db)
        await pg.open()
        outbox = pg
    yield queue, outbox
    await outbox.close()
    await queue.close()


async def test_reconcile_stores_the_done_delivery_a_crash_lost_once(
    queue_and_outbox: tuple[Any, WebhookOutbox],
) -> None:
    from agentd.domain.models import AgentResult
    from agentd.domain.webhooks import done_delivery_id

    queue, outbox = queue_and_outbox
    spec = WebhookSpec.model_validate({"url": "http://127.0.0.1:9/hook"})
    for i, hook in enumerate([spec, None]):
        await queue.enqueue(
            AgentRequest(project_id=f"p{i}", prompt="x", webhook=hook),
            provider="scripted",
            job_id=f"job_{i}",
            stream_id=f"stm_{i}",
        )
    claimed = await queue.claim_many("w", 5)
    assert len(claimed) == 2
    # The result is stored, then the process dies before the runner stores the delivery.
    await queue.finish_many(
        [(j.id, AgentResult(status="succeeded", result="ok")) for j in claimed], worker_id="w"
    )
    svc = WebhookService(outbox, Receiver(), fallback_secret=SECRET, jobs=queue)
    assert await svc.reconcile(page_size=1) == 1  # paging, and only the job that asked
    (stored,) = await outbox.list_for_job("job_0")
    assert stored.id == done_delivery_id("job_0") and json.loads(stored.body)["result"]["result"] == "ok"
    assert await outbox.list_for_job("job_1") == []
    # Again, or the runner's own notify: still one delivery.
    await svc.reconcile()
    await svc.notify(await queue.get("p0", "job_0"), DoneEvent(status="succeeded"))
    assert [d.id for d in await outbox.list_for_job("job_0")] == [stored.id]


async def test_reconcile_reads_finished_jobs_only(queue_and_outbox: tuple[Any, WebhookOutbox]) -> None:
    """A worker that starts on a long queue does not read (and parse) every queued job to reconcile."""
    from agentd.domain.models import AgentResult

    queue, outbox = queue_and_outbox
    spec = WebhookSpec.model_validate({"url": "http://127.0.0.1:9/hook"})
    for i in range(6):
        await queue.enqueue(
            AgentRequest(project_id=f"p{i}", prompt="x", webhook=spec),
            provider="scripted",
            job_id=f"job_{i}",
            stream_id=f"stm_{i}",
        )
    claimed = await queue.claim_many("w", 2)
    await queue.finish_many(
        [(claimed[0].id, AgentResult(status="succeeded")), (claimed[1].id, AgentResult(status="failed"))],
        worker_id="w",
    )
    read: list[str] = []
    list_jobs = queue.list_jobs

    async def counting(project_id: str | None, flt: Any = None) -> Any:
        jobs = await list_jobs(project_id, flt)
        read.extend(j.status.value for j in jobs)
        return jobs

    queue.list_jobs = counting
    svc = WebhookService(outbox, Receiver(), fallback_secret=SECRET, jobs=queue)
    assert await svc.reconcile(page_size=1) == 2
    assert sorted(read) == ["failed", "succeeded"]  # the 4 queued ones were never read
    assert {d.job_id for j in claimed for d in await outbox.list_for_job(j.id)} == {j.id for j in claimed}
