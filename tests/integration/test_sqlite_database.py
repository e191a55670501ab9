"""The embedded database file: schema upgrades in place, and one file shared by the queue and the secrets."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from agentd.adapters.embedded.database import SCHEMA_VERSION, SqliteDatabase
from agentd.adapters.embedded.sqlite_secret_store import SqliteSecretStore
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.domain.errors import QueueUnavailable
from agentd.domain.models import AgentRequest

KEY = os.urandom(32)


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


async def test_a_schema_1_file_gets_the_secrets_table_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    queue = SqliteWorkQueue(path)
    job, _ = await queue.enqueue(
        AgentRequest(project_id="p", prompt="x"), provider="s", job_id="j1", stream_id="s1"
    )
    await queue.close()
    with contextlib.closing(sqlite3.connect(path)) as db:  # as agentd before secrets left it
        db.execute("DROP TABLE secrets")
        db.execute("DROP TABLE events")
        db.execute("DROP TABLE streams")
        db.execute("DROP INDEX jobs_finished")
        db.execute("PRAGMA user_version = 1")
        db.commit()
    store = SqliteSecretStore(path, KEY)
    await store.put("p", "TOKEN", "a-secret-value")
    assert await store.resolve("p") == {"TOKEN": "a-secret-value"}
    await store.close()
    assert user_version(path) == SCHEMA_VERSION == 3
    with contextlib.closing(sqlite3.connect(path)) as db:  # schema 3: the event log
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    reopened = SqliteWorkQueue(path)
    assert (await reopened.get("p", job.id)).id == "j1"
    await reopened.close()


async def test_the_queue_and_the_secrets_share_one_file_until_the_last_close(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "queue.sqlite3")
    queue, store = SqliteWorkQueue(db), SqliteSecretStore(db, KEY)
    await store.put(None, "TOKEN", "a-secret-value")
    await queue.close()
    assert await store.resolve("p") == {"TOKEN": "a-secret-value"}  # still open for the other user
    await store.close()
    with pytest.raises(QueueUnavailable, match="closed"):
        await store.resolve("p")
