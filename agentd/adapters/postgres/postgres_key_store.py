"""API keys in PostgreSQL (the queue's database, table agentd_api_keys): token hashes, never tokens.

Shares the process's `PgDatabase` with the queue (`PostgresKeyStore(queue.db)`, then `open()`).
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from agentd.adapters.postgres.database import PgDatabase
from agentd.adapters.postgres.queries import SQL_DIR
from agentd.adapters.sql_files import load_queries
from agentd.domain.keys import ApiKey, KeyAccess
from agentd.ports.key_store import KeyStore

Q = load_queries(SQL_DIR / "keys.sql")


def _key(row: dict[str, Any]) -> ApiKey:
    def utc(t: datetime | None) -> datetime | None:
        return t.astimezone(UTC) if t is not None else None

    return ApiKey(
        id=row["id"],
        name=row["name"],
        admin=row["admin"],
        projects=tuple(row["projects"]),
        access=KeyAccess(row["access"]),
        created_at=row["created_at"].astimezone(UTC),
        last_used_at=utc(row["last_used_at"]),
        revoked_at=utc(row["revoked_at"]),
    )


class PostgresKeyStore(KeyStore):
    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def _one(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        async with self.db.connection() as conn:
            return await (await conn.execute(Q[name], params)).fetchone()

    async def create(self, key: ApiKey, token_hash: str) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                Q["create"],
                {
                    "id": key.id,
                    "token_hash": token_hash,
                    "name": key.name,
                    "admin": key.admin,
                    "projects": list(key.projects),
                    "access": key.access.value,
                    "created_at": key.created_at,
                },
            )

    async def find(self, token_hash: str) -> ApiKey | None:
        row = await self._one("find", {"token_hash": token_hash})
        return _key(row) if row is not None else None

    async def list(self) -> builtins.list[ApiKey]:
        async with self.db.connection() as conn:
            rows = await (await conn.execute(Q["list"])).fetchall()
        return [_key(r) for r in rows]

    async def revoke(self, key_id: str, at: datetime) -> ApiKey | None:
        row = await self._one("revoke", {"id": key_id, "at": at})
        return _key(row) if row is not None else None

    async def touch(self, key_id: str, at: datetime) -> None:
        async with self.db.connection() as conn:
            await conn.execute(Q["touch"], {"id": key_id, "at": at})

    async def any_active(self) -> bool:
        row = await self._one("any_active", {})
        return bool(row and row["found"])

    async def server_secret(self, name: str, new: bytes) -> bytes:
        for _ in range(3):  # none seen: another process's insert committed after this statement began
            row = await self._one("server_secret", {"name": name, "value": new})
            if row is not None:
                return bytes(row["value"])
        raise RuntimeError(f"server secret {name!r}: neither inserted nor found")
