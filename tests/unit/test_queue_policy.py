"""The rules both queues share (agentd/adapters/queue_policy.py)."""

from __future__ import annotations

import asyncio

import pytest

from agentd.adapters.queue_policy import (
    MAX_BACKOFF_S,
    WakeUps,
    backoff_s,
    distinct_ids,
    request_hash,
    retries,
)
from agentd.domain.models import AgentRequest, AgentResult


def test_backoff_doubles_per_attempt_and_is_capped() -> None:
    assert [backoff_s(a, 2.0) for a in (0, 1, 2, 3, 4)] == [2.0, 2.0, 4.0, 8.0, 16.0]
    assert backoff_s(40, 2.0) == MAX_BACKOFF_S


def test_only_a_retryable_failure_with_attempts_left_and_no_cancel_retries() -> None:
    flaky = AgentResult(status="failed", error="rate limited", retryable=True)
    assert retries(flaky, attempts=1, max_attempts=3, cancel_requested=False)
    assert not retries(flaky, attempts=3, max_attempts=3, cancel_requested=False)
    assert not retries(flaky, attempts=1, max_attempts=3, cancel_requested=True)
    assert not retries(AgentResult(status="failed"), attempts=1, max_attempts=3, cancel_requested=False)
    ok = AgentResult(status="succeeded", retryable=True)
    assert not retries(ok, attempts=1, max_attempts=3, cancel_requested=False)


def test_request_hash_tells_requests_apart() -> None:
    a = AgentRequest(project_id="p", prompt="x")
    assert request_hash(a) == request_hash(AgentRequest(project_id="p", prompt="x"))
    assert request_hash(a) != request_hash(AgentRequest(project_id="p", prompt="x", model="m"))


def test_distinct_ids() -> None:
    done = AgentResult(status="succeeded")
    assert distinct_ids([("a", done), ("b", done)]) == ["a", "b"]
    with pytest.raises(ValueError, match="once"):
        distinct_ids([("a", done), ("a", done)])


async def test_a_wake_up_after_claiming_ends_the_next_wait_at_once() -> None:
    wake = WakeUps()
    wake.claiming()
    wake.notify()  # lands between the claim and the wait
    await asyncio.wait_for(asyncio.create_task(wake.wait(30)), 1)
    wake.claiming()  # the next claim has seen that wake-up: its wait waits for the next one
    waiter = asyncio.create_task(wake.wait(30))
    await asyncio.sleep(0)  # one turn: the waiter reaches its wait
    assert not waiter.done()
    wake.notify()
    await asyncio.wait_for(waiter, 1)


async def test_a_wait_times_out() -> None:
    await asyncio.wait_for(WakeUps().wait(0.01), 1)
