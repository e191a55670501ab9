"""The embedded event log: every job's stream in the SQLite file of the embedded queue (same database).

A restarted `agentd serve` serves every stream it had, replay included. One process writes this file (the
data dir is locked by `agentd serve`), so subscribers wake on in-process signals, with polling as the
fallback; they keep only a position, never a copy of the log. Every write is one transaction
(agentd.adapters.embedded.database): numbering, the fencing check (a stream keeps the newest run that wrote
to it, older runs are refused) and the insert never interleave. The SQL is in sql/events.sql.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

from agentd.adapters.embedded.database import SqliteDatabase, queries
from agentd.domain.errors import RunSuperseded, StreamNotFound, SubscriberTooSlow
from agentd.domain.models import AgentEvent, StoredEvent, event_from_data
from agentd.ports.event_stream import EventStream

Q = queries("events")
PAGE = 500
PRUNE_BATCH = 500


def _not_found(stream_id: str) -> StreamNotFound:
    return StreamNotFound(f"no event stream {stream_id!r} (unknown, or its retention period is over)")


def _rows(events: Sequence[AgentEvent]) -> list[tuple[str, str]]:
    return [(ev.event, ev.model_dump_json(exclude={"event"})) for ev in events]


def _insert(db: sqlite3.Connection, stream_id: str, rows: list[tuple[str, str]], run: int) -> list[int]:
    head = int(db.execute(Q["head"], {"stream_id": stream_id}).fetchone()[0])
    seqs = list(range(head + 1, head + 1 + len(rows)))
    db.executemany(
        Q["insert_event"],
        [
            {"stream_id": stream_id, "seq": seq, "type": etype, "data": data, "run": run}
            for seq, (etype, data) in zip(seqs, rows, strict=True)
        ],
    )
    return seqs


class SqliteEventStream(EventStream):
    def __init__(
        self,
        db: SqliteDatabase | Path,
        *,
        retention_s: float = 3600.0,
        buffer: int = 1000,
        poll_s: float = 1.0,
    ) -> None:
        """`db`: the queue's database (`SqliteWorkQueue(...).db`) or a file path."""
        self.db = db if isinstance(db, SqliteDatabase) else SqliteDatabase(db)
        self.db.acquire()
        self.retention_s = retention_s
        self.buffer = buffer
        self.poll_s = poll_s
        self._changed: dict[str, asyncio.Event] = {}  # per followed stream: set (and replaced) on a write
        self._followers: dict[str, int] = {}

    def _wake(self, stream_id: str) -> None:
        ev = self._changed.pop(stream_id, None)
        if ev is not None:
            ev.set()

    async def create(self, stream_id: str, first: Sequence[AgentEvent] = ()) -> None:
        rows = _rows(first)

        def op(db: sqlite3.Connection) -> None:
            if db.execute(Q["create_stream"], {"stream_id": stream_id, "now": time.time()}).rowcount and rows:
                _insert(db, stream_id, rows, 0)

        await self.db.run(op)
        self._wake(stream_id)

    async def publish(self, stream_id: str, events: Sequence[AgentEvent], *, run: int = 0) -> list[int]:
        rows = _rows(events)

        def op(db: sqlite3.Connection) -> list[int]:
            state = db.execute(Q["stream"], {"stream_id": stream_id}).fetchone()
            if state is None:
                raise _not_found(stream_id)
            if state["closed_at"] is not None:
                raise StreamNotFound(f"event stream {stream_id!r} is closed")
            if run and run < state["run"]:
                raise RunSuperseded(f"run {run} of stream {stream_id!r} was superseded by run {state['run']}")
            if run > state["run"]:
                db.execute(Q["set_run"], {"stream_id": stream_id, "run": run})
            return _insert(db, stream_id, rows, run) if rows else []

        seqs = await self.db.run(op)
        if seqs:
            self._wake(stream_id)
        return seqs

    async def supersede(self, stream_id: str, run: int, events: Sequence[AgentEvent]) -> bool:
        rows = _rows(events)

        def op(db: sqlite3.Connection) -> bool:
            state = db.execute(Q["stream"], {"stream_id": stream_id}).fetchone()
            if state is None:
                raise _not_found(stream_id)
            if state["closed_at"] is not None or state["run"] >= run:
                return False
            db.execute(Q["set_run"], {"stream_id": stream_id, "run": run})
            _insert(db, stream_id, rows, run)
            return True

        done = await self.db.run(op)
        if done:
            self._wake(stream_id)
        return done

    async def close_stream(self, stream_id: str) -> None:
        params = {"stream_id": stream_id, "now": time.time()}
        if not await self.db.run(lambda db: db.execute(Q["close_stream"], params).rowcount):
            raise _not_found(stream_id)
        self._wake(stream_id)

    async def last_seq(self, stream_id: str) -> int:
        def op(db: sqlite3.Connection) -> int:
            if db.execute(Q["stream"], {"stream_id": stream_id}).fetchone() is None:
                raise _not_found(stream_id)
            return int(db.execute(Q["head"], {"stream_id": stream_id}).fetchone()[0])

        return await self.db.run(op)

    async def subscribe(self, stream_id: str, *, after: int = 0) -> AsyncIterator[StoredEvent]:
        pos = max(0, after)
        replay_until: int | None = None  # past this point the subscriber follows live events

        def page(db: sqlite3.Connection, pos: int) -> tuple[bool, bool, int, list[sqlite3.Row]]:
            state = db.execute(Q["stream"], {"stream_id": stream_id}).fetchone()
            if state is None:
                return False, False, 0, []
            head = int(db.execute(Q["head"], {"stream_id": stream_id}).fetchone()[0])
            rows = db.execute(
                Q["read_events"], {"stream_id": stream_id, "after": pos, "limit": PAGE}
            ).fetchall()
            return True, state["closed_at"] is not None, head, rows

        with self._following(stream_id):
            while True:
                # Taken before reading: a write after the read wakes it.
                changed = self._changed.setdefault(stream_id, asyncio.Event())
                exists, closed, head, rows = await self.db.run(lambda db, pos=pos: page(db, pos))  # type: ignore[misc]
                if not exists:
                    if replay_until is None:
                        raise _not_found(stream_id)
                    return  # pruned while followed
                if replay_until is None:
                    replay_until = head
                if pos >= replay_until and head - pos > self.buffer:
                    raise SubscriberTooSlow(
                        f"subscriber fell {head - pos} events behind on {stream_id!r}; "
                        f"reconnect with Last-Event-ID: {pos}"
                    )
                for r in rows:
                    yield StoredEvent(seq=r["seq"], event=event_from_data(r["type"], json.loads(r["data"])))
                    pos = r["seq"]
                if len(rows) == PAGE:
                    continue
                if closed:
                    return
                try:
                    await asyncio.wait_for(changed.wait(), self.poll_s)
                except TimeoutError:
                    pass

    @contextlib.contextmanager
    def _following(self, stream_id: str) -> Iterator[None]:
        self._followers[stream_id] = self._followers.get(stream_id, 0) + 1
        try:
            yield
        finally:
            left = self._followers.pop(stream_id, 1) - 1
            if left:
                self._followers[stream_id] = left
            else:
                self._changed.pop(stream_id, None)  # nobody follows it here any more

    async def prune(self) -> int:
        total = 0
        while True:
            params = {"cutoff": time.time() - self.retention_s, "batch": PRUNE_BATCH}

            def op(db: sqlite3.Connection, params: dict[str, float] = params) -> int:
                dead = [r[0] for r in db.execute(Q["expired_streams"], params).fetchall()]
                for sid in dead:
                    db.execute(Q["delete_events"], {"stream_id": sid})
                    db.execute(Q["delete_stream"], {"stream_id": sid})
                return len(dead)

            pruned = await self.db.run(op)
            total += pruned
            if pruned < PRUNE_BATCH:
                return total

    async def close(self) -> None:
        for ev in self._changed.values():
            ev.set()
        self._changed.clear()
        await self.db.close()
