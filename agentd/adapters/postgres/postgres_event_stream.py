"""Durable event streams on PostgreSQL: any process may publish to a stream, any API replica may serve it.

Publishing: `publish` returns once its events are committed (a subscriber anywhere can then read them). One
flusher per process writes everything pending, for all streams, in ONE multi-row INSERT; while it runs the
next batch accumulates (no timer, no added latency), so a busy process writes one statement per round, not
one per event. Sequence numbers come from a per-process counter per stream, started from max(seq) in the
table the first time this process writes to that stream (the API writes seq 1 at submit; the worker that
claims the job, possibly on another machine, continues). Should another process write to the same stream
(a retried job that moved between workers, a sweeper announcing a lost worker), the primary key refuses the
batch; it is then numbered again from the table under per-stream advisory locks, which every writer takes,
so the writers of a shared stream take turns instead of colliding again. One
`pg_notify('agentd_events', stream_id)` per stream per batch, in a statement of its own right after the
batch's commit (a write that notified would hold PostgreSQL's notify lock through its commit: writers would
commit one at a time).

Fencing: each publish carries its run (the job's attempt; 0 for the API). The INSERT refuses rows of a run
older than the stream's newest one (`agentd_streams.run`, moved up in the same statement) and numbers the
accepted rows itself, so a refused publish (RunSuperseded) leaves no gap. A stale writer that raced the
newer run is caught by the primary key (both numbered from the same head) and, renumbered under the
streams' locks, refused.

Subscribing: replay from the table, then follow: wake-ups come from the process's LISTEN connection (one for
all subscribers), with polling as the fallback. Subscribers keep only a position, never a copy of the log.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from psycopg import errors as pg_errors
from psycopg.rows import DictRow

from agentd.adapters.postgres.database import EVENTS_CHANNEL, Connection, PgDatabase
from agentd.adapters.postgres.nul import from_jsonb, to_jsonb
from agentd.adapters.postgres.queries import QUERIES
from agentd.domain.errors import QueueUnavailable, RunSuperseded, StreamNotFound, SubscriberTooSlow
from agentd.domain.models import AgentEvent, StoredEvent, event_from_data
from agentd.ports.event_stream import EventStream

PAGE = 500
log = structlog.get_logger(__name__)
MAX_COUNTERS = 10_000
# NOTIFY is rate-limited per stream with a token bucket: a burst of NOTIFY_BURST batches (a job's first
# events: running, session, first text) wakes other processes at once; after that at most one NOTIFY per
# NOTIFY_DEBOUNCE_S, the batches in between covered by one trailing NOTIFY. A token stream costs ~50
# NOTIFYs per second, never one per event.
NOTIFY_DEBOUNCE_S = 0.02
NOTIFY_BURST = 4.0
# Between two statements of NOTIFYs sent right after their batches' commit (`_notify_soon`), at least this
# long: under load the NOTIFYs of the batches written meanwhile wait at most this much and go out together.
NOTIFY_GAP_S = 0.004
RENUMBER_TRIES = 5
PRUNE_BATCH = 1000


def _not_found(stream_id: str) -> StreamNotFound:
    return StreamNotFound(f"no event stream {stream_id!r} (unknown, or its retention period is over)")


@dataclass
class _Publish:
    stream_id: str
    rows: list[tuple[str, str]]  # (type, data as JSON)
    run: int
    close: bool = False  # not events: close the stream (after the batch's events before it)
    done: asyncio.Future[list[int]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Numbered:
    """A batch with its sequence numbers: the INSERT's columns, each publish's numbers, the new heads."""

    columns: dict[str, list[Any]]
    ords: list[list[int]]  # each publish's rows (1-based positions in the batch)
    seq_of: dict[int, int] = field(default_factory=dict)  # accepted row → its sequence number

    closed: set[str] = field(default_factory=set)  # the streams this batch closed
    told: list[str] = field(default_factory=list)  # streams whose subscribers elsewhere hear of it now

    def written(self, rows: list[DictRow]) -> _Numbered:
        self.seq_of = {int(r["ord"]): int(r["seq"]) for r in rows if r["ord"] is not None}
        self.closed = {r["closed_id"] for r in rows if r["closed_id"] is not None}
        return self

    def seqs(self, i: int) -> list[int] | None:
        """The numbers of the i-th publish, or None when it was refused."""
        ords = self.ords[i]
        if ords and all(o in self.seq_of for o in ords):
            return [self.seq_of[o] for o in ords]
        return None

    def heads(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for sid, o in zip(
            self.columns["stream_ids"], range(1, len(self.columns["stream_ids"]) + 1), strict=True
        ):
            if o in self.seq_of:
                out[sid] = max(out.get(sid, 0), self.seq_of[o])
        return out


def _number(batch: list[_Publish], heads: dict[str, int | None], notify: list[str]) -> _Numbered:
    """`heads`: where each stream's numbering continues; None: not known here, the statement reads it."""
    cols: dict[str, list[Any]] = {
        "stream_ids": [],
        "bases": [],
        "runs": [],
        "types": [],
        "datas": [],
        "notify_ids": notify,
        "close_ids": [item.stream_id for item in batch if item.close],
    }
    out = _Numbered(cols, [])
    for item in batch:
        first = len(cols["stream_ids"]) + 1
        out.ords.append(list(range(first, first + len(item.rows))))
        cols["stream_ids"].extend([item.stream_id] * len(item.rows))
        cols["bases"].extend([heads[item.stream_id]] * len(item.rows))
        cols["runs"].extend([item.run] * len(item.rows))
        cols["types"].extend(etype for etype, _ in item.rows)
        cols["datas"].extend(data for _, data in item.rows)
    return out


def _split_after_close(pending: list[_Publish]) -> tuple[list[_Publish], list[_Publish]]:
    """The next batch: everything pending, unless something comes after a close of its stream (a publish to
    a closed stream must fail): then the batch ends with that close."""
    closed: set[str] = set()
    for i, item in enumerate(pending):
        if item.stream_id in closed:
            return pending[:i], pending[i:]
        if item.close:
            closed.add(item.stream_id)
    return pending, []


class _Waiters:
    """Per-stream wake-ups for this process's subscribers: an Event replaced after each wake."""

    def __init__(self) -> None:
        self._streams: dict[str, tuple[int, asyncio.Event]] = {}

    def join(self, stream_id: str) -> None:
        count, event = self._streams.get(stream_id, (0, asyncio.Event()))
        self._streams[stream_id] = (count + 1, event)

    def leave(self, stream_id: str) -> None:
        count, event = self._streams[stream_id]
        if count <= 1:
            del self._streams[stream_id]
        else:
            self._streams[stream_id] = (count - 1, event)

    def current(self, stream_id: str) -> asyncio.Event:
        return self._streams[stream_id][1]

    def wake(self, stream_id: str) -> None:
        entry = self._streams.get(stream_id)
        if entry is not None:
            entry[1].set()
            self._streams[stream_id] = (entry[0], asyncio.Event())

    def wake_all(self) -> None:
        for stream_id in list(self._streams):
            self.wake(stream_id)


class PostgresEventStream(EventStream):
    # Publishes and closes are stored in the order they were called (one writer, batched): a caller may
    # issue several at once and have them share a statement (agentd.services.runner).
    writes_in_order = True

    def __init__(
        self, db: PgDatabase, *, retention_s: float = 3600.0, buffer: int = 1000, poll_s: float = 1.0
    ) -> None:
        self.db = db
        self.retention_s = retention_s
        self.buffer = buffer
        self.poll_s = poll_s
        self._heads: OrderedDict[str, int] = OrderedDict()  # last seq this process knows, per stream
        self._contended: set[str] = set()  # streams another process writes to as well
        self._pending: list[_Publish] = []
        self._inflight: list[_Publish] = []
        self._flusher: asyncio.Task[None] | None = None
        self._waiters = _Waiters()
        self.batches = 0  # statements written (observability and tests)
        self.notifies = 0  # NOTIFYs sent by this process (observability and tests)
        self._bucket: dict[str, tuple[float, float]] = {}  # stream → (tokens, when counted)
        self._trailing: set[str] = set()
        self._trailer: asyncio.Task[None] | None = None
        self._soon: set[str] = set()  # streams to NOTIFY now, after their batch's commit
        self._notifier: asyncio.Task[None] | None = None
        self._notified_at = -NOTIFY_GAP_S  # when the last `_notify_soon` statement was sent
        db.on_notify(EVENTS_CHANNEL, self._waiters.wake)
        db.on_gap(self._waiters.wake_all)

    async def open(self) -> None:
        await self.db.open()

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._trailer is not None:
            await asyncio.gather(self._trailer, return_exceptions=True)
        if self._notifier is not None:
            await asyncio.gather(self._notifier, return_exceptions=True)
        self._waiters.wake_all()
        await self.db.close()

    async def _all(self, query: str, params: dict[str, Any]) -> list[DictRow]:
        async with self.db.connection() as conn:
            cur = await conn.execute(QUERIES[query], params)
            return await cur.fetchall()

    async def create(self, stream_id: str, first: Sequence[AgentEvent] = ()) -> None:
        rows = [(ev.event, to_jsonb(ev.model_dump_json(exclude={"event"}))) for ev in first]
        params = {
            "stream_id": stream_id,
            "types": [t for t, _ in rows],
            "datas": [d for _, d in rows],
        }
        async with self.db.connection() as conn:
            # One statement: the stream row and its first events (when new), so a submit costs one trip.
            cur = await conn.execute(QUERIES["create_stream"], params)
            if await cur.fetchone() is not None:
                self._heads[stream_id] = len(rows)  # new: numbering continues here without asking
                self._heads.move_to_end(stream_id)
                if rows:
                    self._spend(stream_id, time.monotonic())

    async def _state(self, stream_id: str) -> DictRow:
        rows = await self._all("stream_state", {"stream_id": stream_id})
        if not rows:
            raise _not_found(stream_id)
        return rows[0]

    async def last_seq(self, stream_id: str) -> int:
        return int((await self._state(stream_id))["head"])

    async def publish(self, stream_id: str, events: Sequence[AgentEvent], *, run: int = 0) -> list[int]:
        if not events:
            if (await self._state(stream_id))["closed"]:
                raise StreamNotFound(f"event stream {stream_id!r} is closed")
            return []
        item = _Publish(
            stream_id, [(ev.event, to_jsonb(ev.model_dump_json(exclude={"event"}))) for ev in events], run
        )
        self._pending.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="agentd-event-flusher")
        return await item.done

    async def _flush(self) -> None:
        while self._pending:
            self._inflight, self._pending = _split_after_close(self._pending)
            try:
                await self._write(self._inflight)
            except Exception as e:  # storage down (QueueUnavailable) or a bug: every publisher hears it
                for item in self._inflight:
                    if not item.done.done():
                        item.done.set_exception(e)
            except BaseException:  # cancelled: no publisher may wait forever for an answer
                for item in self._inflight + self._pending:
                    if not item.done.done():
                        item.done.set_exception(QueueUnavailable("the event writer was stopped"))
                self._pending = []
                raise
            finally:
                self._inflight = []

    def _known_heads(self, stream_ids: list[str]) -> dict[str, int | None]:
        """This process's counters; None for a stream it has not written yet: the INSERT numbers it from the
        table's max(seq) in the same statement (no extra round trip; a race is caught by the primary key)."""
        return {s: self._heads.get(s) for s in stream_ids}

    async def _heads_for(self, conn: Connection, stream_ids: list[str], *, fresh: bool) -> dict[str, int]:
        """Where each stream's numbering continues: this process's counter, or the table's max(seq)."""
        unknown = stream_ids if fresh else [s for s in stream_ids if s not in self._heads]
        if unknown:
            cur = await conn.execute(QUERIES["last_seqs"], {"stream_ids": unknown})
            found = {r["stream_id"]: int(r["head"]) for r in await cur.fetchall()}
            for s in unknown:
                self._heads[s] = found.get(s, 0)
        return {s: self._heads[s] for s in stream_ids}

    async def _append(self, batch: list[_Publish], stream_ids: list[str], *, serialised: bool) -> _Numbered:
        """One INSERT for the whole batch. `serialised`: after a numbering conflict, take the streams' locks
        and number from the table in the same transaction, so that writers that collided take turns."""
        async with self.db.connection() as conn:
            # The NOTIFYs go out after the commit, in a statement of their own (`_notify_soon`): a
            # transaction that notifies holds PostgreSQL's notify lock through its commit, so writes that
            # notify commit one at a time, each waiting for the last one's WAL flush.
            notify = self._notify_now(stream_ids)
            if not serialised:
                numbered = _number(batch, self._known_heads(stream_ids), [])
                numbered.told = notify
                cur = await conn.execute(QUERIES["append_events"], numbered.columns)
                return numbered.written(await cur.fetchall())
            async with conn.transaction():
                await conn.execute(QUERIES["lock_streams"], {"stream_ids": sorted(stream_ids)})
                heads: dict[str, int | None] = {**await self._heads_for(conn, stream_ids, fresh=True)}
                numbered = _number(batch, heads, [])
                numbered.told = notify
                cur = await conn.execute(QUERIES["append_events"], numbered.columns)
                return numbered.written(await cur.fetchall())

    async def _append_retrying(self, batch: list[_Publish], stream_ids: list[str]) -> _Numbered:
        serialised = not self._contended.isdisjoint(stream_ids)
        for _ in range(RENUMBER_TRIES):
            try:
                numbered = await self._append(batch, stream_ids, serialised=serialised)
            except pg_errors.UniqueViolation:
                # Another process wrote to one of these streams since this one last did: from now on the
                # writers of these streams take turns (both sides switch after their first collision).
                if len(self._contended) > MAX_COUNTERS:
                    self._contended.clear()
                self._contended.update(stream_ids)
                serialised = True
                continue
            except BaseException:
                for s in stream_ids:  # the batch may or may not be stored: re-read the heads next time
                    self._heads.pop(s, None)
                raise
            return numbered
        raise QueueUnavailable(f"could not number events: other processes keep writing to {stream_ids}")

    async def _write(self, batch: list[_Publish]) -> None:
        stream_ids = list(dict.fromkeys(item.stream_id for item in batch))
        numbered = await self._append_retrying(batch, stream_ids)
        self.batches += 1
        heads = numbered.heads()
        self._after_write(numbered, set(heads))
        for s in stream_ids:
            if s in heads:
                self._heads[s] = heads[s]
                self._heads.move_to_end(s)
            else:
                self._heads.pop(s, None)
        while len(self._heads) > MAX_COUNTERS:
            self._heads.popitem(last=False)
        for s in numbered.closed:
            self._heads.pop(s, None)
            self._contended.discard(s)
        await self._settle(batch, numbered)
        for s in set(heads) | numbered.closed:  # this process's own subscribers need no NOTIFY round trip
            self._waiters.wake(s)

    async def _settle(self, batch: list[_Publish], numbered: _Numbered) -> None:
        """Answer each publisher: its numbers, or why it was refused."""
        refused: dict[str, Exception] = {}
        for i, item in enumerate(batch):
            if item.done.done():
                continue
            if item.close:
                if item.stream_id in numbered.closed:
                    item.done.set_result([])
                else:
                    item.done.set_exception(_not_found(item.stream_id))
                continue
            seqs = numbered.seqs(i)
            if seqs is not None:
                item.done.set_result(seqs)
                continue
            if item.stream_id not in refused:
                refused[item.stream_id] = await self._refusal(item.stream_id)
            item.done.set_exception(refused[item.stream_id])

    async def _refusal(self, stream_id: str) -> Exception:
        """Why a publish to `stream_id` was refused: the stream is gone or closed, or a newer run wrote."""
        try:
            state = await self._state(stream_id)
        except StreamNotFound as e:
            return e
        except Exception as e:
            return e
        if state["closed"]:
            return StreamNotFound(f"event stream {stream_id!r} is closed or unknown")
        return RunSuperseded(f"a newer run has written to stream {stream_id!r}")

    async def supersede(self, stream_id: str, run: int, events: Sequence[AgentEvent]) -> bool:
        rows: list[tuple[str, str]] = [
            (ev.event, to_jsonb(ev.model_dump_json(exclude={"event"}))) for ev in events
        ]
        mine = [item.done for item in self._inflight + self._pending if item.stream_id == stream_id]
        if mine:  # this process's earlier writes to the stream go first
            await asyncio.gather(*mine, return_exceptions=True)
        async with self.db.connection() as conn, conn.transaction():
            await conn.execute(QUERIES["lock_streams"], {"stream_ids": [stream_id]})
            cur = await conn.execute(QUERIES["stream_fence"], {"stream_id": stream_id})
            state = await cur.fetchone()
            if state is None:
                raise _not_found(stream_id)
            if state["closed"] or state["run"] >= run:
                return False
            head = (await self._heads_for(conn, [stream_id], fresh=True))[stream_id]
            numbered = _number([_Publish(stream_id, rows, run)], {stream_id: int(head)}, [stream_id])
            cur = await conn.execute(QUERIES["append_events"], numbered.columns)
            numbered.written(await cur.fetchall())
            await conn.execute(QUERIES["set_stream_run"], {"stream_id": stream_id, "run": run})
        self._heads.pop(stream_id, None)
        self._waiters.wake(stream_id)
        return True

    def _notify_now(self, stream_ids: list[str]) -> list[str]:
        """Streams whose subscribers elsewhere hear about this batch now; the rest wait for the trailer."""
        now = time.monotonic()
        return [s for s in stream_ids if s not in self._trailing and self._tokens(s, now) >= 1.0]

    def _tokens(self, stream_id: str, now: float) -> float:
        tokens, then = self._bucket.get(stream_id, (NOTIFY_BURST, now))
        return min(NOTIFY_BURST, tokens + (now - then) / NOTIFY_DEBOUNCE_S)

    def _spend(self, stream_id: str, now: float) -> None:
        self._bucket[stream_id] = (max(0.0, self._tokens(stream_id, now) - 1.0), now)

    def _after_write(self, numbered: _Numbered, written: set[str]) -> None:
        self._schedule_notifies(set(numbered.told), written, numbered.closed)

    def written_with(self, heads: Mapping[str, int], closed: Collection[str] = ()) -> None:
        """Events that another statement of this process wrote to these streams and committed (the run
        journal: a job's `running` with its claim, its `done` and the end of its stream with its result):
        `heads`, each stream's newest number now; `closed`, the streams it closed. This process's counters
        follow, its subscribers wake, and the others hear of it by NOTIFY after the commit, like after a
        batch of this writer's own."""
        for s, head in heads.items():
            self._heads[s] = head
            self._heads.move_to_end(s)
        while len(self._heads) > MAX_COUNTERS:
            self._heads.popitem(last=False)
        ended = set(closed)
        for s in ended:
            self._heads.pop(s, None)
            self._contended.discard(s)
        written = set(heads) - ended
        self._schedule_notifies(set(self._notify_now(sorted(written))), written, ended)
        for s in written | ended:
            self._waiters.wake(s)

    def _schedule_notifies(self, told: set[str], written: set[str], closed: set[str]) -> None:
        now = time.monotonic()
        for s in written:
            if s in told:
                self._spend(s, now)
                self._soon.add(s)
            else:
                self._trailing.add(s)
        self._soon.update(closed)  # an end of stream is always told at once
        if self._soon and (self._notifier is None or self._notifier.done()):
            self._notifier = asyncio.create_task(self._notify_soon(), name="agentd-notifier")
        if len(self._bucket) > MAX_COUNTERS:
            self._bucket.clear()
        if self._trailing and (self._trailer is None or self._trailer.done()):
            self._trailer = asyncio.create_task(self._trail(), name="agentd-notify-trailer")

    async def _notify_soon(self) -> None:
        """The NOTIFYs of the batches just written, right away (after their commit), all in one statement;
        those of batches written meanwhile in the next, sent NOTIFY_GAP_S after the one before it started at
        the earliest: a busy writer sends one such statement per gap, not one per batch (an idle one, at
        once)."""
        while self._soon:
            wait = self._notified_at + NOTIFY_GAP_S - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._notified_at = time.monotonic()
            ids, self._soon = sorted(self._soon), set()
            try:
                await self._all("notify_streams", {"stream_ids": ids})
            except Exception as e:  # storage down: subscribers elsewhere fall back to polling
                log.warning("events.notify_failed", error=str(e))
                return
            self.notifies += len(ids)

    async def _trail(self) -> None:
        """One NOTIFY per stream for everything written in the debounce window without one."""
        while self._trailing:
            await asyncio.sleep(NOTIFY_DEBOUNCE_S)
            ids, self._trailing = sorted(self._trailing), set()
            now = time.monotonic()
            for s in ids:  # before the await: batches written meanwhile belong to the next window
                self._spend(s, now)
            try:
                await self._all("notify_streams", {"stream_ids": ids})
            except Exception as e:  # storage down: subscribers elsewhere fall back to polling
                log.warning("events.notify_failed", error=str(e))
                return
            self.notifies += len(ids)

    async def close_stream(self, stream_id: str) -> None:
        """Through the writer, like a publish: it goes in the same statement as the events published before
        it (a job's `done` and the end of its stream: one round trip)."""
        item = _Publish(stream_id, [], 0, close=True)
        self._pending.append(item)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="agentd-event-flusher")
        await item.done

    def expect_subscribers(self) -> None:
        """This process serves subscribers: hear other processes' NOTIFYs from now on (a listener made with
        `listen_events=False` starts listening; the first `subscribe` does it too)."""
        self.db.listen_to(EVENTS_CHANNEL)

    async def subscribe(self, stream_id: str, *, after: int = 0) -> AsyncIterator[StoredEvent]:
        self.expect_subscribers()
        pos = max(0, after)
        replay_until: int | None = None  # past this point the subscriber follows live events
        self._waiters.join(stream_id)
        try:
            while True:
                changed = self._waiters.current(stream_id)  # taken before reading: no wake-up is missed
                rows = await self._all("read_events", {"stream_id": stream_id, "after": pos, "limit": PAGE})
                if not rows:
                    if replay_until is None:
                        raise _not_found(stream_id)
                    return  # pruned while followed
                closed, head = bool(rows[0]["closed"]), int(rows[0]["head"])
                if replay_until is None:
                    replay_until = head
                if pos >= replay_until and head - pos > self.buffer:
                    raise SubscriberTooSlow(
                        f"subscriber fell {head - pos} events behind on {stream_id!r}; "
                        f"reconnect with Last-Event-ID: {pos}"
                    )
                page = [r for r in rows if r["seq"] is not None]
                for r in page:
                    yield StoredEvent(seq=r["seq"], event=event_from_data(r["type"], from_jsonb(r["data"])))
                    pos = r["seq"]
                if len(page) == PAGE:
                    continue
                if closed:
                    return  # the page ended below PAGE in a snapshot that already saw the stream closed
                try:
                    await asyncio.wait_for(changed.wait(), self.poll_s)
                except TimeoutError:
                    pass
        finally:
            self._waiters.leave(stream_id)

    async def prune(self) -> int:
        total = 0
        while True:
            rows = await self._all("prune_streams", {"retention_s": self.retention_s, "batch": PRUNE_BATCH})
            pruned = int(rows[0]["pruned"]) if rows else 0
            total += pruned
            if pruned < PRUNE_BATCH:
                return total
