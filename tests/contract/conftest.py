"""Adapters under contract: every adapter of a port runs the same tests (add new ones to the params).

`make_queue(**options)` / `make_streams(**options)` open another instance on the SAME storage (another
process, as far as the adapter can tell); the plain `queue` / `streams` fixtures are the first instance.
PostgreSQL instances each get their own pool and listener on a fresh database per test.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agentd.adapters.embedded.sqlite_event_stream import SqliteEventStream
from agentd.adapters.embedded.sqlite_key_store import SqliteKeyStore
from agentd.adapters.embedded.sqlite_secret_store import SqliteSecretStore
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.fanout_event_stream import FanoutEventStream
from agentd.adapters.memory.memory_event_stream import MemoryEventStream
from agentd.adapters.memory.memory_key_store import MemoryKeyStore
from agentd.adapters.memory.memory_secret_store import MemorySecretStore
from agentd.adapters.postgres import (
    PgDatabase,
    PostgresEventStream,
    PostgresWorkQueue,
    open_postgres_keys,
    open_postgres_secrets,
)
from agentd.ports.event_stream import EventStream
from agentd.ports.key_store import KeyStore
from agentd.ports.secret_store import SecretStore
from agentd.ports.work_queue import WorkQueue
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

QUEUE_ADAPTERS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
STREAM_ADAPTERS = [
    "memory",
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    # The live fan-out decorator (one reader per stream per process) in front of each log.
    "fanout-memory",
    "fanout-sqlite",
    pytest.param("fanout-postgres", marks=pytest.mark.postgres),
]
SECRET_ADAPTERS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.postgres),
    "memory",
]

QUEUE_DEFAULTS: dict[str, Any] = {
    "lease_s": 30.0,
    "max_attempts": 3,
    "retry_base_s": 0.2,
    "requeue_delay_s": 0.0,
}
STREAM_DEFAULTS: dict[str, Any] = {"retention_s": 0.2, "buffer": 50}

QueueFactory = Callable[..., Awaitable[WorkQueue]]
StreamsFactory = Callable[..., Awaitable[EventStream]]


@pytest.fixture(params=QUEUE_ADAPTERS)
async def make_queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[QueueFactory]:
    opened: list[WorkQueue] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""

    async def make(**options: Any) -> WorkQueue:
        opts = {**QUEUE_DEFAULTS, **options}
        q: WorkQueue
        if request.param == "sqlite":
            q = SqliteWorkQueue(tmp_path / "queue.sqlite3", **opts)
        elif request.param == "postgres":
            pq = PostgresWorkQueue(PgDatabase(dsn, pool_size=4), **opts)
            await pq.open()
            q = pq
        else:  # pragma: no cover - new adapters register above
            raise AssertionError(request.param)
        opened.append(q)
        return q

    yield make
    for q in reversed(opened):
        await q.close()


@pytest.fixture
async def queue(make_queue: QueueFactory) -> WorkQueue:
    return await make_queue()


@pytest.fixture(params=STREAM_ADAPTERS)
async def make_streams(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StreamsFactory]:
    opened: list[EventStream] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param.endswith("postgres") else ""
    shared_memory: MemoryEventStream | None = None

    async def make(**options: Any) -> EventStream:
        nonlocal shared_memory
        opts = {**STREAM_DEFAULTS, **options}
        s: EventStream
        if request.param.startswith("fanout-"):
            return await make_fanout(request.param.removeprefix("fanout-"), opts)
        if request.param == "memory":
            # One process holds the memory log: "another instance" is the same one.
            if shared_memory is None:
                shared_memory = MemoryEventStream(**opts)
                opened.append(shared_memory)
            return shared_memory
        if request.param == "sqlite":
            # Another instance is another connection to the same file (in-process wake-ups do not cross
            # instances: it follows by polling).
            s = SqliteEventStream(tmp_path / "queue.sqlite3", poll_s=0.05, **opts)
        elif request.param == "postgres":
            ps = PostgresEventStream(PgDatabase(dsn, pool_size=4), **opts)
            await ps.open()
            s = ps
        else:  # pragma: no cover
            raise AssertionError(request.param)
        opened.append(s)
        return s

    shared_fanout: FanoutEventStream | None = None

    async def make_fanout(inner_kind: str, opts: dict[str, Any]) -> EventStream:
        nonlocal shared_fanout
        if inner_kind == "memory":
            if shared_fanout is None:
                shared_fanout = FanoutEventStream(MemoryEventStream(**opts), buffer=opts["buffer"])
                opened.append(shared_fanout)
            return shared_fanout
        inner: EventStream
        if inner_kind == "sqlite":
            inner = SqliteEventStream(tmp_path / "queue.sqlite3", poll_s=0.05, **opts)
        else:
            ps = PostgresEventStream(PgDatabase(dsn, pool_size=4), **opts)
            await ps.open()
            inner = ps
        fs = FanoutEventStream(inner, buffer=opts["buffer"])
        opened.append(fs)
        return fs

    yield make
    for s in reversed(opened):
        await s.close()


@pytest.fixture
async def streams(make_streams: StreamsFactory) -> EventStream:
    return await make_streams()


@dataclass
class SecretStores:
    """`open(key)` opens another instance on the SAME storage under master key `key` (None: no key).

    `at_rest()` reads the stored values as the storage holds them (None for the memory adapter, which
    keeps nothing at rest and cannot share storage between instances).
    """

    adapter: str
    open: Callable[[bytes | None], Awaitable[SecretStore]]
    at_rest: Callable[[], list[bytes]] | None


@pytest.fixture(params=SECRET_ADAPTERS)
async def secret_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SecretStores]:
    opened: list[Any] = []
    adapter = request.param
    dsn = request.getfixturevalue("pg_dsn") if adapter == "postgres" else ""
    path = tmp_path / "queue.sqlite3"

    async def open_store(key: bytes | None) -> SecretStore:
        store: Any
        if adapter == "sqlite":
            store = SqliteSecretStore(path, key)
        elif adapter == "postgres":
            store = await open_postgres_secrets(PgDatabase(dsn, pool_size=2, listen=False), key)
        elif adapter == "memory":
            store = MemorySecretStore(key)
        else:  # pragma: no cover - new adapters register above
            raise AssertionError(adapter)
        opened.append(store)
        return store  # type: ignore[no-any-return]

    def at_rest() -> list[bytes]:
        if adapter == "sqlite":
            with contextlib.closing(sqlite3.connect(path)) as db:
                return [bytes(v) for (v,) in db.execute("SELECT value FROM secrets ORDER BY scope, name")]
        with psycopg.connect(dsn) as conn:
            rows = conn.execute("SELECT value FROM agentd_secrets ORDER BY scope, name").fetchall()
            return [bytes(v) for (v,) in rows]

    yield SecretStores(adapter, open_store, None if adapter == "memory" else at_rest)
    for store in reversed(opened):
        close = getattr(store, "close", None)
        if close is not None:
            await close()


KEY_ADAPTERS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"]


@dataclass
class KeyStores:
    """`open()` opens another instance on the SAME storage (the memory adapter: the same instance);
    `at_rest()` is every stored column of every key, as text (None for the memory adapter)."""

    adapter: str
    open: Callable[[], Awaitable[KeyStore]]
    at_rest: Callable[[], str] | None


@pytest.fixture(params=KEY_ADAPTERS)
async def key_stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStores]:
    opened: list[Any] = []
    adapter = request.param
    dsn = request.getfixturevalue("pg_dsn") if adapter == "postgres" else ""
    path = tmp_path / "queue.sqlite3"
    memory = MemoryKeyStore()

    async def open_store() -> KeyStore:
        store: Any
        if adapter == "sqlite":
            store = SqliteKeyStore(path)
        elif adapter == "postgres":
            store = await open_postgres_keys(PgDatabase(dsn, pool_size=2, listen=False))
        else:
            return memory
        opened.append(store)
        return store  # type: ignore[no-any-return]

    def at_rest() -> str:
        if adapter == "sqlite":
            with contextlib.closing(sqlite3.connect(path)) as db:
                return repr(db.execute("SELECT * FROM api_keys").fetchall())
        with psycopg.connect(dsn) as conn:
            return repr(conn.execute("SELECT * FROM agentd_api_keys").fetchall())

    yield KeyStores(adapter, open_store, None if adapter == "memory" else at_rest)
    for store in reversed(opened):
        await store.close()


PROJECT_ADAPTERS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "memory"]


@pytest.fixture(params=PROJECT_ADAPTERS)
async def project_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A ProjectStore (agentd/ports/project_store.py) on fresh storage."""
    from agentd.adapters.embedded.sqlite_project_store import SqliteProjectStore
    from agentd.adapters.memory.memory_project_store import MemoryProjectStore
    from agentd.adapters.postgres import PostgresProjectStore

    store: Any
    if request.param == "sqlite":
        store = SqliteProjectStore(tmp_path / "queue.sqlite3")
    elif request.param == "postgres":
        store = PostgresProjectStore(PgDatabase(request.getfixturevalue("pg_dsn"), pool_size=2, listen=False))
        await store.open()
    else:
        store = MemoryProjectStore()
    yield store
    await store.close()
