"""Many processes sharing one PostgreSQL: `agentd api` replicas and `agentd worker`s as real processes.

Faults: a worker killed with SIGKILL mid-job, PostgreSQL restarted mid-run (a throwaway cluster of the
test's own, tests/support/pg_cluster.py: the machine's server is never touched), and a stream served by an
API replica that did not run the job. Every wait is for a condition (a log line, a job status), with a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentd.adapters.postgres import migrate
from agentd.client import AgentdClient, StreamItem
from agentd.wire import Submitted
from tests.support.net import free_port
from tests.support.pg_cluster import PgCluster, pg_cluster  # noqa: F401 - fixture
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]
AGENTD = [sys.executable, "-m", "agentd.cli"]
LEASE_S = 2.0
WORKER_STARTED = b'"agentd.worker_started"'


async def until(check: Callable[[], Awaitable[bool] | bool], what: str, timeout: float = 20) -> None:
    """Poll `check` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class Proc:
    def __init__(self, role: str, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.role, self.env, self.log, self.port = role, env, log, port
        args = [*AGENTD, role] + (["--port", str(port)] if port else [])
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=out)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logged(self, marker: bytes) -> bool:
        assert self.proc.poll() is None, f"{self.role} exited: {self.log.read_text()[-3000:]}"
        return marker in self.log.read_bytes()

    async def ready(self) -> None:
        if self.port is None:  # a worker has no port: it logs when its runner has started
            await until(lambda: self.logged(WORKER_STARTED), f"the {self.role} to start ({self.log})")
            return
        async with aiohttp.ClientSession() as http:

            async def healthy() -> bool:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with http.get(f"{self.url}/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await until(healthy, f"the {self.role} to answer /healthz ({self.log})")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@contextlib.asynccontextmanager
async def running_fleet(dsn: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`start(role, **env)` starts an `agentd api` or `agentd worker` on `dsn`; all are killed at the end."""
    procs: list[Proc] = []
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "AGENTD_DATABASE_URL": dsn,
        "AGENTD_PROVIDERS": "scripted",
        "AGENTD_LEASE_S": str(LEASE_S),
        "AGENTD_HEARTBEAT_S": "0.5",
        "AGENTD_SHUTDOWN_GRACE_S": "3",
        "AGENTD_LOG_FORMAT": "json",
    }

    async def start(role: str, **extra: str) -> Proc:
        n = len(procs)
        data = tmp_path / f"{role}{n}"
        p = Proc(
            role,
            {**env, "AGENTD_DATA_DIR": str(data), **extra},
            tmp_path / f"{role}{n}.log",
            free_port() if role == "api" else None,
        )
        procs.append(p)
        await p.ready()
        return p

    try:
        yield start
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.stop(signal.SIGKILL)


@pytest.fixture
async def fleet(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:  # noqa: F811
    async with running_fleet(pg_dsn, tmp_path) as start:
        yield start


async def wait_status(c: AgentdClient, job: Submitted, status: str, log: Path) -> None:
    async def reached() -> bool:
        return bool((await c.job("proj", job["job_id"]))["status"] == status)

    await until(reached, f"job {job['job_id']} to be {status} (worker log {log})")


async def follow(url: str, **kw: Any) -> list[StreamItem]:
    async with AgentdClient(url.split("/projects/")[0]) as c:
        return [it async for it in c.follow(url, **kw)]


def on(api: Proc, stream_url: str) -> str:
    """The same stream on another replica."""
    return api.url + "/projects/" + stream_url.split("/projects/", 1)[1]


async def test_any_api_replica_serves_any_stream_and_cancel_crosses_processes(fleet: Any) -> None:
    api1, api2 = await fleet("api"), await fleet("api")
    worker = await fleet("worker")
    async with AgentdClient(api1.url) as c1:
        job = await c1.submit("proj", "hello fleet")
        live = await follow(on(api2, job["stream_url"]))  # api2 never saw the submit
        assert live[-1].event == "done" and live[-1].data["status"] == "succeeded"
        assert [i.seq for i in live] == list(range(1, len(live) + 1))
        assert "".join(i.data["chunk"] for i in live if i.event == "text") == "hello fleet"
        tail = await follow(on(api1, job["stream_url"]), last_event_id=2)  # replay from the table
        assert [(i.seq, i.event, i.data) for i in tail] == [(i.seq, i.event, i.data) for i in live[2:]]

        slow = await c1.submit("proj", "sleep:60")
        await wait_status(c1, slow, "running", worker.log)
        t0 = time.monotonic()
        async with AgentdClient(api2.url) as c2:
            cancelled = await c2.cancel("proj", slow["job_id"])  # the worker is another process
        assert cancelled["cancel_requested"] is True
        items = await follow(on(api2, slow["stream_url"]))
        assert items[-1].data["status"] == "cancelled"
        assert time.monotonic() - t0 < 3.0  # seen by the worker within about a second


async def test_killed_worker_job_is_recovered_and_ends_once(fleet: Any) -> None:
    api = await fleet("api")
    doomed = await fleet("worker")
    async with AgentdClient(api.url) as c:
        job = await c.submit("proj", "sleep:3")
        await wait_status(c, job, "running", doomed.log)
        doomed.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        rescuer = await fleet("worker")
        try:
            items = await asyncio.wait_for(follow(job["stream_url"]), 60)
        except TimeoutError:
            state = await c.job("proj", job["job_id"])
            raise AssertionError(
                f"no done: job {state}; worker log: {rescuer.log.read_text()[-3000:]}"
            ) from None
        recovered_after = time.monotonic() - killed_at
        state = await c.job("proj", job["job_id"])
    assert [i.event for i in items].count("done") == 1
    assert items[-1].data["status"] == "succeeded"
    assert state["status"] == "succeeded" and state["attempts"] == 2
    assert any(i.event == "status" and i.data["status"] == "requeued" for i in items)
    # Picked up again within about two lease periods (plus the 3 s the job itself takes).
    assert recovered_after < 2 * LEASE_S + 3 + 3, recovered_after


async def test_postgres_restart_mid_run(pg_cluster: PgCluster, tmp_path: Path) -> None:  # noqa: F811
    await migrate(pg_cluster.dsn())
    async with running_fleet(pg_cluster.dsn(), tmp_path) as fleet:
        await _restart_mid_run(pg_cluster, await fleet("api"), await fleet("worker"))


async def _restart_mid_run(cluster: PgCluster, api: Proc, worker: Proc) -> None:
    async with AgentdClient(api.url) as c:
        job = await c.submit("proj", "sleep:4")
        await wait_status(c, job, "running", worker.log)
        cluster.stop()
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{api.url}/projects/proj/jobs/{job['job_id']}") as r:
                    body = await r.json()
                    assert r.status == 503, body
                    assert body["error"] == "queue_unavailable"
                async with http.post(f"{api.url}/projects/proj/jobs", json={"prompt": "x"}) as r:
                    assert r.status == 503
                async with http.get(f"{api.url}/healthz") as r:
                    assert r.status == 200  # liveness is not storage
            await until(lambda: worker.logged(b'"postgres.listener_lost"'), "the worker to notice the outage")
        finally:
            cluster.start()
        items = await asyncio.wait_for(follow(job["stream_url"]), 60)
        assert [i.event for i in items].count("done") == 1
        assert items[-1].data["status"] == "succeeded"
        after = await c.submit("proj", "after the restart")
        done = (await follow(after["stream_url"]))[-1]
        assert done.data["status"] == "succeeded"


async def test_graceful_worker_shutdown_hands_the_job_back_after_the_grace_period(fleet: Any) -> None:
    api = await fleet("api")
    worker = await fleet("worker")
    async with AgentdClient(api.url) as c:
        job = await c.submit("proj", "sleep:6")
        await wait_status(c, job, "running", worker.log)
        t0 = time.monotonic()
        assert worker.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 3 + 5  # grace (3 s) + hand-back
        state = await c.job("proj", job["job_id"])
        assert state["status"] == "queued" and state["result"] is None  # a deploy is not a cancel
        nxt = await fleet("worker")  # the next worker runs it again, as attempt 2
        await wait_status(c, job, "succeeded", nxt.log)
        assert (await c.job("proj", job["job_id"]))["attempts"] == 2
        items = await follow(job["stream_url"])
        requeued = [i.data for i in items if i.event == "status" and i.data["status"] == "requeued"]
        assert [r["detail"] for r in requeued] == ["attempt 1: worker shutting down"]
        assert [i.data["status"] for i in items if i.event == "done"] == ["succeeded"]
