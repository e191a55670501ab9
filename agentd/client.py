"""A small Python client for the agentd API, used by `agentd submit` and the tests.

`follow()` reconnects with Last-Event-ID when the connection drops, so a caller sees every event exactly
once and in order, ending with `done`.

The key goes only to the origin the client was given: a URL from an answer (`stream_url`) that names
another origin is refused, and redirects are not followed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import yarl

from agentd.sse import aiter_sse


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class StreamItem:
    seq: int | None
    event: str
    data: dict[str, Any]


class AgentdClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._key_header = {"X-API-Key": api_key} if api_key else {}
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s)
        )
        self._timeout = timeout_s

    async def __aenter__(self) -> AgentdClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    def _url(self, path_or_url: str) -> str:
        """An absolute URL on this client's origin; ApiError for a URL on any other origin."""
        if "://" not in path_or_url:
            return f"{self.base_url}/{path_or_url.lstrip('/')}"
        if _origin(path_or_url) != self._origin:
            raise ApiError(
                0,
                "foreign_origin",
                f"refusing to send the API key to {_origin(path_or_url)}: this client talks to "
                f"{self._origin} only (set AGENTD_PUBLIC_URL on the server to the URL clients use)",
            )
        return path_or_url

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        url = self._url(path)
        headers = {**self._key_header, **kw.pop("headers", {})}
        if method != "GET" and "json" not in kw:
            headers.setdefault("Content-Type", "application/json")
        async with self._session.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            **kw,
        ) as r:
            body = await r.read()
            try:
                data = json.loads(body) if body else None
            except json.JSONDecodeError:
                data = None
            if r.status >= 400:
                d = data if isinstance(data, dict) else {}
                raise ApiError(r.status, d.get("error", "http_error"), d.get("message", body[:300].decode()))
            return data

    async def submit(self, project_id: str, prompt: str, **fields: Any) -> dict[str, Any]:
        body = {"prompt": prompt, **{k: v for k, v in fields.items() if v is not None}}
        out: dict[str, Any] = await self._json("POST", f"/projects/{project_id}/jobs", json=body)
        return out

    async def job(self, project_id: str, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._json("GET", f"/projects/{project_id}/jobs/{job_id}")
        return out

    async def cancel(self, project_id: str, job_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._json("POST", f"/projects/{project_id}/jobs/{job_id}/cancel")
        return out

    async def put_project(self, project_id: str, **fields: Any) -> dict[str, Any]:
        """Create or update a project: git={"url", "default_ref", "credentials"}, template, variables,
        description, max_running."""
        body = {k: v for k, v in fields.items() if v is not None}
        out: dict[str, Any] = await self._json("PUT", f"/projects/{project_id}", json=body)
        return out

    async def project(self, project_id: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._json("GET", f"/projects/{project_id}")
        return out

    async def projects(self) -> list[dict[str, Any]]:
        out: dict[str, Any] = await self._json("GET", "/projects")
        return list(out["projects"])

    async def delete_project(self, project_id: str) -> None:
        await self._json("DELETE", f"/projects/{project_id}")

    async def templates(self) -> list[dict[str, Any]]:
        out: dict[str, Any] = await self._json("GET", "/templates")
        return list(out["templates"])

    async def patch(self, project_id: str, job_id: str) -> bytes:
        """The job's patch (`git diff --binary`; apply it with `git apply`)."""
        url = f"{self.base_url}/projects/{project_id}/jobs/{job_id}/patch"
        async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=self._timeout)) as r:
            body = await r.read()
            if r.status >= 400:
                try:
                    d = json.loads(body)
                except json.JSONDecodeError:
                    d = {}
                raise ApiError(r.status, d.get("error", "http_error"), d.get("message", ""))
            return body

    async def follow(
        self, stream_url: str, *, last_event_id: int = 0, max_reconnects: int = 20
    ) -> AsyncIterator[StreamItem]:
        """Yield the stream's events until `done`; reconnect (Last-Event-ID) when the connection drops."""
        url = self._url(stream_url)
        last = last_event_id
        failures = 0
        retry_s = 1.0
        while True:
            headers = {"Accept": "text/event-stream", **self._key_header}
            if last:
                headers["Last-Event-ID"] = str(last)
            try:
                async with self._session.get(url, headers=headers, allow_redirects=False) as r:
                    if r.status >= 400:
                        body = await r.read()
                        try:
                            d = json.loads(body)
                        except json.JSONDecodeError:
                            d = {}
                        raise ApiError(r.status, d.get("error", "http_error"), d.get("message", ""))
                    async for ev in aiter_sse(r.content.iter_any()):
                        failures = 0
                        data = json.loads(ev.data) if ev.data else {}
                        seq = int(ev.id) if ev.id.isdigit() else None
                        if seq is not None:
                            if seq <= last:
                                continue  # never hand out an event twice
                            last = seq
                        item = StreamItem(seq=seq, event=ev.event, data=data)
                        if item.event == "error" and seq is None:
                            break  # a transport-level notice (e.g. too slow): reconnect and resume
                        yield item
                        if item.event == "done":
                            return
            except (TimeoutError, aiohttp.ClientError):
                pass
            failures += 1
            if failures > max_reconnects:
                raise ApiError(
                    0, "stream_lost", f"lost the event stream {url} after {max_reconnects} retries"
                )
            await asyncio.sleep(min(retry_s * failures, 5.0))


def _origin(url: str) -> str:
    u = yarl.URL(url)
    return f"{u.scheme}://{u.host}:{u.explicit_port or u.port}".lower()
