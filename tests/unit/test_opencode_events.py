"""The OpenCode event mapping, on agentd streams recorded from real Claude Code runs
(tests/fixtures/agentd_streams) and checked against events of the real OpenCode server 1.18.33
(tests/fixtures/opencode/event_samples.json)."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.http.opencode_events import SessionMapper, server_connected, session_id_for
from agentd.domain.models import (
    AgentRequest,
    DoneEvent,
    Job,
    JobStatus,
    StatusEvent,
    StoredEvent,
    TextEvent,
    ToolUseEvent,
    event_from_data,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
STREAMS = FIXTURES / "agentd_streams"


def load(name: str) -> tuple[Job, list[StoredEvent]]:
    lines = [json.loads(x) for x in (STREAMS / f"{name}.jsonl").read_text().splitlines()]
    meta = lines[0]["job"]
    job = Job(
        id=meta["job_id"],
        project_id=meta["project_id"],
        provider=meta["provider"],
        stream_id="stm_" + meta["job_id"].removeprefix("job_"),
        request=AgentRequest(project_id=meta["project_id"], prompt=meta["prompt"]),
        status=JobStatus.queued,
        created_at=datetime.fromisoformat(meta["created_at"]),
    )
    events = [StoredEvent(seq=x["seq"], event=event_from_data(x["event"], x["data"])) for x in lines[1:]]
    return job, events


def clock() -> Any:
    ticks = itertools.count(1_795_000_000_000, 7)
    return lambda: next(ticks)


def run(name: str) -> tuple[Job, list[dict[str, Any]]]:
    job, events = load(name)
    mapper = SessionMapper(job, clock=clock())
    return job, [oc for stored in events for oc in mapper.feed(stored)]


def of(events: list[dict[str, Any]], etype: str, **part: Any) -> list[dict[str, Any]]:
    """Events of a type; for message.part.updated, those whose part has the given fields."""
    out = [e for e in events if e["type"] == etype]
    return [e for e in out if all(e["properties"]["part"].get(k) == v for k, v in part.items())]


def part_text(events: list[dict[str, Any]], ptype: str) -> dict[str, tuple[str, str]]:
    """Per part id: (the deltas joined, the text of the last snapshot)."""
    deltas: dict[str, str] = {}
    last: dict[str, str] = {}
    for e in of(events, "message.part.updated", type=ptype):
        pid = e["properties"]["part"]["id"]
        deltas[pid] = deltas.get(pid, "") + e["properties"].get("delta", "")
        last[pid] = e["properties"]["part"]["text"]
    return {pid: (deltas[pid], last[pid]) for pid in deltas}


@pytest.mark.parametrize("name", ["tool_bash", "thinking", "error400", "slow_cancelled"])
def test_every_event_is_well_formed(name: str) -> None:
    job, events = run(name)
    ids = [e["id"] for e in events]
    assert all(i.startswith("evt_") for i in ids) and len(set(ids)) == len(ids)
    assert ids == sorted(ids)  # creation order, as OpenCode's own ids
    sid = session_id_for(job.id)
    assert sid.startswith("ses_")
    assert all(e["properties"]["sessionID"] == sid for e in events)
    for e in events:
        assert set(e) == {"id", "type", "properties"}
        part = e["properties"].get("part")
        if part is not None:
            assert part["sessionID"] == sid and part["id"].startswith("prt_")
            assert part["messageID"].startswith("msg_")
    types = [e["type"] for e in events]
    assert types[:4] == ["session.created", "session.updated", "message.updated", "message.part.updated"]
    assert types[-3:] == ["session.status", "session.idle", "session.updated"]
    assert events[-3]["properties"]["status"] == {"type": "idle"}
    assert types.count("session.idle") == 1
    busy = [e for e in of(events, "session.status") if e["properties"]["status"]["type"] == "busy"]
    assert len(busy) == 1  # the worker and the CLI both said "running"
    assert types.index("session.status") < types.index("session.idle")
    user = events[2]["properties"]["info"]
    assert user["role"] == "user" and user["model"]["providerID"] == "claude-code"
    assert events[3]["properties"]["part"] == {
        "id": events[3]["properties"]["part"]["id"],
        "sessionID": sid,
        "messageID": user["id"],
        "type": "text",
        "text": job.request.prompt,
    }
    # Ids sort in creation order: the user message before the assistant message.
    msgs = [e["properties"]["info"]["id"] for e in of(events, "message.updated")]
    assert msgs[0] == user["id"] and all(m > user["id"] for m in msgs[1:])


def test_tool_call_then_text() -> None:
    _, events = run("tool_bash")
    texts = part_text(events, "text")
    prompt_part = events[3]["properties"]["part"]["id"]
    answer = {pid: v for pid, v in texts.items() if pid != prompt_part}
    assert list(answer.values()) == [
        ("I'll create the file.", "I'll create the file."),
        ("Done: created out.txt.", "Done: created out.txt."),
    ]
    # Every chunk is its own event, its delta the chunk, its part the text so far.
    first = [e for e in of(events, "message.part.updated", type="text") if "delta" in e["properties"]]
    assert [e["properties"]["delta"] for e in first[:4]] == ["I'll", " create", " the", " file."]
    assert first[1]["properties"]["part"]["text"] == "I'll create"
    assert "end" not in first[0]["properties"]["part"]["time"]
    final = [
        e
        for e in of(events, "message.part.updated", type="text")
        if "end" in e["properties"]["part"].get("time", {})
    ]
    assert [e["properties"]["part"]["text"] for e in final] == [
        "I'll create the file.",
        "Done: created out.txt.",
    ]

    tool = of(events, "message.part.updated", type="tool")
    assert [e["properties"]["part"]["state"]["status"] for e in tool] == ["pending", "running", "completed"]
    assert len({e["properties"]["part"]["id"] for e in tool}) == 1
    cmd = {"command": "echo hello > out.txt", "description": "Write hello"}
    for e in tool:
        assert e["properties"]["part"]["tool"] == "Bash"
        assert e["properties"]["part"]["callID"].startswith("toolu_")
        assert e["properties"]["part"]["state"]["input"] == cmd
    pending, running, done = (e["properties"]["part"]["state"] for e in tool)
    assert json.loads(pending["raw"]) == cmd
    assert running["title"] == "Write hello" and "start" in running["time"]
    assert done["output"] == "(Bash completed with no output)"
    assert done["time"]["end"] >= done["time"]["start"] == running["time"]["start"]
    # The tool sits between the two texts, in one assistant message.
    order = [
        (e["properties"]["part"]["type"], e["properties"]["part"].get("text", ""))
        for e in of(events, "message.part.updated")
    ]
    kinds = [k for k, _ in order]
    assert kinds.index("step-start") < kinds.index("tool") < kinds.index("step-finish")
    assert order.index(("tool", "")) > order.index(("text", "I'll create the file."))
    assert order.index(("tool", "")) < order.index(("text", "Done:"))
    assistant = [e["properties"]["info"] for e in of(events, "message.updated")][1:]
    assert len({m["id"] for m in assistant}) == 1
    assert all(
        m["role"] == "assistant" and m["parentID"] == events[2]["properties"]["info"]["id"] for m in assistant
    )
    assert "completed" not in assistant[0]["time"]
    last = assistant[-1]
    _, raw = load("tool_bash")
    done_ev = raw[-1].event
    assert isinstance(done_ev, DoneEvent)
    assert (
        last["finish"] == "stop"
        and "error" not in last
        and last["time"]["completed"] > last["time"]["created"]
    )
    assert last["cost"] == done_ev.cost_usd and last["tokens"]["output"] == done_ev.usage["output_tokens"]
    assert last["modelID"] == "claude-opus-5-5"  # from the session event
    step = of(events, "message.part.updated", type="step-finish")[0]["properties"]["part"]
    assert step["reason"] == "stop" and step["cost"] == done_ev.cost_usd
    assert not of(events, "session.error")
    totals = events[-1]["properties"]["info"]
    assert totals["cost"] == done_ev.cost_usd and totals["title"] == "SCENARIO:tool_bash please"


def test_reasoning_is_its_own_part() -> None:
    _, events = run("thinking")
    reasoning = part_text(events, "reasoning")
    assert list(reasoning.values()) == [("Let me think about this.", "Let me think about this.")]
    texts = [v for v in part_text(events, "text").values() if v[0]]
    assert texts == [("After thinking: 42.", "After thinking: 42.")]
    kinds = [e["properties"]["part"]["type"] for e in of(events, "message.part.updated")]
    assert kinds.index("reasoning") < kinds.index("text", 1)


def test_failed_run_reports_one_error() -> None:
    _, events = run("error400")
    (err,) = of(events, "session.error")
    assert err["properties"]["error"]["name"] == "UnknownError"
    assert "400" in err["properties"]["error"]["data"]["message"]
    last = [e["properties"]["info"] for e in of(events, "message.updated")][-1]
    assert last["error"] == err["properties"]["error"] and "finish" not in last
    types = [e["type"] for e in events]
    assert types.index("message.updated", 3) < types.index("session.error") < types.index("session.idle")


def test_cancelled_run_is_an_abort() -> None:
    _, events = run("slow_cancelled")
    (err,) = of(events, "session.error")
    assert err["properties"]["error"] == {
        "name": "MessageAbortedError",
        "data": {"message": "cancelled by request"},
    }
    answer = [v for v in part_text(events, "text").values() if v[0].startswith("tick")]
    assert answer == [("tick 0 tick 1 tick 2 tick 3 tick 4 ", "tick 0 tick 1 tick 2 tick 3 tick 4 ")]
    assert (
        of(events, "message.part.updated", type="step-finish")[0]["properties"]["part"]["reason"]
        == "cancelled"
    )


def test_replay_gives_the_same_events() -> None:
    """A job followed again from its first event maps to the same events (same ids): clients dedupe."""
    assert run("tool_bash") == run("tool_bash")


def _job(prompt: str = "hi") -> Job:
    return Job(
        id="job_0123456789abcdef01234567",
        project_id="demo",
        provider="scripted",
        stream_id="stm_0123456789abcdef01234567",
        request=AgentRequest(project_id="demo", prompt=prompt),
        status=JobStatus.queued,
        created_at=datetime.fromisoformat("2026-12-01T00:00:00+00:00"),
    )


def _feed(events: list[Any]) -> list[dict[str, Any]]:
    mapper = SessionMapper(_job(), clock=clock())
    return [oc for i, ev in enumerate(events, 1) for oc in mapper.feed(StoredEvent(seq=i, event=ev))]


def test_abandoned_text_is_removed_and_open_parts_are_closed() -> None:
    events = _feed(
        [
            StatusEvent(status="queued"),
            TextEvent(message_id="m1", chunk="This answer will"),
            TextEvent(message_id="m1", chunk="", abandoned=True),
            TextEvent(message_id="m2", chunk="Recovered"),
            ToolUseEvent(tool_use_id="t1", name="Bash", input={"command": "sleep 9"}),
            DoneEvent(status="timed_out", error="timed out after 5 s"),
        ]
    )
    (removed,) = of(events, "message.part.removed")
    m1 = of(events, "message.part.updated", type="text", text="This answer will")[0]["properties"]["part"]
    assert (
        removed["properties"]["partID"] == m1["id"] and removed["properties"]["messageID"] == m1["messageID"]
    )
    # At the end the still-open text part gets its end time, the unanswered tool an error state.
    m2 = of(events, "message.part.updated", type="text", text="Recovered")
    assert "end" in m2[-1]["properties"]["part"]["time"] and "delta" not in m2[-1]["properties"]
    tool = of(events, "message.part.updated", type="tool")
    assert [e["properties"]["part"]["state"]["status"] for e in tool] == ["pending", "running", "error"]
    (err,) = of(events, "session.error")
    assert err["properties"]["error"]["name"] == "UnknownError"
    assert err["properties"]["error"]["data"]["message"] == "timed out after 5 s"


def test_a_job_cancelled_while_queued_still_ends_its_session() -> None:
    events = _feed(
        [StatusEvent(status="queued"), DoneEvent(status="cancelled", error="cancelled while queued")]
    )
    types = [e["type"] for e in events]
    assert "message.updated" in types[4:] and types[-2] == "session.idle"
    assert of(events, "session.error")[0]["properties"]["error"]["name"] == "MessageAbortedError"


def test_retry_wait_is_a_retry_status() -> None:
    events = _feed(
        [
            StatusEvent(status="queued"),
            StatusEvent(status="running"),
            StatusEvent(status="retrying", detail="overloaded", attempt=1, retry_delay_ms=2000),
            StatusEvent(status="running"),
        ]
    )
    statuses = [e["properties"]["status"] for e in of(events, "session.status")]
    assert [s["type"] for s in statuses] == ["busy", "retry", "busy"]
    assert statuses[1]["attempt"] == 1 and statuses[1]["message"] == "overloaded" and statuses[1]["next"] > 0


# --- the shapes of the real OpenCode server ---------------------------------------------------------------

OPTIONAL = {"snapshot", "variant", "total", "responseHeaders", "responseBody", "statusCode", "isRetryable"}


def _paths(obj: Any, prefix: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in OPTIONAL:
                continue
            out.add(prefix + k)
            if k not in ("input", "metadata", "diff"):
                out |= _paths(v, f"{prefix}{k}.")
    return out


def _kind(e: dict[str, Any]) -> str:
    p = e["properties"]
    if e["type"] == "message.part.updated":
        part = p["part"]
        if part["type"] == "tool":
            return f"message.part.updated [part.type=tool, state.status={part['state']['status']}]"
        if part["type"] == "text":
            return "message.part.updated [part.type=text, user]" if part["messageID"].endswith("0001") else ""
        return f"message.part.updated [part.type={part['type']}]"
    if e["type"] == "message.updated":
        info = p["info"]
        if info["role"] == "user":
            return "message.updated [role=user]"
        if "error" in info:
            return f"message.updated [role=assistant, error={info['error']['name']}]"
        state = "completed" if "completed" in info["time"] else "in-progress"
        return f"message.updated [role=assistant, {state}]"
    if e["type"] == "session.status":
        return f"session.status [{p['status']['type']}]"
    if e["type"] == "session.error":
        return f"session.error [{p['error']['name']}]"
    return str(e["type"])


def test_fields_match_the_real_opencode_server() -> None:
    samples = json.loads((FIXTURES / "opencode" / "event_samples.json").read_text())["samples"]
    ours = [server_connected()]
    for name in ("tool_bash", "thinking", "error400", "slow_cancelled"):
        ours += run(name)[1]
    checked = set()
    for e in ours:
        kind = _kind(e)
        sample = samples.get(kind)
        if sample is None:
            continue
        real = sample["event"]
        assert set(real) == set(e), kind
        missing = _paths(real["properties"]) - _paths(e["properties"])
        assert not missing, f"{kind}: the real server sends {sorted(missing)}"
        checked.add(kind)
    assert {
        "server.connected",
        "session.created",
        "session.updated",
        "message.updated [role=user]",
        "message.part.updated [part.type=text, user]",
        "session.status [busy]",
        "session.status [idle]",
        "session.idle",
        "message.updated [role=assistant, in-progress]",
        "message.updated [role=assistant, completed]",
        "message.updated [role=assistant, error=MessageAbortedError]",
        "message.part.updated [part.type=step-start]",
        "message.part.updated [part.type=step-finish]",
        "message.part.updated [part.type=reasoning]",
        "message.part.updated [part.type=tool, state.status=pending]",
        "message.part.updated [part.type=tool, state.status=running]",
        "message.part.updated [part.type=tool, state.status=completed]",
        "session.error [MessageAbortedError]",
        "session.error [UnknownError]",
    } <= checked
