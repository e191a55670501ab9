"""The aiohttp API: submit jobs, follow their event streams, cancel, inspect."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from agentd import __version__, sse
from agentd.adapters.http import errors as http_errors
from agentd.domain import errors
from agentd.domain.ids import job_id_for_stream
from agentd.domain.models import AgentRequest, JobStatus, StoredEvent, validate_project_id
from agentd.ports.work_queue import BusyPolicy, JobFilter
from agentd.services.jobs import JobService

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
}
MAX_IDEMPOTENCY_KEY = 200
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiConfig:
    api_key: str | None = None
    heartbeat_s: float = 15.0
    retry_ms: int = 2000
    subscriber_buffer: int = 1000
    write_timeout_s: float = 30.0
    sandbox: str = "off"  # "bwrap" when agent runs are jailed


@dataclass
class _State:
    streams_open: set[asyncio.Queue[Any]] = field(default_factory=set)


SERVICE = web.AppKey("service", JobService)
CONFIG = web.AppKey("config", ApiConfig)
STATE = web.AppKey("state", _State)


def create_app(service: JobService, config: ApiConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_errors_middleware, _auth_middleware])
    app[SERVICE] = service
    app[CONFIG] = config or ApiConfig()
    app[STATE] = _State()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/providers", providers)
    app.router.add_post("/projects/{project_id}/jobs", submit)
    app.router.add_post("/projects/{project_id}/claude", submit_claude)
    app.router.add_get("/projects/{project_id}/jobs", list_jobs)
    app.router.add_get("/projects/{project_id}/jobs/{job_id}", get_job)
    app.router.add_post("/projects/{project_id}/jobs/{job_id}/cancel", cancel_job)
    app.router.add_get("/projects/{project_id}/events/{stream_id}", events)
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
    if key and request.path != "/healthz":
        given = request.headers.get("X-API-Key", "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise errors.Unauthorized(
                "missing or wrong X-API-Key header" if given else "this server needs an X-API-Key header"
            )
    return await handler(request)


# --- handlers -----------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__, "sandbox": request.app[CONFIG].sandbox})


async def providers(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    default = service.registry.default if service.registry.names() else None
    out: list[dict[str, Any]] = []
    for name, agent in service.registry.items():
        try:
            avail = await asyncio.wait_for(agent.is_available(), 10)
            availability: dict[str, Any] = avail.model_dump()
        except Exception as e:  # availability probes must never break the listing
            availability = {"available": False, "detail": f"availability check failed: {e}", "version": None}
        out.append(
            {
                "name": name,
                "default": name == default,
                "capabilities": agent.capabilities().model_dump(),
                "availability": availability,
            }
        )
    return web.json_response({"default": default, "providers": out, "sandbox": request.app[CONFIG].sandbox})


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
    return web.json_response(job.public())


async def list_jobs(request: web.Request) -> web.Response:
    project_id = validate_project_id(request.match_info["project_id"])
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
        request.app[SERVICE].registry.get(provider)  # unknown → 400 listing the known ones
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


# --- the event stream ---------------------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    project_id = validate_project_id(request.match_info["project_id"])
    stream_id = request.match_info["stream_id"]
    service = request.app[SERVICE]
    cfg = request.app[CONFIG]
    # The stream must belong to the project (the job check); both lookups at once.
    await asyncio.gather(
        service.get(project_id, job_id_for_stream(stream_id)), service.streams.last_seq(stream_id)
    )
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if last_id:
        if not last_id.isdigit():
            raise errors.InvalidRequest(f"Last-Event-ID must be an event sequence number, got {last_id!r}")
        after = int(last_id)
    else:
        after = _int_param(request.query.get("after"), "after", default=0, lo=0, hi=2**62)

    resp = web.StreamResponse(status=200, headers=SSE_HEADERS)
    await resp.prepare(request)
    await resp.write(sse.encode_retry(cfg.retry_ms))
    buf: _Buffer = asyncio.Queue(maxsize=cfg.subscriber_buffer)
    request.app[STATE].streams_open.add(buf)
    producer = asyncio.create_task(_produce(service, stream_id, after, buf))
    sent = 0
    try:
        while True:
            try:
                item = await asyncio.wait_for(buf.get(), cfg.heartbeat_s)
            except TimeoutError:
                await asyncio.wait_for(resp.write(sse.encode_comment("heartbeat")), cfg.write_timeout_s)
                continue
            # Send what is already waiting in one write, then yield so other streams get their turn.
            chunk: list[bytes] = []
            while isinstance(item, StoredEvent):
                chunk.append(_frame(item))
                if buf.empty() or len(chunk) >= 256:
                    item = _CONTINUE
                    break
                item = buf.get_nowait()
            if chunk:
                sent += len(chunk)
                await asyncio.wait_for(resp.write(b"".join(chunk)), cfg.write_timeout_s)
                await asyncio.sleep(0)
            if item is _CONTINUE:
                continue
            if item is None:
                break
            if isinstance(item, BaseException):
                code = item.code if isinstance(item, errors.AgentdError) else "stream_error"
                payload = json.dumps({"code": code, "message": str(item), "retryable": True})
                await resp.write(sse.encode_event(payload, event="error"))
                break
    except (ConnectionResetError, TimeoutError) as e:
        log.info("sse.client_gone", stream_id=stream_id, sent=sent, reason=type(e).__name__)
    finally:
        request.app[STATE].streams_open.discard(buf)
        producer.cancel()
        await asyncio.wait({producer}, timeout=5)  # never hang a finished response on a stuck reader
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


_CONTINUE = errors.AgentdError("continue")  # sentinel: the batch ended, the stream goes on
_Buffer = asyncio.Queue[StoredEvent | BaseException | None]


def _frame(stored: StoredEvent) -> bytes:
    ev = stored.event
    return sse.encode_event(json.dumps(ev.data(), separators=(",", ":")), event=ev.event, id=stored.seq)


async def _produce(service: JobService, stream_id: str, after: int, buf: _Buffer) -> None:
    """Feed one subscriber's bounded buffer; if the client cannot keep up, disconnect it (it resumes)."""
    last = after
    try:
        async for stored in service.streams.subscribe(stream_id, after=after):
            try:
                buf.put_nowait(stored)
            except asyncio.QueueFull:
                log.warning("sse.subscriber_too_slow", stream_id=stream_id, last_seq=last)
                # Make room for the error marker: the client resumes from `last` with Last-Event-ID.
                while not buf.empty():
                    buf.get_nowait()
                raise errors.SubscriberTooSlow() from None
            last = stored.seq
        await buf.put(None)
    except errors.AgentdError as e:
        await buf.put(e)


async def _close_streams(app: web.Application) -> None:
    """On shutdown, end every open event stream (clients reconnect elsewhere with Last-Event-ID)."""
    for buf in list(app[STATE].streams_open):
        while not buf.empty():
            buf.get_nowait()
        buf.put_nowait(errors.AgentdError("the server is shutting down; reconnect with Last-Event-ID"))
