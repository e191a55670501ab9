"""After a job ran through the real composition root, `/metrics` (parsed with prometheus-client's parser)
counts it, and the job's log lines carry the request id of the request that submitted it.

Runs once the composition root wires observability (a `metrics: PrometheusMetrics` on the Container, fed
to the runner, the job service, the event stream and the HTTP app; see agentd/observability.py); until then
it says so and skips.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import aiohttp
import pytest
import structlog
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.bootstrap import Container, build
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
    if "metrics" not in {f.name for f in dataclasses.fields(Container)}:
        pytest.skip("the composition root does not wire observability yet (no Container.metrics)")
    settings = Settings(data_dir=tmp_path / "data", api_key=KEY, providers="scripted")
    container = await build(settings, agents=[ScriptedCodeAgent("scripted")])
    runner = web.AppRunner(container.app(), shutdown_timeout=5, access_log=None)
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
