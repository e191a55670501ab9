"""The JSON shapes of the HTTP API: what handlers answer, what the SDK parses, what /openapi.json describes.

One source of truth: the HTTP adapter builds its answers with these models, `agentd.client` parses them,
and agentd.adapters.http.openapi turns them (with the domain's event models) into the OpenAPI document.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentd.domain.keys import MAX_KEY_NAME, MAX_KEY_PROJECTS
from agentd.domain.models import (
    MAX_TIMEOUT_S,
    MAX_TURNS_LIMIT,
    MIN_TIMEOUT_S,
    PROJECT_ID_RE,
    SESSION_ID_RE,
    JobStatus,
    PromptFile,
    PushRequest,
    ResultStatus,
)
from agentd.domain.projects import GitSource, TemplateInfo
from agentd.domain.secrets import MAX_SECRET_LEN, MIN_SECRET_LEN
from agentd.domain.webhooks import WebhookSpec


class _Answer(BaseModel):
    """An API answer. Unknown fields are kept (a newer server may add some); `answer["field"]` works
    too, for callers written against the dict-returning client."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default)


def anchored(pattern: str) -> str:
    """A full-match regex as a JSON-schema pattern (those match anywhere unless anchored)."""
    return f"^(?:{pattern.removeprefix('^').removesuffix('$')})$"


PROJECT_ID_PATTERN = "^(?!.*\\.\\.)" + anchored(PROJECT_ID_RE.pattern)[1:]  # and never '..'


def _limits(**schema: Any) -> Any:
    """Limits the domain enforces (with its own error codes), shown in the schema only."""
    return Field(None, json_schema_extra=schema)


class SubmitBody(BaseModel):
    """POST /projects/{project_id}/jobs (and /claude): one prompt for the project. The handler takes
    exactly these fields; the domain (AgentRequest) checks the values."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="what the agent should do", json_schema_extra={"pattern": "\\S"})
    provider: str | None = Field(None, description="claude-code, opencode, … (default: the server's)")
    model: str | None = None
    session_id: str | None = _limits(
        pattern=anchored(SESSION_ID_RE.pattern), description="continue this session"
    )
    timeout_s: float | None = _limits(
        minimum=MIN_TIMEOUT_S, maximum=MAX_TIMEOUT_S, description="seconds before the job times out"
    )
    max_turns: int | None = _limits(minimum=1, maximum=MAX_TURNS_LIMIT)
    agent: str | None = Field(None, description="the provider's agent (OpenCode)")
    files: list[PromptFile] | None = None
    mentions: list[str] | None = None
    busy: Literal["enqueue", "reject"] | None = Field(
        None, description="when the project has a job queued or running: wait (default) or answer 409"
    )
    webhook: WebhookSpec | None = Field(None, description="where to POST when the job ends (signed)")
    ref: str | None = Field(None, description="git projects: the branch, tag or commit to start from")
    push: PushRequest | None = Field(None, description="git projects: commit and push the changes")


class Submitted(_Answer):
    job_id: str
    stream_id: str
    stream_url: str = Field(description="the job's event stream (Server-Sent Events)")
    status_url: str
    status: JobStatus
    project_id: str
    provider: str


class JobRequestView(_Answer):
    prompt: str
    model: str | None = None
    session_id: str | None = None
    timeout_s: float
    max_turns: int | None = None


class JobResult(_Answer):
    status: ResultStatus
    exit_code: int | None = None
    duration_ms: int = 0
    session_id: str | None = None
    result: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    cost_usd: float | None = None
    error: str | None = None


class JobInfo(_Answer):
    job_id: str
    project_id: str
    provider: str
    stream_id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    cancel_requested: bool = False
    request: JobRequestView
    result: JobResult | None = None


class JobPage(_Answer):
    jobs: list[JobInfo]
    next_before: str | None = Field(None, description="pass as ?before= for the next (older) page")


class ErrorBody(_Answer):
    error: str = Field(description="a stable code, e.g. invalid_request")
    message: str = Field(description="what went wrong and what to fix")


class Health(_Answer):
    status: Literal["ok"]
    version: str


class ProviderInfo(_Answer):
    name: str
    default: bool
    capabilities: dict[str, Any]
    availability: dict[str, Any]


class Providers(_Answer):
    default: str | None
    providers: list[ProviderInfo]


class SecretView(_Answer):
    name: str
    updated_at: datetime


class SecretList(_Answer):
    secrets: list[SecretView]


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(
        json_schema_extra={
            "minLength": MIN_SECRET_LEN,
            "maxLength": MAX_SECRET_LEN,
            "pattern": "^[^\\u0000]*$",
        }
    )


class Delivery(_Answer):
    """One webhook delivery: what was (or will be) sent, and every attempt's outcome."""

    delivery_id: str
    job_id: str
    event: str
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)


class DeliveryList(_Answer):
    deliveries: list[Delivery]


class ProjectInfo(_Answer):
    """A project (`Project.public()`): the credentials are a secret's name, never a value."""

    project_id: str
    git: GitSource | None = None
    template: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    max_running: int = 1
    created_at: datetime
    updated_at: datetime


class ProjectList(_Answer):
    projects: list[ProjectInfo]


class TemplateList(_Answer):
    templates: list[TemplateInfo]


_KEY_SCOPE: dict[str, Any] = {
    "oneOf": [
        {"required": ["admin"], "properties": {"admin": {"const": True}, "projects": {"maxItems": 0}}},
        {"required": ["projects"], "properties": {"admin": {"const": False}, "projects": {"minItems": 1}}},
    ]
}


class KeyBody(BaseModel):
    """POST /keys: an admin key, or a key scoped to projects (read-only or not)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_KEY_SCOPE)

    name: str | None = _limits(pattern=f"^[\\x20-\\x7e]{{1,{MAX_KEY_NAME}}}$", description="e.g. ci-web")
    admin: bool = False
    projects: list[str] = Field(
        default_factory=list,
        json_schema_extra={
            "items": {"type": "string", "pattern": PROJECT_ID_PATTERN},
            "maxItems": MAX_KEY_PROJECTS,
        },
    )
    read_only: bool = False


class KeyInfo(_Answer):
    key_id: str
    name: str
    scope: Literal["admin"] | list[str]
    access: Literal["read", "write"]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class KeyCreated(KeyInfo):
    key: str = Field(description="the key: shown this once")


class KeyList(_Answer):
    keys: list[KeyInfo]
