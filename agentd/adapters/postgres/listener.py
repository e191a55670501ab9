"""One dedicated LISTEN connection per process, shared by the queue and the event log.

It never runs queries for anybody else (a psycopg connection waiting in `notifies()` holds its lock, so a
query on it would wait for the next notification). It reconnects on its own when the connection drops; while
it is down, and right after it is back, callers are told about the gap (`on_gap`) so that they poll instead
of waiting for a notification that may never come.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection

import psycopg
import structlog
from psycopg import sql

log = structlog.get_logger(__name__)

NotifyHandler = Callable[[str], None]  # gets the payload


class Listener:
    def __init__(
        self,
        conninfo: str,
        handlers: dict[str, NotifyHandler],
        on_gap: Callable[[], None],
        *,
        idle_check_s: float = 30.0,
        max_backoff_s: float = 5.0,
        channels: Collection[str] | None = None,
    ) -> None:
        """`channels`: those to LISTEN on from the start (default: every one with a handler); `listen` adds
        more later."""
        self._conninfo = conninfo
        self._handlers = handlers
        self._channels = set(handlers if channels is None else channels)
        self._retired: set[asyncio.Task[None]] = set()  # connections replaced by `listen`, closing
        self._on_gap = on_gap
        self._idle_check_s = idle_check_s
        self._max_backoff_s = max_backoff_s
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        self.reconnects = 0

    async def start(self, wait_s: float = 5.0) -> None:
        """Start listening; wait (a bounded time) for the first connection. Polling covers the rest."""
        self._task = asyncio.create_task(self._run(), name="agentd-postgres-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), wait_s)

    def listen(self, channel: str) -> None:
        """LISTEN on `channel` too, from now on. A running listener moves to a new connection that listens on
        every channel (the current one cannot take a query while it waits for notifications); callers hear
        of the gap as after any reconnect (`on_gap`), so nothing sent meanwhile goes unnoticed."""
        if channel in self._channels:
            return
        self._channels.add(channel)
        if self._task is None:
            return
        old = self._task
        self.connected.clear()
        self.backend_pid = None
        self._task = asyncio.create_task(self._run(), name="agentd-postgres-listener")
        old.cancel()
        self._retired.add(old)
        old.add_done_callback(self._retired.discard)

    async def stop(self) -> None:
        for old in list(self._retired):
            old.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await old
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected.clear()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                for channel in sorted(self._channels):
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                self.backend_pid = conn.info.backend_pid
                if self.reconnects:
                    log.info("postgres.listener_reconnected", backend_pid=self.backend_pid)
                self.connected.set()
                backoff = 0.1
                self._on_gap()  # notifications sent while we were away are lost: everyone looks once
                await self._listen(conn)
            except psycopg.Error as e:
                lost = self.connected.is_set()
                self.connected.clear()
                self.backend_pid = None
                if lost:
                    self.reconnects += 1
                    self._on_gap()
                    log.warning("postgres.listener_lost", error=str(e).strip())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff_s)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()

    async def _listen(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        while True:
            async for note in conn.notifies(timeout=self._idle_check_s):
                handler = self._handlers.get(note.channel)
                if handler is not None:
                    try:
                        handler(note.payload)
                    except Exception:  # one bad handler must not stop the wake-ups of everybody else
                        log.exception("postgres.notify_handler_failed", channel=note.channel)
            # A quiet connection may be a dead one (a half-open TCP connection never errors by itself).
            await conn.execute("SELECT 1")
