"""The stream-json translation, on real transcripts of the claude CLI and on hand-made edge cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.agent_process import LineFramer
from agentd.adapters.claude_code import protocol as p
from agentd.domain.models import AgentEvent, AgentResult, Forced, TextEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "claude_code"


def replay(name: str, *, forced: Forced | None = None) -> tuple[list[AgentEvent], AgentResult]:
    d = FIXTURES / name
    meta = json.loads((d / "meta.json").read_text())
    state = p.StreamState()
    events: list[AgentEvent] = []
    for line in (d / "stdout.jsonl").read_text().split("\n"):
        events += p.translate_line(state, line)
    events += p.unfinished(state)
    result = p.outcome(
        state, exit_code=meta["rc"], duration_ms=7, stderr_tail=(d / "stderr.txt").read_text(), forced=forced
    )
    return events, result


def texts(events: list[AgentEvent]) -> dict[str, str]:
    out: dict[str, str] = {}
    dropped = set()
    for e in events:
        if isinstance(e, TextEvent):
            out[e.message_id] = out.get(e.message_id, "") + e.chunk
            if e.abandoned:
                dropped.add(e.message_id)
    return {k: v for k, v in out.items() if k not in dropped}


def assistant_texts(name: str) -> list[str]:
    out = []
    for line in (FIXTURES / name / "stdout.jsonl").read_text().splitlines():
        msg = json.loads(line)
        if msg.get("type") == "assistant" and not msg.get("error"):
            out += [b["text"] for b in msg["message"]["content"] if b.get("type") == "text"]
    return out


@pytest.mark.parametrize("name", sorted(d.name for d in FIXTURES.iterdir() if d.is_dir()))
def test_every_transcript_translates(name: str) -> None:
    events, result = replay(name)
    assert result.status in ("succeeded", "failed")
    # Concatenated chunks per message equal the completed assistant lines (the truth), in order.
    assert list(texts(events).values()) == assistant_texts(name)
    # Every message that got chunks is closed exactly once.
    completes: dict[str, int] = {}
    for e in events:
        if isinstance(e, TextEvent) and e.is_complete:
            completes[e.message_id] = completes.get(e.message_id, 0) + 1
    assert all(n == 1 for n in completes.values())
    assert set(completes) == {e.message_id for e in events if isinstance(e, TextEvent)}


def test_tool_bash_success() -> None:
    events, result = replay("a_tool_bash")
    kinds = [e.event for e in events]
    assert kinds == ["session", "text", "tool_use", "tool_result", "text"]
    session = events[0]
    assert session.event == "session" and session.session_id and "Bash" in session.tools
    tool = events[2]
    assert tool.event == "tool_use" and tool.name == "Bash" and tool.input["command"].startswith("echo")
    res = events[3]
    assert res.event == "tool_result" and res.tool_use_id == tool.tool_use_id and not res.is_error
    assert result.status == "succeeded" and result.exit_code == 0
    assert result.result == "Done: created out.txt containing 'hello'."
    assert result.session_id == session.session_id
    assert result.usage["output_tokens"] == 35 and result.usage["num_turns"] == 2
    assert result.cost_usd == pytest.approx(0.0015)


def test_partial_messages_stream_chunk_by_chunk() -> None:
    events, result = replay("b_partial")
    chunks = [e for e in events if isinstance(e, TextEvent)]
    assert len(chunks) > 4
    first_msg = chunks[0].message_id
    mine = [c for c in chunks if c.message_id == first_msg]
    assert [c.is_complete for c in mine] == [False] * (len(mine) - 1) + [True]
    assert "".join(c.chunk for c in mine) == "I'll create the file."
    # Tool use comes from the completed line, once, not from partial JSON deltas.
    assert sum(1 for e in events if e.event == "tool_use") == 1
    assert result.status == "succeeded"


def test_thinking_becomes_reasoning() -> None:
    events, _ = replay("a_thinking")
    reasoning = [e for e in events if e.event == "reasoning"]
    assert reasoning and "".join(r.chunk for r in reasoning) == "Let me think about this."


def test_api_error_reported_as_success_subtype_is_a_failure() -> None:
    events, result = replay("e_err500_retries1")
    assert result.status == "failed" and result.exit_code == 1
    assert "500" in (result.error or "") and result.retryable
    retry = next(e for e in events if e.event == "status")
    assert retry.status == "retrying" and retry.attempt == 1 and retry.max_retries == 1
    assert "HTTP 500" in (retry.detail or "")
    err = next(e for e in events if e.event == "error")
    assert err.code == "model_server_error" and err.retryable


def test_overloaded_is_retryable() -> None:
    _, result = replay("e_err529_retries1")
    assert result.status == "failed" and result.retryable


def test_max_turns() -> None:
    _, result = replay("g_max_turns1")
    assert result.status == "failed" and "maximum number of turns" in (result.error or "")
    assert not result.retryable


def test_resume_of_unknown_session() -> None:
    events, result = replay("c_resume_missing")
    assert events == []
    assert result.status == "failed" and "No conversation found" in (result.error or "")


def test_no_result_line_is_failed_with_stderr_tail() -> None:
    _, result = replay("i_bad_flag")
    assert result.status == "failed" and result.exit_code == 1
    assert "unknown option '--no-such-flag'" in (result.error or "")
    _, killed = replay("f_slow_sigterm")
    assert killed.status == "failed" and "143" in (killed.error or "")


def test_forced_outcomes_win() -> None:
    _, result = replay("f_slow_sigint", forced="cancelled")
    assert result.status == "cancelled"
    _, result = replay("f_slow_sigint", forced="timed_out")
    assert result.status == "timed_out"


def test_permission_denied_is_an_error_event_but_the_run_succeeds() -> None:
    events, result = replay("perm_default")
    denied = [e for e in events if e.event == "error"]
    assert denied and denied[0].code == "permission_denied" and "Bash" in denied[0].message
    assert result.status == "succeeded"


def test_interrupt_abandons_nothing_that_was_kept() -> None:
    # The interrupted message's completed line holds exactly what was streamed; it stays.
    events, _ = replay("d_stdin_interrupt")
    t = texts(events)
    assert t[next(iter(t))].startswith("tick0 tick1")


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


def _se(mid: str, event: dict[str, Any], **extra: Any) -> str:
    return _line({"type": "stream_event", "api_message_id": mid, "event": event, **extra})


def _start(mid: str, idx: int = 0) -> str:
    return _se(
        mid, {"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}}
    )


def _delta(mid: str, text: str, idx: int = 0) -> str:
    return _se(
        mid, {"type": "content_block_delta", "index": idx, "delta": {"type": "text_delta", "text": text}}
    )


def _assistant(mid: str, text: str) -> str:
    return _line({"type": "assistant", "message": {"id": mid, "content": [{"type": "text", "text": text}]}})


def run_lines(lines: list[str]) -> list[AgentEvent]:
    state = p.StreamState()
    out: list[AgentEvent] = []
    for line in lines:
        out += p.translate_line(state, line)
    return out + p.unfinished(state)


def test_abandoned_blocks_are_dropped_and_the_truth_arrives_under_a_new_id() -> None:
    events = run_lines(
        [
            _start("m1"),
            _delta("m1", "This answer will be "),
            _se(
                "m1",
                {"type": "message_stop"},
                abandoned_blocks={"api_message_id": "m1", "from_block_index": 0},
            ),
            _assistant("m1", "Recovered text."),
        ]
    )
    assert texts(events) == {"m1~r1": "Recovered text."}
    abandoned = [e for e in events if isinstance(e, TextEvent) and e.abandoned]
    assert len(abandoned) == 1 and abandoned[0].message_id == "m1" and abandoned[0].is_complete


def test_stream_that_disagrees_with_the_final_text_is_replaced() -> None:
    events = run_lines([_start("m1"), _delta("m1", "Wrong start"), _assistant("m1", "Right text")])
    assert texts(events) == {"m1~r1": "Right text"}


def test_missing_suffix_is_sent_with_the_completion() -> None:
    events = run_lines([_start("m1"), _delta("m1", "Hello "), _assistant("m1", "Hello world")])
    assert texts(events) == {"m1": "Hello world"}
    last = events[-1]
    assert isinstance(last, TextEvent) and last.chunk == "world" and last.is_complete


def test_without_partial_messages_each_block_is_one_chunk() -> None:
    events = run_lines([_assistant("m1", "one"), _assistant("m1", "two")])
    assert [(e.message_id, e.index, e.chunk, e.is_complete) for e in events if isinstance(e, TextEvent)] == [
        ("m1", 0, "one", True),
        ("m1", 1, "two", True),
    ]


def test_unknown_and_garbage_lines() -> None:
    events = run_lines(['{"type": "brand_new_thing", "x": 1}', "not json at all", "[1,2]", "", "   "])
    assert [(e.event, getattr(e, "content", None)) for e in events] == [
        ("output", "not json at all"),
        ("output", "[1,2]"),
    ]


def test_last_result_wins() -> None:
    state = p.StreamState()
    for r in ({"is_error": True, "result": "first"}, {"is_error": False, "result": "second"}):
        p.translate_line(state, _line({"type": "result", "subtype": "success", "session_id": "s", **r}))
    res = p.outcome(state, exit_code=0, duration_ms=1)
    assert res.status == "succeeded" and res.result == "second"


def test_init_repeats_are_announced_once() -> None:
    init = _line({"type": "system", "subtype": "init", "session_id": "s1", "model": "m", "tools": ["Bash"]})
    events = run_lines([init, init])
    assert [e.event for e in events] == ["session"]


def test_line_framer_handles_huge_lines_and_any_chunking() -> None:
    big = json.dumps({"type": "assistant", "pad": "x" * 1_000_000}).encode()
    stream = b'{"a":1}\n' + big + b"\n" + b'{"b":2}\n' + b'{"tail":3}'
    for size in (1, 7, 4096, 65536, len(stream)):
        framer = LineFramer()
        lines: list[bytes] = []
        for i in range(0, len(stream), size):
            lines += framer.feed(stream[i : i + size])
        lines += framer.close()
        assert lines == [b'{"a":1}', big, b'{"b":2}', b'{"tail":3}']


def test_line_framer_drops_a_runaway_line_and_goes_on() -> None:
    framer = LineFramer(max_line=100)
    out = framer.feed(b"x" * 150)
    out += framer.feed(b"yy\nok\n")
    assert framer.dropped == 1
    assert out[-1] == b"ok"


def test_files_and_mentions_become_prompt_text() -> None:
    from agentd.adapters.claude_code.agent import with_files
    from agentd.domain.models import AgentRequest

    r = AgentRequest.model_validate(
        {
            "project_id": "p",
            "prompt": "Review",
            "files": [{"path": "src/app.py"}, {"content": "print(1)", "filename": "snippet.py"}],
            "mentions": ["security-reviewer"],
        }
    )
    text = with_files(r)
    assert text.startswith("Review") and "@src/app.py" in text
    assert "<file name='snippet.py'>\nprint(1)\n</file>" in text and "security-reviewer" in text
