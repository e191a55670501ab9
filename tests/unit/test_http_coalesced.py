"""Concurrent "may a request without a key pass?" checks share one: never an answer older than the caller."""

from __future__ import annotations

import asyncio

import pytest

from agentd.adapters.http.app import _Coalesced
from agentd.domain import errors


async def test_a_burst_of_callers_costs_at_most_two_checks_and_no_answer_predates_its_caller() -> None:
    calls: list[int] = []
    keys_exist = False
    gate, started = asyncio.Event(), asyncio.Event()

    async def check() -> str:
        calls.append(len(calls))
        started.set()
        seen = keys_exist  # what the store says when the check starts
        await gate.wait()
        if seen:
            raise errors.Unauthorized("this server needs an X-API-Key header")
        return "anonymous"

    shared = _Coalesced(check)
    first = asyncio.create_task(shared())
    await started.wait()  # the first check has started
    keys_exist = True  # a key is made while the first check runs: later callers must see it
    later = [asyncio.create_task(shared()) for _ in range(100)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == "anonymous"
    results = await asyncio.gather(*later, return_exceptions=True)
    assert all(isinstance(r, errors.Unauthorized) for r in results)
    assert len(calls) == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    gate = asyncio.Event()

    async def check() -> str:
        await gate.wait()
        return "anonymous"

    shared = _Coalesced(check)
    one, two = asyncio.create_task(shared()), asyncio.create_task(shared())
    await asyncio.sleep(0)
    one.cancel()
    gate.set()
    assert await two == "anonymous"
    with pytest.raises(asyncio.CancelledError):
        await one
