"""Migrations and the schema check: idempotent, safe when run concurrently, clear when refusing."""

from __future__ import annotations

import asyncio
import importlib

import psycopg
import pytest

from agentd.adapters.postgres import SCHEMA_VERSION, check_schema, migrate, open_postgres
from agentd.adapters.postgres.queries import QUERIES, parse_queries
from agentd.domain.errors import SchemaMismatch
from tests.support.postgres import pg_dsn, pg_empty_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = pytest.mark.postgres


@pytest.fixture
def dsn(request: pytest.FixtureRequest) -> str:
    """A fresh migrated database for this test (tests.support.postgres)."""
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def empty_dsn(request: pytest.FixtureRequest) -> str:
    """A fresh database without the agentd schema."""
    return str(request.getfixturevalue("pg_empty_dsn"))


async def version_rows(dsn: str) -> list[tuple[int, str]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT version, name FROM agentd_schema_version ORDER BY version")
        return [(int(v), str(n)) for v, n in await cur.fetchall()]


async def test_concurrent_migrations_apply_each_version_once(empty_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(empty_dsn) for _ in range(4)))
    assert sorted(results) == [[], [], [], list(range(1, SCHEMA_VERSION + 1))]
    assert await migrate(empty_dsn) == []
    assert [v for v, _ in await version_rows(empty_dsn)] == list(range(1, SCHEMA_VERSION + 1))
    async with await psycopg.AsyncConnection.connect(empty_dsn) as conn:
        assert await check_schema(conn) == SCHEMA_VERSION


async def test_a_database_without_the_schema_is_refused(empty_dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_dsn) as conn:
        with pytest.raises(SchemaMismatch, match="run `agentd migrate`"):
            await check_schema(conn)
    with pytest.raises(SchemaMismatch, match="tables are missing"):
        await open_postgres(empty_dsn, pool_size=1)


async def test_a_newer_schema_is_refused(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO agentd_schema_version (version, name) VALUES (99, '0099_future.sql')")
    expected = f"database schema 99 is newer than this agentd \\({SCHEMA_VERSION}\\)"
    with pytest.raises(SchemaMismatch, match=expected) as info:
        await open_postgres(dsn, pool_size=1)
    assert info.value.details == {"found": 99, "expected": SCHEMA_VERSION}
    with pytest.raises(SchemaMismatch, match=expected):
        await migrate(dsn)  # never "downgrades" a database


async def test_an_older_schema_asks_for_a_migration(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # (the package's `migrate` attribute is the function; the module is in sys.modules)
    module = importlib.import_module("agentd.adapters.postgres.migrate")
    monkeypatch.setattr(module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(SchemaMismatch, match=r"older than this agentd .*: run `agentd migrate`"):
            await check_schema(conn)


async def test_open_postgres_checks_the_schema_and_shares_one_pool(dsn: str) -> None:
    queue, streams = await open_postgres(dsn, pool_size=2)
    assert queue.db is streams.db and queue.db.listener is not None
    await queue.close()
    await streams.create("still-open")  # the pool stays open until its last user closes
    await streams.close()
    assert queue.db.pool.closed


def test_query_file_parsing() -> None:
    assert {"claim", "enqueue", "finish", "append_events", "read_events"} <= set(QUERIES)
    parsed = parse_queries("-- name: a\nSELECT 1;\n\n-- name: b\n-- doc\nSELECT 2;\n")
    assert parsed == {"a": "SELECT 1;", "b": "-- doc\nSELECT 2;"}
    with pytest.raises(ValueError, match="defined twice"):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


async def test_the_statements_a_worker_runs_per_batch_keep_their_plans(dsn: str) -> None:
    """`finish` runs in agentd_finish with a forced generic plan (schema 10): as a prepared statement it was
    planned again at every call (measured with pg_stat_statements, issue 16), more time than it ran."""
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT proname, proconfig FROM pg_proc WHERE proname IN ('agentd_finish', 'agentd_claim')"
        )
        config = {name: list(cfg or []) for name, cfg in await cur.fetchall()}
    assert "plan_cache_mode=force_generic_plan" in config["agentd_finish"]
    assert "agentd_finish(" in QUERIES["finish"]
    assert {"enable_sort=off", "enable_bitmapscan=off"} <= set(config["agentd_claim"])
