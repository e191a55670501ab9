"""Observability, per process: Prometheus metrics (the Metrics port) and one canonical log line per request.

- `PrometheusMetrics` implements agentd.ports.metrics.Metrics on its own registry (never the global one), so
  every process (api, worker, serve) and every test has its own. The queue gauges are read from the
  database at scrape time through a function the composition root gives (`queue_stats`), so every
  replica reports the same fleet-wide queue.
- `install(app, metrics)` adds to an aiohttp app: the request-log middleware (outermost), the
  `X-Request-Id` response header, and `GET /metrics` (behind the app's own auth middleware).
- `start_metrics_server(...)` serves `/metrics` and `/healthz` on a port of their own
  (AGENTD_METRICS_PORT): the worker role has no other HTTP server.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentd.ports.metrics import Metrics

log = structlog.get_logger("agentd.http")

REQUEST_ID_HEADER = "X-Request-Id"
# An incoming id is kept when it is short and made of characters safe in logs and headers; else a new one.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+=-]{0,127}")
# Probes and scrapes every few seconds would drown the log: their line is at debug level.
_QUIET_ROUTES = frozenset({"/healthz", "/metrics"})

_RUN_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_FIRST_EVENT_BUCKETS = (0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class QueueStat:
    """One provider's queued jobs, fleet-wide."""

    queued: int
    oldest_queued_age_s: float | None = None  # None when nothing is queued


# provider -> its queue; read at every scrape (e.g. one GROUP BY over the jobs table).
QueueStatsSource = Callable[[], Awaitable[Mapping[str, QueueStat]]]


class PrometheusMetrics(Metrics):
    def __init__(
        self,
        *,
        queue_stats: QueueStatsSource | None = None,
        providers: Sequence[str] = (),
        queue_stats_timeout_s: float = 2.0,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.jobs_submitted = Counter(
            "agentd_jobs_submitted", "Jobs accepted by this process's API.", ["provider"], registry=r
        )
        self.jobs_finished = Counter(
            "agentd_jobs_finished",
            "Jobs that reached a final status in this process.",
            ["provider", "status"],
            registry=r,
        )
        self.jobs_retried = Counter(
            "agentd_jobs_retried", "Attempts put back in the queue for another try.", ["provider"], registry=r
        )
        self.jobs_running = Gauge(
            "agentd_jobs_running", "Runs in progress in this process.", ["provider"], registry=r
        )
        self.run_duration = Histogram(
            "agentd_job_run_duration_seconds",
            "Start to end of one attempt, by its result.",
            ["provider", "status"],
            buckets=_RUN_BUCKETS,
            registry=r,
        )
        self.submit_to_start = Histogram(
            "agentd_job_submit_to_start_seconds",
            "Submission to the start of an attempt (queue wait).",
            ["provider"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.submit_to_first_event = Histogram(
            "agentd_job_submit_to_first_event_seconds",
            "Submission to the agent's first event (what a caller waits before seeing anything).",
            ["provider"],
            buckets=_FIRST_EVENT_BUCKETS,
            registry=r,
        )
        self.events = Counter("agentd_events_published", "Events published, by type.", ["type"], registry=r)
        self.streams_open = Gauge("agentd_streams_open", "SSE responses open in this process.", registry=r)
        self.subscribers = Gauge(
            "agentd_stream_subscribers", "Event-stream subscriptions open in this process.", registry=r
        )
        self.slow_disconnects = Counter(
            "agentd_slow_subscriber_disconnects",
            "Subscribers cut off for falling too far behind.",
            registry=r,
        )
        self.provider_errors = Counter(
            "agentd_provider_errors",
            "Runs the provider failed, by error code.",
            ["provider", "code"],
            registry=r,
        )
        self.lease_recoveries = Counter(
            "agentd_lease_recoveries", "Jobs taken back after their worker lost its lease.", registry=r
        )
        self.runs_fenced = Counter(
            "agentd_runs_fenced",
            "Runs superseded by another worker (results refused).",
            ["provider"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "agentd_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"], registry=r
        )
        self.http_requests = Counter(
            "agentd_http_requests",
            "HTTP requests, by route pattern and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "agentd_http_request_duration_seconds",
            "HTTP request handling time (for SSE: the stream's lifetime).",
            ["method", "route"],
            buckets=_HTTP_BUCKETS,
            registry=r,
        )
        self.queue_stats_errors = Counter(
            "agentd_queue_stats_errors", "Scrapes whose queue statistics could not be read.", registry=r
        )
        self._queue_stats = queue_stats
        self._queue_timeout_s = queue_stats_timeout_s
        self._providers = tuple(providers)
        self._queue: Mapping[str, QueueStat] | None = None
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}  # (metric, labels) → its child
        if queue_stats is not None:
            r.register(_QueueCollector(self))

    def _labels(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, kept: a worker updates the same few children for every job."""
        key = (metric._name, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # --- the Metrics port -----------------------------------------------------------------------------

    def job_submitted(self, provider: str) -> None:
        self._labels(self.jobs_submitted, provider).inc()

    def run_started(self, provider: str, *, since_submit_s: float) -> None:
        self._labels(self.jobs_running, provider).inc()
        self._labels(self.submit_to_start, provider).observe(max(0.0, since_submit_s))

    def run_ended(self, provider: str, status: str, *, run_s: float) -> None:
        self._labels(self.jobs_running, provider).dec()
        self._labels(self.run_duration, provider, status).observe(max(0.0, run_s))

    def first_event(self, provider: str, *, since_submit_s: float) -> None:
        self._labels(self.submit_to_first_event, provider).observe(max(0.0, since_submit_s))

    def job_finished(self, provider: str, status: str) -> None:
        self._labels(self.jobs_finished, provider, status).inc()

    def job_retried(self, provider: str) -> None:
        self._labels(self.jobs_retried, provider).inc()

    def events_published(self, event_type: str, count: int = 1) -> None:
        self._labels(self.events, event_type).inc(count)

    def stream_opened(self) -> None:
        self.streams_open.inc()

    def stream_closed(self) -> None:
        self.streams_open.dec()

    def subscriber_added(self) -> None:
        self.subscribers.inc()

    def subscriber_removed(self) -> None:
        self.subscribers.dec()

    def slow_subscriber_disconnected(self) -> None:
        self.slow_disconnects.inc()

    def provider_error(self, provider: str, code: str) -> None:
        self._labels(self.provider_errors, provider, code).inc()

    def lease_recovered(self, count: int = 1) -> None:
        self.lease_recoveries.inc(count)

    def run_fenced(self, provider: str) -> None:
        self._labels(self.runs_fenced, provider).inc()

    def webhook_delivery(self, outcome: str) -> None:
        self._labels(self.webhook_deliveries, outcome).inc()

    # --- HTTP and scraping ----------------------------------------------------------------------------

    def http_request(self, method: str, route: str, status: int, duration_s: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_duration.labels(method, route).observe(duration_s)

    async def refresh(self) -> None:
        """Read the queue statistics (bounded wait); on failure the queue gauges are left out."""
        if self._queue_stats is None:
            return
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                self._queue = dict(await self._queue_stats())
        except Exception as e:  # a scrape must answer even when the database does not
            self._queue = None
            self.queue_stats_errors.inc()
            log.warning("metrics.queue_stats_failed", error=f"{type(e).__name__}: {e}")

    async def render(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)

    def queue_families(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("agentd_queue_stats_up", "1 when the last scrape read the queue statistics.")
        up.add_metric([], 0.0 if self._queue is None else 1.0)
        yield up
        if self._queue is None:
            return
        depth = GaugeMetricFamily("agentd_queue_depth", "Jobs queued, fleet-wide.", labels=["provider"])
        oldest = GaugeMetricFamily(
            "agentd_queue_oldest_age_seconds",
            "Age of the oldest queued job (0 when none).",
            labels=["provider"],
        )
        for provider in sorted({*self._providers, *self._queue}):
            stat = self._queue.get(provider, QueueStat(queued=0))
            depth.add_metric([provider], float(stat.queued))
            oldest.add_metric([provider], float(stat.oldest_queued_age_s or 0.0))
        yield depth
        yield oldest


class _QueueCollector(Collector):
    def __init__(self, metrics: PrometheusMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.queue_families()


# --- aiohttp ------------------------------------------------------------------------------------------

METRICS = web.AppKey("agentd_metrics", PrometheusMetrics)
# Per request (install()'s middleware): the API key's id, for the log line (set by an auth middleware).
KEY_ID = web.RequestKey("agentd_key_id", str)
HEALTHY: web.AppKey[Callable[[], bool]] = web.AppKey("agentd_healthy")


def request_id_from(headers: Mapping[str, str]) -> str:
    given = headers.get(REQUEST_ID_HEADER, "")
    return given if _SANE_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _route_of(request: web.BaseRequest) -> str:
    """The route pattern (`/projects/{project_id}/jobs`), never the raw path: bounded label values."""
    match_info = getattr(request, "match_info", None)
    resource = match_info.route.resource if match_info is not None else None
    return resource.canonical if resource is not None else "<unmatched>"


def request_started(request: web.BaseRequest) -> float:
    """A request begins: its id (the caller's X-Request-Id when sane, else a new one) is bound in structlog's
    contextvars for every log line until its end, and the X-Request-Id response header says it. Returns the
    start time for `request_done`.

    Nothing to unbind: aiohttp runs each request in a task of its own, with its own copy of the context (so
    nothing is kept per request beyond the context entry itself, which matters for long-lived streams)."""
    structlog.contextvars.bind_contextvars(request_id=request_id_from(request.headers))
    return time.perf_counter()


def request_done(
    request: web.BaseRequest,
    metrics: PrometheusMetrics | None,
    status: int,
    started: float,
    key_id: str | None,
) -> None:
    """The one `http.request` line, and the request metrics."""
    elapsed = time.perf_counter() - started
    route = _route_of(request)
    if metrics is not None:
        metrics.http_request(request.method, route, status, elapsed)
    emit = log.debug if route in _QUIET_ROUTES else log.info
    emit(
        "http.request",
        method=request.method,
        route=route,
        status=status,
        duration_ms=round(elapsed * 1000, 1),
        key_id=key_id,
    )


def current_request_id() -> str | None:
    """The id `request_started` bound for the request being handled here (None outside one)."""
    rid = structlog.contextvars.get_contextvars().get("request_id")
    return rid if isinstance(rid, str) else None


@web.middleware
async def request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One `http.request` line per request, with the request id bound for every log line in between."""
    started = request_started(request)
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away before the answer (nginx's convention)
        raise
    finally:
        request_done(request, request.config_dict.get(METRICS), status, started, request.get(KEY_ID))


async def set_request_id_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: X-Request-Id on every answer of a request `request_started` saw."""
    request_id = current_request_id()
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id


async def metrics_handler(request: web.Request) -> web.Response:
    body = await request.config_dict[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    healthy = request.config_dict.get(HEALTHY)
    if healthy is not None and not healthy():
        return web.json_response({"status": "unhealthy"}, status=503)
    return web.json_response({"status": "ok"})


def install(app: web.Application, metrics: PrometheusMetrics, *, expose: bool = True) -> None:
    """Request log (outermost middleware), X-Request-Id, and `GET /metrics` unless `expose` is False (when
    AGENTD_METRICS_PORT serves them). Call before the app starts; run it with `access_log=None`."""
    app[METRICS] = metrics
    app.middlewares.insert(0, request_log_middleware)
    app.on_response_prepare.append(set_request_id_header)
    if expose:
        app.router.add_get("/metrics", metrics_handler)


def metrics_app(metrics: PrometheusMetrics, *, healthy: Callable[[], bool] | None = None) -> web.Application:
    """`/metrics` and `/healthz` alone (503 when `healthy()` says no), for AGENTD_METRICS_PORT."""
    app = web.Application()
    app[METRICS] = metrics
    if healthy is not None:
        app[HEALTHY] = healthy
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", _healthz)
    return app


async def start_metrics_server(
    metrics: PrometheusMetrics, host: str, port: int, *, healthy: Callable[[], bool] | None = None
) -> web.AppRunner:
    """Serve metrics_app on host:port; `await runner.cleanup()` stops it."""
    runner = web.AppRunner(metrics_app(metrics, healthy=healthy), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
