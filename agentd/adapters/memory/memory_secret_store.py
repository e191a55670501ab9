"""In-memory secrets: a dict, for tests and single-process trials. Nothing survives a restart.

It keeps the port's rules like the real stores (and takes the same key form, 32 bytes): without a master
key every call raises SecretsUnavailable,
values are only ever handed out by `resolve`, and `rotate` replaces the key. It does not encrypt: it never
writes anything down.
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime

from agentd.domain.errors import SecretsUnavailable
from agentd.domain.secrets import SecretInfo, check_master_key_bytes
from agentd.ports.secret_store import SecretStore


class MemorySecretStore(SecretStore):
    def __init__(self, master_key: bytes | None) -> None:
        """`master_key`: the 32 bytes `agentd.domain.secrets.parse_master_key` gives, like the real stores."""
        self._key = check_master_key_bytes(master_key) if master_key is not None else None
        self._values: dict[tuple[str | None, str], tuple[str, datetime]] = {}

    def _ready(self) -> None:
        if self._key is None:
            raise SecretsUnavailable()

    async def put(self, project_id: str | None, name: str, value: str) -> None:
        self._ready()
        self._values[(project_id, name)] = (value, datetime.now(UTC))

    async def list(self, project_id: str | None) -> builtins.list[SecretInfo]:
        self._ready()
        return [
            SecretInfo(name=name, project_id=scope, updated_at=at)
            for (scope, name), (_, at) in sorted(self._values.items(), key=lambda kv: kv[0][1])
            if scope == project_id
        ]

    async def delete(self, project_id: str | None, name: str) -> bool:
        self._ready()
        return self._values.pop((project_id, name), None) is not None

    async def resolve(self, project_id: str) -> dict[str, str]:
        self._ready()
        out = {name: value for (scope, name), (value, _) in self._values.items() if scope is None}
        out.update({name: value for (scope, name), (value, _) in self._values.items() if scope == project_id})
        return out

    async def rotate(self, new_master_key: bytes) -> int:
        self._ready()
        self._key = check_master_key_bytes(new_master_key)
        return len(self._values)
