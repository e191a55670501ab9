"""Adapters under contract: every adapter of a port runs the same tests (add new ones to the params)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.memory.memory_event_stream import MemoryEventStream
from agentd.ports.event_stream import EventStream
from agentd.ports.work_queue import WorkQueue

QUEUE_ADAPTERS = ["sqlite"]
STREAM_ADAPTERS = ["memory"]


@pytest.fixture(params=QUEUE_ADAPTERS)
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[WorkQueue]:
    q: WorkQueue
    if request.param == "sqlite":
        q = SqliteWorkQueue(tmp_path / "queue.sqlite3")
    else:  # pragma: no cover - new adapters register above
        raise AssertionError(request.param)
    yield q
    await q.close()


@pytest.fixture(params=STREAM_ADAPTERS)
async def streams(request: pytest.FixtureRequest) -> AsyncIterator[EventStream]:
    s: EventStream
    if request.param == "memory":
        s = MemoryEventStream(retention_s=0.2, buffer=50)
    else:  # pragma: no cover
        raise AssertionError(request.param)
    yield s
    await s.close()
