"""The aiohttp API: submit jobs, follow their event streams, cancel, inspect."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from asyncio import FIRST_COMPLETED
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from agentd import __version__, sse
from agentd.adapters.http import errors as http_errors
from agentd.adapters.http import opencode_stream
from agentd.adapters.http.projects import add_project_routes
from agentd.domain import errors
from agentd.domain.models import AgentRequest, JobStatus, StoredEvent, validate_project_id
from agentd.ports.work_queue import BusyPolicy, JobFilter
from agentd.services.jobs import JobService
from agentd.services.projects import ProjectService
from agentd.services.secrets import SecretService

log = structlog.get_logger(__name__)

MAX_BODY = 8 * 1024 * 1024
SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}
REQUEST_FIELDS = {
    "prompt",
    "provider",
    "model",
    "session_id",
    "timeout_s",
    "max_turns",
    "agent",
    "files",
    "mentions",
    "busy",
    "ref",
    "push",
}
MAX_IDEMPOTENCY_KEY = 200
DASHBOARD_DIR = Path(__file__).parent / "dashboard"
DASHBOARD_FILES = frozenset(p.name for p in DASHBOARD_DIR.iterdir() if p.is_file())
DASHBOARD_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiConfig:
    api_key: str | None = None
    heartbeat_s: float = 15.0
    retry_ms: int = 2000
    write_timeout_s: float = 30.0
    sandbox: str = "off"  # "bwrap" when agent runs are jailed


@dataclass
class _State:
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set on shutdown: end every stream


SERVICE = web.AppKey("service", JobService)
SECRETS = web.AppKey("secrets", SecretService)
CONFIG = web.AppKey("config", ApiConfig)
STATE = web.AppKey("state", _State)


def create_app(
    service: JobService,
    config: ApiConfig,
    secrets: SecretService,
    *,
    projects: ProjectService | None = None,
) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors_middleware, _auth_middleware])
    app[SERVICE] = service
    app[SECRETS] = secrets
    app[CONFIG] = config
    app[STATE] = _State()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/providers", providers)
    app.router.add_post("/projects/{project_id}/jobs", submit)
    app.router.add_post("/projects/{project_id}/claude", submit_claude)
    app.router.add_get("/projects/{project_id}/jobs", list_jobs)
    app.router.add_get("/jobs", list_all_jobs)
    app.router.add_get("/projects/{project_id}/jobs/{job_id}", get_job)
    app.router.add_post("/projects/{project_id}/jobs/{job_id}/cancel", cancel_job)
    app.router.add_get("/projects/{project_id}/events/{stream_id}", events)
    app.router.add_get("/projects/{project_id}/opencode/event", opencode_event)
    app.router.add_get("/opencode/event", opencode_event)
    app.router.add_get("/", dashboard_page)
    app.router.add_get("/dashboard/{name}", dashboard_file)
    for prefix in ("/projects/{project_id}/secrets", "/secrets"):
        app.router.add_get(prefix, list_secrets)
        app.router.add_put(prefix + "/{name}", put_secret)
        app.router.add_delete(prefix + "/{name}", delete_secret)
    if projects is not None:
        add_project_routes(app, projects)
    app.on_shutdown.append(_close_streams)
    return app


# --- middlewares --------------------------------------------------------------------------------------


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.AgentdError as e:
        return http_errors.from_domain(e)
    except ValidationError as e:
        return http_errors.from_validation(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            e.status, "http_error"
        )
        msg = {
            404: f"no route {request.method} {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"request body larger than {MAX_BODY} bytes",
        }.get(e.status, e.reason)
        return http_errors.error_response(e.status, code, msg)
    except Exception:
        log.exception("http.unhandled", method=request.method, path=request.path)
        return http_errors.error_response(500, "internal_error", "internal error; see the server log")


@web.middleware
async def _auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[CONFIG].api_key
    if key and request.path != "/healthz" and not _is_dashboard_file(request.path):
        given = request.headers.get("X-API-Key", "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise errors.Unauthorized(
                "missing or wrong X-API-Key header" if given else "this server needs an X-API-Key header"
            )
    return await handler(request)


def _is_dashboard_file(path: str) -> bool:
    """The dashboard's page and static files are public: the page asks for the key and sends it."""
    return path == "/" or path.startswith("/dashboard/")


# --- handlers -----------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__, "sandbox": request.app[CONFIG].sandbox})


async def providers(request: web.Request) -> web.Response:
    body = await request.app[SERVICE].providers()
    body["sandbox"] = request.app[CONFIG].sandbox
    return web.json_response(body)


async def _read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        raise errors.InvalidRequest('send a JSON object body, e.g. {"prompt": "..."}')
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise errors.InvalidRequest(f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest('body must be a JSON object, e.g. {"prompt": "..."}')
    unknown = sorted(set(body) - REQUEST_FIELDS)
    if unknown:
        raise errors.InvalidRequest(
            f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(REQUEST_FIELDS))}"
        )
    if "prompt" not in body:
        raise errors.PromptRequired()
    return body


async def _submit(request: web.Request, provider: str | None) -> web.Response:
    project_id = validate_project_id(request.match_info["project_id"])
    body = await _read_body(request)
    if provider is not None:
        body["provider"] = provider
    if body.get("provider") is not None and not isinstance(body["provider"], str):
        raise errors.InvalidRequest("provider must be a string")
    busy_raw = body.pop("busy", None) or "enqueue"
    if busy_raw not in ("enqueue", "reject"):
        raise errors.InvalidRequest(f"busy must be 'enqueue' (default) or 'reject', got {busy_raw!r}")
    busy: BusyPolicy = "reject" if busy_raw == "reject" else "enqueue"
    key = request.headers.get("Idempotency-Key")
    if key is not None and not (0 < len(key) <= MAX_IDEMPOTENCY_KEY and key.isprintable()):
        raise errors.InvalidRequest(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
    agent_request = AgentRequest(project_id=project_id, **body)
    job, created = await request.app[SERVICE].submit(agent_request, idempotency_key=key, busy=busy)
    base = f"/projects/{project_id}"
    origin = str(request.url.origin())
    status_url = f"{origin}{base}/jobs/{job.id}"
    return web.json_response(
        {
            "job_id": job.id,
            "stream_id": job.stream_id,
            "stream_url": f"{origin}{base}/events/{job.stream_id}",
            "status_url": status_url,
            "status": job.status.value,
            "project_id": project_id,
            "provider": job.provider,
        },
        status=202 if created else 200,
        headers={"Location": status_url, **({"Idempotent-Replayed": "true"} if not created else {})},
    )


async def submit(request: web.Request) -> web.Response:
    return await _submit(request, None)


async def submit_claude(request: web.Request) -> web.Response:
    return await _submit(request, "claude-code")


async def get_job(request: web.Request) -> web.Response:
    project_id = validate_project_id(request.match_info["project_id"])
    job = await request.app[SERVICE].get(project_id, request.match_info["job_id"])
    # The URL to follow it (what the dashboard opens with EventSource; with stream tokens, it carries one).
    stream_url = f"{request.url.origin()}/projects/{project_id}/events/{job.stream_id}"
    return web.json_response({**job.public(), "stream_url": stream_url})


async def list_jobs(request: web.Request) -> web.Response:
    return await _list_jobs(request, validate_project_id(request.match_info["project_id"]))


async def list_all_jobs(request: web.Request) -> web.Response:
    """GET /jobs: every project's jobs (the dashboard), the same filters plus `project_id`."""
    project_id = request.query.get("project_id") or None
    return await _list_jobs(request, validate_project_id(project_id) if project_id else None)


async def _list_jobs(request: web.Request, project_id: str | None) -> web.Response:
    q = request.query
    status: JobStatus | None = None
    if q.get("status"):
        try:
            status = JobStatus(q["status"])
        except ValueError:
            raise errors.InvalidRequest(
                f"unknown status {q['status']!r}; use one of {', '.join(s.value for s in JobStatus)}"
            ) from None
    limit = _int_param(q.get("limit"), "limit", default=50, lo=1, hi=500)
    provider = q.get("provider") or None
    if provider is not None:
        request.app[SERVICE].check_provider(provider)  # unknown → 400 listing the known ones
    flt = JobFilter(
        status=status,
        provider=provider,
        created_after=_time_param(q.get("created_after"), "created_after"),
        created_before=_time_param(q.get("created_before"), "created_before"),
        limit=limit,
        before=q.get("before") or None,
    )
    jobs = await request.app[SERVICE].list_jobs(project_id, flt)
    nxt = jobs[-1].id if len(jobs) == limit else None
    return web.json_response({"jobs": [j.public() for j in jobs], "next_before": nxt})


async def cancel_job(request: web.Request) -> web.Response:
    project_id = validate_project_id(request.match_info["project_id"])
    job = await request.app[SERVICE].cancel(project_id, request.match_info["job_id"])
    return web.json_response(job.public(), status=202 if job.status == JobStatus.running else 200)


def _time_param(raw: str | None, name: str) -> datetime | None:
    if not raw:
        return None
    try:
        t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidRequest(f"{name} must be an ISO 8601 time, e.g. 2026-11-22T10:00:00Z") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _int_param(raw: str | None, name: str, *, default: int, lo: int, hi: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not (lo <= int(raw) <= hi):
        raise errors.InvalidRequest(f"{name} must be an integer from {lo} to {hi}, got {raw!r}")
    return int(raw)


# --- the dashboard and the OpenCode-compatible event stream ------------------------------------------------


async def dashboard_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(DASHBOARD_DIR / "index.html", headers=DASHBOARD_HEADERS)


async def dashboard_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in DASHBOARD_FILES:
        raise web.HTTPNotFound()
    return web.FileResponse(DASHBOARD_DIR / name, headers=DASHBOARD_HEADERS)


async def opencode_event(request: web.Request) -> web.StreamResponse:
    """OpenCode's GET /event for one project's jobs, or (GET /opencode/event) every project's."""
    raw = request.match_info.get("project_id")
    project_id = validate_project_id(raw) if raw is not None else None
    cfg = request.app[CONFIG]
    config = opencode_stream.StreamConfig(
        heartbeat_s=min(cfg.heartbeat_s, 10.0), write_timeout_s=cfg.write_timeout_s
    )
    closing = request.app[STATE].closing
    return await opencode_stream.serve(
        request, request.app[SERVICE], project_id, closing=closing, config=config
    )


# --- secrets (values go in, never out) -----------------------------------------------------------------


def _secret_scope(request: web.Request) -> str | None:
    """The project of a /projects/{project_id}/secrets route; None for the global /secrets routes."""
    project_id = request.match_info.get("project_id")
    return validate_project_id(project_id) if project_id is not None else None


async def put_secret(request: web.Request) -> web.Response:
    project_id = _secret_scope(request)
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or set(body) != {"value"}:
        raise errors.InvalidRequest('send a JSON object with one field, e.g. {"value": "..."}')
    await request.app[SECRETS].put(project_id, request.match_info["name"], body["value"])
    return web.Response(status=204)


async def list_secrets(request: web.Request) -> web.Response:
    infos = await request.app[SECRETS].list(_secret_scope(request))
    return web.json_response(
        {"secrets": [{"name": i.name, "updated_at": i.updated_at.isoformat()} for i in infos]}
    )


async def delete_secret(request: web.Request) -> web.Response:
    await request.app[SECRETS].delete(_secret_scope(request), request.match_info["name"])
    return web.Response(status=204)


# --- the event stream ---------------------------------------------------------------------------------
# One back-pressure layer: the stream's own subscriber. The handler writes each event as it comes; while a
# write waits for a slow client the subscriber falls behind, and past `subscriber_buffer` events the stream
# raises SubscriberTooSlow: the client gets an `error` event and resumes with Last-Event-ID.


async def events(request: web.Request) -> web.StreamResponse:
    project_id = validate_project_id(request.match_info["project_id"])
    after = _resume_point(request)
    stream_id = request.match_info["stream_id"]
    subscription = await request.app[SERVICE].subscribe(project_id, stream_id, after=after)
    cfg = request.app[CONFIG]
    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    await resp.prepare(request)
    await resp.write(sse.encode_retry(cfg.retry_ms))
    await _send(resp, subscription, cfg, request.app[STATE].closing, stream_id)
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


def _resume_point(request: web.Request) -> int:
    """Resume after the Last-Event-ID header (a reconnecting EventSource), else `?after=`, else 0."""
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if not last_id:
        return _int_param(request.query.get("after"), "after", default=0, lo=0, hi=2**62)
    if not last_id.isdigit():
        raise errors.InvalidRequest(f"Last-Event-ID must be an event sequence number, got {last_id!r}")
    return int(last_id)


async def _send(
    resp: web.StreamResponse,
    subscription: AsyncIterator[StoredEvent],
    cfg: ApiConfig,
    closing: asyncio.Event,
    stream_id: str,
) -> None:
    """Write events until the stream ends, fails or the client goes; a heartbeat comment after each
    `heartbeat_s` without a write; on shutdown an `error` event (clients resume with Last-Event-ID)."""
    out = _Out(resp)
    pump = asyncio.create_task(out.events(subscription))
    closed = asyncio.create_task(closing.wait())
    try:
        while True:
            wait = out.next_check(cfg)
            if wait <= 0:
                async with asyncio.timeout(cfg.write_timeout_s):
                    await out.write(HEARTBEAT)
                continue
            done, _ = await asyncio.wait({pump, closed}, timeout=wait, return_when=FIRST_COMPLETED)
            if pump in done:
                pump.result()  # the stream's end, or how it failed
                return
            if closed in done:
                raise ServerShuttingDown()
    except (ConnectionResetError, TimeoutError) as e:
        log.info("sse.client_gone", stream_id=stream_id, sent=out.sent, reason=type(e).__name__)
    except Exception as e:  # too slow, shutting down, storage trouble: the client resumes
        if isinstance(e, errors.SubscriberTooSlow):
            log.warning("sse.subscriber_too_slow", stream_id=stream_id, sent=out.sent)
        elif not isinstance(e, errors.AgentdError):
            log.exception("sse.stream_failed", stream_id=stream_id)
        code = e.code if isinstance(e, errors.AgentdError) else "stream_error"
        payload = json.dumps({"code": code, "message": str(e), "retryable": True})
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            async with asyncio.timeout(cfg.write_timeout_s):
                await out.write(sse.encode_event(payload, event="error"))
    finally:
        closed.cancel()
        pump.cancel()
        await asyncio.wait({pump}, timeout=5)  # never hang a finished response on a stuck reader


HEARTBEAT = sse.encode_comment("heartbeat")


class _Out:
    """One SSE response. Events are written as they come; the handler watches the clock: a write that
    waits longer than the write timeout means the client is gone, a quiet connection gets a heartbeat.

    A write puts its whole frame on the transport before it waits for the client, so a heartbeat and an
    event never interleave within a frame.
    """

    def __init__(self, resp: web.StreamResponse) -> None:
        self._resp = resp
        self.last = time.monotonic()  # when the last write ended
        self.busy_since: float | None = None  # when the write in progress began
        self.sent = 0

    def next_check(self, cfg: ApiConfig) -> float:
        """Seconds until the next look (<= 0: a heartbeat is due now); TimeoutError when a write has
        waited longer than the write timeout (noticed within two write timeouts)."""
        now = time.monotonic()
        if self.busy_since is None:  # a write may begin meanwhile: look again within the write timeout
            return min(self.last + cfg.heartbeat_s - now, cfg.write_timeout_s)
        if now - self.busy_since >= cfg.write_timeout_s:
            raise TimeoutError()
        return min(cfg.heartbeat_s, self.busy_since + cfg.write_timeout_s - now)

    async def write(self, data: bytes) -> None:
        self.busy_since = self.busy_since or time.monotonic()
        try:
            await self._resp.write(data)
        finally:
            self.busy_since = None
            self.last = time.monotonic()

    async def events(self, subscription: AsyncIterator[StoredEvent]) -> None:
        async with contextlib.aclosing(subscription) as events:  # type: ignore[type-var]
            async for stored in events:
                await self.write(_frame(stored))
                self.sent += 1


class ServerShuttingDown(errors.AgentdError):
    """The server is shutting down; reconnect with Last-Event-ID."""

    code = "shutting_down"


def _frame(stored: StoredEvent) -> bytes:
    ev = stored.event
    return sse.encode_event(json.dumps(ev.data(), separators=(",", ":")), event=ev.event, id=stored.seq)


async def _close_streams(app: web.Application) -> None:
    """On shutdown, end every open event stream (clients reconnect elsewhere with Last-Event-ID)."""
    app[STATE].closing.set()
