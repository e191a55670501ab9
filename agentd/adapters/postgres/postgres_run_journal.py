"""The run journal on PostgreSQL: a job's `running` in the claim's statement, its `done` and the end of its
stream in the statement that stores its result (queries `claim_started` and `finish`, schema 8's
agentd_append_fenced). The queue and the event log share the database (one `PgDatabase`), so a worker makes
one commit per batch of claims and one per batch of results, not one more per job for each of those events.

The events are written as any writer of the log writes them (under the stream's advisory lock, numbered from
the table, fenced by the run), and the event log's writer in this process is told (`written_with`): its
counters follow, its subscribers wake, and other processes hear of it by NOTIFY after the commit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from agentd.adapters.postgres.nul import to_jsonb
from agentd.adapters.postgres.postgres_event_stream import PostgresEventStream
from agentd.adapters.postgres.postgres_project_store import PostgresProjectStore
from agentd.adapters.postgres.postgres_secret_store import PostgresSecretStore
from agentd.adapters.postgres.postgres_work_queue import PostgresWorkQueue, row_to_job
from agentd.adapters.postgres.queries import QUERIES
from agentd.adapters.queue_policy import distinct_ids
from agentd.domain.errors import JobNotFound
from agentd.domain.models import AgentEvent, AgentRequest, AgentResult, Job, StatusEvent
from agentd.ports.work_queue import Limits, RunJournal

REQUESTS_MAX = 10_000


class PostgresRunJournal(RunJournal):
    def __init__(
        self,
        queue: PostgresWorkQueue,
        streams: PostgresEventStream,
        projects: PostgresProjectStore | None = None,
        secrets: PostgresSecretStore | None = None,
    ) -> None:
        if (
            queue.db is not streams.db
            or (projects is not None and projects.db is not queue.db)
            or (secrets is not None and secrets.db is not queue.db)
        ):
            raise ValueError("the run journal needs the queue and the event log on one database")
        self.queue = queue
        self.streams = streams
        self.projects = projects  # given: a claim reads each job's project too, for the worker's next `find`
        self.secrets = secrets  # given: and whether its run gets any secret (`claimed_without_secrets`)
        # The requests of the jobs this process claimed, until their result is stored: read once.
        self._requests: OrderedDict[str, AgentRequest] = OrderedDict()

    async def claim_started(
        self,
        worker_id: str,
        n: int,
        *,
        running: StatusEvent,
        limits: Limits | None = None,
        exclude: Collection[str] = (),
    ) -> list[tuple[Job, bool]]:
        params: dict[str, Any] = self.queue._claim_params(worker_id, n, limits, exclude)
        params["running"] = to_jsonb(running.model_dump_json(exclude={"event", "detail", "attempt"}))
        params["detail"] = f"{running.detail}, attempt " if running.detail else "attempt "
        async with self.queue.db.connection() as conn:
            cur = await conn.execute(QUERIES["claim_started"], params)
            rows = await cur.fetchall()
        if self.projects is not None:
            for r in rows:
                self.projects.prefetched(r["project_id"], r)
        if self.secrets is not None:
            self.secrets.claimed(rows)
        heads = {r["stream_id"]: int(r["running_seq"]) for r in rows if r["running_seq"] is not None}
        if heads:
            self.streams.written_with(heads)
        claimed = [(row_to_job(r), r["running_seq"] is not None) for r in rows]
        for job, _ in claimed:
            self._requests[job.id] = job.request
        while len(self._requests) > REQUESTS_MAX:
            self._requests.popitem(last=False)
        return claimed

    async def finish_ended(
        self,
        results: Sequence[tuple[str, AgentResult]],
        *,
        worker_id: str,
        attempts: Mapping[str, int],
        events: Mapping[str, Sequence[AgentEvent]] | None = None,
    ) -> list[tuple[Job, bool]]:
        ids = distinct_ids(results)
        params = self.queue._finish_params(results, worker_id, attempts, done=True, events=events)
        async with self.queue.db.connection() as conn:
            cur = await conn.execute(QUERIES["finish"], params)
            rows = await cur.fetchall()
        by_id = {r["id"]: r for r in rows}
        missing = [job_id for job_id in ids if job_id not in by_id]
        if missing:
            raise JobNotFound(f"no job {missing[0]!r}")
        ended = {r["stream_id"]: int(r["done_seq"]) for r in rows if r["done_seq"] is not None}
        if ended:
            self.streams.written_with(ended, closed=ended)
        sent = dict(results)
        out: list[tuple[Job, bool]] = []
        for job_id in ids:
            row, request = by_id[job_id], self._requests.pop(job_id, None)
            done = row["done_seq"] is not None  # stored final by this statement: with the result sent
            as_sent = sent[job_id] if done else None
            out.append((row_to_job(row, request=request, result_as_sent=as_sent), done))
        return out
