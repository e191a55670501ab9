"""Who may do what: API keys (create, list, revoke, authenticate), stream tokens, per-key rate limits.

`AGENTD_API_KEY` is the bootstrap admin key (compared in constant time, never stored). Keys made with
`agentd keys create` or `POST /keys` live hashed in the queue's database. With neither, agentd is in
loopback development mode: every caller is an anonymous admin (`agentd serve` binds to loopback only).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from agentd.domain import errors
from agentd.domain.keys import (
    ANONYMOUS_KEY_ID,
    BOOTSTRAP_KEY_ID,
    ApiKey,
    KeyAccess,
    Principal,
    claimed_key_id,
    new_token,
    token_hash,
    validate_key_id,
    validate_key_name,
    validate_scope,
)
from agentd.ports.key_store import KeyStore

log = structlog.get_logger(__name__)

TOUCH_EVERY_S = 60.0  # last_used_at is recorded at most this often per key (not one write per request)
STREAM_TOKEN_SECRET = "stream_token"
ANONYMOUS = Principal(ANONYMOUS_KEY_ID, admin=True)
BOOTSTRAP = Principal(BOOTSTRAP_KEY_ID, admin=True)


class KeyService:
    def __init__(
        self,
        store: KeyStore,
        *,
        bootstrap_key: str | None = None,
        stream_token_ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._bootstrap = bootstrap_key.encode() if bootstrap_key else None
        self._ttl = stream_token_ttl_s
        self._clock = clock
        self._signing_key: bytes | None = None
        # No key at all: callers are an anonymous admin, but only on loopback (Container.app sets this). A
        # server on any other address answers 401 to everyone until a key exists, even after the last
        # key is revoked.
        self.allow_anonymous = True

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    # --- administration --------------------------------------------------------------------------------

    async def create(
        self, *, name: str | None, admin: bool, projects: Sequence[str], read_only: bool
    ) -> tuple[ApiKey, str]:
        """A new key and its token (shown once; only its hash is kept)."""
        if not isinstance(admin, bool) or not isinstance(read_only, bool):
            raise errors.InvalidRequest("admin and read_only are true or false")
        scope = validate_scope(admin, list(projects) if isinstance(projects, list | tuple) else projects)
        key_id, token = new_token()
        key = ApiKey(
            id=key_id,
            name=validate_key_name(name) if name is not None else key_id,
            admin=admin,
            projects=scope,
            access=KeyAccess.read if read_only else KeyAccess.write,
            created_at=self._now(),
        )
        await self.store.create(key, token_hash(token))
        log.info("key.created", key_id=key.id, admin=admin, projects=list(scope), access=key.access.value)
        return key, token

    async def list(self) -> list[ApiKey]:
        return await self.store.list()

    async def revoke(self, key_id: str) -> ApiKey:
        key = await self.store.revoke(validate_key_id(key_id), self._now())
        if key is None:
            raise errors.KeyNotFound(f"no key {key_id!r}")
        log.info("key.revoked", key_id=key.id)
        return key

    # --- authentication --------------------------------------------------------------------------------

    async def auth_required(self) -> bool:
        return self._bootstrap is not None or await self.store.any_active()

    async def authenticate(self, given: str | None) -> Principal:
        """The principal of an X-API-Key value (None: the header is absent); Unauthorized otherwise."""
        if not given:
            if not self.allow_anonymous or await self.auth_required():
                log.info("auth.refused", reason="no key")
                raise errors.Unauthorized("this server needs an X-API-Key header")
            return ANONYMOUS
        raw = given.encode("utf-8", "surrogateescape")
        if self._bootstrap is not None and hmac.compare_digest(raw, self._bootstrap):
            return BOOTSTRAP
        key = await self.store.find(token_hash(given)) if claimed_key_id(given) else None
        if key is None or key.revoked_at is not None:
            log.info(
                "auth.refused",
                key_id=key.id if key else claimed_key_id(given),
                reason="revoked key" if key else "unknown key",
            )
            raise errors.Unauthorized("missing or wrong X-API-Key header")
        now = self._now()
        if key.last_used_at is None or (now - key.last_used_at).total_seconds() >= TOUCH_EVERY_S:
            await self.store.touch(key.id, now)
        return Principal.of(key)

    # --- stream tokens: EventSource cannot send headers ------------------------------------------------

    async def _key(self) -> bytes:
        if self._signing_key is None:
            self._signing_key = await self.store.server_secret(STREAM_TOKEN_SECRET, os.urandom(32))
        return self._signing_key

    async def stream_token(self, project_id: str, stream_id: str) -> str:
        """A token for one stream, valid `stream_token_ttl_s` seconds: `<expiry>.<signature>`."""
        expires = int(self._clock() + self._ttl)
        return f"{expires}.{await self._sign(project_id, stream_id, expires)}"

    async def _sign(self, project_id: str, stream_id: str, expires: int) -> str:
        msg = f"agentd-stream\0{project_id}\0{stream_id}\0{expires}".encode()
        digest = hmac.new(await self._key(), msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    async def check_stream_token(self, token: str, project_id: str, stream_id: str) -> Principal:
        expires_text, _, signature = token.partition(".")
        ok = expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12
        if ok and hmac.compare_digest(
            signature.encode("utf-8", "surrogateescape"),
            (await self._sign(project_id, stream_id, int(expires_text))).encode(),
        ):
            if int(expires_text) < self._clock():
                log.info("auth.refused", key_id=None, reason="stream token expired", stream_id=stream_id)
                raise errors.Unauthorized(
                    "the stream token has expired: get a fresh stream_url from the job, or send X-API-Key"
                )
            return Principal(
                f"stream:{stream_id}",
                admin=False,
                projects=frozenset({project_id}),
                write=False,
                stream_id=stream_id,
            )
        log.info("auth.refused", key_id=None, reason="bad stream token", stream_id=stream_id)
        raise errors.Unauthorized("the stream token is not valid for this stream")


@dataclass
class RateLimit:
    """`count` events per `per_s` seconds (AGENTD_RATE_LIMIT, e.g. 60/min), a token bucket per key."""

    count: int
    per_s: float
    text: str
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, key_id: str) -> None:
        """One submission by `key_id`, or RateLimited saying when to retry."""
        now = self.clock()
        rate = self.count / self.per_s
        tokens, at = self._buckets.get(key_id, (float(self.count), now))
        tokens = min(float(self.count), tokens + (now - at) * rate)
        if tokens < 1:
            retry = math.ceil((1 - tokens) / rate)
            self._buckets[key_id] = (tokens, now)
            log.info("limit.rate", key_id=key_id, limit=self.text)
            raise errors.RateLimited(
                f"key {key_id} submitted more than AGENTD_RATE_LIMIT={self.text}; retry in {retry} s",
                limit="AGENTD_RATE_LIMIT",
                retry_after_s=retry,
            )
        self._buckets[key_id] = (tokens - 1, now)
        if len(self._buckets) > 10_000:  # forget full buckets of idle keys
            full = [k for k, (t, a) in self._buckets.items() if t + (now - a) * rate >= self.count]
            for k in full:
                del self._buckets[k]
