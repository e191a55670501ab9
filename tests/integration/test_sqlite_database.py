"""The embedded database file: schema upgrades in place, and one file shared by the queue and the secrets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from agentd.adapters.embedded.database import SCHEMA_VERSION, SqliteDatabase
from agentd.adapters.embedded.sqlite_event_stream import SqliteEventStream
from agentd.adapters.embedded.sqlite_key_store import SqliteKeyStore
from agentd.adapters.embedded.sqlite_project_store import SqliteProjectStore
from agentd.adapters.embedded.sqlite_secret_store import SqliteSecretStore
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.bootstrap import build
from agentd.client import AgentdClient, ApiError
from agentd.config import Settings
from agentd.domain.errors import QueueUnavailable
from agentd.domain.keys import ApiKey, KeyAccess
from agentd.domain.models import AgentRequest, JobStatus
from agentd.domain.projects import ProjectSpec
from agentd.services.jobs import JobService
from agentd.services.registry import ProviderRegistry
from agentd.services.runner import Runner
from tests.integration.test_fencing import until

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
        for table in (
            "secrets",
            "projects",
            "job_patches",
            "api_keys",
            "server_secrets",
            "events",
            "streams",
            "webhook_deliveries",
        ):
            db.execute(f"DROP TABLE {table}")
        db.execute("DROP INDEX jobs_finished")
        db.execute("PRAGMA user_version = 1")
        db.commit()
    store = SqliteSecretStore(path, KEY)
    await store.put("p", "TOKEN", "a-secret-value")
    assert await store.resolve("p") == {"TOKEN": "a-secret-value"}
    await store.close()
    assert user_version(path) == SCHEMA_VERSION == 6
    with contextlib.closing(sqlite3.connect(path)) as db:  # schema 5: webhooks; 6: the event log
        assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM webhook_deliveries").fetchone()[0] == 0
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
    assert user_version(path) == SCHEMA_VERSION == 6
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
    assert user_version(path) == SCHEMA_VERSION == 6
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


# Storage errors (issue 10): a locked, full or failing file is `queue_unavailable` (503) and the runner waits.


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another process's exclusive transaction on the file (nobody else can write until it ends)."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        other.execute("ROLLBACK")
        other.close()


async def test_a_locked_file_is_queue_unavailable_and_the_api_answers_503(tmp_path: Path) -> None:
    path = tmp_path / "data" / "queue.sqlite3"
    db = SqliteDatabase(path, busy_timeout_s=0.1)
    settings = Settings(data_dir=tmp_path / "data", providers=("scripted",), allowed_hosts=("127.0.0.1",))
    container = await build(
        settings, queue=SqliteWorkQueue(db), streams=SqliteEventStream(db), with_workers=False
    )
    runner = web.AppRunner(container.app(), shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = AgentdClient(f"http://127.0.0.1:{runner.addresses[0][1]}")
    try:
        with locked(path):
            with pytest.raises(ApiError) as err:
                await client.submit("p", "hello")
            assert (err.value.status, err.value.code) == (503, "queue_unavailable")
            assert "unavailable" in err.value.message
        job = await client.submit("p", "hello")  # the lock is gone: it works again
        assert job["status"] == "queued"
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_full_disk_is_queue_unavailable(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "queue.sqlite3")
    queue = SqliteWorkQueue(db)
    pages = db.tx(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    db.tx(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))  # SQLITE_FULL on the next new page
    with pytest.raises(QueueUnavailable, match="full"):
        await queue.enqueue(
            AgentRequest(project_id="p", prompt="x" * 200_000), provider="s", job_id="j", stream_id="s"
        )
    await queue.close()


async def test_the_runner_waits_out_a_locked_file_and_the_job_ends_once(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    db = SqliteDatabase(path, busy_timeout_s=0.05)
    queue, streams = SqliteWorkQueue(db), SqliteEventStream(db, poll_s=0.05)
    agent = ScriptedCodeAgent()
    registry = ProviderRegistry()
    registry.register(agent)
    runner = Runner(queue, streams, registry, poll_s=0.05, heartbeat_s=5, sweep_s=0.1)
    service = JobService(queue, streams, registry, runner)
    await runner.start()
    try:
        job, _ = await service.submit(AgentRequest(project_id="p", prompt="sleep:0.5"))

        async def running() -> bool:
            return (await queue.get("p", job.id)).status == JobStatus.running

        await until(running, "the job to run")
        with locked(path):  # the run ends while storage is unusable: its result must wait, not be lost
            await asyncio.sleep(1.5)

        async def ended() -> bool:
            return (await queue.get("p", job.id)).status.is_final

        await until(ended, "the job to end once the file is usable again")
    finally:
        await runner.stop(1)
    final = await queue.get("p", job.id)
    assert final.status == JobStatus.succeeded and final.attempts == 1
    kinds = [e.event.event async for e in streams.subscribe(job.stream_id)]
    assert kinds.count("done") == 1 and kinds[-1] == "done"
    await streams.close()
    await queue.close()


async def test_a_schema_4_file_gets_the_webhook_table_and_keeps_its_jobs(tmp_path: Path) -> None:
    from agentd.adapters.embedded.sqlite_webhook_outbox import SqliteWebhookOutbox

    path = tmp_path / "queue.sqlite3"
    queue = SqliteWorkQueue(path)
    await queue.enqueue(AgentRequest(project_id="p", prompt="x"), provider="s", job_id="j1", stream_id="s1")
    await queue.close()
    with contextlib.closing(sqlite3.connect(path)) as db:  # as agentd before webhooks left it
        for table in ("webhook_deliveries", "events", "streams"):
            db.execute(f"DROP TABLE {table}")
        db.execute("DROP INDEX jobs_finished")
        db.execute("PRAGMA user_version = 4")
        db.commit()
    outbox = SqliteWebhookOutbox(path)
    assert await outbox.list_for_job("j1") == []
    await outbox.close()
    assert user_version(path) == SCHEMA_VERSION == 6
    reopened = SqliteWorkQueue(path)
    assert (await reopened.get("p", "j1")).id == "j1"
    await reopened.close()


@pytest.mark.parametrize(
    "missing",
    [("webhook_deliveries",), ("events", "streams")],
    ids=["schema-5-with-fencing", "schema-5-with-webhooks"],
)
async def test_a_schema_5_file_gets_what_it_lacks_and_keeps_what_it_has(
    tmp_path: Path, missing: tuple[str, ...]
) -> None:
    """Version 5 was the event log (fencing) on one branch and webhooks on the other: either upgrades to 6."""
    from agentd.adapters.embedded.sqlite_webhook_outbox import SqliteWebhookOutbox

    path = tmp_path / "queue.sqlite3"
    db = SqliteDatabase(path)
    queue, streams = SqliteWorkQueue(db), SqliteEventStream(db)
    await queue.enqueue(AgentRequest(project_id="p", prompt="x"), provider="s", job_id="j1", stream_id="s1")
    await streams.close()
    await queue.close()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        raw.execute("INSERT INTO streams (stream_id, created_at, run) VALUES ('kept', 0, 1)")
        for table in missing:
            raw.execute(f"DROP TABLE {table}")
        raw.execute("PRAGMA user_version = 5")
        raw.commit()
    outbox = SqliteWebhookOutbox(path)
    assert await outbox.list_for_job("j1") == []
    await outbox.close()
    assert user_version(path) == SCHEMA_VERSION == 6
    with contextlib.closing(sqlite3.connect(path)) as raw:
        kept = raw.execute("SELECT count(*) FROM streams WHERE stream_id = 'kept'").fetchone()[0]
        assert kept == (0 if "streams" in missing else 1)
        assert raw.execute("SELECT count(*) FROM events").fetchone()[0] == 0
        assert "run" in [r[1] for r in raw.execute("PRAGMA table_info(events)")]
    reopened = SqliteWorkQueue(path)
    assert (await reopened.get("p", "j1")).id == "j1"
    await reopened.close()
