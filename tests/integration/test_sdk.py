"""agentd.client, the SDK, against a live agentd: typed answers and events, reconnection through a proxy
that keeps cutting the connection (no duplicate, no gap), wait(), typed errors, the key's origin."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.client import (
    AgentdClient,
    ApiError,
    Client,
    ConnectionFailed,
    ForeignOrigin,
    RequestTimeout,
    WaitTimeout,
    same_origin,
)
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    DoneEvent,
    SessionEvent,
    StatusEvent,
    TextEvent,
)
from agentd.wire import JobInfo, Submitted
from tests.conftest import RunningAgentd
from tests.support.agentd_proc import Server, base_env, serve
from tests.support.net import free_port

__all__ = ["base_env", "serve"]  # fixtures
KEY = "sdk-key-0123456789abcdef0123456789"


class ChattyAgent(ScriptedCodeAgent):
    """`chatty:N` streams N numbered text chunks, a few milliseconds apart; anything else as scripted."""

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        if not request.prompt.startswith("chatty:"):
            async for ev in super().execute(request, run_id=run_id, env=env, workdir=workdir):
                yield ev
            return
        n = int(request.prompt.split(":", 1)[1])
        yield SessionEvent(session_id="chatty-1")
        for i in range(n):
            yield TextEvent(message_id="m1", index=0, chunk=f"<{i}>", is_complete=i == n - 1)
            if i % 20 == 0:
                await asyncio.sleep(0.005)
        yield DoneEvent(status="succeeded", result=f"{n} chunks")


class CuttingProxy:
    """A TCP proxy to `target` that closes each connection after `cut_after` bytes from the server."""

    def __init__(self, target_port: int, cut_after: int, listen_port: int = 0) -> None:
        self.target_port, self.cut_after, self.listen_port = target_port, cut_after, listen_port
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> CuttingProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, limit: int | None) -> None:
            sent = 0
            with contextlib.suppress(ConnectionError):
                while data := await src.read(512):
                    if limit is not None and sent + len(data) > limit:
                        dst.write(data[: limit - sent])  # cut mid-event
                        await dst.drain()
                        break
                    sent += len(data)
                    dst.write(data)
                    await dst.drain()

        tasks = [
            asyncio.create_task(pipe(reader, up_w, None)),
            asyncio.create_task(pipe(up_r, writer, self.cut_after)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        for w in (writer, up_w):
            w.close()


@pytest.fixture
async def srv(agentd_factory: Any) -> RunningAgentd:
    server: RunningAgentd = await agentd_factory([ChattyAgent("scripted")], workers=2)
    return server


async def test_typed_answers_and_events(srv: RunningAgentd) -> None:
    async with AgentdClient(srv.base_url) as c:
        job = await c.submit("sdk", "hello sdk", model="m")
        assert isinstance(job, Submitted) and job.status == "queued" and job["job_id"] == job.job_id
        events = [s async for s in c.stream(job)]
        assert [s.seq for s in events] == list(range(1, len(events) + 1))
        assert isinstance(events[0].event, StatusEvent) and isinstance(events[-1].event, DoneEvent)
        assert "".join(s.event.chunk for s in events if isinstance(s.event, TextEvent)) == "hello sdk"
        info = await c.get("sdk", job.job_id)
        assert isinstance(info, JobInfo) and info.status == "succeeded" and info.request.model == "m"
        result = await c.wait(info)  # a finished job: its result at once
        assert isinstance(result, AgentResult) and result.status == "succeeded"
        page = await c.list("sdk", status="succeeded", limit=5)
        assert [j.job_id for j in page.jobs] == [job.job_id]
        # Resuming after a given event yields only what follows it.
        tail = [s.seq for s in await _collect(c.stream(job, after=3))]
        assert tail == list(range(4, len(events) + 1))


async def _collect(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]


async def test_stream_survives_cut_connections_without_duplicates_or_gaps(agentd_factory: Any) -> None:
    proxy_port = free_port()
    # The proxy forwards the Host header it gets: the server must answer for the proxy's address.
    srv: RunningAgentd = await agentd_factory(
        [ChattyAgent("scripted")], allowed_hosts=f"127.0.0.1:{proxy_port}"
    )
    port = int(srv.base_url.rsplit(":", 1)[1])
    async with CuttingProxy(port, cut_after=1500, listen_port=proxy_port) as proxy:
        async with AgentdClient(proxy.url, reconnect_delay_s=0.01, max_reconnects=5) as c:
            job = await c.submit("sdk", "chatty:400")
            seqs, chunks = [], []
            async for stored in c.stream(job):
                seqs.append(stored.seq)
                if isinstance(stored.event, TextEvent):
                    chunks.append(stored.event.chunk)
    assert seqs == list(range(1, len(seqs) + 1))  # each once, in order, none missing
    assert chunks == [f"<{i}>" for i in range(400)]
    assert proxy.connections > 10  # it really was cut, many times


async def test_wait_returns_the_result_or_times_out(srv: RunningAgentd) -> None:
    async with AgentdClient(srv.base_url) as c:
        assert (await c.wait(await c.submit("a", "fail:nope"))).error == "nope"
        slow = await c.submit("b", "sleep:30")
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as e:
            await c.wait(slow, timeout_s=0.5)
        assert isinstance(e.value, TimeoutError) and time.monotonic() - started < 5
        cancelled = await c.cancel("b", slow.job_id)
        assert cancelled.cancel_requested or cancelled.status == "cancelled"
        assert (await c.wait(slow)).status == "cancelled"


async def test_errors_are_typed(srv: RunningAgentd) -> None:
    async with AgentdClient(srv.base_url) as c:
        with pytest.raises(ApiError) as e:
            await c.get("sdk", "job_missing")
        assert e.value.status == 404 and e.value.code == "job_not_found"
        with pytest.raises(ApiError) as e:
            await c.submit("Bad/Project", "x")
        assert e.value.status in (400, 404)
    async with AgentdClient("http://127.0.0.1:9") as c:
        with pytest.raises(ConnectionFailed):
            await c.list("sdk")
    # A server that never answers: RequestTimeout (a TimeoutError too).
    writers: list[asyncio.StreamWriter] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        async with AgentdClient(f"http://127.0.0.1:{hung.sockets[0].getsockname()[1]}", timeout_s=0.3) as c:
            with pytest.raises(RequestTimeout):
                await c.get("sdk", "job_x")
    finally:
        for w in writers:
            w.close()
        hung.close()
        await hung.wait_closed()


async def test_the_key_goes_only_to_the_origin_it_was_given_for(agentd_factory: Any) -> None:
    srv: RunningAgentd = await agentd_factory([ScriptedCodeAgent("scripted")], api_key=KEY)
    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"error": "nope", "message": "elsewhere"}, status=404)

    evil = web.Application()
    evil.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(evil)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    evil_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with AgentdClient(srv.base_url, api_key=KEY) as c:
            job = await c.submit("sdk", "hello")
            # A stream_url naming another origin (a proxy's, a forged answer's) is refused.
            forged = job.model_copy(update={"stream_url": f"{evil_url}/projects/sdk/events/{job.stream_id}"})
            with pytest.raises(ForeignOrigin) as refused:
                await _collect(c.stream(forged))
            assert evil_url in refused.value.message
            assert (await c.wait(job)).status == "succeeded"  # its own stream_url is fine
            assert c.headers_for(evil_url + "/x") == {} and c.headers_for(srv.base_url + "/x") == {
                "X-API-Key": KEY
            }
    finally:
        await runner.cleanup()
    assert seen == []
    assert same_origin("http://a:80/x", "http://a/y") and not same_origin("http://a", "https://a")
    assert not same_origin("http://a:8080", "http://a:8081")


def test_the_sync_client(serve: Any) -> None:
    s: Server = serve(AGENTD_PROVIDERS="scripted")
    with Client(s.url) as c:
        job = c.submit("sync", "hello sync")
        kinds = [stored.event.event for stored in c.stream(job)]
        assert kinds[0] == "status" and kinds[-1] == "done"
        assert c.wait(job).result == "hello sync"
        assert c.get("sync", job.job_id).status == "succeeded"
        assert [j.job_id for j in c.list("sync").jobs] == [job.job_id]
        with pytest.raises(ApiError):
            c.cancel("sync", "job_nope")
