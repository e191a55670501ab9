"""The embedded database file: schema upgrades in place, and one file shared by the queue and the secrets."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentd.adapters.embedded.database import SCHEMA_VERSION, SqliteDatabase
from agentd.adapters.embedded.sqlite_key_store import SqliteKeyStore
from agentd.adapters.embedded.sqlite_project_store import SqliteProjectStore
from agentd.adapters.embedded.sqlite_secret_store import SqliteSecretStore
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.domain.errors import QueueUnavailable
from agentd.domain.keys import ApiKey, KeyAccess
from agentd.domain.models import AgentRequest
from agentd.domain.projects import ProjectSpec

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
        for table in ("secrets", "projects", "job_patches", "api_keys", "server_secrets"):
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 1")
        db.commit()
    store = SqliteSecretStore(path, KEY)
    await store.put("p", "TOKEN", "a-secret-value")
    assert await store.resolve("p") == {"TOKEN": "a-secret-value"}
    await store.close()
    assert user_version(path) == SCHEMA_VERSION == 4
    reopened = SqliteWorkQueue(path)
    assert (await reopened.get("p", job.id)).id == "j1"
    await reopened.close()


async def test_a_schema_2_file_gets_the_projects_tables_and_its_queue_still_claims(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    queue = SqliteWorkQueue(path)
    await queue.enqueue(AgentRequest(project_id="p", prompt="x"), provider="s", job_id="j1", stream_id="s1")
    await queue.close()
    with contextlib.closing(sqlite3.connect(path)) as db:  # as agentd before projects left it
        for table in ("projects", "job_patches", "api_keys", "server_secrets"):
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 2")
        db.commit()
    queue = SqliteWorkQueue(path)
    store = SqliteProjectStore(queue.db)
    keys = SqliteKeyStore(queue.db)
    assert [j.id for j in await queue.claim_many("w", 5)] == ["j1"]  # the claim reads `projects`
    await store.put("p", ProjectSpec(template="empty", max_running=2))
    await store.put_patch("p", "j1", b"diff")
    await keys.create(_key("key_0000000000000001"), "h1")
    assert (await keys.find("h1")) is not None
    assert user_version(path) == SCHEMA_VERSION == 4
    await keys.close()
    await store.close()
    await queue.close()


@pytest.mark.parametrize(
    "missing",
    [("api_keys", "server_secrets"), ("projects", "job_patches")],
    ids=["schema-3-with-projects", "schema-3-with-keys"],
)
async def test_a_schema_3_file_gets_what_it_lacks_and_keeps_what_it_has(
    tmp_path: Path, missing: tuple[str, ...]
) -> None:
    """Version 3 was projects on one branch and keys on the other: either kind of file upgrades to 4."""
    path = tmp_path / "queue.sqlite3"
    queue = SqliteWorkQueue(path)
    await queue.enqueue(AgentRequest(project_id="p", prompt="x"), provider="s", job_id="j1", stream_id="s1")
    projects, keys = SqliteProjectStore(queue.db), SqliteKeyStore(queue.db)
    await projects.put("p", ProjectSpec(template="empty"))
    await keys.create(_key("key_0000000000000001"), "h1")
    await keys.close()
    await projects.close()
    await queue.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        for table in missing:
            db.execute(f"DROP TABLE {table}")
        db.execute("PRAGMA user_version = 3")
        db.commit()
    queue = SqliteWorkQueue(path)
    projects, keys = SqliteProjectStore(queue.db), SqliteKeyStore(queue.db)
    assert user_version(path) == SCHEMA_VERSION == 4
    if "projects" in missing:
        assert await projects.find("p") is None
        assert (await keys.find("h1")) is not None  # kept
    else:
        assert (await projects.find("p")) is not None  # kept
        assert await keys.find("h1") is None
    await projects.put("q", ProjectSpec(template="empty"))
    await keys.create(_key("key_0000000000000002"), "h2")
    assert (await projects.find("q")) is not None
    assert (await keys.find("h2")) is not None
    assert (await queue.get("p", "j1")).id == "j1"
    await keys.close()
    await projects.close()
    await queue.close()


def _key(key_id: str) -> ApiKey:
    return ApiKey(id=key_id, name=key_id, admin=True, access=KeyAccess.write, created_at=datetime.now(UTC))


async def test_the_queue_and_the_secrets_share_one_file_until_the_last_close(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "queue.sqlite3")
    queue, store = SqliteWorkQueue(db), SqliteSecretStore(db, KEY)
    await store.put(None, "TOKEN", "a-secret-value")
    await queue.close()
    assert await store.resolve("p") == {"TOKEN": "a-secret-value"}  # still open for the other user
    await store.close()
    with pytest.raises(QueueUnavailable, match="closed"):
        await store.resolve("p")
