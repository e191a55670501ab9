"""HTTP client for the OpenCode server (v1 API): JSON calls with Basic auth, and the /event stream.

Every error names the method, the URL, the status and an excerpt of the body. Unknown routes of the
server answer 200 with the web UI (text/html), so a JSON answer is only accepted with a JSON content type.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from yarl import URL

from agentd.domain.errors import AgentdError, ProviderUnavailable
from agentd.sse import aiter_sse

log = structlog.get_logger(__name__)
EXCERPT = 300


class OpenCodeHTTPError(AgentdError):
    """The OpenCode server answered with an error."""

    code = "opencode_http_error"

    def __init__(self, method: str, url: str, status: int, body: str, note: str = "") -> None:
        self.method, self.url, self.status, self.body = method, url, status, body
        text = f"{method} {url} -> HTTP {status}"
        if note:
            text += f" ({note})"
        super().__init__(f"{text}: {excerpt(body) or '<empty body>'}")


class OpenCodeUnavailable(ProviderUnavailable):
    """The OpenCode server cannot be reached."""


def excerpt(body: str, limit: int = EXCERPT) -> str:
    flat = " ".join(body.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class OpenCodeClient:
    """One aiohttp session per client; `base_url` may be changed (a managed server restarted elsewhere)."""

    def __init__(
        self,
        base_url: str,
        *,
        username: str = "opencode",
        password: str | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        event_read_timeout_s: float = 35.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.event_read_timeout_s = event_read_timeout_s  # heartbeats come every 10 s
        self._session: aiohttp.ClientSession | None = None
        self.closed = False

    def _http(self) -> aiohttp.ClientSession:
        if self.closed:
            raise OpenCodeUnavailable("the OpenCode client is closed (agentd is shutting down)")
        if self._session is None or self._session.closed:
            # No pool limit: every running job holds one /event connection.
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    def _headers(self) -> dict[str, str]:
        if self.password is None:
            return {}
        return {"Authorization": aiohttp.encode_basic_auth(self.username, self.password)}

    def url(
        self, path: str, directory: Path | str | None = None, params: Mapping[str, str] | None = None
    ) -> URL:
        query = dict(params or {})
        if directory is not None:
            query["directory"] = str(directory)
        return URL(self.base_url + path).with_query(query)

    async def close(self) -> None:
        self.closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        directory: Path | str | None = None,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Send one call; returns the decoded JSON (None for 204). Raises OpenCodeHTTPError / Unavailable."""
        url = self.url(path, directory, params)
        timeout = aiohttp.ClientTimeout(
            total=timeout_s or self.timeout_s, sock_connect=self.connect_timeout_s
        )
        try:
            async with self._http().request(
                method, url, json=body, headers=self._headers(), timeout=timeout
            ) as resp:
                if resp.status == 204:
                    return None
                text = await resp.text(errors="replace")
                ctype = resp.headers.get("Content-Type", "")
                if resp.status >= 400:
                    raise OpenCodeHTTPError(method, str(url), resp.status, text)
                if not ctype.startswith("application/json"):
                    raise OpenCodeHTTPError(
                        method,
                        str(url),
                        resp.status,
                        text,
                        f"expected JSON, got {ctype or 'no content type'}: not an OpenCode API route",
                    )
                try:
                    return json.loads(text) if text else None
                except ValueError as e:
                    raise OpenCodeHTTPError(method, str(url), resp.status, text, f"invalid JSON: {e}") from e
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise OpenCodeUnavailable(f"{method} {url} failed: {type(e).__name__}: {e}") from e

    @contextlib.asynccontextmanager
    async def events(self, directory: Path | str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """GET /event for one project directory: yields the decoded events ({id, type, properties})."""
        url = self.url("/event", directory)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.connect_timeout_s, sock_read=self.event_read_timeout_s
        )
        http = self._http()
        try:
            resp = await http.get(url, headers=self._headers(), timeout=timeout)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise OpenCodeUnavailable(f"GET {url} failed: {type(e).__name__}: {e}") from e
        gen = _decode(resp)
        try:
            ctype = resp.headers.get("Content-Type", "")
            if resp.status != 200 or not ctype.startswith("text/event-stream"):
                text = (await resp.content.read(4096)).decode(errors="replace")
                note = "" if resp.status != 200 else f"expected text/event-stream, got {ctype or 'nothing'}"
                raise OpenCodeHTTPError("GET", str(url), resp.status, text, note)
            yield gen
        finally:
            await gen.aclose()
            resp.close()

    # --- the calls agentd makes -----------------------------------------------------------------------

    async def health(self, timeout_s: float = 5.0) -> dict[str, Any]:
        data = await self.request("GET", "/global/health", timeout_s=timeout_s)
        return data if isinstance(data, dict) else {}

    async def create_session(self, directory: Path, title: str) -> dict[str, Any]:
        data = await self.request("POST", "/session", directory=directory, body={"title": title})
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            url = str(self.url("/session", directory))
            raise OpenCodeHTTPError("POST", url, 200, str(data), "no session id in the answer")
        return data

    async def get_session(self, directory: Path, session_id: str) -> dict[str, Any]:
        data = await self.request("GET", f"/session/{session_id}", directory=directory)
        return data if isinstance(data, dict) else {}

    async def delete_session(self, directory: Path, session_id: str) -> bool:
        return bool(await self.request("DELETE", f"/session/{session_id}", directory=directory))

    async def prompt_async(self, directory: Path, session_id: str, body: dict[str, Any]) -> None:
        await self.request("POST", f"/session/{session_id}/prompt_async", directory=directory, body=body)

    async def abort(self, directory: Path, session_id: str, timeout_s: float = 10.0) -> bool:
        path = f"/session/{session_id}/abort"
        return bool(await self.request("POST", path, directory=directory, timeout_s=timeout_s))

    async def messages(self, directory: Path, session_id: str) -> list[dict[str, Any]]:
        data = await self.request("GET", f"/session/{session_id}/message", directory=directory)
        return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []

    async def status(self, directory: Path) -> dict[str, Any]:
        data = await self.request("GET", "/session/status", directory=directory)
        return data if isinstance(data, dict) else {}

    async def reply_permission(self, directory: Path, request_id: str, reply: str, message: str) -> None:
        body = {"reply": reply, "message": message} if reply == "reject" else {"reply": reply}
        await self.request("POST", f"/permission/{request_id}/reply", directory=directory, body=body)

    async def reject_question(self, directory: Path, request_id: str) -> None:
        await self.request("POST", f"/question/{request_id}/reject", directory=directory)


async def _decode(resp: aiohttp.ClientResponse) -> AsyncGenerator[dict[str, Any], None]:
    async for ev in aiter_sse(resp.content.iter_any()):
        if not ev.data:
            continue
        try:
            obj = json.loads(ev.data)
        except ValueError:
            log.warning("opencode.event.undecodable", data=excerpt(ev.data))
            continue
        if isinstance(obj, dict):
            yield obj
