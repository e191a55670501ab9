"""The OpenCode HTTP client against a small stand-in server: auth, content types, errors, the event stream."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agentd.adapters.opencode.client import OpenCodeClient, OpenCodeHTTPError, OpenCodeUnavailable

AUTH = aiohttp.encode_basic_auth("opencode", "pw")


async def _event(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Authorization") != AUTH:
        return web.Response(status=401)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    body = (
        b'data: {"id":"evt_1","type":"server.connected","properties":{}}\n\n'
        b"data: not json\n\n"
        b'data: {"id":"evt_2","type":"session.idle","properties":{"sessionID":"ses_1"}}\n\n'
    )
    for i in range(0, len(body), 7):  # events split across chunks
        await resp.write(body[i : i + 7])
    return resp


def _reply(resp: web.StreamResponse) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return resp

    return handler


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/global/health", _reply(web.json_response({"healthy": True, "version": "1.18.33"})))
    app.router.add_get("/session/{id}", _reply(web.json_response({"name": "NotFoundError"}, status=404)))
    app.router.add_get(
        "/html",
        _reply(web.Response(text="<!doctype html><title>OpenCode</title>", content_type="text/html")),
    )
    app.router.add_post("/session/{id}/prompt_async", _reply(web.Response(status=204)))
    app.router.add_get("/event", _event)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_json_calls_and_errors(server: str, tmp_path: Path) -> None:
    client = OpenCodeClient(server, password="pw")
    try:
        assert await client.health() == {"healthy": True, "version": "1.18.33"}
        await client.prompt_async(tmp_path, "ses_1", {"parts": []})  # 204: nothing to return
        with pytest.raises(OpenCodeHTTPError) as e:
            await client.get_session(tmp_path, "ses_x")
        msg = str(e.value)
        assert msg.startswith(f"GET {server}/session/ses_x?directory=") and "-> HTTP 404" in msg
        assert msg.endswith('{"name": "NotFoundError"}') and e.value.status == 404
        with pytest.raises(
            OpenCodeHTTPError, match=r"GET .*/html -> HTTP 200 \(expected JSON, got text/html"
        ):
            await client.request("GET", "/html")
    finally:
        await client.close()


async def test_unreachable_server_names_the_call(tmp_path: Path) -> None:
    client = OpenCodeClient("http://127.0.0.1:9", connect_timeout_s=2)
    try:
        with pytest.raises(
            OpenCodeUnavailable, match=r"^POST http://127\.0\.0\.1:9/session\?directory=.* failed: "
        ):
            await client.create_session(tmp_path, "t")
    finally:
        await client.close()


async def test_event_stream(server: str, tmp_path: Path) -> None:
    client = OpenCodeClient(server, password="pw")
    try:
        async with client.events(tmp_path) as stream:
            got = [ev["type"] async for ev in stream]
        assert got == ["server.connected", "session.idle"]  # the undecodable event is skipped
        client.password = "wrong"
        with pytest.raises(OpenCodeHTTPError, match=r"GET .*/event\?directory=.* -> HTTP 401: <empty body>"):
            async with client.events(tmp_path):
                pass
        client.password = "pw"
        client.base_url = server + "/x"
        with pytest.raises(OpenCodeHTTPError):
            async with client.events(tmp_path):
                pass
    finally:
        await client.close()
