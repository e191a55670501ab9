"""`agentd serve` on the embedded default, as real processes (issue 10): one serving process per data dir,
administrative commands beside it, SIGTERM hands running jobs back, and a restart (after SIGTERM or kill -9)
serves every stream it had, replay included, and runs the interrupted job again.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentd.client import AgentdClient
from agentd.wire import Submitted
from tests.e2e.test_fleet import AGENTD, ROOT, Proc, follow, until
from tests.support.net import free_port
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e
KEY = "x9v0e2ZpQ2Vq3kq6y0mJ9C7e4y0h8rQb3fT5uWcXz1A="


@pytest.fixture
def serve_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "AGENTD_DATA_DIR": str(tmp_path / "data"),
        "AGENTD_PROVIDERS": "scripted",
        "AGENTD_LEASE_S": "3",
        "AGENTD_HEARTBEAT_S": "1",
        "AGENTD_SHUTDOWN_GRACE_S": "0.5",
        "AGENTD_LOG_FORMAT": "json",
        "AGENTD_MASTER_KEY": KEY,
    }


@pytest.fixture
def serves(serve_env: dict[str, str], tmp_path: Path) -> Iterator[list[Proc]]:
    procs: list[Proc] = []
    yield procs
    for p in procs:
        if p.proc.poll() is None:
            p.stop(signal.SIGKILL)


async def start_serve(
    procs: list[Proc], env: dict[str, str], tmp_path: Path, port: int | None = None
) -> Proc:
    p = Proc("serve", env, tmp_path / f"serve{len(procs)}.log", port or free_port())
    procs.append(p)
    await p.ready()
    return p


def agentd(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTD, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


async def test_a_second_serve_on_the_data_dir_exits_and_admin_commands_still_work(
    serves: list[Proc],
    serve_env: dict[str, str],
    tmp_path: Path,
    pg_dsn: str,  # noqa: F811
) -> None:
    first = await start_serve(serves, serve_env, tmp_path)
    second = agentd(serve_env, "serve", "--port", str(free_port()))
    assert second.returncode == 1, second.stderr
    data = serve_env["AGENTD_DATA_DIR"]
    assert f"data dir {data} in use by pid {first.proc.pid}" in second.stderr
    worker = agentd({**serve_env, "AGENTD_DATABASE_URL": pg_dsn}, "worker")
    assert worker.returncode == 1 and f"in use by pid {first.proc.pid}" in worker.stderr
    # Administrative commands beside the running server.
    listed = agentd(serve_env, "secrets", "list")
    assert listed.returncode == 0, listed.stderr
    migrated = agentd({**serve_env, "AGENTD_DATABASE_URL": pg_dsn}, "migrate")
    assert migrated.returncode == 0 and "up to date" in migrated.stdout, migrated.stderr
    assert first.proc.poll() is None  # untouched
    async with AgentdClient(first.url) as c:
        job = await c.submit("proj", "still serving")
        assert (await follow(job["stream_url"]))[-1].data["status"] == "succeeded"
    assert first.stop() == 0
    again = await start_serve(serves, serve_env, tmp_path)  # the lock went with the process
    assert again.proc.poll() is None


async def submitted_and_running(url: str, prompt: str) -> Submitted:
    """A job whose run has said `running` in its stream."""
    async with AgentdClient(url) as c:
        job = await c.submit("proj", prompt)
        async for item in c.follow(job["stream_url"]):
            if item.event == "status" and item.data["status"] == "running":
                return job
    raise AssertionError("the stream ended before the job ran")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_a_restarted_serve_replays_every_stream_and_runs_the_interrupted_job_again(
    serves: list[Proc], serve_env: dict[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    port = free_port()
    first = await start_serve(serves, serve_env, tmp_path, port)
    async with AgentdClient(first.url) as c:
        done_before = await c.submit("other", "finished before the restart")
        before = await follow(done_before["stream_url"])
    job = await submitted_and_running(first.url, "sleep:3")
    rc = first.stop(sig)
    assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    second = await start_serve(serves, serve_env, tmp_path, port)
    async with AgentdClient(second.url) as c:

        async def finished() -> bool:
            return bool(
                (await c.job("proj", job["job_id"]))["status"] in ("succeeded", "failed", "cancelled")
            )

        await until(finished, f"the interrupted job to finish after the restart ({second.log})")
        state = await c.job("proj", job["job_id"])
        assert state["status"] == "succeeded" and state["attempts"] == 2
    # Every stream survived the restart, replay included.
    assert [
        (i.seq, i.event) for i in await follow(done_before["stream_url"].replace(first.url, second.url))
    ] == [(i.seq, i.event) for i in before]
    items = await follow(job["stream_url"])
    assert [i.seq for i in items] == list(range(1, len(items) + 1))
    statuses = [(i.data["status"], i.data.get("detail")) for i in items if i.event == "status"]
    requeued = [d for s, d in statuses if s == "requeued"]
    reason = "worker shutting down" if sig == signal.SIGTERM else "its worker was lost"
    assert len(requeued) == 1 and reason in (requeued[0] or ""), statuses
    assert [s for s, _ in statuses].count("running") == 2
    assert [i.data["status"] for i in items if i.event == "done"] == ["succeeded"]
