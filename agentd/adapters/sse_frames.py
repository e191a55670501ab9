"""Encoded SSE frames, shared: each event is serialised once per process, however many clients follow it.

A stream's event `seq` never changes once written, so (stream id, seq) names one frame for good. Every
subscriber of a stream in this process writes the same `bytes` object: 1,000 clients on one job cost one
JSON serialisation and one frame per event, not 1,000. The cache is bounded (oldest out first); a frame that
fell out is simply encoded again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import orjson

from agentd.domain.models import StoredEvent
from agentd.sse import encode_event

__all__ = ["FrameCache", "encode_frame"]


def encode_frame(stored: StoredEvent) -> bytes:
    """`id: <seq>`, `event: <type>`, one `data:` line with the event's JSON (`event.data()`, what clients
    see: the same frame as `sse.encode_event(json, event=..., id=seq)`; JSON never holds a raw line break)."""
    ev = stored.event
    data = ev.data()
    try:
        payload = orjson.dumps(data)
    except TypeError:  # what orjson refuses (an int beyond 64 bits, a lone surrogate): the stdlib escapes it
        return encode_event(json.dumps(data, separators=(",", ":")), event=ev.event, id=stored.seq)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (stored.seq, ev.event.encode(), payload)


class FrameCache:
    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._frames: dict[tuple[str, int], bytes] = {}  # insertion ordered: the oldest first
        self.encoded = 0  # frames serialised (observability and tests)

    def frame(self, stream_id: str, stored: StoredEvent) -> bytes:
        key = (stream_id, stored.seq)
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = encode_frame(stored)
            self.encoded += 1
            if len(self._frames) > self.size:
                del self._frames[next(iter(self._frames))]
        return frame

    def frames(self, stream_id: str, batch: Sequence[StoredEvent]) -> bytes:
        """The frames of consecutive events as one write (the one frame itself for a single event)."""
        if len(batch) == 1:
            return self.frame(stream_id, batch[0])
        return b"".join([self.frame(stream_id, stored) for stored in batch])
