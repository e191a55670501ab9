"""Pure translation of the Claude Code CLI's stream-json output into agentd events. No I/O.

Facts this relies on (recorded from the real CLI 2.1.330, see tests/fixtures/claude_code/):
- one JSON object per `\n`-terminated line; unknown types and subtypes are ignored;
- with --include-partial-messages, `stream_event` lines carry raw API deltas keyed by
  (api_message_id, index); the completed `assistant` line for a block is the truth and arrives before the
  block's content_block_stop; `message_stop.abandoned_blocks.from_block_index` marks blocks the CLI
  dropped (interrupt, fallback after a stream error);
- success is `result.is_error == false`, never `subtype == "success"` (an API failure after retries is
  subtype "success" with is_error true); `result` may repeat (background tasks): the LAST one counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agentd.domain.models import (
    AgentEvent,
    AgentResult,
    ErrorEvent,
    Forced,
    OutputEvent,
    ReasoningEvent,
    SessionEvent,
    StatusEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)

RETRYABLE_HTTP = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
_USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)


@dataclass
class _Block:
    """A content block being streamed (text or thinking)."""

    kind: str  # "text" | "thinking"
    message_id: str
    index: int
    streamed: str = ""
    done: bool = False


@dataclass
class StreamState:
    """Everything one run's translation needs to remember between lines."""

    session_id: str | None = None
    model: str | None = None
    announced_sessions: set[str] = field(default_factory=set)
    blocks: dict[tuple[str, int], _Block] = field(default_factory=dict)
    # Message ids that already had an abandoned block: their re-sent text gets a fresh message id.
    replaced: dict[str, int] = field(default_factory=dict)
    # Block ordinal per message for assistant lines that were not streamed (no partial messages).
    unstreamed_index: dict[str, int] = field(default_factory=dict)
    last_result: dict[str, Any] | None = None
    last_assistant_text: str | None = None
    api_error: str | None = None


def translate_line(state: StreamState, line: str) -> list[AgentEvent]:
    """One stdout line in, zero or more events out."""
    line = line.strip()
    if not line:
        return []
    try:
        msg = json.loads(line)
    except json.JSONDecodeError:
        return [OutputEvent(type="stdout", content=line)]
    if not isinstance(msg, dict):
        return [OutputEvent(type="stdout", content=line)]
    kind = msg.get("type")
    if kind == "system":
        return _system(state, msg)
    if kind == "stream_event":
        return _stream_event(state, msg)
    if kind == "assistant":
        return _assistant(state, msg)
    if kind == "user":
        return _user(msg)
    if kind == "result":
        state.last_result = msg
        if msg.get("session_id"):
            state.session_id = msg["session_id"]
        return []
    return []


def _system(state: StreamState, msg: dict[str, Any]) -> list[AgentEvent]:
    sub = msg.get("subtype")
    if sub == "init":
        sid = msg.get("session_id")
        state.model = msg.get("model") or state.model
        if not isinstance(sid, str) or sid in state.announced_sessions:
            return []  # init repeats once per turn; announce each session once
        state.session_id = sid
        state.announced_sessions.add(sid)
        tools = [t for t in msg.get("tools") or [] if isinstance(t, str)]
        return [SessionEvent(session_id=sid, model=state.model, tools=tools, cwd=msg.get("cwd"))]
    if sub == "api_retry":
        status = msg.get("error_status")
        detail = f"model API error {msg.get('error') or 'unknown'}"
        if status:
            detail += f" (HTTP {status})"
        return [
            StatusEvent(
                status="retrying",
                detail=detail,
                attempt=_int(msg.get("attempt")),
                max_retries=_int(msg.get("max_retries")),
                retry_delay_ms=_int(msg.get("retry_delay_ms")),
            )
        ]
    if sub == "permission_denied":
        tool = msg.get("tool_name") or "tool"
        return [
            ErrorEvent(
                code="permission_denied",
                message=f"{tool}: {msg.get('message') or 'permission denied'}",
            )
        ]
    return []


def _stream_event(state: StreamState, msg: dict[str, Any]) -> list[AgentEvent]:
    ev = msg.get("event") or {}
    etype = ev.get("type")
    mid = msg.get("api_message_id") or ""
    if etype == "content_block_start":
        block = ev.get("content_block") or {}
        btype = block.get("type")
        if btype in ("text", "thinking") and isinstance(ev.get("index"), int):
            key = (mid, ev["index"])
            state.blocks[key] = _Block(kind=btype, message_id=mid, index=ev["index"])
        return []
    if etype == "content_block_delta":
        delta = ev.get("delta") or {}
        blk = state.blocks.get((mid, ev.get("index", -1)))
        if blk is None or blk.done:
            return []
        if delta.get("type") == "text_delta" and blk.kind == "text":
            chunk = str(delta.get("text") or "")
            if not chunk:
                return []
            blk.streamed += chunk
            return [TextEvent(message_id=mid, index=blk.index, chunk=chunk)]
        if delta.get("type") == "thinking_delta" and blk.kind == "thinking":
            chunk = str(delta.get("thinking") or "")
            if not chunk:
                return []
            blk.streamed += chunk
            return [ReasoningEvent(message_id=mid, index=blk.index, chunk=chunk)]
        return []
    if etype == "message_stop":
        ab = msg.get("abandoned_blocks")
        if isinstance(ab, dict):
            return _abandon(state, ab.get("api_message_id") or mid, _int(ab.get("from_block_index")) or 0)
        return []
    return []


def _abandon(state: StreamState, mid: str, from_index: int) -> list[AgentEvent]:
    out: list[AgentEvent] = []
    for (m, idx), blk in sorted(state.blocks.items(), key=lambda kv: kv[0][1]):
        if m == mid and idx >= from_index and not blk.done:
            blk.done = True
            state.replaced[mid] = state.replaced.get(mid, 0)
            out.append(_final(blk, "", abandoned=True))
    return out


def _final(blk: _Block, chunk: str, *, abandoned: bool = False) -> AgentEvent:
    if blk.kind == "thinking":
        return ReasoningEvent(
            message_id=blk.message_id, index=blk.index, chunk=chunk, is_complete=True, abandoned=abandoned
        )
    return TextEvent(
        message_id=blk.message_id, index=blk.index, chunk=chunk, is_complete=True, abandoned=abandoned
    )


def _assistant(state: StreamState, msg: dict[str, Any]) -> list[AgentEvent]:
    message = msg.get("message") or {}
    mid = str(message.get("id") or "")
    out: list[AgentEvent] = []
    if msg.get("is_api_error_message") or msg.get("error"):
        text = " ".join(
            str(b.get("text") or "") for b in message.get("content") or [] if isinstance(b, dict)
        ).strip()
        state.api_error = text or str(msg.get("error"))
        status = msg.get("api_error_status")
        return [
            ErrorEvent(
                code=f"model_{msg.get('error') or 'api_error'}",
                message=state.api_error,
                retryable=isinstance(status, int) and status in RETRYABLE_HTTP,
            )
        ]
    for block in message.get("content") or []:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "tool_use":
            inp = block.get("input")
            out.append(
                ToolUseEvent(
                    tool_use_id=str(block.get("id") or ""),
                    name=str(block.get("name") or ""),
                    input=inp if isinstance(inp, dict) else {"value": inp},
                )
            )
        elif btype in ("text", "thinking"):
            truth = str(block.get("text" if btype == "text" else "thinking") or "")
            if btype == "text":
                state.last_assistant_text = truth
            out.extend(_settle(state, mid, btype, truth))
    return out


def _settle(state: StreamState, mid: str, kind: str, truth: str) -> list[AgentEvent]:
    """Close the streamed block this completed block corresponds to, so that chunks add up to `truth`."""
    candidates = sorted(
        (blk for (m, _), blk in state.blocks.items() if m == mid and blk.kind == kind and not blk.done),
        key=lambda b: b.index,
    )
    if candidates:
        blk = candidates[0]
        blk.done = True
        if truth.startswith(blk.streamed):
            return [_final(blk, truth[len(blk.streamed) :])]
        # The stream said something else than the final text: drop it, re-send the truth under a new id.
        return [_final(blk, "", abandoned=True), _fresh(state, mid, kind, truth)]
    if mid in state.replaced:
        return [_fresh(state, mid, kind, truth)]
    idx = state.unstreamed_index.get(mid, 0)
    state.unstreamed_index[mid] = idx + 1
    blk = _Block(kind=kind, message_id=mid, index=idx, done=True)
    return [_final(blk, truth)]


def _fresh(state: StreamState, mid: str, kind: str, truth: str) -> AgentEvent:
    n = state.replaced.get(mid, 0) + 1
    state.replaced[mid] = n
    return _final(_Block(kind=kind, message_id=f"{mid}~r{n}", index=0, done=True), truth)


def _user(msg: dict[str, Any]) -> list[AgentEvent]:
    message = msg.get("message") or {}
    content = message.get("content")
    if not isinstance(content, list):
        return []
    out: list[AgentEvent] = []
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            out.append(
                ToolResultEvent(
                    tool_use_id=str(block.get("tool_use_id") or ""),
                    output=_text_of(block.get("content")),
                    is_error=bool(block.get("is_error")),
                )
            )
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for c in content:
            if isinstance(c, dict) and c.get("type") == "text":
                parts.append(str(c.get("text") or ""))
            elif isinstance(c, dict):
                parts.append(f"[{c.get('type', 'content')}]")
        return "\n".join(parts)
    return "" if content is None else json.dumps(content)


def unfinished(state: StreamState) -> list[AgentEvent]:
    """Close blocks that never got their completed line (the process died): the partial text stays."""
    out: list[AgentEvent] = []
    for blk in state.blocks.values():
        if not blk.done:
            blk.done = True
            out.append(_final(blk, ""))
    return out


def outcome(
    state: StreamState,
    *,
    exit_code: int | None,
    duration_ms: int,
    stderr_tail: str = "",
    forced: Forced | None = None,
    forced_reason: str | None = None,
) -> AgentResult:
    """The run's result. `forced` is "cancelled" or "timed_out" when agentd ended the run itself."""
    r = state.last_result
    usage: dict[str, Any] = {}
    cost: float | None = None
    text: str | None = state.last_assistant_text
    session_id = state.session_id
    if r is not None:
        raw = r.get("usage")
        raw_usage: dict[str, Any] = raw if isinstance(raw, dict) else {}
        usage = {k: raw_usage[k] for k in _USAGE_KEYS if k in raw_usage}
        for k in ("num_turns", "duration_api_ms"):
            if k in r:
                usage[k] = r[k]
        c = r.get("total_cost_usd")
        cost = float(c) if isinstance(c, int | float) else None
        if isinstance(r.get("result"), str):
            text = r["result"]
        session_id = r.get("session_id") or session_id
    error: str | None = None
    retryable = False
    if forced is None and r is None:
        text = None
        error = f"claude exited with code {exit_code} without a result"
        if stderr_tail.strip():
            error += f": {stderr_tail.strip()}"
    elif forced is None and r is not None and (r.get("is_error") or exit_code not in (0, None)):
        error = _failure(state, r, text, exit_code, stderr_tail)
        status_code = r.get("api_error_status")
        retryable = isinstance(status_code, int) and status_code in RETRYABLE_HTTP
    return AgentResult.ended(
        forced=forced,
        forced_reason=forced_reason,
        error=error,
        exit_code=exit_code,
        duration_ms=duration_ms,
        session_id=session_id,
        result=text,
        usage=usage,
        cost_usd=cost,
        retryable=retryable,
    )


def _failure(
    state: StreamState, r: dict[str, Any], text: str | None, exit_code: int | None, stderr_tail: str
) -> str:
    """Why a run with a result failed: the CLI's errors, the API error, or the exit code and stderr."""
    errs = [str(e) for e in r.get("errors") or [] if e]
    reason = "; ".join(errs) or state.api_error or (text if r.get("is_error") else None)
    if not reason:
        reason = f"claude exited with code {exit_code}"
        if stderr_tail.strip():
            reason += f": {stderr_tail.strip()}"
    terminal = r.get("terminal_reason")
    if terminal and terminal not in reason:
        reason = f"{reason} ({terminal})"
    return reason


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None
