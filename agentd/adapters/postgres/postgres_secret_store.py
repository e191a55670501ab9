"""Secrets in PostgreSQL (the queue's database, table agentd_secrets), encrypted with the master key.

Shares the process's `PgDatabase` with the queue and the event log (`PostgresSecretStore(queue.db, key)`,
then `open()`). Every call first checks that the master key decrypts what is stored, so a process started
with a wrong key fails with WrongMasterKey instead of mixing keys; `rotate` re-encrypts everything in one
transaction, with writers locked out, then this process uses the new key (the others need a restart with
it). Without a master key every call raises SecretsUnavailable.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC
from typing import Any

from psycopg.rows import DictRow

from agentd.adapters.postgres.database import Connection, PgDatabase
from agentd.adapters.postgres.queries import QUERIES
from agentd.adapters.secret_crypto import SecretCipher, project_of, scope_of
from agentd.domain.errors import AgentdError, SecretsUnavailable
from agentd.domain.secrets import SecretInfo
from agentd.ports.secret_store import SecretStore

HINTS_MAX = 1000


class PostgresSecretStore(SecretStore):
    def __init__(self, db: PgDatabase, master_key: bytes | None) -> None:
        self.db = db
        self._cipher = SecretCipher(master_key) if master_key is not None else None
        # Projects whose latest job claimed by this process would get no secret (read in the claim's
        # statement, the run journal): `claimed_without_secrets` answers for the run of that job, once.
        self._none_at_claim: OrderedDict[str, bool] = OrderedDict()

    def claimed(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """The claim statement's answer for the jobs it handed out (`project_id`, `has_secrets`, and one
        stored secret, `key_scope`/`key_name`/`key_value`, NULL when none is stored). Each project's latest
        claim decides its hint; none is kept when the master key does not decrypt the stored secret (the run
        then asks `resolve`, which says so, as before)."""
        rows = list(rows)
        if not rows:
            return
        check = rows[0]
        if self._cipher is not None and check["key_value"] is not None:
            try:
                blob = bytes(check["key_value"])
                self._cipher.decrypt(project_of(check["key_scope"]), check["key_name"], blob)
            except AgentdError:
                for r in rows:
                    self._none_at_claim.pop(r["project_id"], None)
                return
        for r in rows:
            self._none_at_claim[r["project_id"]] = not r["has_secrets"]
            self._none_at_claim.move_to_end(r["project_id"])
        while len(self._none_at_claim) > HINTS_MAX:
            self._none_at_claim.popitem(last=False)

    def claimed_without_secrets(self, project_id: str) -> bool:
        """True when the claim of this process's latest job of the project saw no secret its run would get
        (nor a wrong master key): that run needs no `resolve`. Answered once, for the run of that job."""
        return self._none_at_claim.pop(project_id, False)

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
        if self._cipher is None:  # no master key: no connection needed to say so
            raise SecretsUnavailable()
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
