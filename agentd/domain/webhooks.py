"""Webhooks: where a job's outcome is POSTed, and how the body is signed.

A job may carry `"webhook": {"url": "...", "events": ["done"]}`. When one of the events happens, agentd
POSTs a JSON body with `X-Agentd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` and an
`X-Agentd-Delivery` id. Pure functions and models only; delivery lives in services/webhooks.py.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentd.domain import errors

WebhookEvent = Literal["done", "status"]
MAX_URL = 2000
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

    url: str = Field(description="http(s) URL that receives the POSTs")
    events: tuple[WebhookEvent, ...] = Field(("done",), description='"done" and/or "status"')

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if len(v) > MAX_URL or parts.scheme not in ("http", "https") or not parts.hostname:
            raise errors.InvalidRequest(
                f"webhook.url must be an http(s) URL with a host (at most {MAX_URL} characters), got {v!r}"
            )
        if parts.username or parts.password:
            raise errors.InvalidRequest("webhook.url must not carry credentials; agentd signs each body")
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


def retry_delay_s(attempts: int) -> float:
    """Seconds to wait after the `attempts`-th failed attempt."""
    return min(RETRY_BASE_S * 2.0 ** max(attempts - 1, 0), RETRY_MAX_DELAY_S)


def should_retry(status_code: int | None) -> bool:
    """Connection errors (None) and 5xx are retried; 4xx and other answers are final."""
    return status_code is None or status_code >= 500
