"""agentd.cli_render: what a person sees on a terminal, and the JSON lines a CI log gets."""

from __future__ import annotations

import io
import json

from agentd.cli_render import JsonLinesRenderer, TerminalRenderer, fmt_duration, tool_summary
from agentd.domain.models import (
    AgentResult,
    DoneEvent,
    StatusEvent,
    StoredEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)


def feed(r: TerminalRenderer | JsonLinesRenderer, *events: object) -> None:
    for i, ev in enumerate(events, 1):
        r.event(StoredEvent(seq=i, event=ev))


def test_terminal_text_tools_and_summary() -> None:
    out = io.StringIO()
    r = TerminalRenderer(out, job_id="job_1", color=False)
    feed(
        r,
        StatusEvent(status="running"),
        TextEvent(message_id="m", chunk="Let me "),
        TextEvent(message_id="m", chunk="look.", is_complete=True),
        ToolUseEvent(tool_use_id="t1", name="Bash", input={"command": "ls -la\n  /tmp"}),
        ToolResultEvent(tool_use_id="t1", output="a\nb"),
        ToolUseEvent(tool_use_id="t2", name="Read", input={"file_path": "/etc/x"}),
        ToolResultEvent(tool_use_id="t2", output="\nno such file", is_error=True),
        TextEvent(message_id="m2", chunk="Done.", is_complete=True),
    )
    r.summary(AgentResult(status="succeeded", duration_ms=65_000, usage={"num_turns": 3}, cost_usd=0.0123))
    lines = [ln.split("\r\x1b[K")[-1] for ln in out.getvalue().split("\n")]
    assert "Let me look." in lines
    assert any(ln.startswith("✓ Bash ls -la /tmp (") for ln in lines)
    assert any(ln.startswith("✗ Read /etc/x (") and ln.endswith("no such file") for ln in lines)
    assert "Done." in lines
    assert lines[-2] == "✓ succeeded in 1m05s · 3 turns · $0.0123"
    assert "\x1b[2m" not in out.getvalue()  # color=False: no styling, only the erase-line redraws


def test_status_line_waits_for_the_end_of_a_line_of_text() -> None:
    out = io.StringIO()
    r = TerminalRenderer(out, job_id="job_1", color=False)
    feed(r, TextEvent(message_id="m", chunk="half a line"))
    before = out.getvalue()
    r.tick()
    assert out.getvalue() == before  # no status line drawn into the middle of the text
    feed(r, TextEvent(message_id="m", chunk="", is_complete=True))
    r.tick()
    assert out.getvalue().rstrip().endswith("· job_1")


def test_failed_summary_shows_the_error_and_counts_messages_as_turns() -> None:
    out = io.StringIO()
    r = TerminalRenderer(out, job_id="j", color=False)
    feed(r, TextEvent(message_id="a", chunk="x", is_complete=True), TextEvent(message_id="b", chunk="y"))
    r.summary(AgentResult(status="failed", duration_ms=1500, error="model overloaded"))
    tail = out.getvalue().rstrip("\n").split("\n")
    assert tail[-2].endswith("✗ failed in 1.5s · 2 turns · cost n/a")
    assert tail[-1] == "  model overloaded"


def test_json_lines_one_per_event() -> None:
    out, err = io.StringIO(), io.StringIO()
    r = JsonLinesRenderer(out, err)
    feed(r, StatusEvent(status="queued"), DoneEvent(status="succeeded", result="ok"))
    r.note("hello")
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["id"], x["event"]) for x in rows] == [(1, "status"), (2, "done")]
    assert rows[1]["data"]["result"] == "ok" and "event" not in rows[1]["data"]
    assert err.getvalue() == "agentd: hello\n"


def test_small_helpers() -> None:
    assert fmt_duration(0.04) == "0.0s" and fmt_duration(59.94) == "59.9s" and fmt_duration(3723) == "1h02m"
    assert tool_summary("Edit", {}) == "Edit"
    assert tool_summary("X", {"a": 1}) == 'X {"a":1}'
    assert tool_summary("Bash", {"command": "y" * 200}, width=10) == "Bash " + "y" * 9 + "…"
