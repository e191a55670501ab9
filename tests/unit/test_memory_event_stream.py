"""The in-memory event stream keeps a bounded number of events (it is for tests and benchmarks)."""

from __future__ import annotations

import pytest

from agentd.adapters.memory.memory_event_stream import MemoryEventStream
from agentd.domain.errors import StreamNotFound
from agentd.domain.models import TextEvent


async def test_past_the_cap_the_oldest_closed_streams_are_forgotten_open_ones_kept() -> None:
    streams = MemoryEventStream(retention_s=3600, max_events=10)
    for sid in ("old", "newer", "open"):
        await streams.create(sid)
        await streams.publish(sid, [TextEvent(message_id="m", chunk=str(i)) for i in range(4)])
        if sid != "open":
            await streams.close_stream(sid)
    # 12 events kept > 10: the oldest closed stream goes, long before its retention
    with pytest.raises(StreamNotFound):
        await streams.last_seq("old")
    assert await streams.last_seq("newer") == 4
    await streams.publish("open", [TextEvent(message_id="m", chunk="x")] * 6)  # 14 > 10: "newer" goes too
    with pytest.raises(StreamNotFound):
        await streams.last_seq("newer")
    assert await streams.last_seq("open") == 10  # an open stream is never dropped
