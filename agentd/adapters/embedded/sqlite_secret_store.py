"""Secrets in the embedded database (the SQLite file of the queue), encrypted with the master key.

Every call is one transaction (agentd.adapters.embedded.database) and first checks that the master key
decrypts what is stored, so a wrong key fails every call with WrongMasterKey instead of mixing keys.
Without a master key every call raises SecretsUnavailable.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from agentd.adapters.embedded.database import SqliteDatabase, queries
from agentd.adapters.secret_crypto import SecretCipher, project_of, scope_of
from agentd.domain.errors import SecretsUnavailable
from agentd.domain.secrets import SecretInfo
from agentd.ports.secret_store import SecretStore

Q = queries("secrets")


class SqliteSecretStore(SecretStore):
    def __init__(self, db: SqliteDatabase | Path, master_key: bytes | None) -> None:
        """`db`: the queue's database (`SqliteWorkQueue(...).db`) or a file path."""
        self.db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)
        self.db.acquire()
        self._cipher = SecretCipher(master_key) if master_key is not None else None

    def _checked(self, db: sqlite3.Connection) -> SecretCipher:
        """The cipher, once it has decrypted one stored secret (any will do)."""
        if self._cipher is None:
            raise SecretsUnavailable()
        row = db.execute(Q["any"]).fetchone()
        if row is not None:
            self._cipher.decrypt(project_of(row["scope"]), row["name"], row["value"])
        return self._cipher

    async def put(self, project_id: str | None, name: str, value: str) -> None:
        def op(db: sqlite3.Connection) -> None:
            blob = self._checked(db).encrypt(project_id, name, value)
            now = datetime.now(UTC).isoformat(timespec="microseconds")
            db.execute(
                Q["put"], {"scope": scope_of(project_id), "name": name, "value": blob, "updated_at": now}
            )

        await self.db.run(op)

    async def list(self, project_id: str | None) -> list[SecretInfo]:
        def op(db: sqlite3.Connection) -> list[sqlite3.Row]:
            self._checked(db)
            return db.execute(Q["list"], {"scope": scope_of(project_id)}).fetchall()

        rows = await self.db.run(op)
        return [
            SecretInfo(
                name=r["name"], project_id=project_id, updated_at=datetime.fromisoformat(r["updated_at"])
            )
            for r in rows
        ]

    async def delete(self, project_id: str | None, name: str) -> bool:
        def op(db: sqlite3.Connection) -> bool:
            self._checked(db)
            return db.execute(Q["delete"], {"scope": scope_of(project_id), "name": name}).rowcount == 1

        return await self.db.run(op)

    async def resolve(self, project_id: str) -> dict[str, str]:
        def op(db: sqlite3.Connection) -> dict[str, str]:
            cipher = self._checked(db)
            rows = db.execute(Q["resolve"], {"scope": project_id}).fetchall()
            # Globals first, then the project's own over them.
            rows.sort(key=lambda r: project_of(r["scope"]) is not None)
            return {r["name"]: cipher.decrypt(project_of(r["scope"]), r["name"], r["value"]) for r in rows}

        return await self.db.run(op)

    async def rotate(self, new_master_key: bytes) -> int:
        new = SecretCipher(new_master_key)

        def op(db: sqlite3.Connection) -> int:
            old = self._checked(db)
            rows = db.execute(Q["all"]).fetchall()
            for r in rows:
                project_id = project_of(r["scope"])
                value = old.decrypt(project_id, r["name"], r["value"])
                db.execute(
                    Q["set_value"],
                    {
                        "scope": r["scope"],
                        "name": r["name"],
                        "value": new.encrypt(project_id, r["name"], value),
                    },
                )
            return len(rows)

        count = await self.db.run(op)
        self._cipher = new
        return count

    async def close(self) -> None:
        await self.db.close()
