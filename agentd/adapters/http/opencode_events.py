"""agentd job streams as OpenCode `/event` events: a job is an OpenCode session, its answer one message.

Pure mapping (no I/O): `SessionMapper(job).feed(stored_event)` returns the OpenCode events that one agentd
event stands for. The HTTP layer (opencode_stream.py) frames them as `data: {...}` lines.

The shapes follow the `@opencode-ai/sdk` types (1.18.33), both its v1 `Event` union and the v2 one the
OpenCode server itself speaks: every event carries `id` ("evt_…"), `type` and `properties`, and every
session-scoped event names its `sessionID`. One thing comes from v1 only: `message.part.updated` carries
`delta`, the text chunk that event added; its `part.text` is the whole text so far, so a client that
replaces the part (v2) and one that appends the delta (v1) show the same text. No `message.part.delta`
events are sent (a v2 client would otherwise add every chunk twice).

Per job:
  session.created, session.updated       the first event of the job (seq 1)
  message.updated + message.part.updated the user message: the prompt
  session.status {busy}                  when the job starts running (`retry` for a retry wait)
  message.updated (assistant) + step-start  before the first text, reasoning or tool call
  message.part.updated text|reasoning    each chunk, `delta` = the chunk; the last one has time.end
  message.part.removed                   a message the provider abandoned (fell back after an error)
  message.part.updated tool              pending → running on the call, completed | error on its result
  at the end: step-finish part, message.updated (time.completed, finish, cost, tokens, error),
  session.error (not succeeded), session.status {idle}, session.idle, session.updated (totals)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentd import __version__
from agentd.domain.models import (
    DoneEvent,
    ErrorEvent,
    Job,
    ReasoningEvent,
    SessionEvent,
    StatusEvent,
    StoredEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)

OpencodeEvent = dict[str, Any]
Clock = Callable[[], int]

SESSION_PREFIX = "ses_"
DEFAULT_AGENT = "build"
TITLE_MAX = 80


def now_ms() -> int:
    return int(time.time() * 1000)


def session_id_for(job_id: str) -> str:
    """The OpenCode session id of a job (`ses_<job id>`)."""
    return SESSION_PREFIX + job_id


def server_connected() -> OpencodeEvent:
    return {"id": "evt_0", "type": "server.connected", "properties": {}}


def heartbeat(n: int) -> OpencodeEvent:
    return {"id": f"evt_hb{n:08d}", "type": "server.heartbeat", "properties": {}}


def _tokens(usage: dict[str, Any]) -> dict[str, Any]:
    """agentd `usage` (Claude's input_tokens/… or OpenCode's input/…) as OpenCode's token counts."""

    def num(*keys: str) -> int:
        for k in keys:
            v = usage.get(k)
            if isinstance(v, int | float) and not isinstance(v, bool):
                return int(v)
        return 0

    raw_cache = usage.get("cache")
    cache: dict[str, Any] = raw_cache if isinstance(raw_cache, dict) else {}
    return {
        "input": num("input_tokens", "input"),
        "output": num("output_tokens", "output"),
        "reasoning": num("reasoning_tokens", "reasoning"),
        "cache": {
            "read": num("cache_read_input_tokens") or _num(cache, "read"),
            "write": num("cache_creation_input_tokens") or _num(cache, "write"),
        },
    }


def _num(d: dict[str, Any], key: str) -> int:
    v = d.get(key)
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0


@dataclass
class _Part:
    id: str
    kind: str  # "text" | "reasoning" | "tool"
    text: str = ""
    start: int = 0
    ended: bool = False
    # tools
    call_id: str = ""
    tool: str = ""
    input: dict[str, Any] = field(default_factory=dict)


class SessionMapper:
    """The OpenCode view of one job. Feed it the job's stored events in order (replayed or live)."""

    def __init__(self, job: Job, *, clock: Clock = now_ms) -> None:
        self.job = job
        self.clock = clock
        self.session_id = session_id_for(job.id)
        self._token = job.id.removeprefix("job_")
        self._n_msg = 0
        self._n_part = 0
        self._seq = 0
        self._k = 0
        self.created = int(job.created_at.timestamp() * 1000)
        self.updated = self.created
        self.model = job.request.model or "default"
        self.user_id = self._new_msg_id()
        self.assistant_id: str | None = None
        self.assistant_created = 0
        self.parts: dict[tuple[str, str, int], _Part] = {}
        self.tools: dict[str, _Part] = {}
        self.finished = False
        self.busy = False
        self.last_error: str | None = None
        self.cost = 0.0
        self.tokens = _tokens({})

    # --- ids ----------------------------------------------------------------------------------------------

    def _new_msg_id(self) -> str:
        self._n_msg += 1
        return f"msg_{self._token}{self._n_msg:04d}"

    def _new_part_id(self) -> str:
        self._n_part += 1
        return f"prt_{self._token}{self._n_part:06d}"

    def _event(self, etype: str, props: dict[str, Any]) -> OpencodeEvent:
        # Deterministic and in creation order: the job's token, the agentd seq, the index within it.
        self._k += 1
        return {
            "id": f"evt_{self._token}{self._seq:010d}{self._k:03d}",
            "type": etype,
            "properties": {"sessionID": self.session_id, **props},
        }

    # --- shapes -------------------------------------------------------------------------------------------

    def session_info(self) -> dict[str, Any]:
        job = self.job
        title = (job.request.prompt.strip().splitlines() or [""])[0][:TITLE_MAX] or job.id
        return {
            "id": self.session_id,
            "slug": job.id,
            "projectID": job.project_id,
            "directory": job.project_id,
            "path": "",
            "title": title,
            "version": __version__,
            "agent": job.request.agent or DEFAULT_AGENT,
            "model": {"id": self.model, "providerID": job.provider},
            "cost": self.cost,
            "tokens": self.tokens,
            "time": {"created": self.created, "updated": self.updated},
        }

    def _user_message(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "sessionID": self.session_id,
            "role": "user",
            "time": {"created": self.created},
            "agent": self.job.request.agent or DEFAULT_AGENT,
            "model": {"providerID": self.job.provider, "modelID": self.model},
        }

    def _assistant_message(self, **extra: Any) -> dict[str, Any]:
        agent = self.job.request.agent or DEFAULT_AGENT
        assert self.assistant_id is not None
        return {
            "id": self.assistant_id,
            "sessionID": self.session_id,
            "role": "assistant",
            "time": {"created": self.assistant_created, **extra.pop("time", {})},
            "parentID": self.user_id,
            "modelID": self.model,
            "providerID": self.job.provider,
            "mode": agent,
            "agent": agent,
            "path": {"cwd": self.job.project_id, "root": self.job.project_id},
            "cost": self.cost,
            "tokens": self.tokens,
            **extra,
        }

    def _part_event(self, part: dict[str, Any], delta: str | None = None) -> OpencodeEvent:
        props: dict[str, Any] = {"part": part, "time": self.clock()}
        if delta is not None:
            props["delta"] = delta
        return self._event("message.part.updated", props)

    def _base_part(self, pid: str, ptype: str) -> dict[str, Any]:
        assert self.assistant_id is not None
        return {"id": pid, "sessionID": self.session_id, "messageID": self.assistant_id, "type": ptype}

    # --- the mapping ---------------------------------------------------------------------------------------

    def feed(self, stored: StoredEvent) -> list[OpencodeEvent]:
        """The OpenCode events for one agentd event (an empty list for those OpenCode has no word for)."""
        self._seq, self._k = stored.seq, 0
        out: list[OpencodeEvent] = []
        if stored.seq == 1:
            out += self._opening()
        if self.finished:
            return out
        ev = stored.event
        if isinstance(ev, StatusEvent):
            out += self._status(ev)
        elif isinstance(ev, SessionEvent):
            if ev.model:
                self.model = ev.model
            self.updated = self.clock()
            out.append(self._event("session.updated", {"info": self.session_info()}))
        elif isinstance(ev, TextEvent | ReasoningEvent):
            out += self._chunk(ev)
        elif isinstance(ev, ToolUseEvent):
            out += self._tool_use(ev)
        elif isinstance(ev, ToolResultEvent):
            out += self._tool_result(ev)
        elif isinstance(ev, ErrorEvent) and not ev.retryable:
            self.last_error = ev.message  # reported once, with the end of the run
        elif isinstance(ev, DoneEvent):
            out += self._done(ev)
        return out

    def _opening(self) -> list[OpencodeEvent]:
        info = self.session_info()
        part = {
            "id": self._new_part_id(),
            "sessionID": self.session_id,
            "messageID": self.user_id,
            "type": "text",
            "text": self.job.request.prompt,
        }
        return [
            self._event("session.created", {"info": info}),
            self._event("session.updated", {"info": info}),
            self._event("message.updated", {"info": self._user_message()}),
            self._part_event(part),
        ]

    def _status(self, ev: StatusEvent) -> list[OpencodeEvent]:
        if ev.status == "running":
            if self.busy:  # the worker and the provider both say so
                return []
            self.busy = True
            return [self._event("session.status", {"status": {"type": "busy"}})]
        if ev.status in ("retrying", "retry") or ev.attempt is not None:
            self.busy = False
            status = {
                "type": "retry",
                "attempt": ev.attempt or 1,
                "message": ev.detail or ev.status,
                "next": self.clock() + (ev.retry_delay_ms or 0),
            }
            return [self._event("session.status", {"status": status})]
        return []

    def _ensure_assistant(self) -> list[OpencodeEvent]:
        if self.assistant_id is not None:
            return []
        self.assistant_id = self._new_msg_id()
        self.assistant_created = self.clock()
        step = self._base_part(self._new_part_id(), "step-start")
        return [self._event("message.updated", {"info": self._assistant_message()}), self._part_event(step)]

    def _chunk(self, ev: TextEvent | ReasoningEvent) -> list[OpencodeEvent]:
        out = self._ensure_assistant()
        key = (ev.event, ev.message_id, ev.index)
        part = self.parts.get(key)
        if part is None:
            part = self.parts[key] = _Part(self._new_part_id(), ev.event, start=self.clock())
        if part.ended:
            return out
        if ev.abandoned:
            part.ended = True
            assert self.assistant_id is not None
            out.append(
                self._event("message.part.removed", {"messageID": self.assistant_id, "partID": part.id})
            )
            return out
        part.text += ev.chunk
        part.ended = ev.is_complete
        if ev.chunk or part.ended:
            out.append(self._part_event(self._text_part(part), ev.chunk if ev.chunk else None))
        return out

    def _text_part(self, part: _Part) -> dict[str, Any]:
        tm: dict[str, Any] = {"start": part.start}
        if part.ended:
            tm["end"] = self.clock()
        return {**self._base_part(part.id, part.kind), "text": part.text, "time": tm}

    def _tool_use(self, ev: ToolUseEvent) -> list[OpencodeEvent]:
        out = self._ensure_assistant()
        if ev.tool_use_id in self.tools:
            return out
        part = _Part(
            self._new_part_id(),
            "tool",
            start=self.clock(),
            call_id=ev.tool_use_id,
            tool=ev.name,
            input=ev.input,
        )
        self.tools[ev.tool_use_id] = part
        base = {**self._base_part(part.id, "tool"), "callID": ev.tool_use_id, "tool": ev.name}
        raw = json.dumps(ev.input, separators=(",", ":"))
        pending = {"status": "pending", "input": ev.input, "raw": raw}
        running = {"status": "running", "input": ev.input, "title": _title(ev), "time": {"start": part.start}}
        out.append(self._part_event({**base, "state": pending}))
        out.append(self._part_event({**base, "state": running}))
        return out

    def _tool_result(self, ev: ToolResultEvent) -> list[OpencodeEvent]:
        part = self.tools.get(ev.tool_use_id)
        if part is None or part.ended:
            return []
        part.ended = True
        return [self._part_event(self._tool_final(part, ev.output, error=ev.is_error))]

    def _tool_final(self, part: _Part, output: str, *, error: bool) -> dict[str, Any]:
        base = {**self._base_part(part.id, "tool"), "callID": part.call_id, "tool": part.tool}
        tm = {"start": part.start, "end": self.clock()}
        if error:
            state: dict[str, Any] = {"status": "error", "input": part.input, "error": output, "time": tm}
        else:
            state = {
                "status": "completed",
                "input": part.input,
                "output": output,
                "title": part.tool,
                "metadata": {},
                "time": tm,
            }
        return {**base, "state": state}

    def _done(self, ev: DoneEvent) -> list[OpencodeEvent]:
        self.finished = True
        out = self._ensure_assistant()
        # Close what the run left open: text still streaming, tools that never answered.
        for part in self.parts.values():
            if not part.ended:
                part.ended = True
                out.append(self._part_event(self._text_part(part)))
        for part in self.tools.values():
            if not part.ended:
                part.ended = True
                why = "the run ended before the tool answered"
                out.append(self._part_event(self._tool_final(part, why, error=True)))
        self.cost = float(ev.cost_usd or 0.0)
        self.tokens = _tokens(ev.usage)
        finish = "stop" if ev.status == "succeeded" else ev.status
        step = {
            **self._base_part(self._new_part_id(), "step-finish"),
            "reason": finish,
            "cost": self.cost,
            "tokens": self.tokens,
        }
        out.append(self._part_event(step))
        end = self.clock()
        extra: dict[str, Any] = {"time": {"completed": end}}
        error = _error(ev, self.last_error)
        if error is None:
            extra["finish"] = finish
        else:
            extra["error"] = error
        out.append(self._event("message.updated", {"info": self._assistant_message(**extra)}))
        if error is not None:
            out.append(self._event("session.error", {"error": error}))
        self.updated = end
        out.append(self._event("session.status", {"status": {"type": "idle"}}))
        out.append(self._event("session.idle", {}))
        out.append(self._event("session.updated", {"info": self.session_info()}))
        return out


def _title(ev: ToolUseEvent) -> str:
    desc = ev.input.get("description")
    return desc if isinstance(desc, str) and desc else ev.name


def _error(ev: DoneEvent, last_error: str | None) -> dict[str, Any] | None:
    if ev.status == "succeeded":
        return None
    message = ev.error or last_error or ev.status
    if ev.status == "cancelled":
        return {"name": "MessageAbortedError", "data": {"message": message}}
    return {"name": "UnknownError", "data": {"message": message}}
