"""PostgreSQL adapters: the work queue, the durable event log and the secret store, for many processes on many
machines.

`open_postgres` and `open_postgres_secrets` are what the composition root calls; `migrate` is what
`agentd migrate` runs.
"""

from __future__ import annotations

from agentd.adapters.postgres.database import PgDatabase
from agentd.adapters.postgres.migrate import check_schema, migrate
from agentd.adapters.postgres.postgres_event_stream import PostgresEventStream
from agentd.adapters.postgres.postgres_key_store import PostgresKeyStore
from agentd.adapters.postgres.postgres_project_store import PostgresProjectStore
from agentd.adapters.postgres.postgres_run_journal import PostgresRunJournal
from agentd.adapters.postgres.postgres_secret_store import PostgresSecretStore
from agentd.adapters.postgres.postgres_work_queue import PostgresWorkQueue
from agentd.adapters.postgres.queries import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "PgDatabase",
    "PostgresEventStream",
    "PostgresKeyStore",
    "PostgresProjectStore",
    "PostgresRunJournal",
    "PostgresSecretStore",
    "PostgresWorkQueue",
    "check_schema",
    "migrate",
    "open_postgres",
    "open_postgres_keys",
    "open_postgres_secrets",
]


async def open_postgres(
    dsn: str,
    *,
    lease_s: float = 30.0,
    max_attempts: int = 3,
    retry_base_s: float = 2.0,
    requeue_delay_s: float | None = None,
    retention_s: float = 3600.0,
    subscriber_buffer: int = 1000,
    pool_size: int = 10,
    listen_events: bool = True,
) -> tuple[PostgresWorkQueue, PostgresEventStream]:
    """The queue and the event log on one shared pool and listener connection (closed by the last `close`).

    Raises SchemaMismatch when the schema is missing or not this agentd's (run `agentd migrate`), and
    QueueUnavailable when the database cannot be reached. `listen_events` False: other processes' event
    NOTIFYs are heard only once this process has a subscriber (PostgresEventStream.expect_subscribers).
    """
    db = PgDatabase(dsn, pool_size=pool_size, listen_events=listen_events)
    queue = PostgresWorkQueue(
        db,
        lease_s=lease_s,
        max_attempts=max_attempts,
        retry_base_s=retry_base_s,
        requeue_delay_s=requeue_delay_s,
    )
    streams = PostgresEventStream(db, retention_s=retention_s, buffer=subscriber_buffer)
    await queue.open()
    try:
        await streams.open()
    except BaseException:
        await queue.close()
        raise
    return queue, streams


async def open_postgres_secrets(db: PgDatabase, master_key: bytes | None) -> PostgresSecretStore:
    """The secret store on an open `PgDatabase` (the queue's: `queue.db`); closed by its own `close`.

    Without a master key every call of the store raises SecretsUnavailable.
    """
    store = PostgresSecretStore(db, master_key)
    await store.open()
    return store


async def open_postgres_keys(db: PgDatabase) -> PostgresKeyStore:
    """The key store on a `PgDatabase` (the queue's: `queue.db`); closed by its own `close`."""
    store = PostgresKeyStore(db)
    await store.open()
    return store
