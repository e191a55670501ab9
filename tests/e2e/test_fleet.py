"""Many processes sharing one PostgreSQL: `agentd api` replicas and `agentd worker`s as real processes.

Faults: a worker killed with SIGKILL mid-job, PostgreSQL restarted mid-run, and a stream served by an API
replica that did not run the job.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentd.client import AgentdClient, StreamItem
from tests.support.net import free_port
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]
AGENTD = [sys.executable, "-m", "agentd.cli"]
LEASE_S = 2.0


class Proc:
    def __init__(self, role: str, env: dict[str, str], log: Path, port: int | None = None) -> None:
        self.role, self.env, self.log, self.port = role, env, log, port
        args = [*AGENTD, role] + (["--port", str(port)] if port else [])
        with log.open("ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=out)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self) -> None:
        if self.port is None:
            await asyncio.sleep(1.0)  # a worker has no port: give it a moment to connect
            assert self.proc.poll() is None, self.log.read_text()
            return
        deadline = time.monotonic() + 20
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log.read_text()
                try:
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"{self.role} did not start: {self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
async def fleet(pg_dsn: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:  # noqa: F811
    procs: list[Proc] = []
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "AGENTD_DATABASE_URL": pg_dsn,
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

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


async def follow(url: str, **kw: Any) -> list[StreamItem]:
    async with AgentdClient(url.split("/projects/")[0]) as c:
        return [it async for it in c.follow(url, **kw)]


def on(api: Proc, stream_url: str) -> str:
    """The same stream on another replica."""
    return api.url + "/projects/" + stream_url.split("/projects/", 1)[1]


async def test_any_api_replica_serves_any_stream_and_cancel_crosses_processes(fleet: Any) -> None:
    api1, api2 = await fleet("api"), await fleet("api")
    await fleet("worker")
    async with AgentdClient(api1.url) as c1:
        job = await c1.submit("proj", "hello fleet")
        live = await follow(on(api2, job["stream_url"]))  # api2 never saw the submit
        assert live[-1].event == "done" and live[-1].data["status"] == "succeeded"
        assert [i.seq for i in live] == list(range(1, len(live) + 1))
        assert "".join(i.data["chunk"] for i in live if i.event == "text") == "hello fleet"
        tail = await follow(on(api1, job["stream_url"]), last_event_id=2)  # replay from the table
        assert [(i.seq, i.event, i.data) for i in tail] == [(i.seq, i.event, i.data) for i in live[2:]]

        slow = await c1.submit("proj", "sleep:60")
        await asyncio.sleep(1.0)
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
        for _ in range(150):
            if (await c.job("proj", job["job_id"]))["status"] == "running":
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the job never started: " + doomed.log.read_text()[-2000:])
        doomed.stop(signal.SIGKILL)
        killed_at = time.monotonic()
        rescuer = await fleet("worker")
        try:
            items = await asyncio.wait_for(follow(job["stream_url"]), 60)
        except TimeoutError:
            state = await c.job("proj", job["job_id"])
            import psycopg

            async with await psycopg.AsyncConnection.connect(api.env["AGENTD_DATABASE_URL"]) as conn:
                cur = await conn.execute(
                    "SELECT pid, state, wait_event_type, wait_event, left(query, 120) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                )
                acts = await cur.fetchall()
                cur = await conn.execute("SELECT locktype, objid, pid, granted, mode FROM pg_locks")
                locks = [r for r in await cur.fetchall() if r[0] == "advisory"]
            print("ACTIVITY", acts, "LOCKS", locks)
            rescuer.proc.send_signal(signal.SIGUSR1)
            await asyncio.sleep(1)
            print("TASKS", rescuer.log.read_text()[-8000:])
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


def _pg_ctl(action: str) -> None:
    if shutil.which("pg_ctlcluster") is None:
        pytest.skip("pg_ctlcluster not available: cannot restart PostgreSQL here")
    version = sorted(os.listdir("/etc/postgresql"))[0]
    cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    if action == "stop":
        cmd += ["-m", "fast"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


async def test_postgres_restart_mid_run(fleet: Any) -> None:
    if os.geteuid() != 0 and not os.access("/etc/postgresql", os.W_OK):
        pytest.skip("needs rights to restart the PostgreSQL cluster")
    api = await fleet("api")
    await fleet("worker")
    async with AgentdClient(api.url) as c:
        job = await c.submit("proj", "sleep:4")
        await asyncio.sleep(1.0)
        _pg_ctl("stop")
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
            await asyncio.sleep(2.0)
        finally:
            _pg_ctl("start")
        items = await asyncio.wait_for(follow(job["stream_url"]), 60)
        assert [i.event for i in items].count("done") == 1
        assert items[-1].data["status"] == "succeeded"
        after = await c.submit("proj", "after the restart")
        done = (await follow(after["stream_url"]))[-1]
        assert done.data["status"] == "succeeded"


async def test_graceful_worker_shutdown_cancels_after_the_grace_period(fleet: Any) -> None:
    api = await fleet("api")
    worker = await fleet("worker")
    async with AgentdClient(api.url) as c:
        job = await c.submit("proj", "sleep:60")
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        assert worker.stop(signal.SIGTERM) == 0
        assert time.monotonic() - t0 < 3 + 5  # grace (3 s) + cancel
        state = await c.job("proj", job["job_id"])
        assert state["status"] == "cancelled"
        items = await follow(job["stream_url"])
        assert items[-1].event == "done" and items[-1].data["status"] == "cancelled"
