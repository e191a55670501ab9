"""agentd.observability: the /metrics scrape (parsed with prometheus-client's own parser), the queue gauges
fed from a function, and the one canonical request log line with its request id."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from agentd.observability import (
    KEY_ID,
    PrometheusMetrics,
    QueueStat,
    install,
    request_id_from,
    start_metrics_server,
)
from agentd.ports.metrics import NO_METRICS, Metrics

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
JOBS_ROUTE = "/projects/{project_id}/jobs"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return parsed[(name, frozenset(labels.items()))]


def queue_source(stats: Mapping[str, QueueStat]) -> Callable[[], Awaitable[Mapping[str, QueueStat]]]:
    async def read() -> Mapping[str, QueueStat]:
        return stats

    return read


def app_with(metrics: PrometheusMetrics, routes: list[web.RouteDef] | None = None) -> web.Application:
    app = web.Application()
    app.add_routes(routes or [])
    install(app, metrics)
    return app


async def scrape(client: TestClient[Any, Any]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return samples(await resp.text())


def report_streaming(port: Metrics) -> None:
    port.stream_opened()
    port.subscriber_added()
    port.subscriber_added()
    port.subscriber_removed()
    port.slow_subscriber_disconnected()


async def test_a_scrape_reports_what_the_services_reported(aiohttp_client: ClientFactory) -> None:
    metrics = PrometheusMetrics(
        queue_stats=queue_source({"claude-code": QueueStat(queued=3, oldest_queued_age_s=12.5)}),
        providers=["claude-code", "opencode"],
    )
    port: Metrics = metrics  # what the services see
    for _ in range(2):
        port.job_submitted("claude-code")
    port.run_started("claude-code", since_submit_s=0.3)
    port.first_event("claude-code", since_submit_s=1.2)
    port.events_published("text", 5)
    port.events_published("done")
    port.run_ended("claude-code", "succeeded", run_s=42.0)
    port.job_finished("claude-code", "succeeded")
    port.run_started("opencode", since_submit_s=0.1)  # still running
    port.job_retried("opencode")
    port.provider_error("opencode", "rate_limited")
    port.lease_recovered(2)
    port.run_fenced("claude-code")
    port.webhook_delivery("delivered")
    report_streaming(port)
    client = await aiohttp_client(app_with(metrics))

    got = await scrape(client)

    assert value(got, "agentd_jobs_submitted_total", provider="claude-code") == 2
    assert value(got, "agentd_jobs_finished_total", provider="claude-code", status="succeeded") == 1
    assert value(got, "agentd_jobs_running", provider="claude-code") == 0
    assert value(got, "agentd_jobs_running", provider="opencode") == 1
    assert value(got, "agentd_jobs_retried_total", provider="opencode") == 1
    assert value(got, "agentd_queue_depth", provider="claude-code") == 3
    assert value(got, "agentd_queue_depth", provider="opencode") == 0  # a known provider with nothing queued
    assert value(got, "agentd_queue_oldest_age_seconds", provider="claude-code") == 12.5
    assert value(got, "agentd_queue_stats_up") == 1
    run = dict(provider="claude-code", status="succeeded")
    assert value(got, "agentd_job_run_duration_seconds_count", **run) == 1
    assert value(got, "agentd_job_run_duration_seconds_sum", **run) == 42.0
    assert value(got, "agentd_job_run_duration_seconds_bucket", **run, le="30.0") == 0
    assert value(got, "agentd_job_run_duration_seconds_bucket", **run, le="60.0") == 1
    assert value(got, "agentd_job_submit_to_start_seconds_count", provider="claude-code") == 1
    assert value(got, "agentd_job_submit_to_first_event_seconds_sum", provider="claude-code") == 1.2
    assert value(got, "agentd_events_published_total", type="text") == 5
    assert value(got, "agentd_events_published_total", type="done") == 1
    assert value(got, "agentd_streams_open") == 1
    assert value(got, "agentd_stream_subscribers") == 1
    assert value(got, "agentd_slow_subscriber_disconnects_total") == 1
    assert value(got, "agentd_provider_errors_total", provider="opencode", code="rate_limited") == 1
    assert value(got, "agentd_lease_recoveries_total") == 2
    assert value(got, "agentd_runs_fenced_total", provider="claude-code") == 1
    assert value(got, "agentd_webhook_deliveries_total", outcome="delivered") == 1


async def test_queue_gauges_are_read_at_every_scrape(aiohttp_client: ClientFactory) -> None:
    stats = {"claude-code": QueueStat(queued=1, oldest_queued_age_s=2.0)}
    metrics = PrometheusMetrics(queue_stats=queue_source(stats))
    client = await aiohttp_client(app_with(metrics))
    assert value(await scrape(client), "agentd_queue_depth", provider="claude-code") == 1
    stats["claude-code"] = QueueStat(queued=0)
    got = await scrape(client)
    assert value(got, "agentd_queue_depth", provider="claude-code") == 0
    assert value(got, "agentd_queue_oldest_age_seconds", provider="claude-code") == 0


@pytest.mark.parametrize("failure", ["raises", "hangs"])
async def test_a_scrape_answers_when_the_queue_cannot_be_read(
    aiohttp_client: ClientFactory, failure: str
) -> None:
    async def broken() -> Mapping[str, QueueStat]:
        if failure == "hangs":
            await asyncio.sleep(30)
        raise ConnectionError("database is down")

    metrics = PrometheusMetrics(queue_stats=broken, providers=["claude-code"], queue_stats_timeout_s=0.2)
    client = await aiohttp_client(app_with(metrics))
    with structlog.testing.capture_logs() as logs:
        got = await scrape(client)
    assert value(got, "agentd_queue_stats_up") == 0
    assert value(got, "agentd_queue_stats_errors_total") == 1
    assert not [key for key in got if key[0] == "agentd_queue_depth"], "no stale or made-up queue depth"
    assert [e for e in logs if e["event"] == "metrics.queue_stats_failed"]


def test_every_process_and_test_has_its_own_registry() -> None:
    one, two = PrometheusMetrics(), PrometheusMetrics()
    one.job_submitted("claude-code")
    assert one.registry is not two.registry
    assert two.jobs_submitted.labels("claude-code")._value.get() == 0
    NO_METRICS.job_submitted("claude-code")  # the default where nothing is wired: accepts and does nothing


# --- the request log line and the request id ------------------------------------------------------------


async def _submit(request: web.Request) -> web.Response:
    request[KEY_ID] = "key_7"  # what the auth middleware records for a valid key
    structlog.get_logger("test").info("test.inside", bound=dict(structlog.contextvars.get_contextvars()))
    return web.json_response({"ok": True}, status=201)


async def _missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


async def _crash(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


async def _stream(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(b"data: 1\n\n")
    return resp


ROUTES = [
    web.post(JOBS_ROUTE, _submit),
    web.get("/missing/{thing}", _missing),
    web.get("/crash", _crash),
    web.get("/stream", _stream),
]


def _lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "http.request"]


async def test_one_canonical_line_per_request_with_the_callers_request_id(
    aiohttp_client: ClientFactory,
) -> None:
    metrics = PrometheusMetrics()
    client = await aiohttp_client(app_with(metrics, ROUTES))
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        resp = await client.post("/projects/p1/jobs", headers={"X-Request-Id": "req-42.a"})
    assert resp.status == 201
    assert resp.headers["X-Request-Id"] == "req-42.a"
    (line,) = _lines(logs)
    assert line["method"] == "POST"
    assert line["route"] == JOBS_ROUTE  # the pattern, never the raw path
    assert line["status"] == 201
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert line["key_id"] == "key_7"
    assert line["request_id"] == "req-42.a"
    assert line["log_level"] == "info"
    # Everything logged while handling the request carries the id (bound in structlog's contextvars) ...
    (inside,) = [e for e in logs if e["event"] == "test.inside"]
    assert inside["request_id"] == "req-42.a" and inside["bound"]["request_id"] == "req-42.a"
    # ... and nothing after it.
    assert "request_id" not in structlog.contextvars.get_contextvars()
    got = await scrape(client)
    assert value(got, "agentd_http_requests_total", method="POST", route=JOBS_ROUTE, status="201") == 1
    assert value(got, "agentd_http_request_duration_seconds_count", method="POST", route=JOBS_ROUTE) == 1


@pytest.mark.parametrize("given", ["", "has space", "x" * 129, "new\\nline", "-leading-dash"])
def test_an_unusable_request_id_is_replaced(given: str) -> None:
    made = request_id_from({"X-Request-Id": given} if given else {})
    assert made != given and re.fullmatch(r"[0-9a-f]{32}", made)
    assert request_id_from({"X-Request-Id": "9f1c2e-ab:01/x+y=z@host"}) == "9f1c2e-ab:01/x+y=z@host"


async def test_errors_and_unknown_routes_are_logged_with_their_status(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(app_with(PrometheusMetrics(), ROUTES))
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        missing = await client.get("/missing/abc")
        unknown = await client.get("/no/such/route")
        crash = await client.get("/crash")
    assert (missing.status, unknown.status, crash.status) == (404, 404, 500)
    ids = {r.headers["X-Request-Id"] for r in (missing, unknown, crash)}
    assert len(ids) == 3, "every response carries its own generated id"
    got = [(e["route"], e["status"], e["request_id"] in ids) for e in _lines(logs)]
    assert got == [("/missing/{thing}", 404, True), ("<unmatched>", 404, True), ("/crash", 500, True)]


async def test_the_log_middleware_is_outermost(aiohttp_client: ClientFactory) -> None:
    """It sees the status the app's own error middleware answered, not the exception under it."""

    @web.middleware
    async def teapot_errors(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except RuntimeError:
            return web.json_response({"error": "converted"}, status=418)

    app = web.Application(middlewares=[teapot_errors])
    app.add_routes(ROUTES)
    install(app, PrometheusMetrics())
    client = await aiohttp_client(app)
    with structlog.testing.capture_logs() as logs:
        resp = await client.get("/crash")
    assert resp.status == 418
    assert [e["status"] for e in _lines(logs)] == [418]


async def test_a_streamed_response_carries_the_request_id(aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(app_with(PrometheusMetrics(), ROUTES))
    resp = await client.get("/stream", headers={"X-Request-Id": "stream-1"})
    assert resp.headers["X-Request-Id"] == "stream-1"
    assert await resp.read() == b"data: 1\n\n"


async def test_a_separate_metrics_port_serves_metrics_and_health() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    metrics = PrometheusMetrics(queue_stats=queue_source({}), providers=["opencode"])
    metrics.job_submitted("opencode")
    healthy = True
    runner = await start_metrics_server(metrics, "127.0.0.1", port, healthy=lambda: healthy)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            async with session.get("/metrics") as resp:
                got = samples(await resp.text())
            assert value(got, "agentd_jobs_submitted_total", provider="opencode") == 1
            assert value(got, "agentd_queue_depth", provider="opencode") == 0
            async with session.get("/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            healthy = False
            async with session.get("/healthz") as resp:
                assert resp.status == 503
    finally:
        await runner.cleanup()
