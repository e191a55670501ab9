"""Access (issue 9): scoped keys, stream tokens, limits, no cross-site door, every bad input a 4xx."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.client import AgentdClient, ApiError
from agentd.sse import aiter_sse
from tests.conftest import RunningAgentd

ADMIN = "bootstrap-admin-key-0123456789"
MASTER = base64.urlsafe_b64encode(os.urandom(32)).decode()


async def call(
    srv: RunningAgentd, method: str, path: str, key: str | None = None, **kw: Any
) -> tuple[int, Any, Any]:
    headers = {**({"X-API-Key": key} if key else {}), **kw.pop("headers", {})}
    if method != "GET" and "json" not in kw:
        headers.setdefault("Content-Type", "application/json")
    url = path if path.startswith("http") else srv.base_url + path
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers, **kw) as r:
        body = await r.read()
        try:
            data = json.loads(body) if body else None
        except json.JSONDecodeError:
            data = body.decode(errors="replace")
        return r.status, data, r.headers


async def new_key(srv: RunningAgentd, **body: Any) -> str:
    status, data, _ = await call(srv, "POST", "/keys", ADMIN, json=body)
    assert status == 201, data
    assert data["key"].startswith("agentd_" + data["key_id"] + "_")
    return str(data["key"])


async def events(url: str, **kw: Any) -> list[tuple[str, dict[str, Any]]]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:
        assert r.status == 200, await r.text()
        return [(ev.event, json.loads(ev.data)) async for ev in aiter_sse(r.content.iter_any())]


@pytest.fixture
async def srv(agentd_factory: Any) -> RunningAgentd:
    server: RunningAgentd = await agentd_factory(
        [ScriptedCodeAgent("scripted")], api_key=ADMIN, master_key=MASTER, workers=2
    )
    return server


# --- keys ---------------------------------------------------------------------------------------------


async def test_admin_creates_lists_and_revokes_keys_over_http(srv: RunningAgentd) -> None:
    status, created, _ = await call(
        srv, "POST", "/keys", ADMIN, json={"name": "ci-web", "projects": ["web"], "read_only": False}
    )
    assert status == 201 and created["scope"] == ["web"] and created["access"] == "write"
    token = created["key"]
    status, listed, _ = await call(srv, "GET", "/keys", ADMIN)
    assert status == 200 and [k["key_id"] for k in listed["keys"]] == [created["key_id"]]
    assert token not in json.dumps(listed) and "key" not in listed["keys"][0]
    assert (await call(srv, "GET", "/projects/web/jobs", token))[0] == 200
    _, listed, _ = await call(srv, "GET", "/keys", ADMIN)
    assert listed["keys"][0]["last_used_at"] is not None
    status, revoked, _ = await call(srv, "DELETE", f"/keys/{created['key_id']}", ADMIN)
    assert status == 200 and revoked["revoked_at"] is not None
    assert (await call(srv, "GET", "/projects/web/jobs", token))[0] == 401
    assert (await call(srv, "DELETE", "/keys/key_0000000000000000", ADMIN))[0] == 404
    assert (await call(srv, "DELETE", "/keys/nonsense%0A", ADMIN))[0] == 404


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "at least one project"),
        ({"admin": True, "projects": ["a"]}, "not both"),
        ({"projects": ["Bad!"]}, "invalid project id"),
        ({"projects": "web"}, "list of project ids"),
        ({"projects": ["web"], "read_only": "yes"}, "true or false"),
        ({"projects": ["web"], "name": ""}, "key name"),
        ({"projects": ["web"], "colour": "red"}, "unknown field"),
    ],
)
async def test_bad_key_requests_are_400(srv: RunningAgentd, body: dict[str, Any], fragment: str) -> None:
    status, data, _ = await call(srv, "POST", "/keys", ADMIN, json=body)
    assert status == 400 and fragment in data["message"], data


async def test_only_admin_write_keys_manage_keys_and_global_secrets(srv: RunningAgentd) -> None:
    scoped = await new_key(srv, projects=["web"])
    admin_ro = await new_key(srv, admin=True, read_only=True)
    for key in (scoped,):
        assert (await call(srv, "GET", "/keys", key))[0] == 403
        assert (await call(srv, "GET", "/secrets", key))[0] == 403
    assert (await call(srv, "GET", "/keys", admin_ro))[0] == 200
    status, data, _ = await call(srv, "POST", "/keys", admin_ro, json={"admin": True})
    assert status == 403 and "read-only" in data["message"]
    assert (await call(srv, "PUT", "/secrets/TOKEN", admin_ro, json={"value": "12345678"}))[0] == 403
    assert (await call(srv, "GET", "/projects/other/jobs", admin_ro))[0] == 200  # admin: every project


async def test_missing_wrong_and_revoked_keys_are_401_and_refusals_log_the_id_never_the_key(
    srv: RunningAgentd,
) -> None:
    scoped = await new_key(srv, projects=["web"])
    key_id = scoped.split("_")[1] + "_" + scoped.split("_")[2]
    with structlog.testing.capture_logs() as logs:
        assert (await call(srv, "GET", "/providers"))[0] == 401
        assert (await call(srv, "GET", "/providers", "wrong"))[0] == 401
        assert (await call(srv, "GET", "/providers", scoped + "x"))[0] == 401
        assert (
            await call(
                srv, "GET", "/providers", "\udcff".encode("utf-8", "surrogateescape").decode("latin-1")
            )
        )[0] == 401
        assert (await call(srv, "GET", "/projects/other/jobs", scoped))[0] == 404
        assert (await call(srv, "DELETE", "/keys/" + key_id, scoped))[0] == 403
    refusals = [e for e in logs if e["event"] == "auth.refused"]
    assert len(refusals) >= 5
    assert {e.get("key_id") for e in refusals[-2:]} == {key_id}
    assert scoped not in repr(logs) and scoped.rsplit("_", 1)[1] not in repr(logs)


async def test_a_project_key_learns_nothing_of_another_project(srv: RunningAgentd) -> None:
    web = await new_key(srv, projects=["web", "docs"])
    _, theirs, _ = await call(srv, "POST", "/projects/secret-proj/jobs", ADMIN, json={"prompt": "x"})
    _, mine, _ = await call(srv, "POST", "/projects/web/jobs", web, json={"prompt": "hello"})
    assert mine["project_id"] == "web"
    await call(srv, "PUT", "/projects/secret-proj/secrets/TOKEN", ADMIN, json={"value": "their-secret"})
    real, fake = theirs["job_id"], "job_" + "0" * 36
    real_stream, fake_stream = theirs["stream_id"], "stm_" + "0" * 36

    async def as_web(method: str, path: str, **kw: Any) -> tuple[int, Any]:
        status, data, _ = await call(srv, method, path, web, **kw)
        return status, data

    async def same(path_real: str, path_fake: str, method: str = "GET", **kw: Any) -> None:
        # exactly what an id that does not exist gets (the ids themselves aside)
        a = await as_web(method, path_real, **kw)
        b = await as_web(method, path_fake, **kw)
        assert a[0] == b[0] == 404, (a, b)
        assert a[1]["error"] == b[1]["error"]
        assert a[1]["message"].replace(real, "ID").replace(real_stream, "ID").replace("secret-proj", "P") == (
            b[1]["message"].replace(fake, "ID").replace(fake_stream, "ID").replace("nobody-here", "P")
        )

    await same(f"/projects/secret-proj/jobs/{real}", f"/projects/nobody-here/jobs/{fake}")
    await same(
        f"/projects/secret-proj/jobs/{real}", f"/projects/web/jobs/{fake}".replace("web", "nobody-here")
    )
    await same(
        f"/projects/secret-proj/jobs/{real}/cancel", f"/projects/nobody-here/jobs/{fake}/cancel", "POST"
    )
    await same(f"/projects/secret-proj/events/{real_stream}", f"/projects/nobody-here/events/{fake_stream}")
    await same("/projects/secret-proj/jobs", "/projects/nobody-here/jobs")
    await same("/projects/secret-proj/secrets", "/projects/nobody-here/secrets")
    await same(
        "/projects/secret-proj/secrets/TOKEN",
        "/projects/nobody-here/secrets/TOKEN",
        "PUT",
        json={"value": "x" * 9},
    )
    await same("/projects/secret-proj/jobs", "/projects/nobody-here/jobs", "POST", json={"prompt": "x"})
    # its own projects work
    assert (await as_web("GET", f"/projects/web/jobs/{mine['job_id']}"))[0] == 200
    assert (await as_web("GET", "/projects/docs/jobs"))[0] == 200
    status, job, _ = await call(srv, "GET", f"/projects/secret-proj/jobs/{real}", ADMIN)
    assert status == 200 and job["status"] != "cancelled"  # the refused cancel changed nothing


async def test_a_read_only_key_gets_403_on_every_write(srv: RunningAgentd) -> None:
    ro = await new_key(srv, projects=["web"], read_only=True)
    _, job, _ = await call(srv, "POST", "/projects/web/jobs", ADMIN, json={"prompt": "sleep:5"})
    writes = [
        ("POST", "/projects/web/jobs", {"json": {"prompt": "x"}}),
        ("POST", "/projects/web/claude", {"json": {"prompt": "x"}}),
        ("POST", f"/projects/web/jobs/{job['job_id']}/cancel", {}),
        ("PUT", "/projects/web/secrets/TOKEN", {"json": {"value": "12345678"}}),
        ("DELETE", "/projects/web/secrets/TOKEN", {}),
    ]
    for method, path, kw in writes:
        status, data, _ = await call(srv, method, path, ro, **kw)
        assert status == 403 and data["error"] == "forbidden" and "read-only" in data["message"], path
    assert (await call(srv, "GET", f"/projects/web/jobs/{job['job_id']}", ro))[0] == 200
    assert (await call(srv, "GET", "/projects/web/secrets", ro))[0] == 200
    got = await events(f"{srv.base_url}/projects/web/events/{job['stream_id']}", headers={"X-API-Key": ro})
    assert got[0][0] == "status"
    await call(srv, "POST", f"/projects/web/jobs/{job['job_id']}/cancel", ADMIN)


# --- stream tokens --------------------------------------------------------------------------------------


async def test_stream_url_carries_a_token_for_that_stream_only_never_the_key(
    srv: RunningAgentd, agentd_factory: Any
) -> None:
    web = await new_key(srv, projects=["web"])
    _, a, _ = await call(srv, "POST", "/projects/web/jobs", web, json={"prompt": "hello"})
    _, b, _ = await call(srv, "POST", "/projects/web/jobs", web, json={"prompt": "other"})
    assert web not in a["stream_url"] and ADMIN not in a["stream_url"] and "?token=" in a["stream_url"]
    got = await events(a["stream_url"])  # no header at all, as EventSource
    assert got[-1][0] == "done"
    token = a["stream_url"].split("?token=")[1]
    other = f"{srv.base_url}/projects/web/events/{b['stream_id']}?token={token}"
    for url in (other, a["stream_url"] + "x", a["stream_url"].replace("/web/", "/docs/")):
        status, data, _ = await call(srv, "GET", url)
        assert status in (401, 400), (url, data)
    # the token reads, never writes
    cancel = f"{srv.base_url}/projects/web/jobs/{a['job_id']}/cancel?token={token}"
    assert (await call(srv, "POST", cancel))[0] == 401


async def test_an_expired_stream_token_is_refused(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent("scripted")], api_key=ADMIN, stream_token_ttl_s=0.001)
    _, a, _ = await call(srv, "POST", "/projects/web/jobs", ADMIN, json={"prompt": "hello"})
    await asyncio.sleep(1.1)
    status, data, _ = await call(srv, "GET", a["stream_url"])
    assert status == 401 and "expired" in data["message"]


# --- limits ---------------------------------------------------------------------------------------------


async def test_rate_limit_per_key_is_429_with_retry_after(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent("scripted")], api_key=ADMIN, rate_limit="2/min")
    one = await new_key(srv, projects=["a"])
    for _ in range(2):
        assert (await call(srv, "POST", "/projects/a/jobs", one, json={"prompt": "x"}))[0] == 202
    status, data, headers = await call(srv, "POST", "/projects/a/jobs", one, json={"prompt": "x"})
    assert status == 429 and data["error"] == "rate_limited" and data["limit"] == "AGENTD_RATE_LIMIT"
    assert "2/min" in data["message"] and 1 <= int(headers["Retry-After"]) <= 60
    assert (await call(srv, "POST", "/projects/a/jobs", ADMIN, json={"prompt": "x"}))[0] == 202  # per key


async def test_queued_jobs_per_project_are_capped(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent("scripted")], max_queued_per_project=2, workers=1)
    assert (await call(srv, "POST", "/projects/a/jobs", json={"prompt": "sleep:10"}))[0] == 202
    for _ in range(50):  # the first one starts: it no longer counts as queued
        _, jobs, _ = await call(srv, "GET", "/projects/a/jobs?status=running")
        if jobs["jobs"]:
            break
        await asyncio.sleep(0.05)
    for _ in range(2):
        assert (await call(srv, "POST", "/projects/a/jobs", json={"prompt": "x"}))[0] == 202
    status, data, headers = await call(srv, "POST", "/projects/a/jobs", json={"prompt": "x"})
    assert (
        status == 429 and data["error"] == "queue_full" and data["limit"] == "AGENTD_MAX_QUEUED_PER_PROJECT"
    )
    assert "Retry-After" in headers
    assert (await call(srv, "POST", "/projects/b/jobs", json={"prompt": "x"}))[0] == 202  # per project


async def test_open_streams_are_capped_per_key_and_in_total(agentd_factory: Any) -> None:
    srv = await agentd_factory(
        [ScriptedCodeAgent("scripted")],
        api_key=ADMIN,
        max_streams_per_key=1,
        max_streams=2,
        sse_heartbeat_s=0.2,
    )
    one, two = await new_key(srv, projects=["a"]), await new_key(srv, projects=["a"])
    _, job, _ = await call(srv, "POST", "/projects/a/jobs", ADMIN, json={"prompt": "sleep:30"})
    url = f"{srv.base_url}/projects/a/events/{job['stream_id']}"
    async with aiohttp.ClientSession() as s:
        first = await s.get(url, headers={"X-API-Key": one})
        assert first.status == 200
        status, data, headers = await call(srv, "GET", url, one)
        assert status == 429 and data["limit"] == "AGENTD_MAX_STREAMS_PER_KEY" and "Retry-After" in headers
        second = await s.get(url, headers={"X-API-Key": two})
        assert second.status == 200
        status, data, _ = await call(srv, "GET", url, ADMIN)
        assert status == 503 and data["error"] == "server_busy" and data["limit"] == "AGENTD_MAX_STREAMS"
        first.close()
        second.close()
        for _ in range(50):  # the server sees the client go (at the next heartbeat), and frees its slot
            again = await s.get(url, headers={"X-API-Key": one})
            if again.status == 200:
                break
            again.close()
            await asyncio.sleep(0.1)
        assert again.status == 200
        again.close()
    await call(srv, "POST", f"/projects/a/jobs/{job['job_id']}/cancel", ADMIN)


# --- no cross-site door ---------------------------------------------------------------------------------


async def test_writes_take_json_only(srv: RunningAgentd, agentd_factory: Any) -> None:
    open_srv = await agentd_factory(
        [ScriptedCodeAgent("scripted")], data_dir=srv.settings.data_dir.parent / "o"
    )
    for server, key in ((srv, ADMIN), (open_srv, None)):
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            status, data, _ = await call(
                server,
                "POST",
                "/projects/a/jobs",
                key,
                data=b'{"prompt": "x"}',
                headers={"Content-Type": ctype},
            )
            assert status == 415 and data["error"] == "unsupported_media_type", ctype
    # a cross-site POST without a body and without a key (the development mode) cannot cancel either
    _, job, _ = await call(open_srv, "POST", "/projects/a/jobs", json={"prompt": "sleep:5"})
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{open_srv.base_url}/projects/a/jobs/{job['job_id']}/cancel", skip_auto_headers={"Content-Type"}
        ) as r:
            assert r.status == 415
    assert (await call(open_srv, "POST", f"/projects/a/jobs/{job['job_id']}/cancel"))[0] in (200, 202)
    # with the key and no body at all: fine (a cross-site request cannot carry X-API-Key without a preflight)
    _, job, _ = await call(srv, "POST", "/projects/a/jobs", ADMIN, json={"prompt": "sleep:5"})
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{srv.base_url}/projects/a/jobs/{job['job_id']}/cancel",
            headers={"X-API-Key": ADMIN},
            skip_auto_headers={"Content-Type"},
        ) as r:
            assert r.status in (200, 202)


async def test_other_hosts_get_421_before_any_route(agentd_factory: Any, tmp_path: Path) -> None:
    srv = await agentd_factory([ScriptedCodeAgent("scripted")])
    for host in ("evil.example", "evil.example:80", "127.0.0.1.evil.example", "[::2]", "localhost:1"):
        status, data, _ = await call(srv, "GET", "/projects/a/jobs", headers={"Host": host})
        assert status == 421 and data["error"] == "misdirected_request", host
    status, _, _ = await call(
        srv, "POST", "/projects/a/jobs", json={"prompt": "x"}, headers={"Host": "evil.example"}
    )
    assert status == 421
    port = srv.base_url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert (await call(srv, "GET", "/providers", headers={"Host": host}))[0] == 200, host


def test_default_allowed_hosts_follow_the_bind_address() -> None:
    from agentd.config import Settings

    loopback = frozenset({"localhost:8080", "127.0.0.1:8080", "[::1]:8080"})
    assert Settings().allowed_hosts_for("127.0.0.1", 8080) == loopback
    assert Settings().allowed_hosts_for("10.0.0.5", 9000) == frozenset({"10.0.0.5:9000"})
    listed = Settings(allowed_hosts="a.example,b.example:1").allowed_hosts_for("127.0.0.1", 1)
    assert listed == frozenset({"a.example", "b.example:1"})
    public = Settings(public_url="https://agentd.example.com").allowed_hosts_for("0.0.0.0", 80)
    assert public == frozenset({"agentd.example.com"})


async def test_absolute_urls_come_from_the_public_url_or_the_allowed_host(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent("scripted")], public_url="https://agentd.example.com/")
    status, job, headers = await call(
        srv, "POST", "/projects/a/jobs", json={"prompt": "x"}, headers={"Host": "agentd.example.com"}
    )
    assert status == 202
    assert job["stream_url"].startswith("https://agentd.example.com/projects/a/events/")
    assert (
        headers["Location"]
        == job["status_url"]
        == f"https://agentd.example.com/projects/a/jobs/{job['job_id']}"
    )
    plain = await agentd_factory([ScriptedCodeAgent("scripted")], data_dir=srv.settings.data_dir.parent / "p")
    _, job, _ = await call(plain, "POST", "/projects/a/jobs", json={"prompt": "x"})
    assert job["status_url"].startswith(plain.base_url + "/projects/a/jobs/")


async def test_the_client_never_sends_the_key_to_another_origin(srv: RunningAgentd) -> None:
    seen: list[str] = []
    from aiohttp import web

    async def grab(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-API-Key", ""))
        return web.Response(text="")

    app = web.Application()
    app.router.add_get("/{tail:.*}", grab)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    other = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with AgentdClient(srv.base_url, api_key=ADMIN) as client:
            with pytest.raises(ApiError, match="refusing to send the API key"):
                async for _ in client.follow(f"{other}/projects/a/events/stm_x"):
                    pass
            with pytest.raises(ApiError, match="refusing"):
                await client._json("GET", other + "/providers")
    finally:
        await runner.cleanup()
    assert seen == []


async def test_cors_is_off_unless_origins_are_listed(agentd_factory: Any, tmp_path: Path) -> None:
    off = await agentd_factory([ScriptedCodeAgent("scripted")], data_dir=tmp_path / "off")
    on = await agentd_factory(
        [ScriptedCodeAgent("scripted")], data_dir=tmp_path / "on", cors_origins="https://dash.example.com"
    )
    origin = {"Origin": "https://dash.example.com"}
    _, _, headers = await call(off, "GET", "/providers", headers=origin)
    assert "Access-Control-Allow-Origin" not in headers
    status, _, headers = await call(
        off, "OPTIONS", "/projects/a/jobs", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in headers
    _, _, headers = await call(on, "GET", "/providers", headers=origin)
    assert headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
    status, _, headers = await call(
        on, "OPTIONS", "/projects/a/jobs", headers={**origin, "Access-Control-Request-Method": "POST"}
    )
    assert status == 204 and "X-API-Key" in headers["Access-Control-Allow-Headers"]
    _, _, headers = await call(on, "GET", "/providers", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers
    status, _, headers = await call(on, "POST", "/projects/a/jobs", data=b"x", headers=origin)
    assert (
        status == 400 and headers["Access-Control-Allow-Origin"] == "https://dash.example.com"
    )  # errors too
    status, _, headers = await call(
        on,
        "OPTIONS",
        "/projects/a/jobs",
        headers={**origin, "Access-Control-Request-Method": "POST", "Host": "evil"},
    )
    assert status == 421  # the Host check comes first


# --- every bad input a 4xx --------------------------------------------------------------------------------


async def test_the_six_inputs_of_the_issue_and_friends_are_400s(srv: RunningAgentd) -> None:
    _, job, _ = await call(srv, "POST", "/projects/a/jobs", ADMIN, json={"prompt": "x"})
    stream = f"/projects/a/events/{job['stream_id']}"
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", stream, {"headers": {"Last-Event-ID": "²"}}),
        ("GET", "/projects/a/jobs?limit=²", {}),
        ("GET", f"{stream}?after={'9' * 5000}", {}),
        ("GET", "/projects/a/jobs?created_after=0001-01-01T00:00:00%2B05:00", {}),
        ("GET", "/projects/a/jobs?created_before=9999-12-31T23:59:59-05:00", {}),
        ("POST", "/projects/a/jobs", {"data": b"[" * 100_000}),
        ("POST", "/projects/a/jobs", {"data": b'{"prompt": ' + b"[" * 100_000 + b"}"}),
        ("GET", "/projects/a/jobs?before=job_x%00", {}),
        ("GET", "/projects/a/jobs?limit=" + "1" * 5000, {}),
    ]
    for method, path, kw in cases:
        status, data, _ = await call(srv, method, path, ADMIN, **kw)
        assert status == 400 and data["error"] and data["message"], (path, data)
    status, data, _ = await call(srv, "GET", "/providers", headers={"X-API-Key": "\xff"})
    assert status == 401 and data["error"] == "unauthorized"


async def test_trailing_newline_ids_are_refused(srv: RunningAgentd) -> None:
    for path in ("/projects/abc%0A/jobs", "/projects/abc%0A/secrets"):
        status, data, _ = await call(srv, "GET", path, ADMIN)
        assert status == 400 and data["error"] == "invalid_project_id", path
    status, data, _ = await call(srv, "POST", "/projects/abc%0A/jobs", ADMIN, json={"prompt": "x"})
    assert status == 400 and data["error"] == "invalid_project_id"
    status, data, _ = await call(
        srv, "POST", "/projects/abc/jobs", ADMIN, json={"prompt": "x", "session_id": "abc\n"}
    )
    assert status == 400 and data["error"] == "invalid_session_id"
    _, job, _ = await call(srv, "POST", "/projects/abc/jobs", ADMIN, json={"prompt": "x"})
    assert (await call(srv, "GET", f"/projects/abc/jobs/{job['job_id']}%0A", ADMIN))[0] == 404
    assert (await call(srv, "GET", f"/projects/abc/events/{job['stream_id']}%0A", ADMIN))[0] == 404


async def test_nul_in_a_prompt_is_a_400_that_says_so(srv: RunningAgentd) -> None:
    for body in (
        {"prompt": "a\0b"},
        {"prompt": "x", "model": "m\0"},
        {"prompt": "x", "files": [{"content": "\0"}]},
    ):
        status, data, _ = await call(srv, "POST", "/projects/a/jobs", ADMIN, json=body)
        assert status == 400 and "U+0000" in data["message"], body


async def test_files_path_through_a_symlink_out_of_the_workspace_is_400(
    srv: RunningAgentd, tmp_path: Path
) -> None:
    ws = srv.settings.workspace("web")
    ws.mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("not yours")
    (ws / "inside.txt").write_text("yours")
    (ws / "link").symlink_to(tmp_path / "outside.txt")
    (ws / "dir").symlink_to(tmp_path)
    for path in ("link", "dir/outside.txt", "../outside.txt", "/etc/passwd"):
        status, data, _ = await call(
            srv, "POST", "/projects/web/jobs", ADMIN, json={"prompt": "x", "files": [{"path": path}]}
        )
        assert status == 400 and "workspace" in data["message"], (path, data)
    status, _, _ = await call(
        srv, "POST", "/projects/web/jobs", ADMIN, json={"prompt": "x", "files": [{"path": "inside.txt"}]}
    )
    assert status == 202
