"""The SQLite file of one agentd process: one connection, one lock, the schema, transactions in a thread.

The embedded queue and the embedded secret store share one `SqliteDatabase` (ref-counted: each adapter
`acquire`s it and `close`s it; the last close closes the file). Durable: every change is committed before
the call returns (WAL, synchronous=NORMAL). Calls run in a worker thread so the event loop never blocks on
disk; every call is one `BEGIN IMMEDIATE` transaction, so checks and writes never interleave.

Storage errors (the file locked by another process past `busy_timeout_s`, a full disk, an I/O error, a
read-only file) become `QueueUnavailable`, as PostgreSQL's connection errors do: the API answers 503 and the
runner waits and retries. Other sqlite3 errors (a constraint the code should have kept) stay bugs.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agentd.adapters.sql_files import load_queries
from agentd.domain.errors import QueueUnavailable

T = TypeVar("T")
SQL_DIR = Path(__file__).parent / "sql"
SCHEMA_VERSION = 6


def _statements(script: str) -> list[str]:
    """The statements of a script, whole (a `;` inside a string or a trigger body does not split one)."""
    out: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                out.append(pending.strip())
            pending = ""
    return out


def unavailable(path: Path, e: sqlite3.Error) -> QueueUnavailable:
    return QueueUnavailable(f"the embedded database {path} is unavailable: {e}")


class SqliteDatabase:
    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._db = sqlite3.connect(
                str(path), check_same_thread=False, isolation_level=None, timeout=busy_timeout_s
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives any crash of the process (the only writer); only an OS crash or
            # power loss can lose the last commits. FULL would fsync every enqueue (~3 ms each).
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as e:
            raise unavailable(path, e) from e
        self._lock = threading.Lock()
        self._closed = False
        self._users = 0
        self.tx(self._create_schema)

    def _create_schema(self, db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
            return
        for statement in _statements((SQL_DIR / "schema.sql").read_text(encoding="utf-8")):
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def acquire(self) -> None:
        """One more adapter uses this file (each calls `close` once)."""
        self._users += 1

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` as one transaction, in a thread."""
        return await asyncio.to_thread(self.tx, fn)

    def tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            if self._closed:
                raise QueueUnavailable("the embedded database is closed (agentd is shutting down)")
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._db)
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as e:  # locked, full, I/O, read-only: storage, not a bug
                raise unavailable(self.path, e) from e
            return out

    async def close(self) -> None:
        """The last user closes the file."""
        self._users -= 1
        if self._users > 0 or self._closed:
            return

        def shut() -> None:
            # Under the lock: a thread still running an operation (its task was cancelled, the thread
            # was not) must finish before the connection goes away, or sqlite crashes the process.
            with self._lock:
                self._closed = True
                self._db.close()

        await asyncio.to_thread(shut)


def queries(name: str) -> dict[str, str]:
    """The named queries of sql/<name>.sql."""
    return load_queries(SQL_DIR / f"{name}.sql")
