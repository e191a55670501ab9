"""Pure translation of the Codex CLI's output into agentd events, for both of its modes. No I/O.

Facts this relies on (recorded from the real CLI 0.169.0 against tests/support/fake_responses.py, see
tests/fixtures/codex/):

`codex exec --json` (one JSON object per stdout line):
- `thread.started {thread_id}`, `turn.started`, `item.started|item.updated|item.completed {item}`,
  `turn.completed {usage}`, `turn.failed {error.message}`, `error {message}`;
- items have `id` ("item_0", "item_1"... restarting with every process) and `type`: `agent_message`
  and `reasoning` arrive ONLY completed, whole (no deltas); `command_execution` starts and completes
  (`command`, `aggregated_output`, `exit_code`, `status`); `error` items are non-fatal warnings (e.g.
  unknown model metadata); `file_change`, `mcp_tool_call`, `web_search`, `todo_list`,
  `collab_tool_call` exist in the binary (not seen offline);
- an HTTP 4xx gives `error` + `turn.failed` with the raw response body as message, exit 1; a 5xx after
  the provider's retries gives Codex's own "We're currently experiencing high demand..." text;
- a SIGINT ends the process (exit 1) with no further line; resume of an unknown thread prints nothing on
  stdout and "Error: thread/resume: ... no rollout found ..." on stderr, exit 1.

`codex app-server` (JSON-RPC without the "jsonrpc" field, one message per line):
- notifications `turn/started`, `item/started`, `item/agentMessage/delta {itemId, delta}`,
  `item/reasoning/summaryTextDelta {itemId, delta, summaryIndex}`, `item/completed` (camelCase items:
  userMessage, reasoning{summary[]}, agentMessage{text}, commandExecution{aggregatedOutput, exitCode}),
  `thread/tokenUsage/updated {turnId, tokenUsage{total, last}}`, `error {error{message,
  codexErrorInfo}, willRetry}`, `turn/completed {turn{status: completed|failed|interrupted, error}}`;
- an interrupted turn completes with status "interrupted" and leaves its streaming message without an
  `item/completed`.

Usage: Codex counts tokens cumulatively per THREAD (`turn.completed.usage`, `tokenUsage.total`). A
turn's own usage is its final total minus the thread's total before it (`TurnState.baseline`, which
the adapter reads from the thread's rollout file, and which app-server also announces on resume).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

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

Mode = Literal["exec", "app-server"]
# Codex's error kinds (app-server `codexErrorInfo`) worth another attempt of the whole job.
RETRYABLE_KINDS = frozenset(
    {
        "serverOverloaded",
        "internalServerError",
        "rateLimitExceeded",
        "httpConnectionFailed",
        "responseStreamConnectionFailed",
        "responseStreamDisconnected",
        "responseTooManyFailedAttempts",
    }
)
USAGE_KEYS = (
    "input_tokens",
    "cached_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
    "total_tokens",
)
_RECONNECTING = re.compile(r"^Reconnecting\.\.\. \d+/\d+")
# Items that are not tools: text, reasoning, the user's own message, warnings.
_NOT_TOOLS = frozenset({"agent_message", "reasoning", "user_message", "error"})
# app-server notifications with nothing for a run's stream.
_QUIET = frozenset(
    {
        "thread/started",
        "thread/status/changed",
        "thread/goal/cleared",
        "thread/settings/updated",
        "account/rateLimits/updated",
        "remoteControl/status/changed",
        "mcpServer/startupStatus/updated",
        "skills/changed",
        "serverRequest/resolved",
        "item/commandExecution/outputDelta",
        "item/fileChange/outputDelta",
        "item/reasoning/summaryPartAdded",
        "item/reasoning/textDelta",
        "turn/diff/updated",
        "turn/plan/updated",
        "deprecationNotice",
    }
)


def snake(name: str) -> str:
    """`commandExecution` -> `command_execution` (app-server items use camelCase, exec items snake)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


@dataclass
class _Block:
    """A streamed agent message or reasoning summary part."""

    kind: Literal["text", "reasoning"]
    message_id: str
    index: int
    streamed: str = ""
    done: bool = False


@dataclass
class TurnState:
    """What one run's translation remembers between lines/messages."""

    mode: Mode = "exec"
    model: str | None = None
    cwd: str | None = None
    thread_id: str | None = None
    announced: bool = False
    turn_id: str | None = None
    baseline: dict[str, int] = field(default_factory=dict)  # the thread's usage before this turn
    total: dict[str, int] = field(default_factory=dict)  # the thread's usage so far
    blocks: dict[tuple[str, int], _Block] = field(default_factory=dict)
    replaced: dict[str, int] = field(default_factory=dict)
    tools_started: set[str] = field(default_factory=set)
    last_text: str | None = None
    status: str | None = None  # completed | failed | interrupted (the turn's end, as Codex says)
    error: str | None = None
    error_kind: str | None = None


# --- shared -------------------------------------------------------------------------------------------


def session(state: TurnState, thread_id: str) -> list[AgentEvent]:
    """The session event for the thread (once per run)."""
    state.thread_id = thread_id
    if state.announced or not thread_id:
        return []
    state.announced = True
    return [SessionEvent(session_id=thread_id, model=state.model, cwd=state.cwd)]


def provider_message(raw: str) -> str:
    """The model API's own message out of Codex's error text (a raw JSON body for HTTP 4xx)."""
    text = raw.strip()
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except json.JSONDecodeError:
            return text
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and err.get("message"):
            msg = str(err["message"])
            code = err.get("code") or err.get("type")
            return f"{msg} ({code})" if code else msg
        if isinstance(err, str) and err:
            return err
    return text


def normalize_usage(raw: Any) -> dict[str, int]:
    """exec's snake_case and app-server's camelCase usage, as agentd's snake_case keys."""
    if not isinstance(raw, dict):
        return {}
    out: dict[str, int] = {}
    for k, v in raw.items():
        key = snake(str(k))
        if key in USAGE_KEYS and isinstance(v, int) and not isinstance(v, bool):
            out[key] = v
    return out


def turn_usage(total: dict[str, int], baseline: dict[str, int]) -> dict[str, int]:
    """This turn's own usage: the thread's total after it minus the total before it."""
    out = {k: max(0, v - baseline.get(k, 0)) for k, v in total.items()}
    if out and "total_tokens" not in out:
        out["total_tokens"] = out.get("input_tokens", 0) + out.get("output_tokens", 0)
    return out


def _text_event(blk: _Block, chunk: str, *, complete: bool = False, abandoned: bool = False) -> AgentEvent:
    if blk.kind == "reasoning":
        return ReasoningEvent(
            message_id=blk.message_id, index=blk.index, chunk=chunk, is_complete=complete, abandoned=abandoned
        )
    return TextEvent(
        message_id=blk.message_id, index=blk.index, chunk=chunk, is_complete=complete, abandoned=abandoned
    )


def _delta(
    state: TurnState, kind: Literal["text", "reasoning"], item_id: str, index: int, chunk: str
) -> list[AgentEvent]:
    if not chunk:
        return []
    blk = state.blocks.get((item_id, index))
    if blk is None:
        blk = state.blocks[(item_id, index)] = _Block(kind, item_id, index)
    if blk.done:
        return []
    blk.streamed += chunk
    return [_text_event(blk, chunk)]


def _settle(
    state: TurnState, kind: Literal["text", "reasoning"], item_id: str, index: int, truth: str
) -> list[AgentEvent]:
    """Close a block with its final text so that the chunks of its message_id add up to `truth`."""
    if kind == "text":
        state.last_text = truth
    blk = state.blocks.get((item_id, index))
    if blk is None:  # never streamed (exec mode): the whole text in one complete chunk
        blk = state.blocks[(item_id, index)] = _Block(kind, item_id, index, done=True)
        return [_text_event(blk, truth, complete=True)]
    if blk.done:
        return []
    blk.done = True
    if truth.startswith(blk.streamed):
        return [_text_event(blk, truth[len(blk.streamed) :], complete=True)]
    # The deltas said something else than the final text: drop them, send the truth under a new id.
    n = state.replaced.get(item_id, 0) + 1
    state.replaced[item_id] = n
    fresh = _Block(kind, f"{item_id}~r{n}", index, done=True)
    return [_text_event(blk, "", complete=True, abandoned=True), _text_event(fresh, truth, complete=True)]


def unfinished(state: TurnState) -> list[AgentEvent]:
    """Close blocks that never completed (cancel, crash): the partial text stays, marked complete."""
    out: list[AgentEvent] = []
    for blk in state.blocks.values():
        if not blk.done:
            blk.done = True
            out.append(_text_event(blk, "", complete=True))
            if blk.kind == "text" and blk.streamed:
                state.last_text = blk.streamed
    return out


def _tool_name(kind: str, item: dict[str, Any]) -> str:
    if kind == "mcp_tool_call":
        return f"mcp__{item.get('server') or 'server'}__{item.get('tool') or 'tool'}"
    return kind


def _tool_input(kind: str, item: dict[str, Any]) -> dict[str, Any]:
    if kind == "command_execution":
        out = {"command": item.get("command")}
        if item.get("cwd"):
            out["cwd"] = item["cwd"]
        return out
    if kind == "mcp_tool_call":
        args = item.get("arguments")
        return args if isinstance(args, dict) else {"arguments": args}
    skip = {
        "id",
        "type",
        "status",
        "aggregated_output",
        "aggregatedOutput",
        "exit_code",
        "exitCode",
        "result",
        "error",
        "startedAtMs",
        "completedAtMs",
        "durationMs",
    }
    return {k: v for k, v in item.items() if k not in skip}


def _tool_output(kind: str, item: dict[str, Any]) -> tuple[str, bool]:
    status = str(item.get("status") or "")
    failed = status in ("failed", "declined", "error")
    if kind == "command_execution":
        out = item.get("aggregated_output", item.get("aggregatedOutput"))
        code = item.get("exit_code", item.get("exitCode"))
        failed = failed or (isinstance(code, int) and code != 0)
        return (out if isinstance(out, str) else ""), failed
    err = item.get("error")
    if err:
        return (err if isinstance(err, str) else json.dumps(err)), True
    res = item.get("result")
    if res is None:
        res = item.get("changes") if kind == "file_change" else None
    if res is None:
        return status, failed
    return (res if isinstance(res, str) else json.dumps(res)), failed


def _tool_started(state: TurnState, kind: str, item: dict[str, Any]) -> list[AgentEvent]:
    tid = str(item.get("id") or "")
    if tid in state.tools_started:
        return []
    state.tools_started.add(tid)
    return [ToolUseEvent(tool_use_id=tid, name=_tool_name(kind, item), input=_tool_input(kind, item))]


def _tool_completed(state: TurnState, kind: str, item: dict[str, Any]) -> list[AgentEvent]:
    out = _tool_started(state, kind, item)
    output, is_error = _tool_output(kind, item)
    out.append(ToolResultEvent(tool_use_id=str(item.get("id") or ""), output=output, is_error=is_error))
    return out


def _fail(state: TurnState, message: str, kind: str | None = None) -> list[AgentEvent]:
    state.error = provider_message(message)
    state.error_kind = kind
    code = f"codex_{snake(kind)}" if kind else "model_error"
    return [ErrorEvent(code=code, message=state.error, retryable=kind in RETRYABLE_KINDS)]


# --- codex exec --json --------------------------------------------------------------------------------


def exec_line(state: TurnState, line: str) -> list[AgentEvent]:
    """One stdout line of `codex exec --json` in, zero or more events out."""
    line = line.strip()
    if not line:
        return []
    try:
        msg = json.loads(line)
    except json.JSONDecodeError:
        return [OutputEvent(type="stdout", content=line)]
    if not isinstance(msg, dict):
        return [OutputEvent(type="stdout", content=line)]
    kind = str(msg.get("type") or "")
    if kind in ("item.started", "item.updated", "item.completed"):
        item = msg.get("item")
        if not isinstance(item, dict):
            return [OutputEvent(type="stdout", content=line)]
        return _exec_item(state, kind, item, line)
    handler = _EXEC_HANDLERS.get(kind)
    if handler is None:
        return [OutputEvent(type="stdout", content=line)]
    return handler(state, msg)


def _on_thread_started(state: TurnState, msg: dict[str, Any]) -> list[AgentEvent]:
    return session(state, str(msg.get("thread_id") or ""))


def _on_exec_turn_completed(state: TurnState, msg: dict[str, Any]) -> list[AgentEvent]:
    state.status = "completed"
    state.total = normalize_usage(msg.get("usage"))
    return []


def _on_exec_turn_failed(state: TurnState, msg: dict[str, Any]) -> list[AgentEvent]:
    state.status = "failed"
    err = msg.get("error")
    text = str(err.get("message") or "") if isinstance(err, dict) else str(err or "")
    return _fail(state, text) if state.error is None and text else []


def _on_exec_error(state: TurnState, msg: dict[str, Any]) -> list[AgentEvent]:
    text = str(msg.get("message") or "unknown error")
    if _RECONNECTING.match(text):  # a retry notice (stream retries, websocket fallback), not the end
        return [StatusEvent(status="retrying", detail=text)]
    return _fail(state, text)


_EXEC_HANDLERS: dict[str, Callable[[TurnState, dict[str, Any]], list[AgentEvent]]] = {
    "thread.started": _on_thread_started,
    "turn.started": lambda state, msg: [],
    "turn.completed": _on_exec_turn_completed,
    "turn.failed": _on_exec_turn_failed,
    "error": _on_exec_error,
}


def _exec_item(state: TurnState, kind: str, item: dict[str, Any], line: str) -> list[AgentEvent]:
    itype = str(item.get("type") or "")
    iid = str(item.get("id") or "")
    done = kind == "item.completed"
    if itype == "agent_message":
        return _settle(state, "text", iid, 0, str(item.get("text") or "")) if done else []
    if itype == "reasoning":
        return _settle(state, "reasoning", iid, 0, str(item.get("text") or "")) if done else []
    if itype == "error":
        return [ErrorEvent(code="codex_warning", message=str(item.get("message") or ""))] if done else []
    if itype in _NOT_TOOLS or not itype:
        return [OutputEvent(type="stdout", content=line)] if done else []
    if itype == "todo_list" and kind == "item.updated":
        return []
    return _tool_completed(state, itype, item) if done else _tool_started(state, itype, item)


# --- codex app-server ---------------------------------------------------------------------------------


def app_notification(state: TurnState, msg: dict[str, Any]) -> list[AgentEvent]:
    """One notification (a message with `method` and no `id`) from `codex app-server`."""
    method = str(msg.get("method") or "")
    raw = msg.get("params")
    params: dict[str, Any] = raw if isinstance(raw, dict) else {}
    turn_id = params.get("turnId")
    if turn_id is not None and state.turn_id is not None and turn_id != state.turn_id:
        if method == "thread/tokenUsage/updated":
            state.baseline = normalize_usage((params.get("tokenUsage") or {}).get("total"))
        return []  # another turn's news (a resumed thread's history)
    handler = _HANDLERS.get(method)
    if handler is not None:
        return handler(state, params)
    if method in ("warning", "configWarning", "guardianWarning"):
        # Non-fatal, like exec's `error` items (e.g. unknown model metadata): the same event in both modes.
        text = params.get("message") or params.get("summary") or json.dumps(params)
        return [ErrorEvent(code="codex_warning", message=str(text))]
    if method in _QUIET or method.startswith(_QUIET_PREFIXES):
        return []
    return [OutputEvent(type="stdout", content=json.dumps(msg))]


def _on_turn_started(state: TurnState, params: dict[str, Any]) -> list[AgentEvent]:
    turn = params.get("turn") or {}
    state.turn_id = str(turn.get("id") or state.turn_id or "")
    return []


def _on_text_delta(state: TurnState, params: dict[str, Any]) -> list[AgentEvent]:
    return _delta(state, "text", str(params.get("itemId") or ""), 0, str(params.get("delta") or ""))


def _on_reasoning_delta(state: TurnState, params: dict[str, Any]) -> list[AgentEvent]:
    idx = params.get("summaryIndex")
    index = idx if isinstance(idx, int) else 0
    return _delta(state, "reasoning", str(params.get("itemId") or ""), index, str(params.get("delta") or ""))


def _on_item(done: bool) -> Any:
    def handle(state: TurnState, params: dict[str, Any]) -> list[AgentEvent]:
        item = params.get("item")
        return _app_item(state, done, item) if isinstance(item, dict) else []

    return handle


def _on_usage(state: TurnState, params: dict[str, Any]) -> list[AgentEvent]:
    total = normalize_usage((params.get("tokenUsage") or {}).get("total"))
    if state.turn_id is None or params.get("turnId") is None:
        state.baseline = total  # announced before our turn started (resume)
    else:
        state.total = total
    return []


def _on_error(state: TurnState, params: dict[str, Any]) -> list[AgentEvent]:
    err = params.get("error") or {}
    text = str(err.get("message") or "unknown error") if isinstance(err, dict) else str(err)
    kind = _error_kind(err.get("codexErrorInfo") if isinstance(err, dict) else None)
    if params.get("willRetry"):
        return [StatusEvent(status="retrying", detail=provider_message(text))]
    return _fail(state, text, kind)


def _on_turn_completed(state: TurnState, params: dict[str, Any]) -> list[AgentEvent]:
    turn = params.get("turn") or {}
    state.status = str(turn.get("status") or "completed")
    err = turn.get("error")
    if state.status == "failed" and state.error is None and isinstance(err, dict):
        return _fail(state, str(err.get("message") or "turn failed"), _error_kind(err.get("codexErrorInfo")))
    return []


_HANDLERS: dict[str, Callable[[TurnState, dict[str, Any]], list[AgentEvent]]] = {
    "turn/started": _on_turn_started,
    "item/agentMessage/delta": _on_text_delta,
    "item/reasoning/summaryTextDelta": _on_reasoning_delta,
    "item/started": _on_item(False),
    "item/completed": _on_item(True),
    "thread/tokenUsage/updated": _on_usage,
    "error": _on_error,
    "turn/completed": _on_turn_completed,
}
_QUIET_PREFIXES = ("thread/", "account/", "mcpServer/", "fuzzyFileSearch/", "app/")


def _error_kind(info: Any) -> str | None:
    if isinstance(info, dict) and info:
        info = str(next(iter(info)))
    return info if isinstance(info, str) and info != "other" else None


def _app_item(state: TurnState, done: bool, item: dict[str, Any]) -> list[AgentEvent]:
    itype = snake(str(item.get("type") or ""))
    iid = str(item.get("id") or "")
    if itype == "agent_message":
        return _settle(state, "text", iid, 0, str(item.get("text") or "")) if done else []
    if itype == "reasoning":
        if not done:
            return []
        parts = [str(p) for p in item.get("summary") or []]
        if not parts:
            content = [str(p) for p in item.get("content") or []]
            parts = ["\n\n".join(content)] if content else []
        out: list[AgentEvent] = []
        for i, part in enumerate(parts):
            out.extend(_settle(state, "reasoning", iid, i, part))
        return out
    if itype == "user_message":
        return []
    if itype == "error":
        return [ErrorEvent(code="codex_warning", message=str(item.get("message") or ""))] if done else []
    if not itype:
        return [OutputEvent(type="stdout", content=json.dumps(item))] if done else []
    return _tool_completed(state, itype, item) if done else _tool_started(state, itype, item)


# --- the end ------------------------------------------------------------------------------------------


def outcome(
    state: TurnState,
    *,
    exit_code: int | None,
    duration_ms: int,
    stderr_tail: str = "",
    forced: Forced | None = None,
    forced_reason: str | None = None,
) -> AgentResult:
    """The run's result (the domain's one rule, `AgentResult.ended`). `forced` is "cancelled" or
    "timed_out" when agentd ended the run itself."""
    error = state.error
    if error is not None and state.error_kind and state.error_kind not in error:
        error = f"{error} [{state.error_kind}]"
    if error is None and state.status not in ("completed", "interrupted"):
        error = f"codex exited with code {exit_code} before the turn ended"
        tail = _errors_of(stderr_tail)
        if tail:
            error += f": {tail}"
    return AgentResult.ended(
        forced=forced,
        forced_reason=forced_reason,
        error=error,
        aborted="the turn was interrupted" if state.status == "interrupted" else None,
        exit_code=exit_code,
        duration_ms=duration_ms,
        session_id=state.thread_id,
        usage=turn_usage(state.total, state.baseline),
        result=state.last_text,
        retryable=state.error_kind in RETRYABLE_KINDS,
    )


def _errors_of(stderr_tail: str) -> str:
    """The `Error: ...` lines of Codex's stderr (it also warns there, e.g. about a CODEX_HOME in /tmp)."""
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error") or " ERROR " in ln]
    return "\n".join(errors or lines)
