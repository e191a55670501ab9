"""Access (issue 9) on the routes issue 13 and the dashboard added: projects, templates, patches, GET /jobs,
the OpenCode event streams, the dashboard's files, and the stream_url of GET .../jobs/{job_id}."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from tests.conftest import RunningAgentd
from tests.integration.test_access import ADMIN, MASTER, call, events, new_key


@pytest.fixture
async def srv(agentd_factory: Any) -> RunningAgentd:
    server: RunningAgentd = await agentd_factory(
        [ScriptedCodeAgent("scripted")], api_key=ADMIN, master_key=MASTER, workers=2
    )
    return server


async def submit(srv: RunningAgentd, project: str, key: str, prompt: str = "hello") -> dict[str, Any]:
    status, job, _ = await call(srv, "POST", f"/projects/{project}/jobs", key, json={"prompt": prompt})
    assert status == 202, job
    return dict(job)


async def wait_done(srv: RunningAgentd, project: str, job_id: str) -> None:
    for _ in range(200):
        _, job, _ = await call(srv, "GET", f"/projects/{project}/jobs/{job_id}", ADMIN)
        if job["status"] not in ("queued", "running"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


async def test_project_writes_need_write_access_to_that_project(srv: RunningAgentd) -> None:
    web = await new_key(srv, projects=["web"])
    web_ro = await new_key(srv, projects=["web"], read_only=True)
    spec = {"description": "the web app"}
    status, data, _ = await call(srv, "PUT", "/projects/web", web_ro, json=spec)
    assert status == 403 and data["error"] == "forbidden" and "read-only" in data["message"]
    status, data, _ = await call(srv, "PUT", "/projects/api", web, json=spec)
    assert status == 404 and data["error"] == "project_not_found"  # another project: as if unknown
    assert (await call(srv, "PUT", "/projects/web", web, json=spec))[0] == 201
    assert (await call(srv, "PUT", "/projects/api", ADMIN, json=spec))[0] == 201
    status, data, _ = await call(srv, "DELETE", "/projects/web", web_ro)
    assert status == 403 and data["error"] == "forbidden"
    status, data, _ = await call(srv, "DELETE", "/projects/api", web)
    assert status == 404 and data["error"] == "project_not_found"
    assert (await call(srv, "GET", "/projects/api", ADMIN))[0] == 200  # untouched
    assert (await call(srv, "DELETE", "/projects/web", web))[0] == 204
    assert (await call(srv, "GET", "/projects/web", ADMIN))[0] == 404


async def test_project_reads_need_read_access_and_the_list_is_the_keys_own(srv: RunningAgentd) -> None:
    for p in ("web", "api", "docs"):
        assert (await call(srv, "PUT", f"/projects/{p}", ADMIN, json={"description": p}))[0] == 201
    web_ro = await new_key(srv, projects=["web", "docs"], read_only=True)
    status, data, _ = await call(srv, "GET", "/projects/web", web_ro)
    assert status == 200 and data["project_id"] == "web"
    status, data, _ = await call(srv, "GET", "/projects/api", web_ro)
    assert status == 404 and data["error"] == "project_not_found"
    status, data, _ = await call(srv, "GET", "/projects", web_ro)
    assert status == 200 and sorted(p["project_id"] for p in data["projects"]) == ["docs", "web"]
    status, data, _ = await call(srv, "GET", "/projects", ADMIN)
    assert sorted(p["project_id"] for p in data["projects"]) == ["api", "docs", "web"]
    assert (await call(srv, "GET", "/projects"))[0] == 401


async def test_templates_need_any_valid_key(srv: RunningAgentd) -> None:
    web_ro = await new_key(srv, projects=["web"], read_only=True)
    status, data, _ = await call(srv, "GET", "/templates", web_ro)
    assert status == 200 and "empty" in [t["name"] for t in data["templates"]]
    assert (await call(srv, "GET", "/templates"))[0] == 401
    assert (await call(srv, "GET", "/templates", "agentd_key_0000000000000000_wrong"))[0] == 401


async def test_a_patch_needs_read_access_to_its_project(srv: RunningAgentd) -> None:
    web = await new_key(srv, projects=["web"])
    web_ro = await new_key(srv, projects=["web"], read_only=True)
    other = await new_key(srv, projects=["api"])
    job = await submit(srv, "web", web)
    await wait_done(srv, "web", job["job_id"])
    path = f"/projects/web/jobs/{job['job_id']}/patch"
    status, data, _ = await call(srv, "GET", path, other)
    assert status == 404 and data["error"] == "job_not_found"  # hidden, as an unknown job
    status, data, _ = await call(srv, "GET", path, web_ro)  # allowed: no repository, so no patch
    assert status == 404 and data["error"] == "patch_not_found"


async def test_get_jobs_lists_every_project_for_admin_and_only_its_own_for_a_scoped_key(
    srv: RunningAgentd,
) -> None:
    web = await new_key(srv, projects=["web"])
    both = await new_key(srv, projects=["web", "docs"], read_only=True)
    jobs: dict[str, list[str]] = {}
    for p, n in (("web", 2), ("api", 2), ("docs", 1)):
        jobs[p] = [(await submit(srv, p, ADMIN, f"{p} {i}"))["job_id"] for i in range(n)]
    status, data, _ = await call(srv, "GET", "/jobs", ADMIN)
    assert status == 200 and {j["project_id"] for j in data["jobs"]} == {"web", "api", "docs"}
    _, data, _ = await call(srv, "GET", "/jobs", web)
    assert [j["job_id"] for j in data["jobs"]] == jobs["web"][::-1]
    _, data, _ = await call(srv, "GET", "/jobs?project_id=api", web)
    assert data["jobs"] == []  # another project lists as one without jobs
    _, data, _ = await call(srv, "GET", "/jobs?project_id=api", ADMIN)
    assert [j["job_id"] for j in data["jobs"]] == jobs["api"][::-1]
    # a key with several projects: newest first across them, paged with `before`
    _, data, _ = await call(srv, "GET", "/jobs?limit=2", both)
    want = [jobs["docs"][0], jobs["web"][1], jobs["web"][0]]
    assert [j["job_id"] for j in data["jobs"]] == want[:2] and data["next_before"] == want[1]
    _, data, _ = await call(srv, "GET", f"/jobs?limit=2&before={want[1]}", both)
    assert [j["job_id"] for j in data["jobs"]] == want[2:]
    assert (await call(srv, "GET", "/jobs"))[0] == 401


async def test_opencode_event_streams_need_read_access_or_admin(srv: RunningAgentd) -> None:
    web_ro = await new_key(srv, projects=["web"], read_only=True)
    status, data, _ = await call(srv, "GET", "/opencode/event", web_ro)
    assert status == 403 and data["error"] == "forbidden"
    status, data, _ = await call(srv, "GET", "/projects/api/opencode/event", web_ro)
    assert status == 404 and data["error"] == "project_not_found"
    assert (await call(srv, "GET", "/projects/web/opencode/event"))[0] == 401
    for path, key in (("/projects/web/opencode/event", web_ro), ("/opencode/event", ADMIN)):
        async with (
            aiohttp.ClientSession() as s,
            s.get(srv.base_url + path, headers={"X-API-Key": key}) as r,
        ):
            assert r.status == 200 and r.content_type == "text/event-stream"
            first = await asyncio.wait_for(r.content.readline(), 10)
            assert b"server.connected" in first, first


async def test_the_dashboard_files_need_no_key_and_what_they_call_does(srv: RunningAgentd) -> None:
    status, page, headers = await call(srv, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and "agentd" in page
    assert (await call(srv, "GET", "/dashboard/app.js"))[0] == 200
    assert (await call(srv, "GET", "/dashboard/nope.js"))[0] == 404
    assert (await call(srv, "GET", "/jobs"))[0] == 401


async def test_get_job_gives_a_stream_url_with_a_token_that_follows_the_job(srv: RunningAgentd) -> None:
    web_ro = await new_key(srv, projects=["web"], read_only=True)
    job = await submit(srv, "web", ADMIN)
    status, got, _ = await call(srv, "GET", f"/projects/web/jobs/{job['job_id']}", web_ro)
    assert status == 200 and "?token=" in got["stream_url"]
    assert got["stream_url"].startswith(f"{srv.base_url}/projects/web/events/{job['stream_id']}?token=")
    seen = await events(got["stream_url"])  # no X-API-Key: EventSource cannot send one
    assert seen[-1][0] == "done"
    other = got["stream_url"].replace(job["stream_id"], "stm_" + "0" * 36)
    async with aiohttp.ClientSession() as s, s.get(other) as r:
        assert r.status in (401, 404)  # the token is for its one stream
