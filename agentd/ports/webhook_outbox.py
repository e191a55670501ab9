"""The WebhookOutbox port (durable webhook deliveries) and the WebhookSender port (one HTTP POST)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Protocol

from agentd.domain.webhooks import Delivery, DeliveryAttempt


class WebhookOutbox(Protocol):
    """Deliveries in the queue's database. Every adapter passes tests/contract/test_webhook_outbox.py.

    Rules: a delivery is handed to one sender at a time (`claim_due`, under a lease; a fleet's workers
    never send one twice at once, and a lease that expires — its worker died — makes it due again);
    `record` ends the lease with the attempt's outcome; nothing is lost when a process restarts.
    """

    async def add(self, deliveries: Sequence[Delivery]) -> None:
        """Store new pending deliveries (due at once)."""
        ...

    async def claim_due(self, worker_id: str, n: int, *, lease_s: float) -> list[Delivery]:
        """Up to `n` pending deliveries whose time has come and that no live lease holds, oldest first,
        leased to `worker_id` for `lease_s` seconds."""
        ...

    async def record(
        self,
        delivery_id: str,
        attempt: DeliveryAttempt,
        *,
        worker_id: str,
        delivered: bool,
        retry_at: datetime | None,
    ) -> bool:
        """Record one attempt and release the lease: delivered, or pending again from `retry_at`, or failed
        for good (not delivered and no `retry_at`). False when the lease was no longer `worker_id`'s."""
        ...

    async def list_for_job(self, job_id: str) -> list[Delivery]:
        """A job's deliveries, oldest first."""
        ...

    async def prune(self, created_before: datetime) -> int:
        """Delete finished (delivered or failed) deliveries created before that time; how many."""
        ...

    async def close(self) -> None: ...


class WebhookSender(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float) -> int:
        """POST and return the answer's status code; raise ConnectionError or TimeoutError when there is
        no answer."""
        ...
