"""The KeyStore port: API keys (hashed, never in clear) and the server's own signing secret."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from agentd.domain.keys import ApiKey


class KeyStore(Protocol):
    """Every adapter passes tests/contract/test_key_store.py. Keys live in the queue's database."""

    async def create(self, key: ApiKey, token_hash: str) -> None:
        """Store a new key under the SHA-256 of its token."""
        ...

    async def find(self, token_hash: str) -> ApiKey | None:
        """The key whose token has this hash (revoked ones too: the caller refuses them), or None."""
        ...

    async def list(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    async def revoke(self, key_id: str, at: datetime) -> ApiKey | None:
        """Revoke a key (again: no change); None when there is no such key."""
        ...

    async def touch(self, key_id: str, at: datetime) -> None:
        """Record a use of the key (last_used_at)."""
        ...

    async def any_active(self) -> bool:
        """Whether any key that is not revoked exists."""
        ...

    async def server_secret(self, name: str, new: bytes) -> bytes:
        """The server secret `name`, shared by every process on this database; `new` is stored and
        returned when there is none yet (the first process wins a race)."""
        ...
