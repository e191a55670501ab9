"""Redaction: a secret value never leaves a run whole or in pieces, wherever it is split."""

from __future__ import annotations

from typing import Any

import pytest

from agentd.domain.models import (
    AgentEvent,
    AgentResult,
    DoneEvent,
    ErrorEvent,
    OutputEvent,
    ReasoningEvent,
    SessionEvent,
    StatusEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)
from agentd.services.redaction import KnownSecrets, Redactor, RunRedactor

SECRET = "Zq9-s3cr3t-VALUE"
SECRETS = {"API_TOKEN": SECRET, "OTHER": "another-long-value"}
TEXT = f"the token is {SECRET}, keep it safe"
REDACTED = "the token is [REDACTED:API_TOKEN], keep it safe"


def pieces(value: str) -> set[str]:
    """Every piece of the secret long enough to give part of it away."""
    return {value[i : i + 3] for i in range(len(value) - 2)}


def run(events: list[AgentEvent], secrets: dict[str, str] = SECRETS) -> list[AgentEvent]:
    r = RunRedactor(secrets)
    out = [o for ev in events for o in r.feed(ev)]
    return out + r.flush()


def text_of(events: list[AgentEvent], message_id: str = "m") -> str:
    return "".join(
        e.chunk for e in events if isinstance(e, TextEvent | ReasoningEvent) and e.message_id == message_id
    )


def assert_no_piece(events: list[AgentEvent], value: str = SECRET) -> None:
    for ev in events:
        dumped = ev.model_dump_json()
        assert value not in dumped
        if isinstance(ev, TextEvent | ReasoningEvent):
            assert not any(p in ev.chunk for p in pieces(value)), ev


@pytest.mark.parametrize("kind", [TextEvent, ReasoningEvent])
@pytest.mark.parametrize("complete", [True, False])
def test_every_split_position_across_two_chunks(kind: Any, complete: bool) -> None:
    for cut in range(len(TEXT) + 1):
        events = [
            kind(message_id="m", chunk=TEXT[:cut]),
            kind(message_id="m", chunk=TEXT[cut:], is_complete=complete),
        ]
        out = run(events)
        assert text_of(out) == REDACTED, cut
        assert_no_piece(out)
        assert all(isinstance(e, kind) for e in out)
        if complete:
            assert out[-1].is_complete  # type: ignore[union-attr]


def test_every_pair_of_split_positions_across_three_chunks() -> None:
    start = TEXT.index(SECRET)
    for a in range(start - 2, start + len(SECRET) + 2):
        for b in range(a, start + len(SECRET) + 3):
            events: list[AgentEvent] = [
                TextEvent(message_id="m", chunk=TEXT[:a]),
                TextEvent(message_id="m", chunk=TEXT[a:b]),
                TextEvent(message_id="m", chunk=TEXT[b:], is_complete=True),
            ]
            out = run(events)
            assert text_of(out) == REDACTED, (a, b)
            assert_no_piece(out)


def test_a_held_tail_goes_out_before_the_next_tool_call_and_at_the_end() -> None:
    events: list[AgentEvent] = [
        TextEvent(message_id="m", chunk="partial answer " + SECRET[:5]),
        ToolUseEvent(tool_use_id="t", name="Bash", input={"command": "ls"}),
        TextEvent(message_id="n", chunk="tail"),
    ]
    out = run(events)
    assert [type(e).__name__ for e in out] == ["TextEvent", "TextEvent", "ToolUseEvent", "TextEvent"]
    assert text_of(out) == "partial answer " + SECRET[:5]  # only a prefix: it is not the secret
    assert text_of(out, "n") == "tail"


def test_two_messages_are_held_apart() -> None:
    events: list[AgentEvent] = [
        TextEvent(message_id="a", chunk="A " + SECRET[:6]),
        ReasoningEvent(message_id="a", chunk="thinking " + SECRET[:3]),
        TextEvent(message_id="a", chunk=SECRET[6:] + " done", is_complete=True),
        ReasoningEvent(message_id="a", chunk=SECRET[3:], is_complete=True),
    ]
    out = run(events)
    assert "".join(e.chunk for e in out if isinstance(e, TextEvent)) == "A [REDACTED:API_TOKEN] done"
    assert "".join(e.chunk for e in out if isinstance(e, ReasoningEvent)) == "thinking [REDACTED:API_TOKEN]"


def test_an_abandoned_message_drops_its_held_tail() -> None:
    out = run(
        [
            TextEvent(message_id="m", chunk="x" * 40 + SECRET[:4]),
            TextEvent(message_id="m", chunk="", abandoned=True),
        ]
    )
    assert out[-1].abandoned and SECRET[:4] not in text_of(out)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "event",
    [
        ToolUseEvent(
            tool_use_id="t", name="Bash", input={"command": f"curl -H 'x: {SECRET}'", "n": [SECRET, 1]}
        ),
        ToolResultEvent(tool_use_id="t", output=f"echoed {SECRET}\n"),
        OutputEvent(type="stderr", content=f"auth failed for {SECRET}"),
        ErrorEvent(code="x", message=f"bad key {SECRET}"),
        StatusEvent(status="retrying", detail=f"{SECRET} rejected"),
        SessionEvent(session_id="s", model="m", cwd=f"/w/{SECRET}"),
        DoneEvent(status="failed", result=f"the key: {SECRET}", error=f"stderr: {SECRET}"),
    ],
)
def test_every_other_event_is_redacted_whole(event: AgentEvent) -> None:
    out = run([event])
    assert len(out) == 1 and type(out[0]) is type(event)
    assert_no_piece(out)
    assert "[REDACTED:API_TOKEN]" in out[0].model_dump_json()


def test_the_result_and_error_of_a_run() -> None:
    r = RunRedactor(SECRETS)
    res = r.result(
        AgentResult(status="failed", result=f"r {SECRET}", error=f"e {SECRET}", usage={"k": SECRET})
    )
    assert res.result == "r [REDACTED:API_TOKEN]" and res.error == "e [REDACTED:API_TOKEN]"
    assert res.usage == {"k": "[REDACTED:API_TOKEN]"}


def test_ordinary_text_passes_unchanged() -> None:
    plain: list[AgentEvent] = [
        TextEvent(message_id="m", chunk="Hello, "),
        TextEvent(message_id="m", chunk="world: nothing secret here at all, just a long sentence."),
        TextEvent(message_id="m", chunk="!", is_complete=True),
        ToolUseEvent(tool_use_id="t", name="Read", input={"path": "a.txt"}),
        ToolResultEvent(tool_use_id="t", output="file body"),
    ]
    out = run(plain)
    assert text_of(out) == text_of(plain)
    assert out[-2:] == plain[-2:]
    assert run(plain, {}) == plain  # no secrets: the very same events


def test_the_longest_value_wins_when_one_contains_another() -> None:
    r = Redactor({"SHORT": "abcdefgh", "LONG": "abcdefgh-ijkl"})
    assert r.text("x abcdefgh-ijkl y abcdefgh") == "x [REDACTED:LONG] y [REDACTED:SHORT]"


def test_log_processor_redacts_while_a_run_holds_its_secrets() -> None:
    known = KnownSecrets()
    known.add({"AGENTD_API_KEY": "service-api-key-1"})
    event = {
        "event": "job.provider_error",
        "exception": f"Traceback ... {SECRET}",
        "n": 3,
        "d": {"x": SECRET},
    }
    with known.holding({"API_TOKEN": SECRET}):
        got = known(None, "error", dict(event))
        assert got["exception"] == "Traceback ... [REDACTED:API_TOKEN]" and got["d"] == {
            "x": "[REDACTED:API_TOKEN]"
        }
        assert got["n"] == 3
    assert known(None, "info", dict(event)) == event  # the run is over: its secrets are forgotten
    assert known(None, "info", {"event": "x service-api-key-1"}) == {"event": "x [REDACTED:AGENTD_API_KEY]"}


def test_two_runs_may_give_one_name_two_values() -> None:
    known = KnownSecrets()
    known.add({"TOKEN": "value-of-project-a"})
    known.add({"TOKEN": "value-of-project-b"})
    got = known(None, "info", {"event": "value-of-project-a value-of-project-b"})
    assert got == {"event": "[REDACTED:TOKEN] [REDACTED:TOKEN]"}
