"""The agentd SDK: `AgentdClient` (async) and `Client` (a small synchronous wrapper).

    async with AgentdClient("http://127.0.0.1:8080", api_key=key) as agentd:
        job = await agentd.submit("my-repo", "fix the failing test", provider="claude-code")
        async for stored in agentd.stream(job):       # typed events (agentd.domain.models)
            print(stored.seq, stored.event)
        result = await agentd.wait(job)               # an AgentResult

`stream()` reconnects by itself with Last-Event-ID when a connection drops: each event is yielded once,
in order, without a gap, ending with `done`. Errors are typed (`AgentdClientError` and subclasses);
timeouts are `RequestTimeout` / `WaitTimeout`. The API key is sent only to the origin (scheme, host, port)
of `base_url`: a URL from an answer (stream_url) that names another origin is refused (`ForeignOrigin`),
and redirects are not followed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from pydantic import BaseModel, ValidationError

from agentd.domain.models import (
    AgentEvent,
    AgentResult,
    DoneEvent,
    ErrorEvent,
    OutputEvent,
    ReasoningEvent,
    SessionEvent,
    StatusEvent,
    StoredEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
    event_from_data,
)
from agentd.sse import aiter_sse
from agentd.wire import JobInfo, JobPage, Submitted

__all__ = [  # the event models are the domain's own, re-exported for SDK users
    "AgentEvent",
    "AgentResult",
    "AgentdClient",
    "AgentdClientError",
    "ApiError",
    "Client",
    "ConnectionFailed",
    "DoneEvent",
    "ErrorEvent",
    "ForeignOrigin",
    "JobInfo",
    "JobPage",
    "JobRef",
    "OutputEvent",
    "ReasoningEvent",
    "RequestTimeout",
    "SessionEvent",
    "StatusEvent",
    "StoredEvent",
    "StreamItem",
    "StreamLost",
    "Submitted",
    "TextEvent",
    "ToolResultEvent",
    "ToolUseEvent",
    "WaitTimeout",
]

T = TypeVar("T")
JobRef = Submitted | JobInfo
_BM = TypeVar("_BM", bound=BaseModel)


class AgentdClientError(Exception):
    """Base of every error the SDK raises."""

    code = "client_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(AgentdClientError):
    """The server answered with an error: `status` (HTTP), `code` (stable, e.g. job_not_found), `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ConnectionFailed(AgentdClientError):
    """The server could not be reached (refused, DNS, TLS, dropped before an answer)."""

    code = "connection_failed"


class RequestTimeout(AgentdClientError, TimeoutError):
    """A request got no answer within the client's `timeout_s`."""

    code = "request_timeout"


class ForeignOrigin(ApiError):
    """A URL (e.g. a stream_url from an answer) names another origin than the client's: refused, so the
    API key never goes there (status 0: no request was made)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "foreign_origin", message)


class StreamLost(AgentdClientError):
    """The event stream could not be resumed after `max_reconnects` tries."""

    code = "stream_lost"


class WaitTimeout(AgentdClientError, TimeoutError):
    """`wait()` gave up before the job ended (the job goes on; cancel it if you mean to)."""

    code = "wait_timeout"


@dataclass(frozen=True)
class StreamItem:
    """An event as raw JSON (the older `follow()` API); `stream()` yields typed `StoredEvent`s."""

    seq: int | None
    event: str
    data: dict[str, Any]


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    return _origin(a) == _origin(b)


class AgentdClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        max_reconnects: int = 20,
        reconnect_delay_s: float = 0.5,
    ) -> None:
        if urlsplit(base_url).scheme not in ("http", "https") or not urlsplit(base_url).hostname:
            raise AgentdClientError(f"server URL must be http(s)://host[:port], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._timeout = timeout_s
        self.max_reconnects = max_reconnects
        self.reconnect_delay_s = reconnect_delay_s
        # No default headers: the key is added per request, only for our own origin.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s)
        )

    async def __aenter__(self) -> AgentdClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    # --- plumbing -------------------------------------------------------------------------------------

    def url_for(self, path_or_url: str) -> str:
        """An absolute URL on the base origin (a path is joined to `base_url`); ForeignOrigin for an
        absolute URL on any other origin."""
        if "://" not in path_or_url:
            return f"{self.base_url}/{path_or_url.lstrip('/')}"
        if not same_origin(path_or_url, self.base_url):
            where = "://".join(urlsplit(path_or_url)[:2])
            raise ForeignOrigin(
                f"refusing to send the API key to {where}: this client talks to {self.base_url} only "
                "(set AGENTD_PUBLIC_URL on the server to the URL clients use)"
            )
        return path_or_url

    def headers_for(self, url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The request headers for `url`: the key only when `url` is on `base_url`'s origin."""
        headers = dict(extra or {})
        if self._key and same_origin(url, self.base_url):
            headers["X-API-Key"] = self._key
        return headers

    async def _request(self, method: str, path: str, *, raw: bool = False, **kw: Any) -> Any:
        """The answer's JSON (or its bytes, `raw`); ApiError for an error answer."""
        url = self.url_for(path)
        headers = self.headers_for(url, kw.pop("headers", None))
        if method != "GET" and "json" not in kw:
            headers.setdefault("Content-Type", "application/json")  # writes are JSON, even empty ones
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                allow_redirects=False,  # a redirect must not carry the key anywhere
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                **kw,
            ) as r:
                body = await r.read()
                status = r.status
        except TimeoutError:
            raise RequestTimeout(f"{method} {url}: no answer within {self._timeout:g} s") from None
        except aiohttp.ClientError as e:
            raise ConnectionFailed(f"cannot reach agentd at {self.base_url}: {e}") from None
        try:
            data = json.loads(body) if body else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        if status >= 400 or 300 <= status < 400:
            d = data if isinstance(data, dict) else {}
            text = body[:300].decode("utf-8", "replace")
            raise ApiError(status, str(d.get("error", "http_error")), str(d.get("message", text)))
        return body if raw else data

    _json = _request  # the older name

    async def _model(self, model: type[_BM], method: str, path: str, **kw: Any) -> _BM:
        data = await self._request(method, path, **kw)
        try:
            return model.model_validate(data)
        except ValidationError as e:
            raise AgentdClientError(f"unexpected answer to {method} {path}: {e}") from None

    # --- jobs -----------------------------------------------------------------------------------------

    async def submit(
        self,
        project_id: str,
        prompt: str,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> Submitted:
        """Queue a job. `fields`: provider, model, session_id, timeout_s, max_turns, agent, files, mentions,
        busy ("enqueue" | "reject"), webhook ({"url": ..., "events": ["done"]})."""
        body = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return await self._model(
            Submitted, "POST", f"/projects/{project_id}/jobs", json=body, headers=headers
        )

    async def get(self, project_id: str, job_id: str) -> JobInfo:
        return await self._model(JobInfo, "GET", f"/projects/{project_id}/jobs/{job_id}")

    job = get  # the older name

    async def list(
        self,
        project_id: str,
        *,
        status: str | None = None,
        provider: str | None = None,
        limit: int | None = None,
        before: str | None = None,
    ) -> JobPage:
        q = {"status": status, "provider": provider, "limit": limit, "before": before}
        params = {k: str(v) for k, v in q.items() if v is not None}
        return await self._model(JobPage, "GET", f"/projects/{project_id}/jobs", params=params)

    async def cancel(self, project_id: str, job_id: str) -> JobInfo:
        return await self._model(JobInfo, "POST", f"/projects/{project_id}/jobs/{job_id}/cancel")

    # --- projects (agentd.adapters.http.projects): plain JSON ----------------------------------------------

    async def put_project(self, project_id: str, **fields: Any) -> dict[str, Any]:
        """Create or update a project: git={"url", "default_ref", "credentials"}, template, variables,
        description, max_running."""
        body = {k: v for k, v in fields.items() if v is not None}
        out: dict[str, Any] = await self._request("PUT", f"/projects/{project_id}", json=body)
        return out

    async def project(self, project_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._request("GET", f"/projects/{project_id}")
        return out

    async def projects(self) -> builtins.list[dict[str, Any]]:
        out: dict[str, Any] = await self._request("GET", "/projects")
        return list(out["projects"])

    async def delete_project(self, project_id: str) -> None:
        await self._request("DELETE", f"/projects/{project_id}")

    async def templates(self) -> builtins.list[dict[str, Any]]:
        out: dict[str, Any] = await self._request("GET", "/templates")
        return list(out["templates"])

    async def patch(self, project_id: str, job_id: str) -> bytes:
        """The job's patch (`git diff --binary`; apply it with `git apply`)."""
        body: bytes = await self._request("GET", f"/projects/{project_id}/jobs/{job_id}/patch", raw=True)
        return body

    # --- streams --------------------------------------------------------------------------------------

    def _stream_url(self, job: JobRef) -> str:
        url = job.get("stream_url")
        return str(url) if url else f"/projects/{job.project_id}/events/{job.stream_id}"

    async def stream(self, job: JobRef, *, after: int = 0) -> AsyncIterator[StoredEvent]:
        """The job's events after seq `after`, typed, each once and in order, ending with `done`."""
        async for seq, name, data in self._events(self._stream_url(job), after):
            yield StoredEvent(seq=seq, event=event_from_data(name, data))

    async def wait(self, job: JobRef, *, timeout_s: float | None = None) -> AgentResult:
        """Follow the job until it ends; its result. WaitTimeout after `timeout_s` (the job goes on)."""

        async def until_done() -> AgentResult:
            async for stored in self.stream(job):
                if isinstance(stored.event, DoneEvent):
                    return stored.event.to_result()
            raise StreamLost(f"the stream of job {job.job_id} ended without a done event")

        try:
            async with asyncio.timeout(timeout_s):
                return await until_done()
        except TimeoutError as e:
            if isinstance(e, RequestTimeout):
                raise
            raise WaitTimeout(f"job {job.job_id} did not end within {timeout_s:g} s") from None

    async def follow(self, stream_url: str, *, last_event_id: int = 0) -> AsyncIterator[StreamItem]:
        """The older, untyped stream API: raw JSON data per event."""
        async for seq, name, data in self._events(stream_url, last_event_id):
            yield StreamItem(seq=seq, event=name, data=data)

    async def _events(self, stream_url: str, after: int) -> AsyncIterator[tuple[int, str, dict[str, Any]]]:
        """(seq, event name, data) after `after` until `done`, resuming with Last-Event-ID when a
        connection drops, a transport notice (an `error` without an id) arrives, or a gap shows."""
        url = self.url_for(stream_url)
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            try:
                async with self._session.get(
                    url, headers=self.headers_for(url, headers), allow_redirects=False
                ) as r:
                    if r.status >= 300:
                        raise await _api_error(r)
                    async for ev in aiter_sse(r.content.iter_any()):
                        if not ev.id.isdigit():
                            if ev.event == "error":
                                break  # too slow, shutting down: resume from `last`
                            continue
                        seq = int(ev.id)
                        if seq <= last:
                            continue  # already yielded
                        if seq != last + 1:
                            break  # a gap: ask again from the last one we have
                        data = json.loads(ev.data) if ev.data else {}
                        failures = 0
                        last = seq
                        yield seq, ev.event, data
                        if ev.event == "done":
                            return
            except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError):
                pass
            failures += 1
            if failures > self.max_reconnects:
                raise StreamLost(f"lost the event stream {url} after {self.max_reconnects} reconnects")
            await asyncio.sleep(min(self.reconnect_delay_s * failures, 5.0))


async def _api_error(r: aiohttp.ClientResponse) -> ApiError:
    body = await r.read()
    try:
        d = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        d = {}
    d = d if isinstance(d, dict) else {}
    return ApiError(r.status, str(d.get("error", "http_error")), str(d.get("message", "")))


class Client:
    """The synchronous SDK: the same calls as `AgentdClient`, run on a private event loop thread.

    with Client("http://127.0.0.1:8080") as agentd:
        job = agentd.submit("my-repo", "hello", provider="scripted")
        print(agentd.wait(job).status)
    """

    def __init__(self, base_url: str, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="agentd-client", daemon=True)
        self._thread.start()
        self._async: AgentdClient = self._call(self._make(base_url, kw))

    @staticmethod
    async def _make(base_url: str, kw: dict[str, Any]) -> AgentdClient:
        return AgentdClient(base_url, **kw)

    def _call(self, coro: Awaitable[T]) -> T:
        async def run() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._async.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def submit(self, project_id: str, prompt: str, **kw: Any) -> Submitted:
        return self._call(self._async.submit(project_id, prompt, **kw))

    def get(self, project_id: str, job_id: str) -> JobInfo:
        return self._call(self._async.get(project_id, job_id))

    def list(self, project_id: str, **kw: Any) -> JobPage:
        return self._call(self._async.list(project_id, **kw))

    def cancel(self, project_id: str, job_id: str) -> JobInfo:
        return self._call(self._async.cancel(project_id, job_id))

    def wait(self, job: JobRef, *, timeout_s: float | None = None) -> AgentResult:
        return self._call(self._async.wait(job, timeout_s=timeout_s))

    def stream(self, job: JobRef, *, after: int = 0) -> Iterator[StoredEvent]:
        it = self._async.stream(job, after=after)
        try:
            while True:
                try:
                    yield self._call(it.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(Exception):
                self._call(it.aclose())  # type: ignore[attr-defined]
