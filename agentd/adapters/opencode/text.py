"""Streamed text and reasoning parts: turn deltas and snapshots into chunks that add up to the final text.

Pure bookkeeping, no I/O. The rules:
- `emitted` is what we sent for a part; every view of the server's text (a live snapshot, deltas placed
  after a live snapshot on the same connection, a stored message list) only ever adds the missing suffix;
- a delta can only be placed when the part's text on the current connection is known (`aligned`); after
  the event stream dropped, deltas of a part in progress are ignored until its final snapshot;
- when the server's text contradicts what we sent (a retry, a removed part, a different final text), the
  message is abandoned (`abandoned=True`) and sent again under `<message id>~r<n>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentd.domain.models import AgentEvent, ReasoningEvent, TextEvent


@dataclass
class Part:
    part_id: str
    message_id: str
    kind: str  # "text" | "reasoning"
    index: int
    emitted: str = ""  # what we sent under the message's current revision
    aligned: str | None = None  # server text as of the last event on this connection (None: unknown)
    complete: bool = False
    truth: str | None = None  # the final snapshot


@dataclass
class Message:
    message_id: str
    agent: str | None = None
    revision: int = 0  # bumped when streamed text is abandoned
    completed: bool = False
    finish: str | None = None
    error: dict[str, Any] | None = None
    part_ids: list[str] = field(default_factory=list)

    @property
    def event_id(self) -> str:
        return self.message_id if not self.revision else f"{self.message_id}~r{self.revision}"


@dataclass
class TextParts:
    messages: dict[str, Message] = field(default_factory=dict)
    parts: dict[str, Part] = field(default_factory=dict)

    def snapshot(self, part: dict[str, Any], *, live: bool) -> list[AgentEvent]:
        """A text/reasoning part from message.part.updated (`live`) or from a stored message list."""
        p = self.parts.get(part["id"])
        if p is None:
            m = self.messages[part["messageID"]]
            p = self.parts[part["id"]] = Part(part["id"], m.message_id, str(part["type"]), len(m.part_ids))
            m.part_ids.append(p.part_id)
        text = str(part.get("text") or "")
        if live:
            p.aligned = text
        time = part.get("time")
        final = isinstance(time, dict) and time.get("end") is not None
        return self._offer(p, text, final=final, snapshot=True)

    def delta(self, props: dict[str, Any]) -> list[AgentEvent]:
        p = self.parts.get(str(props.get("partID")))
        if p is None or p.aligned is None or props.get("field", "text") != "text":
            return []
        p.aligned += str(props.get("delta") or "")
        return self._offer(p, p.aligned, final=False, snapshot=False)

    def removed(self, props: dict[str, Any]) -> list[AgentEvent]:
        p = self.parts.pop(str(props.get("partID")), None)
        if p is None:
            return []
        m = self.messages[p.message_id]
        if not (p.emitted or p.complete):
            m.part_ids.remove(p.part_id)
            return []
        texts = {pid: self.parts[pid].emitted for pid in m.part_ids if pid in self.parts}
        out = self._abandon(m, extra=p)
        m.part_ids.remove(p.part_id)
        return out + self._replay(m, texts)

    def abandon_open(self) -> list[AgentEvent]:
        """A retry re-runs the step in new parts: the text of unfinished parts is void."""
        out: list[AgentEvent] = []
        for m in self.messages.values():
            if m.completed:
                continue
            dropped = [self.parts[pid] for pid in m.part_ids if not self.parts[pid].complete]
            for p in dropped:
                p.aligned = None
            if any(p.emitted for p in dropped):
                out += self._abandon(m)
                out += self._replay(m, {})
        return out

    def stream_reset(self) -> None:
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

    def has_open(self) -> bool:
        return any(p.emitted and not p.complete for p in self.parts.values())

    def text_of(self, message_id: str) -> str | None:
        m = self.messages.get(message_id)
        if m is None:
            return None
        texts = [
            p.truth if p.truth is not None else p.emitted
            for p in (self.parts[pid] for pid in m.part_ids)
            if p.kind == "text"
        ]
        return "".join(texts) if texts else None

    # --- internals --------------------------------------------------------------------------------------

    def _offer(self, p: Part, text: str, *, final: bool, snapshot: bool) -> list[AgentEvent]:
        """One view of the part's server text: emit what extends what we sent; repair a contradiction."""
        if final:
            p.truth = text
        if p.complete:
            if final and snapshot and text != p.emitted:
                return self._rewrite(p, text)
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
            p.aligned = None  # the deltas contradict what we sent: wait for a snapshot
            return []
        return self._rewrite(p, text)

    def _rewrite(self, p: Part, text: str) -> list[AgentEvent]:
        m = self.messages[p.message_id]
        texts = {pid: self.parts[pid].emitted for pid in m.part_ids}
        texts[p.part_id] = text
        return self._abandon(m) + self._replay(m, texts)

    def _abandon(self, m: Message, extra: Part | None = None) -> list[AgentEvent]:
        out: list[AgentEvent] = []
        for p in [self.parts[pid] for pid in m.part_ids if pid in self.parts] + ([extra] if extra else []):
            if p.emitted or p.complete:
                out.append(self._ev(p, "", complete=True, abandoned=True))
            p.emitted, p.complete = "", False
        m.revision += 1
        return out

    def _replay(self, m: Message, texts: dict[str, str]) -> list[AgentEvent]:
        """Send a message's parts again under its new revision: the final text, else `texts`."""
        out: list[AgentEvent] = []
        for pid in m.part_ids:
            p = self.parts[pid]
            text = p.truth if p.truth is not None else texts.get(pid, "")
            p.emitted, p.complete = text, p.truth is not None
            if text or p.complete:
                out.append(self._ev(p, text, complete=p.complete))
        return out

    def _ev(self, p: Part, chunk: str, *, complete: bool = False, abandoned: bool = False) -> AgentEvent:
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
