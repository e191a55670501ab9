"""In-memory API keys, for tests and single-process trials. Nothing survives a restart."""

from __future__ import annotations

import builtins
from datetime import datetime

from agentd.domain.keys import ApiKey
from agentd.ports.key_store import KeyStore


class MemoryKeyStore(KeyStore):
    def __init__(self) -> None:
        self._keys: dict[str, tuple[ApiKey, str]] = {}
        self._secrets: dict[str, bytes] = {}

    async def create(self, key: ApiKey, token_hash: str) -> None:
        self._keys[key.id] = (key, token_hash)

    async def find(self, token_hash: str) -> ApiKey | None:
        return next((k for k, h in self._keys.values() if h == token_hash), None)

    async def list(self) -> builtins.list[ApiKey]:
        return sorted((k for k, _ in self._keys.values()), key=lambda k: (k.created_at, k.id))

    async def revoke(self, key_id: str, at: datetime) -> ApiKey | None:
        found = self._keys.get(key_id)
        if found is None:
            return None
        key, digest = found
        if key.revoked_at is None:
            key = key.model_copy(update={"revoked_at": at})
            self._keys[key_id] = (key, digest)
        return key

    async def touch(self, key_id: str, at: datetime) -> None:
        found = self._keys.get(key_id)
        if found is not None:
            self._keys[key_id] = (found[0].model_copy(update={"last_used_at": at}), found[1])

    async def any_active(self) -> bool:
        return any(k.revoked_at is None for k, _ in self._keys.values())

    async def server_secret(self, name: str, new: bytes) -> bytes:
        return self._secrets.setdefault(name, new)

    async def close(self) -> None:
        return None
