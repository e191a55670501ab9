"""Provider-neutral domain models: what a job asks for, what happens while it runs, how it ends.

Nothing here knows about Claude Code, OpenCode, HTTP or a database.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from agentd.domain import errors
from agentd.domain.webhooks import WebhookSpec

# Used with fullmatch: `$` alone would accept a trailing newline ("abc\n").
PROJECT_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
MIN_TIMEOUT_S = 1
MAX_TIMEOUT_S = 24 * 3600
DEFAULT_TIMEOUT_S = 1800
MAX_TURNS_LIMIT = 1000


def validate_project_id(project_id: str) -> str:
    # ".." and "." match the pattern's character class; they must never become directory names.
    if (
        not isinstance(project_id, str)
        or not PROJECT_ID_RE.fullmatch(project_id)
        or project_id in {".", ".."}
    ):
        raise errors.InvalidProjectId(
            f"invalid project id {project_id!r}: use 1-63 characters from a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    if ".." in project_id:
        raise errors.InvalidProjectId(f"invalid project id {project_id!r}: '..' is not allowed")
    return project_id


MAX_REF_LEN = 255
_REF_FORBIDDEN = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")


def validate_ref(ref: str, what: str = "ref") -> str:
    """A branch, tag, full ref name or commit id, as `git check-ref-format` would accept it (and never an
    option: no leading '-')."""
    bad = (
        not isinstance(ref, str)
        or not ref
        or len(ref) > MAX_REF_LEN
        or ref.startswith(("-", "/", "."))
        or ref.endswith(("/", ".", ".lock"))
        or ".." in ref
        or "//" in ref
        or "@{" in ref
        or "/." in ref
        or ref == "@"
        or _REF_FORBIDDEN.search(ref) is not None
    )
    if bad:
        raise errors.InvalidRequest(
            f"{what} {ref!r} is not a valid git branch, tag or commit name (no spaces, '..', '~', '^', ':', "
            f"'?', '*', '[', '\\', no leading '-' or '.', at most {MAX_REF_LEN} characters)"
        )
    return ref


class ChangedFile(BaseModel):
    """One file a run changed, against the commit it started from. `added`/`removed` count lines; both
    are null for a binary file. A renamed file has its previous path in `old_path`."""

    model_config = ConfigDict(frozen=True)

    path: str
    status: Literal["added", "modified", "deleted", "renamed"]
    old_path: str | None = None
    added: int | None = None
    removed: int | None = None
    binary: bool = False


class PushRequest(BaseModel):
    """Commit the run's changes and push them to `branch` (default `agentd/<job id>`; `{job_id}` in the
    name is replaced by the job's id)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    branch: str | None = None

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("refs/"):
            raise errors.InvalidRequest("push.branch is a branch name, e.g. 'agentd/fix-1', not a full ref")
        return validate_ref(v.replace("{job_id}", "job"), "push.branch") and v

    def branch_for(self, job_id: str) -> str:
        return (self.branch or "agentd/{job_id}").replace("{job_id}", job_id)


class PushResult(BaseModel):
    """Where a run's changes were pushed: the branch and the commit."""

    model_config = ConfigDict(frozen=True)

    branch: str
    commit: str


# What _one_source checks, as a JSON schema (the OpenAPI document shows it): exactly one of a relative
# `path` (no leading slash, no '..' part, not blank, no NUL) or `content`.
_RELATIVE_PATH = r"^(?![/\\])(?!(.*[/\\])?\.\.([/\\]|$))(?=.*\S)[^\x00]+$"
_ONE_SOURCE_SCHEMA: dict[str, Any] = {
    "oneOf": [
        {
            "required": ["path"],
            "properties": {
                "path": {"type": "string", "pattern": _RELATIVE_PATH},
                "content": {"type": "null"},
            },
        },
        {"required": ["content"], "properties": {"content": {"type": "string"}, "path": {"type": "null"}}},
    ]
}


class PromptFile(BaseModel):
    """A file given with the prompt: a `path` inside the project's workspace, or inline `content`."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_ONE_SOURCE_SCHEMA)

    path: str | None = None
    content: str | None = None
    filename: str | None = None
    mime: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptFile:
        if (self.path is None) == (self.content is None):
            raise errors.InvalidRequest("each entry of `files` needs exactly one of `path` or `content`")
        if self.path is not None:
            parts = self.path.replace("\\", "/").split("/")
            if self.path.startswith("/") or ".." in parts or not self.path.strip() or "\0" in self.path:
                raise errors.InvalidRequest(
                    f"files: {self.path!r} must be a relative path inside the project workspace"
                )
        return self


_OWN_PATTERN = frozenset({"project_id", "session_id"})  # their own validators refuse U+0000, with their codes


_PLAIN = (int, float, bool)


def _has_nul(data: Any) -> bool:
    """Whether `_fields_with_nul` would find anything: the same walk without building paths (every request
    read back from the queue goes through it)."""
    if isinstance(data, str):
        return "\0" in data
    if isinstance(data, dict):
        values: Any = data.values()
    elif isinstance(data, list | tuple):
        values = data
    elif isinstance(data, BaseModel):
        return _has_nul(data.model_dump())
    else:
        return False
    for v in values:
        if v is None or v.__class__ in _PLAIN:
            continue
        if v.__class__ is str:
            if "\0" in v:
                return True
        elif _has_nul(v):
            return True
    return False


def _fields_with_nul(data: Any, where: str = "") -> list[str]:
    if isinstance(data, str):
        return [where or "value"] if "\0" in data else []
    if isinstance(data, dict):
        return [b for k, v in data.items() for b in _fields_with_nul(v, f"{where}.{k}" if where else str(k))]
    if isinstance(data, list | tuple):
        return [b for i, v in enumerate(data) for b in _fields_with_nul(v, f"{where}[{i}]")]
    if isinstance(data, BaseModel):
        return _fields_with_nul(data.model_dump(), where)
    return []


class AgentRequest(BaseModel):
    """One prompt for one project, to be run by one provider."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    project_id: str
    prompt: str
    provider: str | None = None
    model: str | None = None
    session_id: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_turns: int | None = None
    agent: str | None = None
    files: tuple[PromptFile, ...] = ()
    mentions: tuple[str, ...] = ()
    webhook: WebhookSpec | None = None  # where to POST when the job ends (agentd.domain.webhooks)
    ref: str | None = None  # projects with a git repository: the branch, tag or commit to start from
    push: PushRequest | None = None  # commit and push the run's changes to a branch
    request_id: str | None = None  # the submitting HTTP request's X-Request-Id, for the job's logs

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return None if v is None else validate_ref(v)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        """U+0000 cannot be stored by every queue (PostgreSQL text refuses it): a 400 that says so."""
        checked = {k: v for k, v in data.items() if k not in _OWN_PATTERN} if isinstance(data, dict) else data
        bad = _fields_with_nul(checked) if _has_nul(checked) else []
        if bad:
            raise errors.InvalidRequest(
                f"{', '.join(bad)} must not contain the character U+0000 (NUL); remove it or encode the data"
            )
        return data

    @field_validator("project_id")
    @classmethod
    def _project_id(cls, v: str) -> str:
        return validate_project_id(v)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        if not v or not v.strip():
            raise errors.PromptRequired()
        return v

    @field_validator("timeout_s")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not (MIN_TIMEOUT_S <= v <= MAX_TIMEOUT_S):
            raise errors.InvalidTimeout(
                f"timeout_s must be between {MIN_TIMEOUT_S} and {MAX_TIMEOUT_S} seconds, got {v}"
            )
        return v

    @field_validator("max_turns")
    @classmethod
    def _max_turns(cls, v: int | None) -> int | None:
        if v is not None and not (1 <= v <= MAX_TURNS_LIMIT):
            raise errors.InvalidMaxTurns(f"max_turns must be between 1 and {MAX_TURNS_LIMIT}, got {v}")
        return v

    @field_validator("session_id")
    @classmethod
    def _session_id(cls, v: str | None) -> str | None:
        if v is not None and not SESSION_ID_RE.fullmatch(v):
            raise errors.InvalidSessionId(f"invalid session_id {v!r}: {errors.InvalidSessionId.__doc__}")
        return v


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"

    @property
    def is_final(self) -> bool:
        return self not in (JobStatus.queued, JobStatus.running)


ResultStatus = Literal["succeeded", "failed", "cancelled", "timed_out"]
Forced = Literal["cancelled", "timed_out"]  # agentd ended the run: cancel requested, or time ran out


class AgentResult(BaseModel):
    """How a run ended. Providers build it; the queue stores it; the `done` event carries it."""

    model_config = ConfigDict(frozen=True)

    status: ResultStatus
    exit_code: int | None = None
    duration_ms: int = 0
    session_id: str | None = None
    result: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    cost_usd: float | None = None
    error: str | None = None
    retryable: bool = False
    changed_files: list[ChangedFile] | None = None  # runs in a git workspace: what the run changed
    push: PushResult | None = None
    patch_omitted: str | None = None  # why the run's patch was not kept (larger than the limit)

    @classmethod
    def ended(
        cls,
        *,
        forced: Forced | None = None,
        forced_reason: str | None = None,
        error: str | None = None,
        aborted: str | None = None,
        exit_code: int | None = None,
        **fields: Any,
    ) -> AgentResult:
        """The result of a run that ended: its status from `run_status`, its error to match.

        `forced` is "cancelled" or "timed_out" when agentd stopped the run (`forced_reason` says why);
        `error` is the provider's failure, if any; `aborted` says why the run was aborted on the
        provider's side (not by agentd).
        """
        status = run_status(forced=forced, error=error, aborted=aborted is not None, exit_code=exit_code)
        if forced is not None and status in ("cancelled", "timed_out"):
            why: str | None = forced_reason or ("cancelled" if status == "cancelled" else "timed out")
        elif status == "failed":
            why = error or f"the agent exited with code {exit_code}"
        else:
            why = aborted if status == "cancelled" else None
        return cls(status=status, error=why, exit_code=exit_code, **fields)


def run_status(
    *, forced: Forced | None, error: str | None, aborted: bool = False, exit_code: int | None = None
) -> ResultStatus:
    """How a run ended, first rule first: agentd cancelled it or its time ran out (whatever the agent
    said afterwards); the agent reported an error; the run was aborted on the agent's side; the agent
    exited with a code other than 0; otherwise it succeeded (no exit code: a server-side run)."""
    if forced == "cancelled":
        return "cancelled"
    if forced == "timed_out":
        return "timed_out"
    if error is not None:
        return "failed"
    if aborted:
        return "cancelled"
    if exit_code not in (0, None):
        return "failed"
    return "succeeded"


# --- events -------------------------------------------------------------------------------------------
# The `event` field is the SSE event name; the other fields are the JSON `data` of that SSE event.


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    def data(self) -> dict[str, Any]:
        """The JSON payload clients see (everything but the discriminator)."""
        return self.model_dump(mode="json", exclude={"event"})


class StatusEvent(_Event):
    event: Literal["status"] = "status"
    status: str
    detail: str | None = None
    attempt: int | None = None
    max_retries: int | None = None
    retry_delay_ms: int | None = None


class SessionEvent(_Event):
    event: Literal["session"] = "session"
    session_id: str
    model: str | None = None
    tools: list[str] = Field(default_factory=list)
    cwd: str | None = None


class TextEvent(_Event):
    """A chunk of assistant text. Concatenating the chunks of one `message_id` gives that message's text.

    The last event of a message has `is_complete: true`. If the provider abandons a message it streamed
    partially (a fallback after a stream error), its last event has `abandoned: true` and an empty chunk:
    clients drop that message; the replacement text arrives under a new `message_id`.
    """

    event: Literal["text"] = "text"
    message_id: str
    index: int = 0
    chunk: str
    is_complete: bool = False
    agent: str | None = None
    abandoned: bool = False


class ReasoningEvent(_Event):
    event: Literal["reasoning"] = "reasoning"
    message_id: str
    index: int = 0
    chunk: str
    is_complete: bool = False
    abandoned: bool = False


class ToolUseEvent(_Event):
    event: Literal["tool_use"] = "tool_use"
    tool_use_id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ToolResultEvent(_Event):
    event: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    output: str
    is_error: bool = False


class OutputEvent(_Event):
    """Raw process output (stderr of the agent process, or stdout it could not parse)."""

    event: Literal["output"] = "output"
    type: Literal["stdout", "stderr"]
    content: str


class ErrorEvent(_Event):
    event: Literal["error"] = "error"
    code: str
    message: str
    retryable: bool = False


class DoneEvent(_Event):
    event: Literal["done"] = "done"
    status: ResultStatus
    exit_code: int | None = None
    duration_ms: int = 0
    session_id: str | None = None
    result: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    cost_usd: float | None = None
    error: str | None = None
    changed_files: list[ChangedFile] | None = None
    push: PushResult | None = None
    patch_omitted: str | None = None

    def data(self) -> dict[str, Any]:
        return _without_git_fields(super().data())

    @classmethod
    def from_result(cls, r: AgentResult) -> DoneEvent:
        return cls(**r.model_dump(exclude={"retryable"}))

    def to_result(self) -> AgentResult:
        return AgentResult(**self.model_dump(exclude={"event"}))


def _without_git_fields(d: dict[str, Any]) -> dict[str, Any]:
    """Runs outside a git workspace keep the shape they always had: no `changed_files`, no `push` (nor
    `patch_omitted`, there only when a patch was too large to keep)."""
    for k in ("changed_files", "push", "patch_omitted"):
        if d.get(k) is None:
            d.pop(k, None)
    return d


AgentEvent = Annotated[
    StatusEvent
    | SessionEvent
    | TextEvent
    | ReasoningEvent
    | ToolUseEvent
    | ToolResultEvent
    | OutputEvent
    | ErrorEvent
    | DoneEvent,
    Field(discriminator="event"),
]
EVENT_ADAPTER: TypeAdapter[AgentEvent] = TypeAdapter(AgentEvent)


def event_from_data(event_type: str, data: dict[str, Any]) -> AgentEvent:
    """Rebuild an event from its SSE name and JSON data (the inverse of `event.event` + `event.data()`)."""
    return EVENT_ADAPTER.validate_python({**data, "event": event_type})


class StoredEvent(BaseModel):
    """An event as a stream holds it: with its sequence number (1, 2, 3… without gaps)."""

    model_config = ConfigDict(frozen=True)

    seq: int
    event: AgentEvent


class Job(BaseModel):
    """A request waiting for, or given to, a worker."""

    model_config = ConfigDict(frozen=True)

    id: str
    project_id: str
    provider: str
    stream_id: str
    request: AgentRequest
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    cancel_requested: bool = False
    worker_id: str | None = None
    result: AgentResult | None = None

    @property
    def run_id(self) -> str:
        """This claim's run: the job id and the attempt number. Every write the run makes carries the attempt,
        and the queue and the stream refuse it once the job has moved on (fencing)."""
        return f"{self.id}.{self.attempts}"

    def public(self) -> dict[str, Any]:
        """The JSON shape the API returns for a job."""
        req = self.request
        return {
            "job_id": self.id,
            "project_id": self.project_id,
            "provider": self.provider,
            "stream_id": self.stream_id,
            "status": self.status.value,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "attempts": self.attempts,
            "cancel_requested": self.cancel_requested,
            "request": {
                "prompt": req.prompt,
                "model": req.model,
                "session_id": req.session_id,
                "timeout_s": req.timeout_s,
                "max_turns": req.max_turns,
                "ref": req.ref,
                "push": req.push.model_dump(mode="json") if req.push else None,
            },
            "result": (
                _without_git_fields(self.result.model_dump(mode="json", exclude={"retryable"}))
                if self.result
                else None
            ),
        }


class Capabilities(BaseModel):
    model_config = ConfigDict(frozen=True)

    streaming: bool = True
    partial_text: bool = False
    reasoning: bool = False
    tools: bool = True
    resume: bool = True
    cancel: bool = True
    max_turns: bool = False
    models: list[str] = Field(default_factory=list)


class Availability(BaseModel):
    model_config = ConfigDict(frozen=True)

    available: bool
    detail: str = ""
    version: str | None = None
