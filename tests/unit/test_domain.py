from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentd.domain import errors
from agentd.domain.ids import job_id_for_stream, new_job_ids
from agentd.domain.models import (
    AgentRequest,
    AgentResult,
    DoneEvent,
    Forced,
    JobStatus,
    OutputEvent,
    TextEvent,
    event_from_data,
    run_status,
)


def test_valid_request_keeps_its_fields() -> None:
    r = AgentRequest(project_id="my-repo.v2_x", prompt="fix it", model="m", session_id="abc-1", max_turns=3)
    assert (r.project_id, r.prompt, r.model, r.session_id, r.max_turns) == (
        "my-repo.v2_x",
        "fix it",
        "m",
        "abc-1",
        3,
    )
    assert r.timeout_s == 1800


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_prompt_required(prompt: str) -> None:
    with pytest.raises(errors.PromptRequired):
        AgentRequest(project_id="p", prompt=prompt)


@pytest.mark.parametrize("timeout", [0, -1, 0.5, 86401, 10**9])
def test_timeout_out_of_range(timeout: float) -> None:
    with pytest.raises(errors.InvalidTimeout, match="between 1 and 86400"):
        AgentRequest(project_id="p", prompt="x", timeout_s=timeout)


@pytest.mark.parametrize(
    "pid",
    [
        "",
        ".",
        "..",
        "../etc",
        "a/b",
        "A",
        "-x",
        "_x",
        ".hidden",
        "a" * 64,
        "a..b",
        "a b",
        "é",
        "a\0",
        "abc\n",
        "\nabc",
    ],
)
def test_bad_project_ids_are_rejected(pid: str) -> None:
    with pytest.raises(errors.InvalidProjectId):
        AgentRequest(project_id=pid, prompt="x")


@pytest.mark.parametrize("pid", ["a", "0", "my-repo", "a.b", "a_b", "a" * 63])
def test_good_project_ids(pid: str) -> None:
    assert AgentRequest(project_id=pid, prompt="x").project_id == pid


@pytest.mark.parametrize("turns", [0, -3, 1001])
def test_max_turns_range(turns: int) -> None:
    with pytest.raises(errors.InvalidMaxTurns):
        AgentRequest(project_id="p", prompt="x", max_turns=turns)


@pytest.mark.parametrize("sid", ["--flag", "a b", "x" * 129, "a;rm -rf /"])
def test_session_id_cannot_smuggle_flags(sid: str) -> None:
    # Values become CLI arguments: only plain ids are allowed, so a value can never read as a flag.
    with pytest.raises(errors.InvalidSessionId):
        AgentRequest(project_id="p", prompt="x", session_id=sid)


def test_wrong_types_are_pydantic_errors() -> None:
    with pytest.raises(ValidationError):
        AgentRequest(project_id="p", prompt="x", timeout_s="soon")
    with pytest.raises(ValidationError):
        AgentRequest(project_id="p", prompt="x", surprise=1)  # type: ignore[call-arg]


def test_domain_error_messages_default_to_docstring() -> None:
    assert "required" in errors.PromptRequired().message
    assert errors.PromptRequired().code == "prompt_required"


def test_event_data_excludes_the_discriminator_and_round_trips() -> None:
    ev = TextEvent(message_id="m", index=1, chunk="hi", is_complete=True)
    data = ev.data()
    assert "event" not in data and data["chunk"] == "hi"
    assert event_from_data("text", data) == ev
    out = OutputEvent(type="stderr", content="warn")
    assert out.data() == {"type": "stderr", "content": "warn"}
    assert event_from_data("output", out.data()) == out


def test_done_event_mirrors_the_result() -> None:
    res = AgentResult(status="failed", exit_code=1, duration_ms=5, error="boom", usage={"input_tokens": 3})
    done = DoneEvent.from_result(res)
    assert done.status == "failed" and done.error == "boom" and done.usage == {"input_tokens": 3}
    assert done.to_result().model_dump(exclude={"retryable"}) == res.model_dump(exclude={"retryable"})


def test_job_status_finality() -> None:
    assert not JobStatus.queued.is_final and not JobStatus.running.is_final
    assert all(JobStatus(s).is_final for s in ("succeeded", "failed", "cancelled", "timed_out"))


def test_ids_pair_and_map_back() -> None:
    job_id, stream_id = new_job_ids()
    assert job_id.startswith("job_") and stream_id.startswith("stm_")
    assert job_id_for_stream(stream_id) == job_id
    a, _ = new_job_ids()
    assert a != job_id
    for bad in ("job_x", "stm_../x", "nope", "stm_"):
        with pytest.raises(errors.StreamNotFound):
            job_id_for_stream(bad)


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"path": "a.txt", "content": "x"},
        {"path": "/etc/passwd"},
        {"path": "../up.txt"},
        {"path": "a/../../b"},
    ],
)
def test_bad_prompt_files(entry: dict[str, str]) -> None:
    with pytest.raises(errors.InvalidRequest):
        AgentRequest(project_id="p", prompt="x", files=[entry])


def test_prompt_files_and_mentions() -> None:
    r = AgentRequest(
        project_id="p",
        prompt="x",
        files=[{"path": "src/a.py"}, {"content": "hi", "filename": "n.txt"}],
        mentions=["reviewer"],
    )
    assert r.files[0].path == "src/a.py" and r.files[1].content == "hi" and r.mentions == ("reviewer",)


@pytest.mark.parametrize(
    ("forced", "error", "aborted", "exit_code", "status"),
    [
        ("cancelled", "model error", True, 1, "cancelled"),  # agentd's stop wins over what followed
        ("timed_out", "model error", False, 137, "timed_out"),
        (None, "model error", True, 0, "failed"),  # a reported error wins over an abort and exit 0
        (None, None, True, 1, "cancelled"),  # aborted on the agent's side
        (None, None, False, 2, "failed"),  # a non-zero exit without a reason
        (None, None, False, 0, "succeeded"),
        (None, None, False, None, "succeeded"),  # a server-side run has no exit code
    ],
)
def test_run_status_precedence(
    forced: Forced | None, error: str | None, aborted: bool, exit_code: int | None, status: str
) -> None:
    assert run_status(forced=forced, error=error, aborted=aborted, exit_code=exit_code) == status


def test_ended_result_says_why() -> None:
    cancelled = AgentResult.ended(forced="cancelled", forced_reason="cancelled by request", error="x")
    assert (cancelled.status, cancelled.error) == ("cancelled", "cancelled by request")
    assert AgentResult.ended(forced="timed_out").error == "timed out"
    failed = AgentResult.ended(exit_code=3, duration_ms=5, result="partial")
    assert (failed.status, failed.error, failed.exit_code, failed.result) == (
        "failed",
        "the agent exited with code 3",
        3,
        "partial",
    )
    aborted = AgentResult.ended(aborted="aborted in the agent", exit_code=0)
    assert (aborted.status, aborted.error) == ("cancelled", "aborted in the agent")
    ok = AgentResult.ended(exit_code=0, session_id="s", retryable=True)
    assert (ok.status, ok.error, ok.session_id) == ("succeeded", None, "s")
    done = DoneEvent.from_result(failed)
    assert done.to_result() == failed and done.status == "failed"
