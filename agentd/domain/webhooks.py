"""Webhooks: where a job's outcome is POSTed, and how the body is signed.

A job may carry `"webhook": {"url": "...", "events": ["done"]}`. When one of the events happens, agentd
POSTs a JSON body with `X-Agentd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` and an
`X-Agentd-Delivery` id. Pure functions and models only; delivery lives in services/webhooks.py.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentd.domain import errors

WebhookEvent = Literal["done", "status"]
MAX_URL = 2000
# What WebhookSpec._url accepts, as a JSON-schema pattern (for the OpenAPI document).
URL_PATTERN = r"^https?://([A-Za-z0-9._~%!$&'()*+,;=-]+)(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?([/?#][\x21-\x7e]*)?$"
URL_RE = re.compile(URL_PATTERN)
SIGNATURE_HEADER = "X-Agentd-Signature"
DELIVERY_HEADER = "X-Agentd-Delivery"
EVENT_HEADER = "X-Agentd-Event"
# The project secret (agentd secrets set --project P WEBHOOK_SECRET) that keys a project's signatures.
PROJECT_SECRET_NAME = "WEBHOOK_SECRET"
# Backoff: 10 s, 20 s, 40 s … capped at 1 h, for 24 h after the delivery was created.
RETRY_BASE_S = 10.0
RETRY_MAX_DELAY_S = 3600.0
RETRY_FOR_S = 24 * 3600.0


class WebhookSpec(BaseModel):
    """Where to POST, and on which events: `done` (the job ended) and/or `status` (each status change)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(
        description="http(s) URL that receives the POSTs",
        json_schema_extra={"pattern": URL_PATTERN, "maxLength": MAX_URL},
    )
    events: tuple[WebhookEvent, ...] = Field(
        ("done",), description='"done" and/or "status"', json_schema_extra={"minItems": 1}
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        # The OpenAPI document shows URL_PATTERN: one rule, checked here and described there.
        if len(v) > MAX_URL or not URL_RE.fullmatch(v):
            raise errors.InvalidRequest(
                f"webhook.url must be an http(s) URL with a host name or IPv4 address (at most {MAX_URL} "
                f"characters of printable ASCII, no spaces, no user:password@), got {v[:200]!r}"
            )
        return v

    @field_validator("events")
    @classmethod
    def _events(cls, v: tuple[WebhookEvent, ...]) -> tuple[WebhookEvent, ...]:
        if not v:
            raise errors.InvalidRequest('webhook.events must name at least one of "done", "status"')
        return tuple(dict.fromkeys(v))


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Agentd-Signature header value for `body` sent at `timestamp` (unix seconds)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance_s: float = 300.0) -> bool:
    """What a receiver does: the signature matches and is recent (replays of old bodies fail)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        t = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, t, body), f"t={t},v1={fields.get('v1', '')}")


def retry_delay_s(attempts: int, base_s: float = RETRY_BASE_S, max_s: float = RETRY_MAX_DELAY_S) -> float:
    """Seconds to wait after the `attempts`-th failed attempt: base, 2 x base, 4 x base … capped."""
    return min(base_s * 2.0 ** max(attempts - 1, 0), max_s)


def should_retry(status_code: int | None) -> bool:
    """Connection errors (None) and 5xx are retried; 4xx and other answers are final."""
    return status_code is None or status_code >= 500


DeliveryStatus = Literal["pending", "delivered", "failed"]


class DeliveryAttempt(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    status_code: int | None = None  # None: no answer (connection error, timeout)
    error: str | None = None
    duration_ms: int = 0


class Delivery(BaseModel):
    """One POST to make, durable in the queue's database: the body is fixed when it is created, so every
    retry sends the same bytes (signed anew, with a fresh timestamp)."""

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    job_id: str
    event: WebhookEvent
    url: str
    body: str
    status: DeliveryStatus = "pending"
    attempts: int = 0
    created_at: datetime
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    history: tuple[DeliveryAttempt, ...] = ()

    def public(self) -> dict[str, Any]:
        """What GET /projects/{project_id}/jobs/{job_id}/deliveries shows (agentd.wire.Delivery)."""
        return {
            "delivery_id": self.id,
            "job_id": self.job_id,
            "event": self.event,
            "url": self.url,
            "status": self.status,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "next_attempt_at": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "history": [a.model_dump(mode="json") for a in self.history],
        }


def new_delivery_id() -> str:
    return "dlv_" + secrets.token_hex(12)


def done_delivery_id(job_id: str) -> str:
    """A job's `done` delivery has one id, whoever stores it (the runner, a cancel, the reconciler): it is
    stored once, and sent at least once."""
    return f"dlv_{job_id.removeprefix('job_')}_done"
