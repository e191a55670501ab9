"""OpenCode's `GET /event` protocol over agentd jobs (mapping in opencode_events.py).

One connection watches one project (or every project): it sends `server.connected`, then follows every
job that is queued or running when it connects and every job created afterwards, each from the job's
first event, as OpenCode events (`data: {...}` lines, no `event:` or `id:`, as OpenCode sends them),
with a `server.heartbeat` after each quiet `heartbeat_s`. Like OpenCode it has no replay of finished
jobs: a client that reconnects re-reads the jobs through the agentd API.

New jobs are found by listing the newest `LIST_LIMIT` jobs every `poll_s` (so this works for every queue
adapter and across processes); a job's own events then arrive as they are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime

import structlog
from aiohttp import web

from agentd import sse
from agentd.adapters.http.opencode_events import OpencodeEvent, SessionMapper, heartbeat, server_connected
from agentd.domain import errors
from agentd.domain.models import Job
from agentd.ports.work_queue import JobFilter
from agentd.services.jobs import JobService

log = structlog.get_logger(__name__)

LIST_LIMIT = 100
QUEUE_SIZE = 10_000
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache, no-transform",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True)
class StreamConfig:
    heartbeat_s: float = 10.0
    poll_s: float = 0.25
    write_timeout_s: float = 30.0


class _ClientTooSlow(Exception):
    pass


async def serve(
    request: web.Request,
    service: JobService,
    project_id: str | None,
    *,
    closing: asyncio.Event,
    config: StreamConfig,
) -> web.StreamResponse:
    """The whole response of GET /projects/{project_id}/opencode/event (project_id None: /opencode/event)."""
    out: asyncio.Queue[OpencodeEvent | None] = asyncio.Queue(QUEUE_SIZE)
    watcher = _Watcher(service, project_id, out, config.poll_s)
    await watcher.prime()  # storage trouble becomes an error response, before any byte is sent
    resp = web.StreamResponse(status=200, headers=HEADERS)
    await resp.prepare(request)
    watch = asyncio.create_task(watcher.run())
    closed = asyncio.create_task(closing.wait())
    beats = 0
    try:
        await _write(resp, server_connected(), config)
        while True:
            get = asyncio.create_task(out.get())
            done, _ = await asyncio.wait(
                {get, closed, watch}, timeout=config.heartbeat_s, return_when="FIRST_COMPLETED"
            )
            if get not in done:
                get.cancel()
                if closed in done or watch in done:
                    break
                beats += 1
                await _write(resp, heartbeat(beats), config)
                continue
            ev = get.result()
            if ev is None:  # a follower fell behind: end the connection, the client reconnects
                break
            await _write(resp, ev, config)
    except (ConnectionResetError, TimeoutError) as e:
        log.info("opencode_stream.client_gone", project_id=project_id, reason=type(e).__name__)
    finally:
        closed.cancel()
        watch.cancel()
        await watcher.stop()
        try:
            await watch
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("opencode_stream.watch_failed", project_id=project_id)
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


async def _write(resp: web.StreamResponse, ev: OpencodeEvent, config: StreamConfig) -> None:
    async with asyncio.timeout(config.write_timeout_s):
        await resp.write(sse.encode_event(json.dumps(ev, separators=(",", ":"))))


class _Watcher:
    """Finds the jobs to follow and runs one follower task per job, all feeding `out`."""

    def __init__(
        self,
        service: JobService,
        project_id: str | None,
        out: asyncio.Queue[OpencodeEvent | None],
        poll_s: float,
    ) -> None:
        self.service = service
        self.project_id = project_id
        self.out = out
        self.poll_s = poll_s
        self.seen: set[str] = set()
        self.first: list[Job] = []
        self.since: datetime | None = None
        self.followers: dict[str, asyncio.Task[None]] = {}

    async def _newest(self) -> list[Job]:
        return await self.service.list_jobs(self.project_id, JobFilter(limit=LIST_LIMIT))

    async def prime(self) -> None:
        """What exists at connect time: finished jobs are history (not sent), live ones are followed."""
        jobs = await self._newest()
        self.seen = {j.id for j in jobs}
        self.first = [j for j in reversed(jobs) if not j.status.is_final]
        # Jobs created later are at least this new (the queue's own clock: no skew with ours).
        self.since = max((j.created_at for j in jobs), default=None)

    async def run(self) -> None:
        for job in self.first:
            self._follow(job)
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                jobs = await self._newest()
            except errors.AgentdError as e:
                log.warning("opencode_stream.list_failed", error=str(e))
                continue
            for job in reversed(jobs):  # oldest first
                if job.id not in self.seen and (self.since is None or job.created_at >= self.since):
                    self._follow(job)
            # Only the listed window can hold a new job: remembering more would only grow.
            self.seen = {j.id for j in jobs}

    def _follow(self, job: Job) -> None:
        task = asyncio.create_task(self._pump(job))
        self.followers[job.id] = task
        task.add_done_callback(lambda _t: self.followers.pop(job.id, None))

    async def _pump(self, job: Job) -> None:
        mapper = SessionMapper(job)
        try:
            subscription = await self.service.subscribe(job.project_id, job.stream_id, after=0)
            async with contextlib.aclosing(subscription) as events:
                async for stored in events:
                    for ev in mapper.feed(stored):
                        await self._put(ev)
        except (errors.StreamNotFound, errors.JobNotFound):
            return  # pruned meanwhile: nothing to show
        except (errors.SubscriberTooSlow, _ClientTooSlow):
            log.warning("opencode_stream.too_slow", job_id=job.id)
            with contextlib.suppress(asyncio.QueueFull):
                self.out.put_nowait(None)
        except errors.AgentdError as e:
            log.warning("opencode_stream.follow_failed", job_id=job.id, error=str(e))

    async def _put(self, ev: OpencodeEvent) -> None:
        try:
            async with asyncio.timeout(30):
                await self.out.put(ev)
        except TimeoutError:
            raise _ClientTooSlow() from None

    async def stop(self) -> None:
        tasks = list(self.followers.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
