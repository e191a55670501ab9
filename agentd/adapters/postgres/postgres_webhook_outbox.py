"""Webhook deliveries in PostgreSQL (table agentd_webhook_deliveries), claimed with SKIP LOCKED.

Shares the process's `PgDatabase` with the queue (`PostgresWebhookOutbox(queue.db)`, then `open()`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agentd.adapters.postgres.database import PgDatabase
from agentd.adapters.postgres.queries import SQL_DIR
from agentd.adapters.sql_files import load_queries
from agentd.domain.webhooks import Delivery, DeliveryAttempt
from agentd.ports.webhook_outbox import WebhookOutbox

Q = load_queries(SQL_DIR / "webhooks.sql")


def _row(r: dict[str, Any]) -> Delivery:
    pending = r["status"] == "pending"
    return Delivery(
        id=r["id"],
        project_id=r["project_id"],
        job_id=r["job_id"],
        event=r["event"],
        url=r["url"],
        body=r["body"],
        status=r["status"],
        attempts=r["attempts"],
        created_at=r["created_at"].astimezone(UTC),
        next_attempt_at=r["next_attempt_at"].astimezone(UTC) if pending else None,
        delivered_at=r["delivered_at"].astimezone(UTC) if r["delivered_at"] else None,
        last_status_code=r["last_status_code"],
        last_error=r["last_error"],
        history=tuple(DeliveryAttempt.model_validate(a) for a in r["history"]),
    )


class PostgresWebhookOutbox(WebhookOutbox):
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def add(self, deliveries: Sequence[Delivery]) -> None:
        async with self.db.connection() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                Q["add"],
                [
                    {
                        "id": d.id,
                        "project_id": d.project_id,
                        "job_id": d.job_id,
                        "event": d.event,
                        "url": d.url,
                        "body": d.body,
                        "created_at": d.created_at,
                    }
                    for d in deliveries
                ],
            )

    async def claim_due(self, worker_id: str, n: int, *, lease_s: float) -> list[Delivery]:
        async with self.db.connection() as conn:
            cur = await conn.execute(Q["claim_due"], {"worker_id": worker_id, "lease_s": lease_s, "n": n})
            rows = await cur.fetchall()
        return sorted((_row(r) for r in rows), key=lambda d: d.created_at)

    async def record(
        self,
        delivery_id: str,
        attempt: DeliveryAttempt,
        *,
        worker_id: str,
        delivered: bool,
        retry_at: datetime | None,
    ) -> bool:
        status = "delivered" if delivered else ("pending" if retry_at is not None else "failed")
        async with self.db.connection() as conn:
            cur = await conn.execute(
                Q["record"],
                {
                    "id": delivery_id,
                    "worker_id": worker_id,
                    "status": status,
                    "retry_at": retry_at,
                    "delivered_at": attempt.at if delivered else None,
                    "status_code": attempt.status_code,
                    "error": attempt.error,
                    "attempt": json.dumps(attempt.model_dump(mode="json")),
                },
            )
            return cur.rowcount == 1

    async def prune(self, created_before: datetime) -> int:
        async with self.db.connection() as conn:
            cur = await conn.execute(Q["prune"], {"before": created_before})
            return cur.rowcount

    async def list_for_job(self, job_id: str) -> list[Delivery]:
        async with self.db.connection() as conn:
            cur = await conn.execute(Q["for_job"], {"job_id": job_id})
            rows = await cur.fetchall()
        return [_row(r) for r in rows]
