"""Schema migrations: numbered scripts in sql/migrations, applied in order, recorded in agentd_schema_version.

`migrate` is what `agentd migrate` runs; it is idempotent and safe when several processes run it at once
(one transaction under an advisory lock: the others wait, then find nothing to do). `check_schema` is what
every process runs at start: it refuses a database whose schema is missing, older or newer than this code.
"""

from __future__ import annotations

from typing import Any

import psycopg
import structlog
from psycopg.rows import tuple_row

from agentd.adapters.postgres.errors import describe, translate_errors
from agentd.adapters.postgres.queries import SCHEMA_VERSION, migrations
from agentd.domain.errors import SchemaMismatch

log = structlog.get_logger(__name__)

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS agentd_schema_version (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def _newer(found: int) -> SchemaMismatch:
    return SchemaMismatch(
        f"database schema {found} is newer than this agentd ({SCHEMA_VERSION}): upgrade agentd",
        found=found,
        expected=SCHEMA_VERSION,
    )


async def _current_version(conn: psycopg.AsyncConnection[Any]) -> int | None:
    """The applied schema version; None when agentd's tables were never created here."""
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute("SELECT to_regclass('agentd_schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return None
    await cur.execute("SELECT coalesce(max(version), 0) FROM agentd_schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(dsn: str) -> list[int]:
    """Apply the pending migrations; returns the versions applied now ([] when already up to date)."""
    applied: list[int] = []
    async with (
        translate_errors(describe(dsn)),
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
        conn.transaction(),
    ):
        await conn.execute("SELECT pg_advisory_xact_lock(1634168439, 0)")
        await conn.execute(_CREATE_VERSION_TABLE)
        current = await _current_version(conn) or 0
        if current > SCHEMA_VERSION:
            raise _newer(current)
        for version, name, script in migrations():
            if version <= current:
                continue
            await conn.execute(script)
            await conn.execute(
                "INSERT INTO agentd_schema_version (version, name) VALUES (%s, %s)", (version, name)
            )
            applied.append(version)
    if applied:
        log.info("postgres.migrated", database=describe(dsn), applied=applied, version=SCHEMA_VERSION)
    return applied


async def check_schema(conn: psycopg.AsyncConnection[Any]) -> int:
    """The schema version, when it is the one this agentd needs; SchemaMismatch otherwise."""
    found = await _current_version(conn)
    if found is None or found == 0:
        raise SchemaMismatch(
            "the agentd tables are missing from this database: run `agentd migrate`",
            found=0,
            expected=SCHEMA_VERSION,
        )
    if found < SCHEMA_VERSION:
        raise SchemaMismatch(
            f"database schema {found} is older than this agentd ({SCHEMA_VERSION}): run `agentd migrate`",
            found=found,
            expected=SCHEMA_VERSION,
        )
    if found > SCHEMA_VERSION:
        raise _newer(found)
    return found
