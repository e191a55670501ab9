"""A run's outbox: events stored in order, batched while a write is in flight, bounded, errors surface."""

from __future__ import annotations

import asyncio

import pytest

from agentd.domain.models import AgentEvent, TextEvent
from agentd.services.runner import _Outbox


def text(i: int) -> TextEvent:
    return TextEvent(message_id="m", chunk=str(i))


async def test_in_order_batched_and_bounded() -> None:
    stored: list[list[str]] = []
    in_flight = 0
    most = 0

    async def publish(batch: list[AgentEvent]) -> None:
        nonlocal in_flight, most
        in_flight += len(batch)
        most = max(most, in_flight)
        await asyncio.sleep(0.002)
        stored.append([e.chunk for e in batch if isinstance(e, TextEvent)])
        in_flight -= len(batch)

    box = _Outbox(publish, window=4)
    ahead = 0
    for i in range(50):
        await box.put(text(i))
        ahead = max(ahead, i + 1 - sum(len(b) for b in stored))
    await box.flush()
    assert [c for b in stored for c in b] == [str(i) for i in range(50)]
    assert len(stored) < 50  # several events per write
    assert ahead <= 4 + 1 and most <= 4


async def test_a_failed_write_surfaces() -> None:
    async def publish(batch: list[AgentEvent]) -> None:
        raise RuntimeError("storage broke")

    box = _Outbox(publish, window=4)
    await box.put(text(0))
    with pytest.raises(RuntimeError, match="storage broke"):
        await box.flush()
