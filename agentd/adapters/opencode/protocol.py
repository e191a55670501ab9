"""Pure translation of OpenCode server events into agentd events. No I/O.

Facts this relies on (opencode 1.18.33; raw captures in tests/fixtures/opencode/):
- every /event item is {"id", "type", "properties"}; properties.sessionID names the session;
- assistant messages of one prompt have parentID = the user message id (we choose that id ourselves);
- text and reasoning parts stream as `message.part.delta`; `message.part.updated` carries a snapshot: ""
  at the start and the full text (with time.end) at the end. The stored message list only holds those
  snapshots, so a part in progress reads "" there. The final snapshot is the truth;
- tool parts are snapshots only: pending -> running -> completed | error;
- a retry (`session.status` retry) re-runs the step in NEW parts: the text streamed so far is dropped;
- the run is over at session.idle AND a completed assistant message that does not continue
  (finish != "tool-calls", or error). Idle may come 2-3 times and before that message (abort, errors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agentd.adapters.opencode.text import Message, TextParts
from agentd.domain.models import (
    AgentEvent,
    AgentResult,
    ErrorEvent,
    Forced,
    StatusEvent,
    ToolResultEvent,
    ToolUseEvent,
)

FINISH_CONTINUES = frozenset({"tool-calls"})
ABORTED = "MessageAbortedError"
MAX_PENDING = 10_000


def _d(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


@dataclass
class RunState:
    """What one run's translation remembers. `user_message_id=None` accepts every assistant message."""

    session_id: str
    user_message_id: str | None = None
    text: TextParts = field(default_factory=TextParts)
    tools: dict[str, set[str]] = field(default_factory=dict)  # part id -> {"use", "result"} emitted
    foreign: set[str] = field(default_factory=set)
    pending: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    steps: set[str] = field(default_factory=set)
    tokens: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0
    idle: bool = False
    prompt_seen: bool = False
    aborted: bool = False
    error: dict[str, Any] | None = None
    early_error: dict[str, Any] | None = None  # a session.error before our prompt showed up
    reported: set[tuple[str, str]] = field(default_factory=set)
    final_id: str | None = None
    model: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)  # permission/question asks to answer
    relevant: int = 0  # events about this session (activity, for the inactivity watchdog)

    # --- queries ----------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.idle and self.final_id is not None

    @property
    def started(self) -> bool:
        """Our prompt is being processed: session-wide events are ours (before, they may be a previous
        run's: late idles, a late error, the retries of a prompt queued before ours)."""
        return self.user_message_id is None or self.prompt_seen or bool(self.text.messages)

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.early_error is not None and not self.started)

    @property
    def open_messages(self) -> list[str]:
        return [m.message_id for m in self.text.messages.values() if not m.completed]

    @property
    def open_parts(self) -> bool:
        return self.text.has_open()

    def result_text(self) -> str | None:
        mid = self.final_id or next(reversed(self.text.messages), None)
        return None if mid is None else self.text.text_of(mid)

    def usage(self) -> dict[str, Any]:
        if not self.steps:
            return {}
        return {**self.tokens, "num_steps": len(self.steps)}

    # --- inputs -----------------------------------------------------------------------------------------

    def handle(self, event: dict[str, Any], now_ms: int | None = None) -> list[AgentEvent]:
        """One /event item in, zero or more events out (events of other sessions are ignored)."""
        etype = event.get("type")
        props = _d(event.get("properties"))
        sid = (
            props.get("sessionID")
            or _d(props.get("part")).get("sessionID")
            or _d(props.get("info")).get("sessionID")
        )
        if sid != self.session_id or self.finished:
            return []
        self.relevant += 1
        if etype == "message.updated":
            return self._message(_d(props.get("info")))
        if etype == "message.part.updated":
            return self._route("part", _d(props.get("part")))
        if etype == "message.part.delta":
            return self._route("delta", props)
        if etype == "message.part.removed":
            return self._route("removed", props)
        if etype == "session.status":
            return self._status(_d(props.get("status")), now_ms)
        if etype == "session.idle":
            self.idle = True
            return []
        if etype == "session.error":
            if not self.started:
                if _d(props.get("error")).get("name") != ABORTED:
                    self.early_error = _d(props.get("error"))
                return []
            return self._error(_d(props.get("error")))
        if etype in ("permission.asked", "question.asked") and isinstance(props.get("id"), str):
            self.requests.append({"kind": etype.split(".")[0], **props})
        return []

    def apply_messages(self, messages: list[dict[str, Any]]) -> list[AgentEvent]:
        """Reconcile with GET /session/{id}/message (oldest first) after the event stream dropped."""
        out: list[AgentEvent] = []
        for entry in messages:
            info = _d(_d(entry).get("info"))
            if info.get("sessionID", self.session_id) != self.session_id:
                continue
            out += self._message(info)
            if info.get("id") in self.text.messages:
                for part in _d(entry).get("parts") or []:
                    out += self._part(_d(part), live=False)
        return out

    def apply_status(self, statuses: dict[str, Any]) -> None:
        """GET /session/status: sessions that are not listed are idle."""
        kind = _d(statuses.get(self.session_id)).get("type", "idle")
        self.idle = kind == "idle"

    def stream_reset(self) -> None:
        """The event stream dropped: deltas on the next connection cannot be placed until a snapshot."""
        self.text.stream_reset()

    def close_open(self) -> list[AgentEvent]:
        """At the end: end every part that streamed text but never got its final snapshot, and report
        an error that came before the prompt showed up (the prompt failed before it started)."""
        out = self.text.close_open()
        if self.early_error is not None and not self.started and self.error is None:
            out += self._error(self.early_error)
        return out

    # --- messages ---------------------------------------------------------------------------------------

    def _message(self, info: dict[str, Any]) -> list[AgentEvent]:
        mid = info.get("id")
        if not isinstance(mid, str):
            return []
        if info.get("role") == "user":
            self.prompt_seen = self.prompt_seen or mid == self.user_message_id
            return []
        if info.get("role") != "assistant" or mid in self.foreign:
            return []
        out: list[AgentEvent] = []
        m = self.text.messages.get(mid)
        if m is None:
            if not self._ours(info.get("parentID")):
                self.foreign.add(mid)
                self.pending.pop(mid, None)
                return []
            m = self.text.messages[mid] = Message(mid)
            for kind, obj in self.pending.pop(mid, []):
                out += self._route(kind, obj)
        m.agent = info.get("agent") or m.agent
        if info.get("providerID") and info.get("modelID"):
            self.model = f"{info['providerID']}/{info['modelID']}"
        m.finish = info.get("finish") or m.finish
        if isinstance(info.get("error"), dict):
            m.error = info["error"]
            out += self._error(m.error)
        if _d(info.get("time")).get("completed") is not None and not m.completed:
            m.completed = True
            if m.error is not None or m.finish not in FINISH_CONTINUES:
                self.final_id = mid
        return out

    def _ours(self, parent: Any) -> bool:
        """Answers to our prompt; and, until our final answer, answers to a LATER prompt: OpenCode merges
        prompts queued while the session is busy into one answer whose parentID is the latest of them."""
        mine = self.user_message_id
        if mine is None or parent == mine:
            return True
        return isinstance(parent, str) and parent > mine and self.final_id is None

    def _route(self, kind: str, obj: dict[str, Any]) -> list[AgentEvent]:
        mid = obj.get("messageID")
        if not isinstance(mid, str) or mid in self.foreign or mid == self.user_message_id:
            return []
        if mid not in self.text.messages:
            if self.user_message_id is None:
                self.text.messages[mid] = Message(mid)
            else:  # parts can only be placed once we know whose message it is
                queue = self.pending.setdefault(mid, [])
                if sum(len(q) for q in self.pending.values()) < MAX_PENDING:
                    queue.append((kind, obj))
                return []
        if kind == "part":
            return self._part(obj, live=True)
        if kind == "delta":
            return self.text.delta(obj)
        return self.text.removed(obj)

    def _error(self, err: dict[str, Any]) -> list[AgentEvent]:
        name = str(err.get("name") or "UnknownError")
        data = _d(err.get("data"))
        message = str(data.get("message") or name)
        if name == ABORTED:
            self.aborted = True
            return []
        self.error = err
        if (name, message) in self.reported:
            return []
        self.reported.add((name, message))
        return [ErrorEvent(code=error_code(err), message=message, retryable=bool(data.get("isRetryable")))]

    def _status(self, status: dict[str, Any], now_ms: int | None) -> list[AgentEvent]:
        kind = status.get("type")
        if kind == "idle":
            self.idle = True
        elif kind == "busy":
            self.idle = False
        elif kind == "retry" and self.started:
            self.idle = False
            nxt = _int(status.get("next"))
            delay = max(0, nxt - now_ms) if nxt is not None and now_ms is not None else None
            ev = StatusEvent(
                status="retrying",
                detail=_message_of(status.get("message")),
                attempt=_int(status.get("attempt")),
                retry_delay_ms=delay,
            )
            return [ev, *self.text.abandon_open()]
        return []

    # --- parts ------------------------------------------------------------------------------------------

    def _part(self, part: dict[str, Any], *, live: bool) -> list[AgentEvent]:
        ptype = part.get("type")
        if ptype in ("text", "reasoning") and isinstance(part.get("id"), str):
            return [] if part.get("ignored") else self.text.snapshot(part, live=live)
        if ptype == "tool":
            return self._tool(part)
        if ptype == "step-finish" and isinstance(part.get("id"), str) and part["id"] not in self.steps:
            self.steps.add(part["id"])
            tok = _d(part.get("tokens"))
            cache = _d(tok.get("cache"))
            for key, v in (
                ("input_tokens", tok.get("input")),
                ("output_tokens", tok.get("output")),
                ("reasoning_tokens", tok.get("reasoning")),
                ("cache_read_input_tokens", cache.get("read")),
                ("cache_creation_input_tokens", cache.get("write")),
            ):
                self.tokens[key] = self.tokens.get(key, 0) + (_int(v) or 0)
            c = part.get("cost")
            if isinstance(c, int | float) and not isinstance(c, bool):
                self.cost += float(c)
        return []

    def _tool(self, part: dict[str, Any]) -> list[AgentEvent]:
        pid = str(part.get("id") or part.get("callID"))
        state = _d(part.get("state"))
        status = state.get("status")
        done = self.tools.setdefault(pid, set())
        call_id = str(part.get("callID") or pid)
        out: list[AgentEvent] = []
        if status in ("running", "completed", "error") and "use" not in done:
            done.add("use")
            inp = state.get("input")
            out.append(
                ToolUseEvent(
                    tool_use_id=call_id,
                    name=str(part.get("tool") or ""),
                    input=inp if isinstance(inp, dict) else {"value": inp},
                )
            )
        if status in ("completed", "error") and "result" not in done:
            done.add("result")
            is_error = status == "error"
            output = state.get("error") if is_error else state.get("output")
            out.append(ToolResultEvent(tool_use_id=call_id, output=str(output or ""), is_error=is_error))
        return out

    # --- the end ----------------------------------------------------------------------------------------

    def reported_error(self) -> tuple[str | None, bool]:
        """The error OpenCode reported for the run, if any, and whether it is worth a retry."""
        err = self.error if self.error is not None else self.early_error if not self.started else None
        if err is None:
            return None, False
        data = _d(err.get("data"))
        return str(data.get("message") or err.get("name") or "error"), bool(data.get("isRetryable"))

    def result_fields(self) -> dict[str, Any]:
        """What the run produced, for its AgentResult."""
        return dict(
            session_id=self.session_id or None,
            result=self.result_text(),
            usage=self.usage(),
            cost_usd=self.cost if self.steps else None,
        )

    def outcome(
        self,
        *,
        duration_ms: int,
        forced: Forced | None = None,
        forced_reason: str | None = None,
    ) -> AgentResult:
        """How the run ended. `forced` is "cancelled" or "timed_out" when agentd stopped it."""
        error, retryable = self.reported_error()
        if error is None and not self.aborted:
            final = self.text.messages.get(self.final_id or "")
            if final is None:
                error = "OpenCode went idle without a final assistant message"
            elif final.finish is None:
                error = "the assistant message ended without a finish reason"
        return AgentResult.ended(
            forced=forced,
            forced_reason=forced_reason,
            error=error,
            aborted="the run was aborted in OpenCode" if self.aborted else None,
            duration_ms=duration_ms,
            retryable=retryable and forced is None,
            **self.result_fields(),
        )


def _message_of(raw: Any) -> str | None:
    """Retry messages are sometimes the provider's JSON error body: keep its message."""
    text = str(raw or "")
    if text.startswith("{"):
        try:
            inner = json.loads(text)
        except ValueError:
            return text
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return text or None


def error_code(err: dict[str, Any]) -> str:
    """A stable code for an OpenCode error object ({name, data})."""
    name = str(err.get("name") or "UnknownError")
    status = _int(_d(err.get("data")).get("statusCode"))
    if name == "APIError":
        return f"model_http_{status}" if status else "model_api_error"
    known = {
        "ProviderAuthError": "model_auth_error",
        "MessageOutputLengthError": "model_output_length",
        "UnknownError": "opencode_error",
    }
    if name in known:
        return known[name]
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return f"opencode_{snake.removesuffix('_error')}_error"
