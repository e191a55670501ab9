"""The OpenCode event translation, on raw captures of the real server (tests/fixtures/opencode/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.opencode.cli_mode import _as_event
from agentd.adapters.opencode.protocol import RunState, error_code
from agentd.domain.models import (
    AgentEvent,
    ErrorEvent,
    ReasoningEvent,
    StatusEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)
from agentd.sse import SSEDecoder

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "opencode"


def load(case: str) -> list[dict[str, Any]]:
    raw = (FIX / case / "sse_event.raw").read_bytes()
    return [json.loads(e.data) for e in SSEDecoder().feed(raw)]


def messages(case: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads((FIX / case / "message_list.json").read_text())
    return data


def session_of(events: list[dict[str, Any]]) -> str:
    return str(next(e["properties"]["sessionID"] for e in events if e["type"] == "session.created"))


def user_ids(events: list[dict[str, Any]]) -> list[str]:
    ids: list[str] = []
    for e in events:
        info = e["properties"].get("info") or {}
        if e["type"] == "message.updated" and info.get("role") == "user" and info["id"] not in ids:
            ids.append(info["id"])
    return ids


def state_for(case: str, prompt: int = 0) -> tuple[RunState, list[dict[str, Any]]]:
    events = load(case)
    return RunState(session_of(events), user_message_id=user_ids(events)[prompt]), events


def feed(state: RunState, events: list[dict[str, Any]], now_ms: int | None = None) -> list[AgentEvent]:
    out: list[AgentEvent] = []
    for e in events:
        out += state.handle(e, now_ms)
    return out


def texts(out: list[AgentEvent], kind: type = TextEvent) -> dict[tuple[str, int], str]:
    """Concatenated chunks per (message_id, index), checking the streaming contract on the way."""
    acc: dict[tuple[str, int], str] = {}
    closed: set[tuple[str, int]] = set()
    dropped: set[str] = set()
    for ev in out:
        if not isinstance(ev, kind):
            continue
        assert isinstance(ev, TextEvent | ReasoningEvent)
        key = (ev.message_id, ev.index)
        assert ev.message_id not in dropped or ev.abandoned, f"event for abandoned message {ev.message_id}"
        assert key not in closed or ev.abandoned, f"event after the last one of {key}"
        if ev.abandoned:  # may follow a complete part: the whole message is dropped
            assert ev.chunk == "" and ev.is_complete
            dropped.add(ev.message_id)
            acc.pop(key, None)
            continue
        acc[key] = acc.get(key, "") + ev.chunk
        if ev.is_complete:
            closed.add(key)
    assert set(acc) <= closed, "a text part never completed"
    return {k: v for k, v in acc.items() if k[0] not in dropped}


def test_tool_call_then_text() -> None:
    state, events = state_for("sync_tool")
    out = feed(state, events)
    uses = [e for e in out if isinstance(e, ToolUseEvent)]
    results = [e for e in out if isinstance(e, ToolResultEvent)]
    assert [(u.name, u.input["command"]) for u in uses] == [("bash", "echo hello > out.txt")]
    assert [(r.tool_use_id, r.output, r.is_error) for r in results] == [
        (uses[0].tool_use_id, "(no output)", False)
    ]
    assert out.index(uses[0]) < out.index(results[0])
    assert list(texts(out).values()) == ["Done: the file was written."]
    assert state.finished
    res = state.outcome(duration_ms=5)
    assert (res.status, res.result, res.error) == ("succeeded", "Done: the file was written.", None)
    assert (res.usage["input_tokens"], res.usage["output_tokens"], res.usage["num_steps"]) == (220, 26, 2)
    assert res.cost_usd == 0.0


def test_write_tool_and_patch_part() -> None:
    state, events = state_for("async_write")
    out = feed(state, events)
    [use] = [e for e in out if isinstance(e, ToolUseEvent)]
    assert use.name == "write" and use.input["content"] == "hello from write tool\n"
    assert [e.output for e in out if isinstance(e, ToolResultEvent)] == ["Wrote file successfully."]
    assert state.finished and state.outcome(duration_ms=1).status == "succeeded"


def test_reasoning_then_text() -> None:
    state, events = state_for("reasoning")
    out = feed(state, events)
    assert list(texts(out, ReasoningEvent).values()) == ["Let me think about it."]
    [(key, text)] = texts(out).items()
    assert text == "Answer after thinking." and key[1] == 1
    assert state.outcome(duration_ms=1).usage["reasoning_tokens"] == 3


def test_abort_idle_comes_before_the_final_message() -> None:
    state, events = state_for("abort")
    final = next(
        i
        for i, e in enumerate(events)
        if e["type"] == "message.updated" and (e["properties"]["info"].get("error") or {}).get("name")
    )
    first_idle = next(i for i, e in enumerate(events) if e["type"] == "session.idle")
    assert first_idle < final
    out = feed(state, events[:final])
    assert state.idle and not state.finished  # idle alone does not end the run
    out += feed(state, events[final : final + 1])
    assert state.finished
    assert list(texts(out).values()) == ["tick0 tick1 tick2 tick3 tick4 tick5 tick6 tick7 tick8 "]
    assert not [e for e in out if isinstance(e, ErrorEvent)]  # an abort is not an error
    assert state.outcome(duration_ms=1, forced="cancelled", forced_reason="by request").status == "cancelled"
    res = state.outcome(duration_ms=1)
    assert (res.status, res.error) == ("cancelled", "the run was aborted in OpenCode")


def test_only_the_runs_own_prompt_counts() -> None:
    """The abort capture has a second prompt in the same session: each run sees only its own messages."""
    first, events = state_for("abort", 0)
    second = RunState(first.session_id, user_message_id=user_ids(events)[1])
    out1, out2 = feed(first, events), feed(second, events)
    assert list(texts(out1).values()) == ["tick0 tick1 tick2 tick3 tick4 tick5 tick6 tick7 tick8 "]
    assert list(texts(out2).values()) == ["Done: the file was written."]
    assert second.outcome(duration_ms=1).status == "succeeded"


def test_model_400_fails_with_the_providers_message() -> None:
    state, events = state_for("err400")
    out = feed(state, events)
    errors = [e for e in out if isinstance(e, ErrorEvent)]
    assert [(e.code, e.message, e.retryable) for e in errors] == [
        ("model_http_400", "fake bad request: context too long", False)
    ]
    res = state.outcome(duration_ms=1)
    assert (res.status, res.error) == ("failed", "fake bad request: context too long")


def test_500_then_retry_then_success() -> None:
    state, events = state_for("err500")
    retry = next(e for e in events if e["properties"].get("status", {}).get("type") == "retry")
    now = retry["properties"]["status"]["next"] - 2000
    out = feed(state, events, now_ms=now)
    [st] = [e for e in out if isinstance(e, StatusEvent)]
    assert (st.status, st.attempt, st.detail) == ("retrying", 1, "fake internal error")
    assert st.retry_delay_ms == 2000
    assert out.index(st) < out.index(next(e for e in out if isinstance(e, TextEvent)))
    assert list(texts(out).values()) == ["Done: the file was written."]
    assert state.outcome(duration_ms=1).status == "succeeded"


def test_abort_during_retry_wait_ends_without_finish() -> None:
    state, events = state_for("errfail")
    out = feed(state, events)
    assert len([e for e in out if isinstance(e, StatusEvent)]) == 4
    assert state.finished
    assert state.outcome(duration_ms=1, forced="cancelled").status == "cancelled"
    res = state.outcome(duration_ms=1)
    assert (res.status, res.error) == ("failed", "the assistant message ended without a finish reason")


def test_duplicated_idle_and_stale_idle() -> None:
    state, events = state_for("sync_tool")
    idle = next(e for e in events if e["type"] == "session.idle")
    busy = next(e for e in events if e["properties"].get("status") == {"type": "busy"})
    feed(state, [idle])
    assert state.idle and not state.finished
    feed(state, [busy])  # an idle left over from an earlier run is cancelled by the next busy
    assert not state.idle
    out = feed(state, events)
    assert feed(state, [idle, idle, idle]) == []
    assert state.finished and list(texts(out).values()) == ["Done: the file was written."]


def test_final_message_before_idle_waits_for_idle() -> None:
    state, events = state_for("sync_tool")
    feed(state, [e for e in events if e["type"] not in ("session.idle", "session.status")])
    assert state.final_id is not None and not state.finished
    feed(state, [e for e in events if e["type"] == "session.idle"])
    assert state.finished


def _drop_and_reconnect(case: str, cut_after_delta: int, lost: int) -> tuple[RunState, list[AgentEvent]]:
    """Feed a capture, lose `lost` events after the n-th delta, re-read the message list, go on."""
    state, events = state_for(case)
    deltas = [i for i, e in enumerate(events) if e["type"] == "message.part.delta"]
    cut = deltas[cut_after_delta] + 1
    out = feed(state, events[:cut])
    state.stream_reset()
    out += state.apply_messages(messages(case))  # what GET /message says after the reconnect
    out += feed(state, events[cut + lost :])
    return state, out


@pytest.mark.parametrize(("case", "cut", "lost"), [("sync_tool", 1, 2), ("sync_tool", 0, 5), ("abort", 3, 4)])
def test_reconnect_loses_no_text_and_duplicates_none(case: str, cut: int, lost: int) -> None:
    state, out = _drop_and_reconnect(case, cut, lost)
    final = [
        p["text"]
        for m in messages(case)
        if m["info"]["role"] == "assistant"
        for p in m["parts"]
        if p["type"] == "text"
    ]
    assert list(texts(out).values()) == final[-1:] if case == "sync_tool" else final[:1]
    assert state.finished


def test_message_list_alone_gives_the_whole_run() -> None:
    """The stream dropped before anything arrived: the stored list gives everything, once."""
    events = load("sync_tool")
    state = RunState(session_of(events), user_message_id=user_ids(events)[0])
    out = state.apply_messages(messages("sync_tool"))
    assert state.apply_messages(messages("sync_tool")) == []  # idempotent
    state.apply_status({})
    assert state.finished
    assert [type(e).__name__ for e in out] == ["ToolUseEvent", "ToolResultEvent", "TextEvent"]
    assert list(texts(out).values()) == ["Done: the file was written."]


def _ev(etype: str, **props: Any) -> dict[str, Any]:
    return {"type": etype, "properties": {"sessionID": "ses_1", **props}}


def _part(pid: str, text: str, end: bool = False, mid: str = "msg_a") -> dict[str, Any]:
    time = {"start": 1, "end": 2} if end else {"start": 1}
    return _ev(
        "message.part.updated",
        part={"id": pid, "messageID": mid, "sessionID": "ses_1", "type": "text", "text": text, "time": time},
    )


def _delta(pid: str, d: str, mid: str = "msg_a") -> dict[str, Any]:
    return _ev("message.part.delta", messageID=mid, partID=pid, field="text", delta=d)


ASSISTANT = _ev(
    "message.updated", info={"id": "msg_a", "role": "assistant", "parentID": "msg_u", "sessionID": "ses_1"}
)


def test_final_text_contradicting_the_deltas_is_resent() -> None:
    state = RunState("ses_1", user_message_id="msg_u")
    out = feed(
        state, [ASSISTANT, _part("p1", ""), _delta("p1", "Hello wrld"), _part("p1", "Hello world", True)]
    )
    assert [(e.message_id, e.chunk, e.is_complete, e.abandoned) for e in out if isinstance(e, TextEvent)] == [
        ("msg_a", "Hello wrld", False, False),
        ("msg_a", "", True, True),
        ("msg_a~r1", "Hello world", True, False),
    ]
    assert list(texts(out).values()) == ["Hello world"]


def test_retry_abandons_the_streamed_attempt() -> None:
    state = RunState("ses_1", user_message_id="msg_u")
    retry = _ev("session.status", status={"type": "retry", "attempt": 1, "message": "boom", "next": 5})
    first = [ASSISTANT, _part("p1", ""), _delta("p1", "partial "), retry]
    end = _part("p2", "partial done", True)
    second = [_part("p2", ""), _delta("p2", "partial "), _delta("p2", "done"), end]
    out = feed(state, first + second)
    assert list(texts(out).values()) == ["partial done"]
    assert [e.message_id for e in out if isinstance(e, TextEvent) and e.abandoned] == ["msg_a"]


def test_parts_before_their_message_are_kept_until_it_is_known() -> None:
    state = RunState("ses_1", user_message_id="msg_u")
    out = feed(state, [_part("p1", ""), _delta("p1", "hi"), ASSISTANT, _part("p1", "hi", True)])
    assert list(texts(out).values()) == ["hi"]
    other = _ev("message.updated", info={"id": "msg_b", "role": "assistant", "parentID": "msg_0"})
    assert feed(state, [_part("p9", "", mid="msg_b"), other, _part("p9", "x", True, mid="msg_b")]) == []


def test_other_sessions_and_requests() -> None:
    state = RunState("ses_1", user_message_id="msg_u")
    assert state.handle({"type": "session.idle", "properties": {"sessionID": "ses_2"}}) == []
    assert not state.idle and state.relevant == 0
    feed(state, [_ev("permission.asked", id="per_1", permission="bash", patterns=["rm -rf x"])])
    assert state.requests[0]["kind"] == "permission" and state.requests[0]["id"] == "per_1"


def test_error_codes() -> None:
    assert error_code({"name": "APIError", "data": {"statusCode": 429}}) == "model_http_429"
    assert error_code({"name": "APIError", "data": {}}) == "model_api_error"
    assert error_code({"name": "UnknownError"}) == "opencode_error"
    assert error_code({"name": "ContextOverflowError"}) == "opencode_context_overflow_error"


def test_cli_json_lines() -> None:
    """`opencode run --format json` lines, translated through the same state as server events."""
    out: list[AgentEvent] = []
    state: RunState | None = None
    for line in (FIX / "cli_tool_bash.jsonl").read_text().splitlines():
        obj = json.loads(line)
        state = state or RunState(obj["sessionID"])
        out += state.handle(_as_event(obj))
    assert [type(e).__name__ for e in out] == ["ToolUseEvent", "ToolResultEvent", "TextEvent"]
    assert list(texts(out).values()) == ["Done: the file was written."]
    obj = json.loads((FIX / "cli_error400.jsonl").read_text().splitlines()[0])
    [err] = RunState(obj["sessionID"]).handle(_as_event(obj))
    assert isinstance(err, ErrorEvent) and err.message == "fake bad request: context too long"


def test_an_error_before_the_prompt_shows_up() -> None:
    """A late error of an earlier run is not ours; an error and nothing else (unknown agent) is."""
    err = _ev("session.error", error={"name": "UnknownError", "data": {"message": "Agent not found: x"}})
    state = RunState("ses_1", user_message_id="msg_u")
    assert feed(state, [err]) == [] and state.failed
    [ev] = state.close_open()
    assert isinstance(ev, ErrorEvent) and ev.message == "Agent not found: x"
    assert state.outcome(duration_ms=1).error == "Agent not found: x"

    state = RunState("ses_1", user_message_id="msg_u")
    user = _ev("message.updated", info={"id": "msg_u", "role": "user", "sessionID": "ses_1"})
    feed(state, [err, user, ASSISTANT, _part("p1", "ok", True)])
    assert not state.failed and state.close_open() == []


def test_prompts_queued_while_busy_are_answered_together() -> None:
    """Seen with the real server: prompts sent while the session is busy get ONE answer, whose parentID
    is the latest of them. The earlier queued prompt takes that answer; a finished run takes nothing."""

    def answer(mid: str, parent: str, text: str) -> list[dict[str, Any]]:
        info = {"id": mid, "role": "assistant", "parentID": parent, "sessionID": "ses_1", "finish": "stop"}
        done = {**info, "time": {"created": 1, "completed": 2}}
        return [
            _ev("message.updated", info=info),
            _part(f"p_{mid}", text, True, mid=mid),
            _ev("message.updated", info=done),
        ]

    events = answer("msg_b", "msg_1", "first") + answer("msg_d", "msg_3", "merged") + [_ev("session.idle")]
    runs = {u: RunState("ses_1", user_message_id=u) for u in ("msg_1", "msg_2", "msg_3")}
    results = {u: (list(texts(feed(s, events)).values()), s.finished) for u, s in runs.items()}
    assert results == {
        "msg_1": (["first"], True),
        "msg_2": (["merged"], True),
        "msg_3": (["merged"], True),
    }


def test_a_removed_part_takes_its_text_back() -> None:
    state = RunState("ses_1", user_message_id="msg_u")
    removed = _ev("message.part.removed", messageID="msg_a", partID="p1")
    out = feed(state, [ASSISTANT, _part("p1", "draft", True), _part("p2", "kept", True), removed])
    assert texts(out) == {("msg_a~r1", 1): "kept"}
    assert state.result_text() == "kept"
