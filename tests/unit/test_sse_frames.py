"""Shared SSE frames: one encoding per event for every subscriber, decoding to the event's own data."""

from __future__ import annotations

import json

from agentd.adapters.sse_frames import FrameCache, encode_frame
from agentd.domain.models import (
    AgentEvent,
    DoneEvent,
    StatusEvent,
    StoredEvent,
    TextEvent,
    event_from_data,
)
from agentd.sse import SSEDecoder


def test_frame_decodes_to_the_same_event() -> None:
    events: list[AgentEvent] = [
        TextEvent(message_id="m1", chunk='h\u00e9llo\nworld\r\u2028 "quoted" \\ \x00'),
        StatusEvent(status="running", detail="worker w1"),
        DoneEvent(status="succeeded", result="ok", usage={"input_tokens": 3}),
    ]
    for seq, ev in enumerate(events, 1):
        (decoded,) = SSEDecoder().feed(encode_frame(StoredEvent(seq=seq, event=ev)))
        assert decoded.id == str(seq)
        assert decoded.event == ev.event
        assert event_from_data(decoded.event, json.loads(decoded.data)) == ev


def test_each_event_is_encoded_once_for_every_subscriber() -> None:
    cache = FrameCache()
    stored = [StoredEvent(seq=i, event=TextEvent(message_id="m", chunk=f"c{i}")) for i in (1, 2, 3)]
    frames = [[cache.frame("stm_a", s) for s in stored] for _ in range(100)]  # 100 subscribers
    assert cache.encoded == 3
    assert all(f[i] is frames[0][i] for f in frames for i in range(3))  # the same bytes object
    # Another stream's seq 1 is another frame.
    other = cache.frame("stm_b", StoredEvent(seq=1, event=StatusEvent(status="queued")))
    assert other != frames[0][0]
    assert cache.encoded == 4


def test_cache_is_bounded() -> None:
    cache = FrameCache(size=10)
    for i in range(1, 101):
        cache.frame("s", StoredEvent(seq=i, event=TextEvent(message_id="m", chunk="x")))
    assert len(cache._frames) == 10
    assert cache.frame("s", StoredEvent(seq=100, event=TextEvent(message_id="m", chunk="x")))
    assert cache.encoded == 100  # seq 100 was still cached


def test_the_frame_carries_what_clients_see() -> None:
    # event.data(), not a raw dump: a done event outside a git workspace has no git fields.
    (decoded,) = SSEDecoder().feed(encode_frame(StoredEvent(seq=1, event=DoneEvent(status="succeeded"))))
    assert json.loads(decoded.data) == DoneEvent(status="succeeded").data()
    assert "push" not in json.loads(decoded.data)
    # What orjson refuses still encodes (the stdlib escapes it).
    odd = TextEvent(message_id="m", chunk="lone \ud800 surrogate")
    (decoded,) = SSEDecoder().feed(encode_frame(StoredEvent(seq=2, event=odd)))
    assert json.loads(decoded.data)["chunk"] == "lone \ud800 surrogate"
