"""The dashboard's routes (/, /dashboard/*, GET /jobs) and the OpenCode-compatible event stream over HTTP,
with the in-process scripted agent."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from tests.conftest import RunningAgentd
from tests.integration.test_api import call


@pytest.fixture
async def srv(agentd_factory: Any) -> RunningAgentd:
    server: RunningAgentd = await agentd_factory(
        [ScriptedCodeAgent("scripted")], workers=2, sse_heartbeat_s=0.3
    )
    return server


async def submit(srv: RunningAgentd, project: str, prompt: str, **kw: Any) -> dict[str, Any]:
    status, body, _ = await call(srv, "POST", f"/projects/{project}/jobs", json={"prompt": prompt}, **kw)
    assert status == 202, body
    return dict(body)


async def wait_final(srv: RunningAgentd, project: str, job_id: str) -> None:
    for _ in range(200):
        _, job, _ = await call(srv, "GET", f"/projects/{project}/jobs/{job_id}")
        if job["status"] not in ("queued", "running"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


async def test_dashboard_is_served_with_its_files(srv: RunningAgentd) -> None:
    status, page, headers = await call(srv, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '<script src="/dashboard/app.js" defer></script>' in page
    assert "default-src 'self'" in headers["Content-Security-Policy"]  # no CDN, no inline script
    status, js, headers = await call(srv, "GET", "/dashboard/app.js")
    assert status == 200 and "javascript" in headers["Content-Type"] and "new EventSource(" in js
    status, _, headers = await call(srv, "GET", "/dashboard/style.css")
    assert status == 200 and headers["Content-Type"].startswith("text/css")
    status, body, _ = await call(srv, "GET", "/dashboard/nope.js")
    assert status == 404 and body["error"] == "not_found"
    status, body, _ = await call(srv, "GET", "/dashboard/%2e%2e/app.py")
    assert status in (403, 404) and "import" not in str(body)


async def test_with_keys_on_only_the_page_is_public(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent()], api_key="s3cret")
    assert (await call(srv, "GET", "/"))[0] == 200
    assert (await call(srv, "GET", "/dashboard/app.js"))[0] == 200
    for path in ("/jobs", "/opencode/event", "/projects/demo/opencode/event"):
        status, body, _ = await call(srv, "GET", path)
        assert status == 401 and body["error"] == "unauthorized", path
    status, body, _ = await call(srv, "GET", "/jobs", headers={"X-API-Key": "s3cret"})
    assert status == 200 and body == {"jobs": [], "next_before": None}


async def test_list_jobs_across_projects_with_filters(srv: RunningAgentd) -> None:
    a = await submit(srv, "alpha", "one")
    b = await submit(srv, "beta", "two")
    await wait_final(srv, "alpha", a["job_id"])
    await wait_final(srv, "beta", b["job_id"])
    c = await submit(srv, "alpha", "sleep:30")
    status, body, _ = await call(srv, "GET", "/jobs")
    assert status == 200
    assert [j["job_id"] for j in body["jobs"]] == [c["job_id"], b["job_id"], a["job_id"]]
    assert [j["project_id"] for j in body["jobs"]] == ["alpha", "beta", "alpha"]
    _, body, _ = await call(srv, "GET", "/jobs?project_id=alpha")
    assert [j["job_id"] for j in body["jobs"]] == [c["job_id"], a["job_id"]]
    _, body, _ = await call(srv, "GET", "/jobs?status=succeeded")
    assert [j["job_id"] for j in body["jobs"]] == [b["job_id"], a["job_id"]]
    _, body, _ = await call(srv, "GET", "/jobs?limit=1")
    assert [j["job_id"] for j in body["jobs"]] == [c["job_id"]] and body["next_before"] == c["job_id"]
    _, body, _ = await call(srv, "GET", f"/jobs?before={c['job_id']}&limit=1")
    assert [j["job_id"] for j in body["jobs"]] == [b["job_id"]]
    status, body, _ = await call(srv, "GET", "/jobs?status=done")
    assert status == 400 and "unknown status 'done'" in body["message"]
    status, body, _ = await call(srv, "GET", "/jobs?project_id=Bad..Id")
    assert status == 400 and body["error"] == "invalid_project_id"
    # A job's own JSON says where to follow it (the dashboard opens jobs it did not submit).
    _, one, _ = await call(srv, "GET", f"/projects/alpha/jobs/{c['job_id']}")
    assert one["stream_url"] == c["stream_url"] == f"{srv.base_url}/projects/alpha/events/{c['stream_id']}"
    await call(srv, "POST", f"/projects/alpha/jobs/{c['job_id']}/cancel")


class OpencodeWatch:
    """A client of GET …/opencode/event: every `data:` line as JSON, in order."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.changed = asyncio.Event()

    async def run(self, url: str, connected: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream"
            async for line in r.content:
                text = line.decode()
                self.raw.append(text)
                if text.startswith("data: "):
                    self.events.append(json.loads(text[6:]))
                    connected.set()
                    self.changed.set()

    async def until(self, pred: Any, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not pred(self.events):
                self.changed.clear()
                await self.changed.wait()

    def of_session(self, job_id: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["properties"].get("sessionID") == f"ses_{job_id}"]


@contextlib.asynccontextmanager
async def watching(url: str) -> AsyncIterator[OpencodeWatch]:
    w = OpencodeWatch()
    connected = asyncio.Event()
    task = asyncio.create_task(w.run(url, connected))
    try:
        async with asyncio.timeout(5):
            await connected.wait()
        yield w
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def idle(job_id: str) -> Any:
    """True once the session of the job ended: session.idle, then its last event, session.updated."""

    def ended(evs: list[dict[str, Any]]) -> bool:
        types = [e["type"] for e in evs if e["properties"].get("sessionID") == f"ses_{job_id}"]
        return "session.idle" in types and types[-1] == "session.updated"

    return ended


async def test_opencode_stream_follows_the_projects_jobs(srv: RunningAgentd) -> None:
    before = await submit(srv, "demo", "finished before anyone watched")
    await wait_final(srv, "demo", before["job_id"])
    running = await submit(srv, "demo", "sleep:0.8")
    base = srv.base_url
    async with (
        watching(f"{base}/projects/demo/opencode/event") as proj,
        watching(f"{base}/opencode/event") as glob,
    ):
        assert proj.events[0] == {"id": "evt_0", "type": "server.connected", "properties": {}}
        assert glob.events[0]["type"] == "server.connected"
        job = await submit(srv, "demo", "hello opencode")
        other = await submit(srv, "elsewhere", "not for demo")
        await proj.until(idle(job["job_id"]))
        await glob.until(lambda evs: idle(job["job_id"])(evs) and idle(other["job_id"])(evs))
        await proj.until(idle(running["job_id"]))
        await proj.until(lambda evs: any(e["type"] == "server.heartbeat" for e in evs), timeout=3)
    # Frames are OpenCode's: one `data:` line and a blank line, no event:/id:/retry: fields.
    assert all(line.startswith("data: ") or line in ("\n", "\r\n") for line in proj.raw)
    sessions = {e["properties"]["sessionID"] for e in proj.events if "sessionID" in e["properties"]}
    assert sessions == {f"ses_{running['job_id']}", f"ses_{job['job_id']}"}  # not the finished one
    assert f"ses_{other['job_id']}" in {e["properties"].get("sessionID") for e in glob.events}
    mine = proj.of_session(job["job_id"])
    # The same events on both streams (the same ids; only the clock readings may differ).
    assert [(e["id"], e["type"]) for e in mine] == [
        (e["id"], e["type"]) for e in glob.of_session(job["job_id"])
    ]
    types = [e["type"] for e in mine]
    assert types[:4] == ["session.created", "session.updated", "message.updated", "message.part.updated"]
    assert types[-3:] == ["session.status", "session.idle", "session.updated"]
    deltas = [e["properties"]["delta"] for e in mine if "delta" in e["properties"]]
    assert "".join(deltas) == "hello opencode" and len(deltas) == 2  # the scripted agent's two chunks
    # The job that was running when the client connected is shown from its start.
    run_types = [e["type"] for e in proj.of_session(running["job_id"])]
    assert run_types[0] == "session.created" and run_types[-2] == "session.idle"


async def test_cancel_shows_as_an_abort(srv: RunningAgentd) -> None:
    async with watching(f"{srv.base_url}/projects/demo/opencode/event") as w:
        job = await submit(srv, "demo", "sleep:30")
        await w.until(
            lambda evs: any(
                e["type"] == "session.status" and e["properties"]["status"]["type"] == "busy" for e in evs
            )
        )
        await call(srv, "POST", f"/projects/demo/jobs/{job['job_id']}/cancel")
        await w.until(idle(job["job_id"]))
    errs = [e for e in w.of_session(job["job_id"]) if e["type"] == "session.error"]
    assert [e["properties"]["error"]["name"] for e in errs] == ["MessageAbortedError"]


async def test_opencode_stream_rejects_a_bad_project(srv: RunningAgentd) -> None:
    status, body, _ = await call(srv, "GET", "/projects/Bad..Id/opencode/event")
    assert status == 400 and body["error"] == "invalid_project_id"


def _watch_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if not t.done() and "_Watcher." in getattr(t.get_coro(), "__qualname__", "")
    ]


async def test_a_client_that_goes_leaves_nothing_running(srv: RunningAgentd) -> None:
    async with watching(f"{srv.base_url}/projects/demo/opencode/event") as w:
        job = await submit(srv, "demo", "sleep:30")
        await w.until(lambda evs: any(e["type"] == "session.created" for e in evs))
        assert len(_watch_tasks()) == 2  # the watcher and the job's follower
    # The server notices at its next write (a heartbeat within 0.3 s here) and stops both.
    for _ in range(100):
        if not _watch_tasks():
            break
        await asyncio.sleep(0.05)
    assert _watch_tasks() == []
    await call(srv, "POST", f"/projects/demo/jobs/{job['job_id']}/cancel")
