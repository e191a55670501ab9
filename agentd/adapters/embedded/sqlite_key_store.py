"""API keys in the embedded database (the SQLite file of the queue): token hashes, never tokens."""

from __future__ import annotations

import builtins
import json
import sqlite3
from datetime import datetime
from pathlib import Path

from agentd.adapters.embedded.database import SqliteDatabase, queries
from agentd.domain.keys import ApiKey, KeyAccess
from agentd.ports.key_store import KeyStore

Q = queries("keys")


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _key(row: sqlite3.Row) -> ApiKey:
    return ApiKey(
        id=row["id"],
        name=row["name"],
        admin=bool(row["admin"]),
        projects=tuple(json.loads(row["projects"])),
        access=KeyAccess(row["access"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        last_used_at=_time(row["last_used_at"]),
        revoked_at=_time(row["revoked_at"]),
    )


class SqliteKeyStore(KeyStore):
    def __init__(self, db: SqliteDatabase | Path) -> None:
        """`db`: the queue's database (`SqliteWorkQueue(...).db`) or a file path."""
        self.db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)
        self.db.acquire()

    async def create(self, key: ApiKey, token_hash: str) -> None:
        params = {
            "id": key.id,
            "token_hash": token_hash,
            "name": key.name,
            "admin": int(key.admin),
            "projects": json.dumps(list(key.projects)),
            "access": key.access.value,
            "created_at": key.created_at.isoformat(),
        }
        await self.db.run(lambda db: db.execute(Q["create"], params))

    async def find(self, token_hash: str) -> ApiKey | None:
        row = await self.db.run(lambda db: db.execute(Q["find"], {"token_hash": token_hash}).fetchone())
        return _key(row) if row is not None else None

    async def list(self) -> builtins.list[ApiKey]:
        rows = await self.db.run(lambda db: db.execute(Q["list"]).fetchall())
        return [_key(r) for r in rows]

    async def revoke(self, key_id: str, at: datetime) -> ApiKey | None:
        def op(db: sqlite3.Connection) -> sqlite3.Row | None:
            db.execute(Q["revoke"], {"id": key_id, "at": at.isoformat()})
            row: sqlite3.Row | None = db.execute(Q["get"], {"id": key_id}).fetchone()
            return row

        row = await self.db.run(op)
        return _key(row) if row is not None else None

    async def touch(self, key_id: str, at: datetime) -> None:
        await self.db.run(lambda db: db.execute(Q["touch"], {"id": key_id, "at": at.isoformat()}))

    async def any_active(self) -> bool:
        row = await self.db.run(lambda db: db.execute(Q["any_active"]).fetchone())
        return bool(row["found"])

    async def server_secret(self, name: str, new: bytes) -> bytes:
        def op(db: sqlite3.Connection) -> bytes:
            db.execute(Q["secret_insert"], {"name": name, "value": new})
            return bytes(db.execute(Q["secret_get"], {"name": name}).fetchone()["value"])

        return await self.db.run(op)

    async def close(self) -> None:
        await self.db.close()
