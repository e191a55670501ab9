"""After a job ran through the real composition root, `/metrics` (parsed with prometheus-client's parser)
counts it, and the job's log lines carry the request id of the request that submitted it.
"""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.bootstrap import build
from agentd.config import Settings
from agentd.sse import aiter_sse

KEY = "k" * 32


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


async def _one_job(base: str) -> tuple[list[str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """Submit one job with a request id, follow its stream to the end, then scrape /metrics."""
    events: list[str] = []
    async with aiohttp.ClientSession(headers={"X-API-Key": KEY}) as s:
        async with s.post(
            f"{base}/projects/p1/jobs", json={"prompt": "hello metrics"}, headers={"X-Request-Id": "req-m-1"}
        ) as r:
            assert r.status == 202 and r.headers["X-Request-Id"] == "req-m-1"
            job = await r.json()
        async with s.get(job["stream_url"]) as r:
            async for ev in aiter_sse(r.content.iter_any()):
                events.append(ev.event)
                if ev.event == "done":
                    assert json.loads(ev.data)["status"] == "succeeded"
        async with s.get(f"{base}/metrics", headers={"X-API-Key": ""}) as r:
            assert r.status == 401, "/metrics is behind the key"
        async with s.get(f"{base}/metrics") as r:
            assert r.status == 200
            return events, _samples(await r.text())


async def test_metrics_count_a_job_that_ran_and_its_logs_carry_the_request_id(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_key=KEY, providers="scripted")
    container = await build(settings, agents=[ScriptedCodeAgent("scripted")])
    runner = web.AppRunner(container.app(port=0), shutdown_timeout=5, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            events, got = await _one_job(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()

    provider = {"provider": "scripted"}
    assert _value(got, "agentd_jobs_submitted_total", **provider) == 1
    assert _value(got, "agentd_jobs_finished_total", **provider, status="succeeded") == 1
    assert _value(got, "agentd_jobs_running", **provider) == 0
    assert _value(got, "agentd_job_run_duration_seconds_count", **provider, status="succeeded") == 1
    assert _value(got, "agentd_job_submit_to_start_seconds_count", **provider) == 1
    assert _value(got, "agentd_job_submit_to_first_event_seconds_count", **provider) == 1
    published = sum(v for (name, _), v in got.items() if name == "agentd_events_published_total")
    assert published == len(events)
    assert _value(got, "agentd_streams_open") == 0  # the one SSE response ended: open/close balanced
    assert _value(got, "agentd_stream_subscribers") == 0
    assert _value(got, "agentd_streams_open") == 0  # the one SSE response ended: open/close balanced
    assert _value(got, "agentd_stream_subscribers") == 0
    assert _value(got, "agentd_queue_stats_up") == 1
    assert _value(got, "agentd_queue_depth", **provider) == 0
    route = {"method": "POST", "route": "/projects/{project_id}/jobs"}
    assert _value(got, "agentd_http_requests_total", **route, status="202") == 1
    request_lines = [e for e in logs if e["event"] == "http.request" and e["route"] == route["route"]]
    assert [(e["status"], e["request_id"]) for e in request_lines] == [(202, "req-m-1")]
    finished = [e for e in logs if e["event"] == "job.finished"]
    assert len(finished) == 1
    line = finished[0]
    assert line["request_id"] == "req-m-1", "the job's log lines carry the submitting request's id"
    assert {"job_id", "project_id", "provider", "status", "attempts", "duration_ms", "cost_usd"} <= set(line)


async def test_metrics_need_an_admin_key_and_the_request_log_names_the_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", api_key=KEY, providers="scripted")
    container = await build(settings, agents=[ScriptedCodeAgent("scripted")], with_workers=False)
    scoped, token = await container.keys.create(name="p1-only", admin=False, projects=["p1"], read_only=False)
    runner = web.AppRunner(container.app(port=0), shutdown_timeout=5, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        with structlog.testing.capture_logs() as logs:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/metrics", headers={"X-API-Key": token}) as r:
                    assert r.status == 403, "a project key does not see the fleet's metrics"
                    assert (await r.json())["error"] == "forbidden"
                    assert len(r.headers["X-Request-Id"]) == 32  # none given: a new one
    finally:
        await runner.cleanup()
    (line,) = [e for e in logs if e["event"] == "http.request"]
    assert (line["route"], line["status"], line["key_id"]) == ("/metrics", 403, scoped.id)


async def test_with_a_metrics_port_metrics_and_health_are_served_there_without_a_key(
    tmp_path: Path, unused_tcp_port: int
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        api_key=KEY,
        providers="scripted",
        host="127.0.0.1",
        metrics_port=unused_tcp_port,
    )
    container = await build(settings, agents=[ScriptedCodeAgent("scripted")])
    runner = web.AppRunner(container.app(port=0), shutdown_timeout=5, access_log=None)
    await runner.setup()  # starts the container, and with it the metrics server
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{unused_tcp_port}/metrics") as r:
                assert r.status == 200
                got = _samples(await r.text())
            assert _value(got, "agentd_queue_stats_up") == 1
            async with s.get(f"http://127.0.0.1:{unused_tcp_port}/healthz") as r:
                assert r.status == 200
            api = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
            async with s.get(api, headers={"X-API-Key": KEY}) as r:
                assert r.status == 404, "the API does not serve /metrics when AGENTD_METRICS_PORT does"
    finally:
        await runner.cleanup()
    assert container.metrics_server is None
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(f"http://127.0.0.1:{unused_tcp_port}/metrics")
