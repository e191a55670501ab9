"""U+0000 in an agent's output is stored and streamed intact by every queue and event log (PostgreSQL's
jsonb refuses it: agentd.adapters.postgres.nul), and never fails the other jobs or events of a batch."""

from __future__ import annotations

import asyncio

from agentd.adapters.postgres.nul import from_jsonb, to_jsonb
from agentd.domain.models import AgentRequest, AgentResult, DoneEvent, TextEvent
from agentd.ports.event_stream import EventStream
from agentd.ports.work_queue import WorkQueue

NASTY = "a\0b \ue000 \ue000\ue001 \\u0000 c\0"


async def test_events_with_nul_are_streamed_intact_and_the_batch_is_unaffected(streams: EventStream) -> None:
    await streams.create("stm_nul", [TextEvent(message_id="m", chunk="first\0")])
    await streams.create("stm_clean")
    await asyncio.gather(  # one write batch for both streams
        streams.publish("stm_nul", [TextEvent(message_id="m", chunk=NASTY, is_complete=True)]),
        streams.publish("stm_clean", [TextEvent(message_id="m", chunk="clean", is_complete=True)]),
    )
    for sid in ("stm_nul", "stm_clean"):
        await streams.close_stream(sid)
    got = [s.event async for s in streams.subscribe("stm_nul")]
    assert [e.chunk for e in got if isinstance(e, TextEvent)] == ["first\0", NASTY]
    clean = [s.event async for s in streams.subscribe("stm_clean")]
    assert [e.chunk for e in clean if isinstance(e, TextEvent)] == ["clean"]


async def test_a_result_with_nul_is_stored_intact_beside_the_others_of_its_batch(queue: WorkQueue) -> None:
    for n in ("1", "2"):
        await queue.enqueue(
            AgentRequest(project_id=f"p{n}", prompt="x"),
            provider="s",
            job_id=f"job_{n}",
            stream_id=f"stm_{n}",
        )
    claimed = await queue.claim_many("w1", 2)
    assert sorted(j.id for j in claimed) == ["job_1", "job_2"]
    dirty = AgentResult(status="failed", result=NASTY, error="broke\0here")
    clean = AgentResult(status="succeeded", result="fine")
    done = await queue.finish_many([("job_1", dirty), ("job_2", clean)], worker_id="w1")
    assert [j.status.value for j in done] == ["failed", "succeeded"]
    stored = await queue.get("p1", "job_1")
    assert stored.result is not None and stored.result.result == NASTY
    assert stored.result.error is not None and stored.result.error.startswith("broke")
    assert (await queue.get("p2", "job_2")).result == clean
    assert DoneEvent.from_result(stored.result).result == NASTY


def test_the_escape_is_exact_both_ways() -> None:
    import json

    for text in (NASTY, "\ue000", "\ue001\0", "\0\ue001", "plain", "\\u0000"):
        doc = json.dumps({"chunk": text, "list": [text, {"k\0": text}]})
        stored = to_jsonb(doc)
        assert not any("\0" in x for x in _strings(json.loads(stored)))  # nothing jsonb refuses
        assert from_jsonb(json.loads(stored)) == json.loads(doc)


def _strings(data: object) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in [k, *_strings(v)]]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return []
