"""The HTTP API with the in-process scripted agent: contract names, validation, auth, cancel, streams."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import pytest

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.domain.models import TextEvent
from agentd.sse import aiter_sse
from tests.conftest import RunningAgentd


@pytest.fixture
async def srv(agentd_factory: Any) -> RunningAgentd:
    server: RunningAgentd = await agentd_factory(
        [ScriptedCodeAgent("scripted"), ScriptedCodeAgent("claude-code")], workers=2
    )
    return server


async def call(srv: RunningAgentd, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    if method != "GET" and "json" not in kw and "data" not in kw:  # as agentd.client does: writes are JSON
        kw["headers"] = {"Content-Type": "application/json", **kw.get("headers", {})}
    async with aiohttp.ClientSession() as s, s.request(method, srv.base_url + path, **kw) as r:
        body = await r.read()
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            data = body.decode()
        return r.status, data, r.headers


async def events_of(srv: RunningAgentd, stream_url: str, **kw: Any) -> list[tuple[int, str, dict[str, Any]]]:
    out = []
    async with aiohttp.ClientSession() as s, s.get(stream_url, **kw) as r:
        assert r.status == 200
        async for ev in aiter_sse(r.content.iter_any()):
            out.append((int(ev.id), ev.event, json.loads(ev.data)))
    return out


async def test_submit_returns_the_contract_fields_and_the_stream_ends_with_done(srv: RunningAgentd) -> None:
    status, body, headers = await call(srv, "POST", "/projects/web-app/jobs", json={"prompt": "hello there"})
    assert status == 202
    assert set(body) >= {"job_id", "stream_id", "stream_url", "status_url", "status"}
    assert body["status"] == "queued" and body["provider"] == "scripted"
    assert body["stream_url"] == f"{srv.base_url}/projects/web-app/events/{body['stream_id']}"
    assert body["status_url"] == f"{srv.base_url}/projects/web-app/jobs/{body['job_id']}"
    assert headers["Location"] == body["status_url"]
    evs = await events_of(srv, body["stream_url"])
    assert [e[0] for e in evs] == list(range(1, len(evs) + 1))
    assert [e[1] for e in evs] == ["status", "status", "session", "text", "text", "done"]
    assert "".join(e[2]["chunk"] for e in evs if e[1] == "text") == "hello there"
    text = next(e[2] for e in evs if e[1] == "text")
    assert set(text) >= {"message_id", "index", "chunk", "is_complete", "agent"}
    done = evs[-1][2]
    assert set(done) >= {
        "status",
        "exit_code",
        "duration_ms",
        "session_id",
        "result",
        "usage",
        "cost_usd",
        "error",
    }
    assert done["status"] == "succeeded" and done["result"] == "hello there"
    status, job, _ = await call(srv, "GET", f"/projects/web-app/jobs/{body['job_id']}")
    assert status == 200 and job["status"] == "succeeded" and job["result"]["result"] == "hello there"


async def test_claude_route_forces_the_provider(srv: RunningAgentd) -> None:
    status, body, _ = await call(
        srv, "POST", "/projects/p/claude", json={"prompt": "x", "provider": "scripted"}
    )
    assert status == 202 and body["provider"] == "claude-code"


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        (None, "invalid_request", "JSON object"),
        ("not json", "invalid_request", "not valid JSON"),
        ([1, 2], "invalid_request", "JSON object"),
        ({}, "prompt_required", "prompt"),
        ({"prompt": "   "}, "prompt_required", "prompt"),
        ({"prompt": "x", "timeout_s": 0}, "invalid_timeout", "between 1 and 86400"),
        ({"prompt": "x", "timeout_s": "soon"}, "invalid_request", "timeout_s"),
        ({"prompt": "x", "max_turns": 0}, "invalid_max_turns", "max_turns"),
        ({"prompt": "x", "session_id": "--evil"}, "invalid_session_id", "session_id"),
        ({"prompt": "x", "provider": "nope"}, "unknown_provider", "scripted, claude-code"),
        ({"prompt": "x", "provider": 7}, "invalid_request", "provider"),
        ({"prompt": "x", "colour": "red"}, "invalid_request", "unknown field(s) colour"),
        ({"prompt": "x", "busy": "sometimes"}, "invalid_request", "busy"),
        ({"prompt": 5}, "invalid_request", "prompt"),
        ({"prompt": "x", "files": [{"path": "../../etc/passwd"}]}, "invalid_request", "relative path"),
        ({"prompt": "x", "files": [{"path": "a", "content": "b"}]}, "invalid_request", "exactly one"),
    ],
)
async def test_bad_input_is_a_400_that_says_what_to_fix(
    srv: RunningAgentd, body: Any, code: str, fragment: str
) -> None:
    kw: dict[str, Any] = {"headers": {"Content-Type": "application/json"}}
    if isinstance(body, str):
        kw["data"] = body
    elif body is not None:
        kw = {"json": body}
    status, data, _ = await call(srv, "POST", "/projects/p/jobs", **kw)
    assert status == 400, data
    assert data["error"] == code and fragment in data["message"], data


@pytest.mark.parametrize("pid", ["Upper", "-dash", "a..b", "x" * 64, "sp%20ace"])
async def test_bad_project_id(srv: RunningAgentd, pid: str) -> None:
    status, data, _ = await call(srv, "POST", f"/projects/{pid}/jobs", json={"prompt": "x"})
    assert status == 400 and data["error"] == "invalid_project_id"
    status, data, _ = await call(srv, "GET", f"/projects/{pid}/jobs")
    assert status == 400 and data["error"] == "invalid_project_id"


async def test_not_found_and_wrong_method_are_json(srv: RunningAgentd) -> None:
    _, job, _ = await call(srv, "POST", "/projects/a/jobs", json={"prompt": "x"})
    for path in (
        "/projects/a/jobs/job_0000",
        f"/projects/b/jobs/{job['job_id']}",  # another project's job is not visible
        f"/projects/b/events/{job['stream_id']}",
        "/projects/a/events/stm_nothere",
        "/projects/a/events/garbage",
        "/nope",
    ):
        status, data, _ = await call(srv, "GET", path)
        assert status == 404 and data["error"] in ("job_not_found", "stream_not_found", "not_found"), path
        assert data["message"]
    status, data, _ = await call(srv, "DELETE", "/projects/a/jobs")
    assert status == 405 and data["error"] == "method_not_allowed"


async def test_body_too_large(srv: RunningAgentd) -> None:
    status, data, _ = await call(
        srv,
        "POST",
        "/projects/a/jobs",
        data=io.BytesIO(b"x" * (9 * 1024 * 1024)),
        headers={"Content-Type": "application/json"},
    )
    assert status == 413 and data["error"] == "body_too_large"


async def test_api_key(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent()], api_key="s3cret")
    status, data, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "x"})
    assert status == 401 and data["error"] == "unauthorized" and "X-API-Key" in data["message"]
    status, data, _ = await call(srv, "GET", "/providers", headers={"X-API-Key": "wrong"})
    assert status == 401
    status, _, _ = await call(srv, "GET", "/healthz")
    assert status == 200
    status, body, _ = await call(
        srv, "POST", "/projects/p/jobs", json={"prompt": "x"}, headers={"X-API-Key": "s3cret"}
    )
    assert status == 202
    bare, _token = body["stream_url"].split("?token=")
    status, _, _ = await call(srv, "GET", bare.replace(srv.base_url, ""))
    assert status == 401  # streams are protected too
    items = [it async for it in srv.client.follow(bare)]  # the client sends the key
    assert items[-1].event == "done"
    assert items[-1].event == "done"


async def test_providers_and_healthz(srv: RunningAgentd) -> None:
    status, data, _ = await call(srv, "GET", "/providers")
    assert status == 200 and data["default"] == "scripted"
    names = [p["name"] for p in data["providers"]]
    assert names == ["scripted", "claude-code"]
    first = data["providers"][0]
    assert first["default"] is True and first["availability"]["available"] is True
    assert "streaming" in first["capabilities"]
    status, data, _ = await call(srv, "GET", "/healthz")
    assert status == 200 and data["status"] == "ok"


async def test_cancel_queued_and_running_jobs(srv: RunningAgentd) -> None:
    _, running, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "sleep:30"})
    _, queued, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "after"})
    await until_event(srv, running["stream_url"], "session")  # the first job runs now
    # A later job of another project runs to its end: the workers (one slot still free) have looked at
    # the queue since, and passed over the busy project's second job.
    _, other, _ = await call(srv, "POST", "/projects/other/jobs", json={"prompt": "x"})
    assert (await events_of(srv, other["stream_url"]))[-1][1] == "done"
    status, job, _ = await call(srv, "GET", f"/projects/p/jobs/{queued['job_id']}")
    assert job["status"] == "queued"  # one running job per project: this one waits
    status, job, _ = await call(srv, "POST", f"/projects/p/jobs/{queued['job_id']}/cancel", json={})
    assert status == 200 and job["status"] == "cancelled"
    evs = await events_of(srv, queued["stream_url"])
    assert [e[1] for e in evs] == ["status", "done"] and evs[-1][2]["status"] == "cancelled"
    status, job, _ = await call(srv, "POST", f"/projects/p/jobs/{running['job_id']}/cancel", json={})
    assert status == 202 and job["cancel_requested"] is True
    evs = await asyncio.wait_for(events_of(srv, running["stream_url"]), 10)
    assert evs[-1][1] == "done" and evs[-1][2]["status"] == "cancelled"
    status, _, _ = await call(srv, "POST", "/projects/p/jobs/job_404/cancel", json={})
    assert status == 404


async def test_busy_reject_and_idempotency(srv: RunningAgentd) -> None:
    _, first, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "sleep:30"})
    status, data, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "x", "busy": "reject"})
    assert status == 409 and data["error"] == "project_busy"
    key = {"Idempotency-Key": "ci-run-42"}
    s1, a, _ = await call(srv, "POST", "/projects/q/jobs", json={"prompt": "sleep:30"}, headers=key)
    s2, b, h2 = await call(srv, "POST", "/projects/q/jobs", json={"prompt": "sleep:30"}, headers=key)
    assert (s1, s2) == (202, 200) and a["job_id"] == b["job_id"] and h2["Idempotent-Replayed"] == "true"
    s3, c, _ = await call(srv, "POST", "/projects/q/jobs", json={"prompt": "other"}, headers=key)
    assert s3 == 409 and c["error"] == "idempotency_conflict"
    status, data, _ = await call(
        srv, "POST", "/projects/q/jobs", json={"prompt": "x"}, headers={"Idempotency-Key": "k" * 300}
    )
    assert status == 400
    for job in (first, a):
        await call(
            srv, "POST", f"/projects/{'p' if job is first else 'q'}/jobs/{job['job_id']}/cancel", json={}
        )


async def test_list_jobs_with_filters_and_paging(srv: RunningAgentd) -> None:
    ids = []
    for i in range(5):
        _, j, _ = await call(srv, "POST", "/projects/l/jobs", json={"prompt": f"job {i}"})
        ids.append(j["job_id"])
    for j in ids:
        items = [it async for it in srv.client.follow(f"/projects/l/events/{j.replace('job_', 'stm_')}")]
        assert items[-1].event == "done"  # every job has ended (and `done` comes after the stored result)
    status, data, _ = await call(srv, "GET", "/projects/l/jobs", params={"limit": "2"})
    assert status == 200 and [j["job_id"] for j in data["jobs"]] == ids[::-1][:2]
    status, data2, _ = await call(
        srv, "GET", "/projects/l/jobs", params={"limit": "2", "before": data["next_before"]}
    )
    assert [j["job_id"] for j in data2["jobs"]] == ids[::-1][2:4]
    status, data, _ = await call(
        srv, "GET", "/projects/l/jobs", params={"status": "succeeded", "provider": "scripted"}
    )
    assert status == 200 and sorted(j["job_id"] for j in data["jobs"]) == sorted(ids)
    assert {j["status"] for j in data["jobs"]} == {"succeeded"}
    status, data, _ = await call(srv, "GET", "/projects/l/jobs", params={"status": "failed"})
    assert status == 200 and data["jobs"] == []
    for bad in (
        {"status": "done-ish"},
        {"limit": "0"},
        {"limit": "x"},
        {"created_after": "yesterday"},
        {"provider": "zz"},
    ):
        status, data, _ = await call(srv, "GET", "/projects/l/jobs", params=bad)
        assert status == 400, bad


async def test_sse_headers_retry_and_bad_resume_ids(srv: RunningAgentd) -> None:
    _, job, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "x"})
    async with aiohttp.ClientSession() as s, s.get(job["stream_url"]) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["X-Accel-Buffering"] == "no"
        assert "no-cache" in r.headers["Cache-Control"]
        raw = await r.read()
    assert raw.startswith(b"retry: ")
    assert b"event: done\n" in raw
    for headers, params in (({"Last-Event-ID": "abc"}, {}), ({}, {"after": "-1"}), ({}, {"after": "x"})):
        status, data, _ = await call(
            srv, "GET", job["stream_url"].replace(srv.base_url, ""), headers=headers, params=params
        )
        assert status == 400 and data["error"] == "invalid_request"


async def test_heartbeat_comments_while_idle(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent()], sse_heartbeat_s=0.2)
    _, job, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "sleep:1"})
    async with aiohttp.ClientSession() as s, s.get(job["stream_url"]) as r:
        raw = await r.read()
    assert raw.count(b": heartbeat\n\n") >= 2
    assert raw.rstrip().endswith(b"}")  # ...and still ends with the done event's data


async def until_event(srv: RunningAgentd, stream_url: str, event: str) -> list[tuple[int, str]]:
    """Read a stream until `event` arrives; the (seq, event) pairs seen so far."""
    seen: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as s, s.get(stream_url) as r:
        async for ev in aiter_sse(r.content.iter_any()):
            seen.append((int(ev.id), ev.event))
            if ev.event == event:
                return seen
    raise AssertionError(f"the stream ended without {event!r}: {seen}")


async def test_resume_after_last_event_id_or_after_param(srv: RunningAgentd) -> None:
    _, job, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "hello there"})
    full = await events_of(srv, job["stream_url"])
    assert len(full) == 6
    assert await events_of(srv, job["stream_url"], headers={"Last-Event-ID": "3"}) == full[3:]
    assert await events_of(srv, job["stream_url"], params={"after": "4"}) == full[4:]
    # The header wins over the parameter (it is what a reconnecting EventSource sends).
    assert (
        await events_of(srv, job["stream_url"], headers={"Last-Event-ID": "5"}, params={"after": "1"})
        == (full[5:])
    )


async def test_a_subscriber_that_falls_behind_is_cut_off_and_can_resume(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent()], subscriber_buffer=5)
    _, job, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "sleep:30"})
    stream_id = job["stream_id"]
    seen: list[tuple[str, str, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as s, s.get(job["stream_url"]) as r:
        async for ev in aiter_sse(r.content.iter_any()):
            seen.append((ev.id, ev.event, json.loads(ev.data)))
            if ev.event == "session":  # following live now: 20 events at once put it 20 behind
                await srv.container.streams.publish(
                    stream_id, [TextEvent(message_id="m", chunk=str(i)) for i in range(20)]
                )
    assert [e[1] for e in seen[:3]] == ["status", "status", "session"]
    assert len(seen) == 4, seen  # nothing after the session: the 20 never reached this connection
    _, event, data = seen[-1]
    assert event == "error" and data["code"] == "subscriber_too_slow" and data["retryable"] is True
    assert "Last-Event-ID: 3" in data["message"]
    # Resuming from the last event it saw, it gets the 20 in order.
    resumed: list[int] = []
    async with aiohttp.ClientSession() as s, s.get(job["stream_url"], headers={"Last-Event-ID": "3"}) as r:
        async for ev in aiter_sse(r.content.iter_any()):
            resumed.append(int(ev.id))
            if len(resumed) == 20:
                break
    assert resumed == list(range(4, 24))
    status, cancelled, _ = await call(srv, "POST", f"/projects/p/jobs/{job['job_id']}/cancel", json={})
    assert status == 202 and cancelled["cancel_requested"] is True
