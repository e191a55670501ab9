"""Secrets in PostgreSQL (the queue's database, table agentd_secrets), encrypted with the master key.

Shares the process's `PgDatabase` with the queue and the event log (`PostgresSecretStore(queue.db, key)`,
then `open()`). Every call first checks that the master key decrypts what is stored, so a process started
with a wrong key fails with WrongMasterKey instead of mixing keys; `rotate` re-encrypts everything in one
transaction, with writers locked out, then this process uses the new key (the others need a restart with
it). Without a master key every call raises SecretsUnavailable.
"""

from __future__ import annotations

from datetime import UTC

from psycopg.rows import DictRow

from agentd.adapters.postgres.database import Connection, PgDatabase
from agentd.adapters.postgres.queries import QUERIES
from agentd.adapters.secret_crypto import SecretCipher, project_of, scope_of
from agentd.domain.errors import SecretsUnavailable
from agentd.domain.secrets import SecretInfo
from agentd.ports.secret_store import SecretStore


class PostgresSecretStore(SecretStore):
    def __init__(self, db: PgDatabase, master_key: bytes | None) -> None:
        self.db = db
        self._cipher = SecretCipher(master_key) if master_key is not None else None

    async def open(self) -> None:
        """Open (or share) the pool; SchemaMismatch when the schema is not this agentd's."""
        await self.db.open()

    async def close(self) -> None:
        await self.db.close()

    async def _checked(self, conn: Connection) -> SecretCipher:
        """The cipher, once it has decrypted one stored secret (any will do)."""
        if self._cipher is None:
            raise SecretsUnavailable()
        row = await (await conn.execute(QUERIES["secret_any"])).fetchone()
        if row is not None:
            self._cipher.decrypt(project_of(row["scope"]), row["name"], bytes(row["value"]))
        return self._cipher

    async def put(self, project_id: str | None, name: str, value: str) -> None:
        async with self.db.connection() as conn, conn.transaction():
            blob = (await self._checked(conn)).encrypt(project_id, name, value)
            await conn.execute(
                QUERIES["secret_put"], {"scope": scope_of(project_id), "name": name, "value": blob}
            )

    async def list(self, project_id: str | None) -> list[SecretInfo]:
        async with self.db.connection() as conn:
            await self._checked(conn)
            cur = await conn.execute(QUERIES["secret_list"], {"scope": scope_of(project_id)})
            rows = await cur.fetchall()
        return [
            SecretInfo(name=r["name"], project_id=project_id, updated_at=r["updated_at"].astimezone(UTC))
            for r in rows
        ]

    async def delete(self, project_id: str | None, name: str) -> bool:
        async with self.db.connection() as conn:
            await self._checked(conn)
            cur = await conn.execute(QUERIES["secret_delete"], {"scope": scope_of(project_id), "name": name})
            return await cur.fetchone() is not None

    async def resolve(self, project_id: str) -> dict[str, str]:
        async with self.db.connection() as conn:
            cipher = await self._checked(conn)
            rows = await (await conn.execute(QUERIES["secret_resolve"], {"scope": project_id})).fetchall()
        return {r["name"]: _open(cipher, r) for r in rows}  # the project's rows come last and win

    async def rotate(self, new_master_key: bytes) -> int:
        new = SecretCipher(new_master_key)
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(QUERIES["secret_lock_all"])
            old = await self._checked(conn)
            rows = await (await conn.execute(QUERIES["secret_all"])).fetchall()
            if rows:
                await conn.execute(
                    QUERIES["secret_set_values"],
                    {
                        "scopes": [r["scope"] for r in rows],
                        "names": [r["name"] for r in rows],
                        "values": [
                            new.encrypt(project_of(r["scope"]), r["name"], _open(old, r)) for r in rows
                        ],
                    },
                )
        self._cipher = new
        return len(rows)


def _open(cipher: SecretCipher, row: DictRow) -> str:
    return cipher.decrypt(project_of(row["scope"]), row["name"], bytes(row["value"]))
