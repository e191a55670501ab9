"""The SSE writer: events as they come, heartbeats while quiet, an error event on shutdown or when the
subscriber falls behind, and a client that stops reading is let go after the write timeout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from agentd.adapters.http.app import CONFIG, STATE, ApiConfig, _EventStream, _open_slot, _State
from agentd.domain.errors import SubscriberTooSlow
from agentd.domain.models import StatusEvent, StoredEvent
from agentd.ports.metrics import NO_METRICS
from agentd.services.jobs import Subscription
from agentd.sse import aiter_sse


class Resp:
    """Stands in for aiohttp's payload writer under a real response: records writes; `hold` makes event
    writes wait forever; `gone` makes heartbeats find the client gone."""

    def __init__(self, hold: bool = False, gone: bool = False) -> None:
        self.frames: list[bytes] = []
        self.hold = hold
        self.gone = gone
        self.heartbeats = asyncio.Event()
        self.first = asyncio.Event()
        self.length: int | None = None
        self.buffer_size = self.output_size = 0

    def enable_chunking(self) -> None: ...

    def enable_compression(self, *args: Any, **kwargs: Any) -> None: ...

    async def write_headers(self, status_line: str, headers: Any) -> None: ...

    def send_headers(self) -> None: ...

    async def drain(self) -> None: ...

    async def write_eof(self, data: bytes = b"") -> None: ...

    async def write(self, data: bytes, **kwargs: Any) -> None:
        if data.startswith(b"retry:"):
            return
        if self.gone and data.startswith(b": heartbeat"):
            raise ConnectionResetError("client gone")
        if self.hold and data.startswith(b"id:"):
            await asyncio.Event().wait()
        self.frames.append(data)
        self.first.set()
        if sum(f.startswith(b": heartbeat") for f in self.frames) >= 2:
            self.heartbeats.set()

    async def parsed(self) -> list[tuple[str, dict[str, Any]]]:
        async def chunks() -> AsyncIterator[bytes]:
            for f in self.frames:
                yield f

        return [(ev.event, json.loads(ev.data)) async for ev in aiter_sse(chunks())]


class Source:
    def __init__(self, fail: Exception | None = None) -> None:
        self.release = asyncio.Event()
        self.closed = False
        self.fail = fail

    async def events(self) -> AsyncIterator[StoredEvent]:
        try:
            yield StoredEvent(seq=1, event=StatusEvent(status="queued"))
            await self.release.wait()
            if self.fail:
                raise self.fail
            yield StoredEvent(seq=2, event=StatusEvent(status="running"))
        finally:
            self.closed = True


def cfg(**kw: Any) -> ApiConfig:
    return ApiConfig(**{"heartbeat_s": 0.01, "write_timeout_s": 5.0, **kw})


async def _send(
    resp: Resp, events: AsyncIterator[StoredEvent], config: ApiConfig, state: _State, sid: str
) -> None:
    """One SSE response as the events route makes it, prepared (and so streamed) as aiohttp would."""
    app = web.Application()
    app[CONFIG], app[STATE] = config, state
    _open_slot(state, config, "k")
    stream = _EventStream(Subscription(events, NO_METRICS), sid, "k", app)
    await stream.prepare(make_mocked_request("GET", f"/projects/p/events/{sid}", app=app, writer=resp))
    assert state.streams_open == 0 and not state.streams_by_key, "the stream slot is given back"


async def test_heartbeats_while_quiet_then_the_events_then_the_end() -> None:
    resp, src = Resp(), Source()
    task = asyncio.create_task(_send(resp, src.events(), cfg(), _State(), "s"))
    await asyncio.wait_for(resp.heartbeats.wait(), 5)
    src.release.set()
    await asyncio.wait_for(task, 5)
    assert resp.frames[0].startswith(b"id: 1\n") and resp.frames[-1].startswith(b"id: 2\n")
    assert set(resp.frames[1:-1]) == {b": heartbeat\n\n"} and len(resp.frames) >= 4
    assert [e for e, _ in await resp.parsed()] == ["status", "status"]
    assert src.closed


async def test_no_heartbeat_while_events_flow() -> None:
    resp, src = Resp(), Source()
    src.release.set()
    await asyncio.wait_for(_send(resp, src.events(), cfg(heartbeat_s=60), _State(), "s"), 5)
    assert len(resp.frames) == 2 and b"heartbeat" not in b"".join(resp.frames)


async def test_shutdown_ends_the_stream_with_an_error_event() -> None:
    resp, src, closing = Resp(), Source(), _State()
    task = asyncio.create_task(_send(resp, src.events(), cfg(heartbeat_s=60), closing, "s"))
    await asyncio.wait_for(resp.first.wait(), 5)
    closing.close()
    await asyncio.wait_for(task, 5)
    _, (event, data) = await resp.parsed()
    assert event == "error" and data["code"] == "shutting_down" and "Last-Event-ID" in data["message"]
    assert data["retryable"] is True and src.closed


async def test_a_subscriber_that_falls_behind_gets_an_error_event() -> None:
    resp, src = (
        Resp(),
        Source(fail=SubscriberTooSlow("fell 2000 events behind; reconnect with Last-Event-ID: 1")),
    )
    src.release.set()
    await asyncio.wait_for(_send(resp, src.events(), cfg(), _State(), "s"), 5)
    _, (event, data) = await resp.parsed()
    assert (
        event == "error" and data["code"] == "subscriber_too_slow" and "Last-Event-ID: 1" in data["message"]
    )


async def test_a_client_that_stops_reading_is_let_go_after_the_write_timeout() -> None:
    resp, src = Resp(hold=True), Source()
    await asyncio.wait_for(
        _send(resp, src.events(), cfg(heartbeat_s=60, write_timeout_s=0.05), _State(), "s"),
        5,
    )
    assert resp.frames == [] and src.closed


async def test_a_storage_failure_ends_the_stream_with_an_error_event() -> None:
    resp, src = Resp(), Source(fail=RuntimeError("the event log broke"))
    src.release.set()
    await asyncio.wait_for(_send(resp, src.events(), cfg(), _State(), "s"), 5)
    _, (event, data) = await resp.parsed()
    assert event == "error" and data == {
        "code": "stream_error",
        "message": "the event log broke",
        "retryable": True,
    }


async def test_a_client_gone_while_quiet_ends_the_stream_at_the_next_heartbeat() -> None:
    resp, src = Resp(gone=True), Source()  # src never releases: only the heartbeat can notice the client left
    await asyncio.wait_for(_send(resp, src.events(), cfg(), _State(), "s"), 5)
    assert src.closed
