"""Redaction: secret values never leave a run, nor reach a log.

Every secret value a run was given, and the service's own keys, become `[REDACTED:NAME]` in each event the
run produces before it is stored or sent (`RunRedactor`), and in every log line (`LOG_SECRETS`, a structlog
processor). Text and reasoning arrive in chunks, so a value can be split across two events: for each
message the redactor holds back at most len(longest value) - 1 trailing characters until the next chunk,
the message's end, the next non-text event or the end of the run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from agentd.domain.models import AgentEvent, AgentResult, ReasoningEvent, TextEvent


def placeholder(name: str) -> str:
    return f"[REDACTED:{name}]"


class Redactor:
    """Replaces whole secret values in text (the longest first when one value contains another)."""

    def __init__(self, secrets: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        pairs = secrets.items() if isinstance(secrets, Mapping) else secrets
        self._names: dict[str, str] = {}  # value → the name it is shown as
        for name, value in pairs:
            if value:
                self._names.setdefault(value, name)
        values = sorted(self._names, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, values))) if values else None
        self.hold = len(values[0]) - 1 if values else 0  # the longest tail that may start a value

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, s: str) -> str:
        if self._pattern is None or not s:
            return s
        return self._pattern.sub(lambda m: placeholder(self._names[m.group()]), s)

    def value(self, obj: Any) -> Any:
        """Every string inside a JSON-like value (dict keys too), redacted."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.value(k): self.value(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return type(obj)(self.value(v) for v in obj)
        return obj

    def split(self, s: str) -> tuple[str, str]:
        """(the redacted part that is safe to send now, the raw tail that may be the start of a value).

        A value that starts before the held tail fits inside `s` (no value is longer than hold + 1), so it
        is found here; a value that runs into the tail moves the cut to its end.
        """
        if self._pattern is None:
            return s, ""
        cut = len(s) - self.hold
        if cut <= 0:
            return "", s
        out: list[str] = []
        pos = 0
        for m in self._pattern.finditer(s):
            if m.start() >= cut:
                break
            out += [s[pos : m.start()], placeholder(self._names[m.group()])]
            pos = m.end()
        cut = max(cut, pos)
        out.append(s[pos:cut])
        return "".join(out), s[cut:]


_Chunked = TextEvent | ReasoningEvent


class RunRedactor:
    """One run's events in, redacted events out, in order. Call `flush()` at the end of the run."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        self.redactor = Redactor(secrets)
        self._held: dict[tuple[str, str], tuple[str, _Chunked]] = {}  # (event, message_id) → tail, event

    def feed(self, ev: AgentEvent) -> list[AgentEvent]:
        if not self.redactor:
            return [ev]
        if isinstance(ev, TextEvent | ReasoningEvent):
            return self._chunk(ev)
        out = self.flush()  # the held tails come first: a tool call ends the text before it
        out.append(type(ev).model_validate(self.redactor.value(ev.model_dump())))
        return out

    def _chunk(self, ev: _Chunked) -> list[AgentEvent]:
        key = (ev.event, ev.message_id)
        tail, _ = self._held.pop(key, ("", ev))
        if ev.abandoned:  # the client drops this message: the held tail goes with it
            return [ev]
        text = tail + ev.chunk
        if ev.is_complete:
            return [ev.model_copy(update={"chunk": self.redactor.text(text)})]
        now, tail = self.redactor.split(text)
        if tail:
            self._held[key] = (tail, ev)
        return [ev.model_copy(update={"chunk": now})] if now or not tail else []

    def flush(self) -> list[AgentEvent]:
        """The held tails, redacted, as one more chunk of each unfinished message."""
        out: list[AgentEvent] = [
            ev.model_copy(update={"chunk": self.redactor.text(tail)}) for tail, ev in self._held.values()
        ]
        self._held.clear()
        return out

    def result(self, result: AgentResult) -> AgentResult:
        if not self.redactor:
            return result
        return AgentResult.model_validate(self.redactor.value(result.model_dump()))


class KnownSecrets:
    """The values to redact from logs: the service's keys, and each running run's secrets while it runs.

    An instance is a structlog processor (see agentd.logging).
    """

    def __init__(self) -> None:
        self._sets: dict[int, Mapping[str, str]] = {}
        self._next = 0
        self._redactor = Redactor({})

    @contextmanager
    def holding(self, secrets: Mapping[str, str]) -> Iterator[None]:
        token = self.add(secrets)
        try:
            yield
        finally:
            self.remove(token)

    def add(self, secrets: Mapping[str, str]) -> int:
        self._next += 1
        self._sets[self._next] = dict(secrets)
        self._rebuild()
        return self._next

    def remove(self, token: int) -> None:
        if self._sets.pop(token, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        self._redactor = Redactor([pair for secrets in self._sets.values() for pair in secrets.items()])

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        redactor = self._redactor
        if redactor:
            for key, value in event_dict.items():
                event_dict[key] = redactor.value(value)
        return event_dict


LOG_SECRETS = KnownSecrets()
