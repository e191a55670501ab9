"""PostgreSQL for tests: one migrated template database per session, a fresh copy of it per test.

Server: AGENTD_TEST_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/postgres; it names the
maintenance database the test databases are created from). Tests that need PostgreSQL are skipped, with the
reason, when it cannot be reached. Every database made here is dropped at the end.

Use: import the fixtures into a conftest (`from tests.support.postgres import pg_dsn, pg_template`) or list
this module in `pytest_plugins` of the root conftest.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agentd.adapters.postgres.migrate import migrate

ADMIN_DSN = os.environ.get("AGENTD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PREFIX = "agentd_test_"


def dsn_for(database: str, base: str = ADMIN_DSN) -> str:
    return make_conninfo(base, dbname=database)


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=3)


def create_database(name: str, template: str | None = None) -> str:
    with _admin() as conn:
        if template is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    return dsn_for(name)


def drop_database(name: str) -> None:
    with _admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def unique_name(kind: str) -> str:
    return f"{PREFIX}{kind}_{os.getpid()}_{secrets.token_hex(4)}"


class _Template:
    """Ref-counted, so that several conftests importing the fixture still share one template."""

    name: str | None = None
    users = 0
    error: str | None = None

    @classmethod
    def require_server(cls) -> None:
        """Skip the test (with the reason) when the server cannot be reached; asks only once."""
        if cls.error is None and cls.name is None and cls.users == 0:
            try:
                _admin().close()
            except psycopg.OperationalError as e:
                cls.error = f"PostgreSQL is not reachable at {_where()}: {str(e).strip()}"
        if cls.error is not None:
            pytest.skip(cls.error)

    @classmethod
    def acquire(cls) -> str:
        cls.require_server()
        if cls.name is None:
            name = unique_name("tmpl")
            create_database(name)
            try:
                _run_async_in_thread(lambda: migrate(dsn_for(name)))
            except BaseException:
                drop_database(name)
                raise
            cls.name = name
        cls.users += 1
        return cls.name

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users == 0 and cls.name is not None:
            drop_database(cls.name)
            cls.name = None


def _run_async_in_thread(make: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run a coroutine to completion from sync code that may itself be inside a running event loop."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(lambda: asyncio.run(make())).result()


def _where() -> str:
    p = conninfo_to_dict(ADMIN_DSN)
    return f"{p.get('host', 'localhost')}:{p.get('port', 5432)} (set AGENTD_TEST_DATABASE_URL)"


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """The name of a migrated template database (created once per test session)."""
    name = _Template.acquire()
    try:
        yield name
    finally:
        _Template.release()


@pytest.fixture
def pg_dsn(pg_template: str) -> Iterator[str]:
    """The DSN of a fresh, migrated database for this test only (dropped afterwards)."""
    name = unique_name("db")
    dsn = create_database(name, template=pg_template)
    try:
        yield dsn
    finally:
        drop_database(name)


@pytest.fixture
def pg_empty_dsn() -> Iterator[str]:
    """The DSN of a fresh database without the agentd schema (for migration tests)."""
    _Template.require_server()
    name = unique_name("empty")
    dsn = create_database(name)
    try:
        yield dsn
    finally:
        drop_database(name)
