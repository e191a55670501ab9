"""The Codex protocol translation (agentd/adapters/codex/protocol.py) on recorded CLI output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.codex import home, protocol
from agentd.adapters.codex.protocol import TurnState
from agentd.domain.models import (
    AgentEvent,
    ErrorEvent,
    OutputEvent,
    ReasoningEvent,
    SessionEvent,
    StatusEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)
from tests.support import fake_responses as fr

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "codex"


def exec_events(case: str, state: TurnState | None = None) -> tuple[TurnState, list[AgentEvent]]:
    state = state or TurnState(mode="exec")
    out: list[AgentEvent] = []
    for line in (FIXTURES / "exec" / f"{case}.jsonl").read_text().splitlines():
        out.extend(protocol.exec_line(state, line))
    out.extend(protocol.unfinished(state))
    return state, out


def app_messages(case: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (FIXTURES / "app_server" / f"{case}.jsonl").read_text().splitlines()]


def app_events(case: str, state: TurnState | None = None) -> tuple[TurnState, list[AgentEvent]]:
    """Feed the server's notifications as the adapter does: the thread and turn ids come from the
    responses to thread/start|resume and turn/start."""
    state = state or TurnState(mode="app-server")
    out: list[AgentEvent] = []
    for rec in app_messages(case):
        msg = rec["msg"]
        if rec["dir"] != "<-":
            continue
        result = msg.get("result")
        if "id" in msg and isinstance(result, dict):
            if "thread" in result:
                out.extend(protocol.session(state, result["thread"]["id"]))
            if "turn" in result:
                state.turn_id = result["turn"]["id"]
        elif "method" in msg and "id" not in msg:
            out.extend(protocol.app_notification(state, msg))
    out.extend(protocol.unfinished(state))
    return state, out


def texts(events: list[AgentEvent]) -> dict[str, str]:
    out: dict[str, str] = {}
    dropped = set()
    for e in events:
        if isinstance(e, TextEvent):
            out[e.message_id] = out.get(e.message_id, "") + e.chunk
            if e.abandoned:
                dropped.add(e.message_id)
    return {k: v for k, v in out.items() if k not in dropped}


def result(state: TurnState, exit_code: int | None = 0, **kw: Any) -> Any:
    return protocol.outcome(state, exit_code=exit_code, duration_ms=5, **kw)


# --- exec ---------------------------------------------------------------------------------------------


def test_exec_text() -> None:
    state, events = exec_events("text")
    assert isinstance(events[0], SessionEvent) and events[0].session_id == state.thread_id
    reasoning = [e for e in events if isinstance(e, ReasoningEvent)]
    assert [(r.chunk, r.is_complete) for r in reasoning] == [(fr.REASONING_TEXT, True)]
    text = [e for e in events if isinstance(e, TextEvent)]
    # No deltas in exec: each message is one complete chunk.
    assert [(t.chunk, t.is_complete, t.index) for t in text] == [(fr.TEXT_ANSWER, True, 0)]
    r = result(state)
    assert r.status == "succeeded" and r.result == fr.TEXT_ANSWER and r.session_id == state.thread_id
    assert r.usage == {
        "input_tokens": 100,
        "cached_input_tokens": 10,
        "cache_write_input_tokens": 0,
        "output_tokens": 20,
        "reasoning_output_tokens": 5,
        "total_tokens": 120,
    }


def test_exec_tool_then_text() -> None:
    state, events = exec_events("tool")
    kinds = [e.event for e in events]
    assert kinds == ["session", "tool_use", "tool_result", "text"]
    use, res = events[1], events[2]
    assert isinstance(use, ToolUseEvent) and isinstance(res, ToolResultEvent)
    assert use.name == "command_execution" and fr.TOOL_COMMAND in str(use.input["command"])
    assert res.tool_use_id == use.tool_use_id and res.output == "tool-ran\n" and not res.is_error
    r = result(state)
    assert r.status == "succeeded" and r.result == fr.TOOL_ANSWER
    assert r.usage["input_tokens"] == 200  # two model requests in this turn


def test_exec_error400_is_failed_with_the_providers_message() -> None:
    state, events = exec_events("error400")
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and errors[0].message == f"{fr.ERROR400_MESSAGE} (invalid_value)"
    r = result(state, 1)
    assert r.status == "failed" and r.exit_code == 1 and r.error == f"{fr.ERROR400_MESSAGE} (invalid_value)"


def test_exec_error500_after_retries_is_failed() -> None:
    state, events = exec_events("error500")
    r = result(state, 1)
    assert r.status == "failed" and "high demand" in str(r.error)
    assert any(isinstance(e, ErrorEvent) for e in events)


def test_exec_error500_once_recovers() -> None:
    state, events = exec_events("error500_once")
    assert not any(isinstance(e, ErrorEvent) for e in events)
    assert result(state).status == "succeeded"


def test_exec_bad_model() -> None:
    state, events = exec_events("bad_model")
    warn = [e for e in events if isinstance(e, ErrorEvent) and e.code == "codex_warning"]
    assert warn and "Model metadata" in warn[0].message
    r = result(state, 1)
    assert r.status == "failed" and r.error == fr.bad_model_message(fr.BAD_MODEL)


def test_exec_resume_reports_the_turns_own_usage() -> None:
    first, _ = exec_events("remember")
    state = TurnState(mode="exec", baseline=dict(first.total))
    state, _ = exec_events("resume_recall", state)
    assert state.thread_id == first.thread_id
    r = result(state)
    assert r.result == "You said banana." and r.session_id == first.thread_id
    assert r.usage["input_tokens"] == 100 and r.usage["output_tokens"] == 20  # not the thread's 200/40


def test_exec_resume_unknown_thread_fails_with_stderr() -> None:
    state, events = exec_events("resume_unknown")
    assert events == []
    r = result(state, 1, stderr_tail="Error: thread/resume: thread/resume failed: no rollout found")
    assert r.status == "failed" and "no rollout found" in str(r.error)


def test_exec_cancelled_run() -> None:
    state, events = exec_events("slow_cancel")
    assert [e.event for e in events] == ["session"]
    r = result(state, 1, forced="cancelled", forced_reason="cancelled by request")
    assert r.status == "cancelled" and r.error == "cancelled by request"
    # Without agentd's own stop, the same output is a failure, not a success.
    assert result(state, 1).status == "failed"


def test_exec_cancel_during_tool_leaves_the_tool_started() -> None:
    _, events = exec_events("sleep_tool_cancel")
    assert [e.event for e in events] == ["session", "tool_use"]
    assert fr.SLEEP_COMMAND in str(events[1].input["command"])  # type: ignore[union-attr]


def test_exec_unknown_lines_are_kept_as_output() -> None:
    state = TurnState()
    weird = json.dumps({"type": "item.completed", "item": {"id": "item_9", "type": "user_message"}})
    assert protocol.exec_line(state, "not json") == [OutputEvent(type="stdout", content="not json")]
    assert protocol.exec_line(state, '{"type":"brand.new"}')[0].event == "output"
    assert protocol.exec_line(state, weird)[0].event == "output"
    todo = {"type": "item.completed", "item": {"id": "item_3", "type": "todo_list", "items": [{"text": "a"}]}}
    evs = protocol.exec_line(state, json.dumps(todo))
    assert [e.event for e in evs] == ["tool_use", "tool_result"]
    assert evs[0].name == "todo_list" and evs[0].input == {"items": [{"text": "a"}]}  # type: ignore[union-attr]


# --- app-server ---------------------------------------------------------------------------------------


def test_app_text_streams_deltas() -> None:
    state, events = app_events("text")
    assert isinstance(events[0], SessionEvent)
    text = [e for e in events if isinstance(e, TextEvent)]
    assert [t.chunk for t in text] == [*fr.TEXT_CHUNKS, ""]
    assert [t.is_complete for t in text] == [False] * len(fr.TEXT_CHUNKS) + [True]
    assert len({t.message_id for t in text}) == 1
    reasoning = [e for e in events if isinstance(e, ReasoningEvent)]
    assert "".join(r.chunk for r in reasoning) == fr.REASONING_TEXT and reasoning[-1].is_complete
    r = result(state, None)
    assert r.status == "succeeded" and r.result == fr.TEXT_ANSWER
    assert r.usage["input_tokens"] == 100 and r.usage["output_tokens"] == 20


def test_app_tool_then_text() -> None:
    state, events = app_events("tool")
    kinds = [e.event for e in events if e.event != "text"]
    assert kinds == ["session", "tool_use", "tool_result"]
    use = next(e for e in events if isinstance(e, ToolUseEvent))
    res = next(e for e in events if isinstance(e, ToolResultEvent))
    assert use.name == "command_execution" and fr.TOOL_COMMAND in str(use.input["command"])
    assert use.input["cwd"] and res.tool_use_id == use.tool_use_id and res.output == "tool-ran\n"
    assert list(texts(events).values()) == [fr.TOOL_ANSWER]
    r = result(state, None)
    assert r.status == "succeeded" and r.usage["input_tokens"] == 200


def test_app_error400() -> None:
    state, events = app_events("error400")
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and fr.ERROR400_MESSAGE in errors[0].message
    r = result(state, None)
    assert r.status == "failed" and r.error is not None and r.error.startswith(fr.ERROR400_MESSAGE)
    assert not r.retryable


def test_app_error500_after_retries_is_retryable_failure() -> None:
    state, _ = app_events("error500")
    r = result(state, None)
    assert r.status == "failed" and "internalServerError" in str(r.error) and r.retryable


def test_app_resume_usage_is_the_turns_own() -> None:
    state, events = app_events("resume_recall")
    assert list(texts(events).values()) == ["You said banana."]
    r = result(state, None)
    assert r.usage["input_tokens"] == 100 and r.usage["total_tokens"] == 120


def test_app_interrupt_keeps_the_partial_text() -> None:
    state, events = app_events("slow_cancel")
    text = [e for e in events if isinstance(e, TextEvent)]
    partial = "".join(t.chunk for t in text)
    assert partial and fr.slow_text(300).startswith(partial)
    assert text[-1].is_complete and text[-1].chunk == ""
    assert state.status == "interrupted"
    r = result(state, None, forced="cancelled", forced_reason="cancelled by request")
    assert r.status == "cancelled" and r.result == partial
    assert result(state, None).status == "cancelled"  # interrupted by someone else: still cancelled


def test_app_interrupt_during_tool() -> None:
    state, events = app_events("sleep_tool_cancel")
    assert [e.event for e in events] == ["session", "tool_use"]
    assert state.status == "interrupted"


def test_app_retry_notice_and_unknown_notifications() -> None:
    state = TurnState(mode="app-server", turn_id="t1")
    retry = {
        "method": "error",
        "params": {"turnId": "t1", "willRetry": True, "error": {"message": "Reconnecting 1/5"}},
    }
    ev = protocol.app_notification(state, retry)
    assert ev == [StatusEvent(status="retrying", detail="Reconnecting 1/5")] and state.error is None
    other = {
        "method": "item/completed",
        "params": {"turnId": "t0", "item": {"type": "agentMessage", "id": "x", "text": "old"}},
    }
    assert protocol.app_notification(state, other) == []  # another turn's item
    warn = {"method": "warning", "params": {"threadId": "x", "message": "Model metadata for `m` not found."}}
    assert protocol.app_notification(state, warn) == [
        ErrorEvent(code="codex_warning", message="Model metadata for `m` not found.")
    ]
    new = {"method": "brand/new", "params": {"turnId": "t1"}}
    assert protocol.app_notification(state, new)[0].event == "output"
    odd = {
        "method": "item/completed",
        "params": {"turnId": "t1", "item": {"type": "webSearch", "id": "w", "query": "q"}},
    }
    evs = protocol.app_notification(state, odd)
    assert [e.event for e in evs] == ["tool_use", "tool_result"] and evs[0].name == "web_search"  # type: ignore[union-attr]


def test_deltas_that_disagree_with_the_final_text_are_replaced() -> None:
    state = TurnState(mode="app-server", turn_id="t")
    n = {"method": "item/agentMessage/delta", "params": {"turnId": "t", "itemId": "m", "delta": "Helo"}}
    c = {
        "method": "item/completed",
        "params": {"turnId": "t", "item": {"type": "agentMessage", "id": "m", "text": "Hello"}},
    }
    events = protocol.app_notification(state, n) + protocol.app_notification(state, c)
    assert texts(events) == {"m~r1": "Hello"}


# --- helpers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ('{"error": {"message": "bad", "code": "x"}}', "bad (x)"),
        ('{"error": {"message": "bad"}}', "bad"),
        ("plain text", "plain text"),
        ("{not json", "{not json"),
    ],
)
def test_provider_message(raw: str, want: str) -> None:
    assert protocol.provider_message(raw) == want


def test_config_and_rollout_baseline(tmp_path: Path) -> None:
    cfg = home.write_config(
        tmp_path / "h", base_url='http://x/"v1', provider="agentd", model="gpt-5.5", env_key="K"
    )
    text = cfg.read_text()
    assert 'base_url = "http://x/\\"v1"' in text and 'model = "gpt-5.5"' in text and 'env_key = "K"' in text
    assert (tmp_path / "h").stat().st_mode & 0o777 == 0o700
    plain = home.render_config(provider="openai")
    assert "model_providers" not in plain and 'model_provider = "openai"' in plain
    builtin = home.render_config(provider="openai", base_url="http://y/v1")
    assert 'openai_base_url = "http://y/v1"' in builtin and "model_providers" not in builtin
    day = tmp_path / "h" / "sessions" / "2026" / "12" / "01"
    day.mkdir(parents=True)
    usage = {"input_tokens": 100, "output_tokens": 20, "total_tokens": 120}
    line = {"type": "event_msg", "payload": {"type": "token_count", "info": {"total_token_usage": usage}}}
    (day / "rollout-2026-12-01T00-00-00-tid1.jsonl").write_text("{}\n" + json.dumps(line) + "\n")
    assert home.thread_usage_total(tmp_path / "h", "tid1") == usage
    assert home.thread_usage_total(tmp_path / "h", "other") == {}
    assert home.thread_usage_total(tmp_path / "h", None) == {}
