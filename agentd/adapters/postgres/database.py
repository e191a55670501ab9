"""The PostgreSQL resources of one process: a connection pool for queries and one listener connection.

The work queue and the event log share one `PgDatabase` (ref-counted: each adapter opens and closes it).
This is the one place where psycopg's connection errors become `QueueUnavailable` (the API answers 503).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import psycopg
import psycopg_pool
import structlog
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import set_json_loads

from agentd.adapters.json_codec import loads as json_loads
from agentd.adapters.postgres.errors import describe, translate_errors, with_keepalives
from agentd.adapters.postgres.listener import Listener, NotifyHandler
from agentd.adapters.postgres.migrate import check_schema

log = structlog.get_logger(__name__)

JOBS_CHANNEL = "agentd_jobs"
EVENTS_CHANNEL = "agentd_events"
Connection = psycopg.AsyncConnection[DictRow]


async def _configure(conn: Connection) -> None:
    """Each pooled connection reads json and jsonb with orjson, with the stdlib's results
    (agentd.adapters.json_codec)."""
    set_json_loads(json_loads, conn)


class PgDatabase:
    def __init__(
        self,
        conninfo: str,
        *,
        pool_size: int = 10,
        pool_timeout_s: float = 10.0,
        listen: bool = True,
        listen_events: bool = True,
    ) -> None:
        """`listen`: with a listener connection at all; `listen_events`: LISTEN on EVENTS_CHANNEL from the
        start, else only once somebody here follows a stream (`listen_to`): a process that only writes
        events (a worker) does not receive every NOTIFY it sends."""
        self.conninfo = with_keepalives(conninfo)
        self.where = describe(conninfo)
        self.pool: psycopg_pool.AsyncConnectionPool[Connection] = psycopg_pool.AsyncConnectionPool(
            self.conninfo,
            connection_class=Connection,
            kwargs={"autocommit": True, "row_factory": dict_row},
            configure=_configure,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=pool_timeout_s,
            open=False,
            name="agentd",
        )
        self._handlers: dict[str, list[NotifyHandler]] = {JOBS_CHANNEL: [], EVENTS_CHANNEL: []}
        self._gap_handlers: list[Callable[[], None]] = []
        self.listener: Listener | None = None
        if listen:
            self.listener = Listener(
                self.conninfo,
                {channel: self._dispatcher(channel) for channel in self._handlers},
                self._gap,
                channels=list(self._handlers) if listen_events else [JOBS_CHANNEL],
            )
        self._users = 0

    def on_notify(self, channel: str, handler: NotifyHandler) -> None:
        self._handlers[channel].append(handler)

    def listen_to(self, channel: str) -> None:
        """LISTEN on `channel` from now on, if not already (Listener.listen)."""
        if self.listener is not None:
            self.listener.listen(channel)

    def on_gap(self, handler: Callable[[], None]) -> None:
        """Called when notifications may have been missed (listener down or just reconnected)."""
        self._gap_handlers.append(handler)

    def _dispatcher(self, channel: str) -> NotifyHandler:
        def dispatch(payload: str) -> None:
            for handler in self._handlers[channel]:
                handler(payload)

        return dispatch

    def _gap(self) -> None:
        for handler in self._gap_handlers:
            handler()

    async def open(self) -> None:
        """First caller opens the pool, checks the schema and starts the listener."""
        self._users += 1
        if self._users > 1:
            return
        try:
            async with translate_errors(self.where):
                await self.pool.open(wait=True, timeout=self.pool.timeout)
                async with self.pool.connection() as conn:
                    await check_schema(conn)
            if self.listener is not None:
                await self.listener.start()
        except BaseException:
            self._users = 0
            await self.pool.close()
            raise
        log.info("postgres.opened", database=self.where, pool_size=self.pool.max_size)

    async def close(self) -> None:
        """Last caller stops the listener and closes the pool."""
        if self._users == 0:
            return
        self._users -= 1
        if self._users:
            return
        if self.listener is not None:
            await self.listener.stop()
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with translate_errors(self.where), self.pool.connection() as conn:
            yield conn
