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

from dataclasses import dataclass, field
from typing import Any

from agentd.domain.models import (
    AgentEvent,
    AgentResult,
    ErrorEvent,
    ReasoningEvent,
    StatusEvent,
    TextEvent,
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
class _Part:
    part_id: str
    message_id: str
    kind: str  # "text" | "reasoning"
    index: int
    emitted: str = ""  # what we sent for this part under the message's current revision
    aligned: str | None = None  # server text as of the last event on the current connection (None: unknown)
    complete: bool = False
    truth: str | None = None  # the final snapshot


@dataclass
class _Message:
    message_id: str
    agent: str | None = None
    revision: int = 0  # bumped when streamed text is abandoned; events then use "<id>~r<n>"
    completed: bool = False
    finish: str | None = None
    error: dict[str, Any] | None = None
    part_ids: list[str] = field(default_factory=list)

    @property
    def event_id(self) -> str:
        return self.message_id if not self.revision else f"{self.message_id}~r{self.revision}"


@dataclass
class RunState:
    """What one run's translation remembers. `user_message_id=None` accepts every assistant message."""

    session_id: str
    user_message_id: str | None = None
    messages: dict[str, _Message] = field(default_factory=dict)
    parts: dict[str, _Part] = field(default_factory=dict)
    tools: dict[str, set[str]] = field(default_factory=dict)  # part id -> {"use", "result"} emitted
    foreign: set[str] = field(default_factory=set)
    pending: dict[str, list[tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    steps: set[str] = field(default_factory=set)
    tokens: dict[str, int] = field(default_factory=dict)
    cost: float = 0.0
    idle: bool = False
    retrying: bool = False
    prompt_seen: bool = False
    aborted: bool = False
    error: dict[str, Any] | None = None
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
    def open_messages(self) -> list[str]:
        return [m.message_id for m in self.messages.values() if not m.completed]

    @property
    def open_parts(self) -> bool:
        return any(p.emitted and not p.complete for p in self.parts.values())

    def result_text(self) -> str | None:
        mid = self.final_id or next(reversed(self.messages), None)
        if mid is None:
            return None
        texts = []
        for pid in self.messages[mid].part_ids:
            p = self.parts[pid]
            if p.kind == "text":
                texts.append(p.truth if p.truth is not None else p.emitted)
        return "".join(texts) if texts else None

    def usage(self) -> dict[str, Any]:
        if not self.steps:
            return {}
        return {**self.tokens, "num_steps": len(self.steps)}

    # --- inputs -----------------------------------------------------------------------------------------

    def handle(self, event: dict[str, Any], now_ms: int | None = None) -> list[AgentEvent]:
        """One /event item in, zero or more events out (events of other sessions are ignored)."""
        etype = event.get("type")
        props = _d(event.get("properties"))
        sid = props.get("sessionID") or _d(props.get("part")).get("sessionID") or _d(props.get("info")).get(
            "sessionID"
        )
        if sid != self.session_id:
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
            if info.get("id") in self.messages:
                for part in _d(entry).get("parts") or []:
                    out += self._part(_d(part), live=False)
        return out

    def apply_status(self, statuses: dict[str, Any]) -> None:
        """GET /session/status: sessions that are not listed are idle."""
        kind = _d(statuses.get(self.session_id)).get("type", "idle")
        self.idle = kind == "idle"

    def stream_reset(self) -> None:
        """The event stream dropped: deltas on the next connection cannot be placed until a snapshot."""
        for p in self.parts.values():
            p.aligned = None

    def close_open(self) -> list[AgentEvent]:
        """End every part that streamed text but never got its final snapshot."""
        out: list[AgentEvent] = []
        for p in self.parts.values():
            if p.emitted and not p.complete:
                p.complete = True
                out.append(self._ev(p, "", complete=True))
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
        m = self.messages.get(mid)
        if m is None:
            if self.user_message_id is not None and info.get("parentID") != self.user_message_id:
                self.foreign.add(mid)
                self.pending.pop(mid, None)
                return []
            m = self.messages[mid] = _Message(mid)
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

    def _route(self, kind: str, obj: dict[str, Any]) -> list[AgentEvent]:
        mid = obj.get("messageID")
        if not isinstance(mid, str) or mid in self.foreign or mid == self.user_message_id:
            return []
        if mid not in self.messages:
            if self.user_message_id is None:
                self.messages[mid] = _Message(mid)
            else:  # parts can only be placed once we know whose message it is
                queue = self.pending.setdefault(mid, [])
                if sum(len(q) for q in self.pending.values()) < MAX_PENDING:
                    queue.append((kind, obj))
                return []
        if kind == "part":
            return self._part(obj, live=True)
        if kind == "delta":
            return self._delta(obj)
        return self._removed(obj)

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
        elif kind == "retry":
            self.idle = False
            self.retrying = True
            nxt = _int(status.get("next"))
            delay = max(0, nxt - now_ms) if nxt is not None and now_ms is not None else None
            ev = StatusEvent(
                status="retrying",
                detail=str(status.get("message") or "") or None,
                attempt=_int(status.get("attempt")),
                retry_delay_ms=delay,
            )
            return [ev, *self._abandon_open()]
        return []

    # --- parts ------------------------------------------------------------------------------------------

    def _part(self, part: dict[str, Any], *, live: bool) -> list[AgentEvent]:
        ptype = part.get("type")
        if ptype in ("text", "reasoning") and isinstance(part.get("id"), str):
            if part.get("ignored"):
                return []
            p = self._part_state(part)
            text = str(part.get("text") or "")
            if live:
                p.aligned = text
            return self._offer(p, text, final=_d(part.get("time")).get("end") is not None, snapshot=True)
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

    def _part_state(self, part: dict[str, Any]) -> _Part:
        pid = part["id"]
        p = self.parts.get(pid)
        if p is None:
            m = self.messages[part["messageID"]]
            p = self.parts[pid] = _Part(pid, m.message_id, str(part["type"]), len(m.part_ids))
            m.part_ids.append(pid)
        return p

    def _delta(self, props: dict[str, Any]) -> list[AgentEvent]:
        p = self.parts.get(str(props.get("partID")))
        if p is None or p.aligned is None or props.get("field", "text") != "text":
            return []
        p.aligned += str(props.get("delta") or "")
        return self._offer(p, p.aligned, final=False, snapshot=False)

    def _removed(self, props: dict[str, Any]) -> list[AgentEvent]:
        p = self.parts.pop(str(props.get("partID")), None)
        if p is None:
            return []
        m = self.messages[p.message_id]
        out = self._abandon(m) if (p.emitted or p.complete) else []
        m.part_ids.remove(p.part_id)
        return out + (self._replay(m) if out else [])

    def _offer(self, p: _Part, text: str, *, final: bool, snapshot: bool) -> list[AgentEvent]:
        """A view of the part's server text: emit what extends what we sent; repair a disagreement."""
        if final:
            p.truth = text
        if p.complete:
            if final and snapshot and text != p.emitted:
                return self._rewrite(p)
            return []
        if text.startswith(p.emitted):
            suffix, p.emitted = text[len(p.emitted) :], text
            if final:
                p.complete = True
                return [self._ev(p, suffix, complete=True)]
            return [self._ev(p, suffix)] if suffix else []
        if not final and p.emitted.startswith(text):
            return []  # an older view (e.g. the stored "" of a part in progress)
        if not snapshot:
            p.aligned = None  # deltas disagree with what we sent: wait for a snapshot
            return []
        return self._rewrite(p)

    def _rewrite(self, p: _Part) -> list[AgentEvent]:
        m = self.messages[p.message_id]
        return self._abandon(m) + self._replay(m)

    def _abandon(self, m: _Message) -> list[AgentEvent]:
        out: list[AgentEvent] = []
        for pid in m.part_ids:
            p = self.parts[pid]
            if p.emitted or p.complete:
                out.append(self._ev(p, "", complete=True, abandoned=True))
            p.emitted, p.complete = "", False
        m.revision += 1
        return out

    def _replay(self, m: _Message) -> list[AgentEvent]:
        """Send a message's parts again under its new revision: final text, else what is known so far."""
        out: list[AgentEvent] = []
        for pid in m.part_ids:
            p = self.parts[pid]
            text = p.truth if p.truth is not None else (p.aligned or "")
            p.emitted, p.complete = text, p.truth is not None
            if text or p.complete:
                out.append(self._ev(p, text, complete=p.complete))
        return out

    def _abandon_open(self) -> list[AgentEvent]:
        """A retry re-runs the step in new parts: text streamed by unfinished parts is void."""
        out: list[AgentEvent] = []
        for m in self.messages.values():
            if m.completed:
                continue
            dropped = [self.parts[pid] for pid in m.part_ids if not self.parts[pid].complete]
            for p in dropped:
                p.aligned = None
            if any(p.emitted for p in dropped):
                out += self._abandon(m)
                for p in dropped:
                    p.truth = None
                out += self._replay(m)
        return out

    def _ev(self, p: _Part, chunk: str, *, complete: bool = False, abandoned: bool = False) -> AgentEvent:
        m = self.messages[p.message_id]
        if p.kind == "reasoning":
            return ReasoningEvent(
                message_id=m.event_id, index=p.index, chunk=chunk, is_complete=complete, abandoned=abandoned
            )
        return TextEvent(
            message_id=m.event_id,
            index=p.index,
            chunk=chunk,
            is_complete=complete,
            agent=m.agent,
            abandoned=abandoned,
        )

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

    def outcome(
        self,
        *,
        duration_ms: int,
        forced: str | None = None,
        forced_reason: str | None = None,
        exit_code: int | None = None,
    ) -> AgentResult:
        """How the run ended. `forced` is "cancelled" or "timed_out" when agentd stopped it."""
        common: dict[str, Any] = dict(
            exit_code=exit_code,
            duration_ms=duration_ms,
            session_id=self.session_id,
            result=self.result_text(),
            usage=self.usage(),
            cost_usd=self.cost if self.steps else None,
        )
        if forced in ("cancelled", "timed_out"):
            return AgentResult(status=forced, error=forced_reason or forced, **common)  # type: ignore[arg-type]
        if self.error is not None:
            data = _d(self.error.get("data"))
            message = str(data.get("message") or self.error.get("name") or "error")
            return AgentResult(status="failed", error=message, retryable=bool(data.get("isRetryable")), **common)
        if self.aborted:
            return AgentResult(status="cancelled", error="the run was aborted in OpenCode", **common)
        final = self.messages.get(self.final_id or "")
        if final is None:
            return AgentResult(
                status="failed", error="OpenCode went idle without a final assistant message", **common
            )
        if final.finish is None:
            return AgentResult(
                status="failed", error="the assistant message ended without a finish reason", **common
            )
        return AgentResult(status="succeeded", **common)


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
