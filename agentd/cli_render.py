"""How `agentd submit --follow` and `agentd follow` show a run.

- On a terminal (`TerminalRenderer`): the agent's text as it streams, one line per tool call with its
  outcome, a status line with the elapsed time (redrawn in place), and a summary at the end.
- Elsewhere, or with `--json` (`JsonLinesRenderer`): one JSON line per event, `{"id", "event", "data"}`,
  nothing decorative: what a CI log or a script reads.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Protocol, TextIO

from agentd.domain.models import (
    AgentResult,
    DoneEvent,
    ErrorEvent,
    OutputEvent,
    ReasoningEvent,
    StatusEvent,
    StoredEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
TOOL_INPUT_KEYS = ("command", "file_path", "path", "pattern", "url", "query", "description")


class Renderer(Protocol):
    def event(self, stored: StoredEvent) -> None: ...

    def tick(self) -> None: ...

    def note(self, text: str) -> None: ...

    def summary(self, result: AgentResult) -> None: ...


class JsonLinesRenderer:
    """One line per event on `out`; notes go to `err` (so `out` stays machine-readable)."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err

    def event(self, stored: StoredEvent) -> None:
        ev = stored.event
        line = {"id": stored.seq, "event": ev.event, "data": ev.data()}
        self.out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
        self.out.flush()

    def tick(self) -> None:
        pass

    def note(self, text: str) -> None:
        print(f"agentd: {text}", file=self.err, flush=True)

    def summary(self, result: AgentResult) -> None:
        pass  # the `done` line is the summary


def fmt_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def tool_summary(name: str, tool_input: dict[str, Any], width: int = 80) -> str:
    for key in TOOL_INPUT_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            text = value
            break
    else:
        text = json.dumps(tool_input, ensure_ascii=False, separators=(",", ":")) if tool_input else ""
    text = " ".join(text.split())
    return f"{name} {text[: width - 1] + '…' if len(text) > width else text}".rstrip()


class TerminalRenderer:
    """Live view for a person. `out` must be a terminal (ANSI: \\r and erase-line redraw the status)."""

    def __init__(self, out: TextIO, *, job_id: str, started: float | None = None, color: bool = True) -> None:
        self.out = out
        self.job_id = job_id
        self.started = started if started is not None else time.monotonic()
        self.color = color and "NO_COLOR" not in os.environ
        self.status = "queued"
        self.at_line_start = True
        self.status_drawn = False
        self.tools: dict[str, tuple[str, float]] = {}  # tool_use_id -> (summary, started)
        self.messages: set[str] = set()
        self.frame = 0

    # -- drawing ---------------------------------------------------------------------------------------

    def _style(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def _clear_status(self) -> None:
        if self.status_drawn:
            self.out.write("\r\x1b[K")
            self.status_drawn = False

    def _line(self, text: str) -> None:
        """A whole line of its own (after the text in flight, if any)."""
        self._clear_status()
        if not self.at_line_start:
            self.out.write("\n")
            self.at_line_start = True
        self.out.write(text + "\n")

    def _draw_status(self) -> None:
        if not self.at_line_start:
            return  # text is mid-line: the status line comes back after its newline
        self._clear_status()
        elapsed = fmt_duration(time.monotonic() - self.started)
        doing = self.status
        if self.tools:
            doing = f"running {next(iter(self.tools.values()))[0][:60]}"
        spin = SPINNER[self.frame % len(SPINNER)]
        line = f"{spin} {doing} · {elapsed} · {self.job_id}"
        self.out.write(self._style(line[: self._width() - 1], "2"))  # one row, or \r cannot erase it
        self.status_drawn = True

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.out.fileno()).columns or 80
        except (OSError, ValueError, AttributeError):
            return 80

    def tick(self) -> None:
        self.frame += 1
        self._draw_status()
        self.out.flush()

    def note(self, text: str) -> None:
        self._line(self._style(f"agentd: {text}", "33"))
        self.out.flush()

    # -- events ----------------------------------------------------------------------------------------

    def event(self, stored: StoredEvent) -> None:
        ev = stored.event
        if isinstance(ev, TextEvent):
            self._text(ev)
        elif isinstance(ev, ReasoningEvent):
            self.status = "thinking"
        elif isinstance(ev, ToolUseEvent):
            self.tools[ev.tool_use_id] = (tool_summary(ev.name, ev.input), time.monotonic())
        elif isinstance(ev, ToolResultEvent):
            self._tool_result(ev)
        elif isinstance(ev, StatusEvent):
            self.status = ev.status
            if ev.status in ("retrying", "requeued"):
                self._line(self._style(f"↻ {ev.status}: {ev.detail or ''}".rstrip(), "33"))
        elif isinstance(ev, ErrorEvent):
            self._line(self._style(f"✗ error {ev.code}: {ev.message}", "31"))
        elif isinstance(ev, OutputEvent) and ev.type == "stderr":
            self._line(self._style(f"  {ev.content.rstrip()[:300]}", "2"))
        elif isinstance(ev, DoneEvent):
            for summary, _ in self.tools.values():
                self._line(self._style(f"… {summary} (no result)", "2"))
            self.tools.clear()
            return
        self._draw_status()
        self.out.flush()

    def _text(self, ev: TextEvent) -> None:
        self.status = "writing"
        self.messages.add(ev.message_id)
        if ev.abandoned:
            self._line(self._style("[the agent abandoned that message; it starts over]", "2"))
            return
        if ev.chunk:
            self._clear_status()
            self.out.write(ev.chunk)
            self.at_line_start = ev.chunk.endswith("\n")
        if ev.is_complete and not self.at_line_start:
            self.out.write("\n")
            self.at_line_start = True

    def _tool_result(self, ev: ToolResultEvent) -> None:
        summary, began = self.tools.pop(ev.tool_use_id, ("tool", time.monotonic()))
        took = fmt_duration(time.monotonic() - began)
        if ev.is_error:
            first = next((ln for ln in ev.output.splitlines() if ln.strip()), "")
            self._line(self._style(f"✗ {summary} ({took}) {first[:120]}".rstrip(), "31"))
        else:
            self._line(f"{self._style('✓', '32')} {summary} {self._style(f'({took})', '2')}")

    def summary(self, result: AgentResult) -> None:
        self._clear_status()
        if not self.at_line_start:
            self.out.write("\n")
            self.at_line_start = True
        mark, code = {"succeeded": ("✓", "32"), "failed": ("✗", "31")}.get(result.status, ("■", "33"))
        turns = result.usage.get("num_turns") or len(self.messages)
        parts = [
            f"{result.status} in {fmt_duration(result.duration_ms / 1000)}",
            f"{turns} turn{'s' if turns != 1 else ''}",
            f"${result.cost_usd:.4f}" if result.cost_usd is not None else "cost n/a",
        ]
        if result.session_id:
            parts.append(f"session {result.session_id}")
        line = self._style(f"{mark} " + " · ".join(parts), f"1;{code}")
        self.out.write(line + "\n")
        if result.error:
            self.out.write(self._style(f"  {result.error}", code) + "\n")
        self.out.flush()
