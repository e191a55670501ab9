"""Webhooks: enqueue a delivery when a job's status changes or it ends; send due deliveries, signed.

At-least-once: a delivery is stored (the outbox, in the queue's database) before anything is sent, and
stays pending until a receiver answers 2xx; connection errors, timeouts and 5xx are retried with
exponential backoff for 24 h; any other answer (4xx, 3xx) ends it as failed. In a fleet every worker runs
`run()`; the outbox hands each due delivery to one of them.

The signing secret: the project's secret WEBHOOK_SECRET (agentd secrets set --project P WEBHOOK_SECRET, or
a global one), else AGENTD_WEBHOOK_SECRET. A run never gets WEBHOOK_SECRET in its environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import UTC, datetime, timedelta

import structlog

from agentd.domain.errors import AgentdError, SecretsUnavailable
from agentd.domain.models import MAX_TIMEOUT_S, DoneEvent, Job, JobStatus, StatusEvent
from agentd.domain.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    PROJECT_SECRET_NAME,
    RETRY_BASE_S,
    RETRY_FOR_S,
    RETRY_MAX_DELAY_S,
    SIGNATURE_HEADER,
    Delivery,
    DeliveryAttempt,
    done_delivery_id,
    new_delivery_id,
    retry_delay_s,
    should_retry,
    sign,
)
from agentd.ports.secret_store import SecretStore
from agentd.ports.webhook_outbox import WebhookOutbox, WebhookSender
from agentd.ports.work_queue import JobFilter, WorkQueue

log = structlog.get_logger(__name__)


class WebhookService:
    def __init__(
        self,
        outbox: WebhookOutbox,
        sender: WebhookSender,
        *,
        secrets: SecretStore | None = None,
        fallback_secret: str | None = None,
        retry_base_s: float = RETRY_BASE_S,
        retry_max_delay_s: float = RETRY_MAX_DELAY_S,
        retry_for_s: float = RETRY_FOR_S,
        lease_s: float = 60.0,
        timeout_s: float = 10.0,
        poll_s: float = 1.0,
        batch: int = 20,
        keep_s: float = 7 * 24 * 3600.0,
        prune_every_s: float = 3600.0,
        jobs: WorkQueue | None = None,
    ) -> None:
        self.outbox = outbox
        self.sender = sender
        self.secrets = secrets
        self.fallback_secret = fallback_secret
        self.retry_base_s = retry_base_s
        self.retry_max_delay_s = retry_max_delay_s
        self.retry_for_s = retry_for_s
        self.lease_s = max(lease_s, timeout_s * 3)
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.batch = batch
        self.keep_s = keep_s  # finished deliveries are kept this long (GET …/deliveries shows them)
        self.prune_every_s = prune_every_s
        self._last_prune: float | None = None
        self.jobs = jobs  # for the reconciler: finished jobs whose `done` delivery was never stored
        self._wake = asyncio.Event()

    # --- enqueueing -----------------------------------------------------------------------------------

    async def notify(self, job: Job, event: StatusEvent | DoneEvent) -> Delivery | None:
        """Store a delivery when the job asked for this kind of event (else nothing)."""
        delivery = self._delivery(job, event)
        if delivery is None:
            return None
        await self.outbox.add([delivery])
        self._wake.set()
        log.info("webhook.enqueued", delivery_id=delivery.id, job_id=job.id, webhook_event=delivery.event)
        return delivery

    def _delivery(self, job: Job, event: StatusEvent | DoneEvent) -> Delivery | None:
        spec = job.request.webhook
        kind = "done" if isinstance(event, DoneEvent) else "status"
        if spec is None or kind not in spec.events:
            return None
        now = datetime.now(UTC)
        done = isinstance(event, DoneEvent)
        delivery_id = done_delivery_id(job.id) if done else new_delivery_id()
        occurred = job.finished_at if done and job.finished_at else now
        payload = {
            "event": kind,
            "delivery_id": delivery_id,
            "job_id": job.id,
            "project_id": job.project_id,
            "provider": job.provider,
            "status": event.status,
            "occurred_at": occurred.isoformat(),
            **({"result": event.data()} if isinstance(event, DoneEvent) else {"detail": event.detail}),
        }
        return Delivery(
            id=delivery_id,
            project_id=job.project_id,
            job_id=job.id,
            event=kind,
            url=spec.url,
            body=json.dumps(payload, separators=(",", ":")),
            created_at=now,
        )

    async def deliveries(self, job_id: str) -> list[Delivery]:
        return await self.outbox.list_for_job(job_id)

    # --- sending --------------------------------------------------------------------------------------

    async def run(self, worker_id: str, stopping: asyncio.Event) -> None:
        """Send due deliveries until `stopping` is set (each worker process runs one of these)."""
        while not stopping.is_set():
            self._wake.clear()
            sent = 0
            try:
                sent = await self.deliver_due(worker_id)
                await self._prune_now_and_then()
            except AgentdError as e:
                log.warning("webhook.claim_failed", error=str(e))
            except Exception:
                log.exception("webhook.crashed")
            if sent:
                continue
            waits = [asyncio.create_task(stopping.wait()), asyncio.create_task(self._wake.wait())]
            await asyncio.wait(waits, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
            for t in waits:
                t.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _prune_now_and_then(self) -> None:
        """At start, then hourly: store `done` deliveries a crash lost, drop old finished ones."""
        if self._last_prune is not None and time.monotonic() - self._last_prune < self.prune_every_s:
            return
        self._last_prune = time.monotonic()
        await self.reconcile()
        n = await self.outbox.prune(datetime.now(UTC) - timedelta(seconds=self.keep_s))
        if n:
            log.info("webhook.pruned", count=n)

    async def reconcile(self, page_size: int = 500) -> int:
        """Store the `done` delivery of every recently finished job that asked for one (a process that
        died between storing a result and its delivery left it out; stored ones stay as they are: same
        id). Returns how many finished jobs with a `done` webhook it looked at. Reads final jobs only (one
        walk per final status): a worker starting on a long queue does not read every queued job."""
        if self.jobs is None:
            return 0
        since = datetime.now(UTC) - timedelta(seconds=self.retry_for_s + MAX_TIMEOUT_S)
        seen = 0
        for status in JobStatus:
            if status.is_final:
                seen += await self._reconcile(since, status, page_size)
        return seen

    async def _reconcile(self, since: datetime, status: JobStatus, page_size: int) -> int:
        assert self.jobs is not None
        seen, before = 0, None
        while True:
            page = await self.jobs.list_jobs(
                None, JobFilter(status=status, created_after=since, limit=page_size, before=before)
            )
            found = [
                d
                for job in page
                if job.status.is_final and job.result is not None
                for d in [self._delivery(job, DoneEvent.from_result(job.result))]
                if d is not None
            ]
            if found:
                await self.outbox.add(found)  # the ones already stored stay as they are
                self._wake.set()
                seen += len(found)
            if len(page) < page_size:
                return seen
            before = page[-1].id

    async def deliver_due(self, worker_id: str) -> int:
        """One round: claim what is due and send it (concurrently). Returns how many were attempted."""
        due = await self.outbox.claim_due(worker_id, self.batch, lease_s=self.lease_s)
        if due:
            await asyncio.gather(*(self._attempt(d, worker_id) for d in due))
        return len(due)

    async def _secret(self, project_id: str) -> str | None:
        if self.secrets is not None:
            with contextlib.suppress(SecretsUnavailable):
                value = (await self.secrets.resolve(project_id)).get(PROJECT_SECRET_NAME)
                if value:
                    return value
        return self.fallback_secret

    async def _attempt(self, d: Delivery, worker_id: str) -> None:
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        secret = await self._secret(d.project_id)
        if secret is None:
            error = (
                f"no signing secret: set the project secret {PROJECT_SECRET_NAME} (agentd secrets set "
                f"--project {d.project_id} {PROJECT_SECRET_NAME}) or AGENTD_WEBHOOK_SECRET"
            )
        else:
            body = d.body.encode()
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "agentd-webhooks",
                SIGNATURE_HEADER: sign(secret, int(time.time()), body),
                DELIVERY_HEADER: d.id,
                EVENT_HEADER: d.event,
            }
            try:
                status_code = await self.sender.post(d.url, body, headers, timeout_s=self.timeout_s)
            except (ConnectionError, TimeoutError, OSError) as e:
                error = str(e) or type(e).__name__
        now = datetime.now(UTC)
        delivered = status_code is not None and 200 <= status_code < 300
        retry_at = None
        if not delivered and (secret is None or should_retry(status_code)):
            delay = retry_delay_s(d.attempts + 1, self.retry_base_s, self.retry_max_delay_s)
            if now + timedelta(seconds=delay) <= d.created_at + timedelta(seconds=self.retry_for_s):
                retry_at = now + timedelta(seconds=delay)
        if status_code is not None and not delivered:
            error = f"HTTP {status_code}"
        attempt = DeliveryAttempt(
            at=now, status_code=status_code, error=error, duration_ms=int((time.monotonic() - started) * 1000)
        )
        await self.outbox.record(d.id, attempt, worker_id=worker_id, delivered=delivered, retry_at=retry_at)
        log.info(
            "webhook.attempt",
            delivery_id=d.id,
            job_id=d.job_id,
            status_code=status_code,
            error=error,
            outcome="delivered" if delivered else ("retry" if retry_at else "failed"),
        )
