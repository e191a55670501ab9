"""Webhook deliveries in the embedded database (the SQLite file of the queue)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from agentd.adapters.embedded.database import SqliteDatabase, queries
from agentd.domain.webhooks import Delivery, DeliveryAttempt
from agentd.ports.webhook_outbox import WebhookOutbox

Q = queries("webhooks")


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat(timespec="microseconds") if dt else None


def _row(r: sqlite3.Row) -> Delivery:
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
        created_at=datetime.fromisoformat(r["created_at"]),
        next_attempt_at=datetime.fromtimestamp(r["next_attempt_at"], UTC) if pending else None,
        delivered_at=datetime.fromisoformat(r["delivered_at"]) if r["delivered_at"] else None,
        last_status_code=r["last_status_code"],
        last_error=r["last_error"],
        history=tuple(DeliveryAttempt.model_validate(a) for a in json.loads(r["history"])),
    )


class SqliteWebhookOutbox(WebhookOutbox):
    def __init__(self, db: SqliteDatabase | Path) -> None:
        """`db`: the queue's database (`SqliteWorkQueue(...).db`) or a file path."""
        self.db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)
        self.db.acquire()

    async def add(self, deliveries: Sequence[Delivery]) -> None:
        now = time.time()

        def op(db: sqlite3.Connection) -> None:
            for d in deliveries:
                db.execute(
                    Q["add"],
                    {
                        "id": d.id,
                        "project_id": d.project_id,
                        "job_id": d.job_id,
                        "event": d.event,
                        "url": d.url,
                        "body": d.body,
                        "created_at": _iso(d.created_at),
                        "now": now,
                    },
                )

        await self.db.run(op)

    async def claim_due(self, worker_id: str, n: int, *, lease_s: float) -> list[Delivery]:
        now = time.time()

        def op(db: sqlite3.Connection) -> list[Delivery]:
            ids = [r["id"] for r in db.execute(Q["due"], {"now": now, "n": n}).fetchall()]
            out = []
            for id_ in ids:
                db.execute(Q["lease"], {"id": id_, "worker_id": worker_id, "until": now + lease_s})
                out.append(_row(db.execute(Q["get"], {"id": id_}).fetchone()))
            return out

        return await self.db.run(op)

    async def record(
        self,
        delivery_id: str,
        attempt: DeliveryAttempt,
        *,
        worker_id: str,
        delivered: bool,
        retry_at: datetime | None,
    ) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            row = db.execute(Q["get"], {"id": delivery_id}).fetchone()
            if row is None:
                return False
            history = [*json.loads(row["history"]), attempt.model_dump(mode="json")]
            status = "delivered" if delivered else ("pending" if retry_at is not None else "failed")
            cur = db.execute(
                Q["record"],
                {
                    "id": delivery_id,
                    "worker_id": worker_id,
                    "status": status,
                    "next_attempt_at": retry_at.timestamp() if retry_at else row["next_attempt_at"],
                    "delivered_at": _iso(attempt.at) if delivered else None,
                    "status_code": attempt.status_code,
                    "error": attempt.error,
                    "history": json.dumps(history),
                },
            )
            return cur.rowcount == 1

        return await self.db.run(op)

    async def list_for_job(self, job_id: str) -> list[Delivery]:
        rows = await self.db.run(lambda db: db.execute(Q["for_job"], {"job_id": job_id}).fetchall())
        return [_row(r) for r in rows]

    async def prune(self, created_before: datetime) -> int:
        before = _iso(created_before)
        return await self.db.run(lambda db: db.execute(Q["prune"], {"before": before}).rowcount)

    async def close(self) -> None:
        await self.db.close()
