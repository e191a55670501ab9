"""Typed domain errors. Each has a stable `code`; the HTTP layer maps codes to status codes in one place.

The docstring of each class is its default message. These deliberately do NOT subclass ValueError so that
pydantic validators let them propagate unchanged instead of wrapping them in a ValidationError.
"""

from __future__ import annotations

from typing import Any


class AgentdError(Exception):
    """Something went wrong in agentd."""

    code = "internal_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details
        super().__init__(self.message)


class InvalidRequest(AgentdError):
    """The request is not valid."""

    code = "invalid_request"


class PromptRequired(InvalidRequest):
    """`prompt` is required and must not be empty or only whitespace."""

    code = "prompt_required"


class InvalidTimeout(InvalidRequest):
    """`timeout_s` is out of range."""

    code = "invalid_timeout"


class InvalidProjectId(InvalidRequest):
    """The project id must match [a-z0-9][a-z0-9._-]{0,62} (it becomes a directory name)."""

    code = "invalid_project_id"


class InvalidMaxTurns(InvalidRequest):
    """`max_turns` is out of range."""

    code = "invalid_max_turns"


class InvalidSessionId(InvalidRequest):
    """`session_id` must start with a letter or digit; then letters, digits, '_', '-', '.' (max 128)."""

    code = "invalid_session_id"


class UnknownProvider(AgentdError):
    """No provider is registered under that name."""

    code = "unknown_provider"


class ProviderUnavailable(AgentdError):
    """The provider cannot run jobs right now."""

    code = "provider_unavailable"


class JobNotFound(AgentdError):
    """No such job in this project."""

    code = "job_not_found"


class StreamNotFound(AgentdError):
    """No such event stream (it never existed or its retention period is over)."""

    code = "stream_not_found"


class JobAlreadyFinished(AgentdError):
    """The job has already finished."""

    code = "job_finished"


class Unauthorized(AgentdError):
    """A valid X-API-Key header is required."""

    code = "unauthorized"


class QueueUnavailable(AgentdError):
    """The work queue's storage cannot be reached right now; try again shortly."""

    code = "queue_unavailable"


class SubscriberTooSlow(AgentdError):
    """The subscriber fell too far behind the stream and was disconnected; reconnect with Last-Event-ID."""

    code = "subscriber_too_slow"


class ProjectBusy(AgentdError):
    """The project already has a queued or running job and the request asked busy=reject."""

    code = "project_busy"


class IdempotencyConflict(AgentdError):
    """This Idempotency-Key was already used with a different request body."""

    code = "idempotency_conflict"


class SchemaMismatch(AgentdError):
    """The database schema is missing or newer than this agentd: run `agentd migrate` or upgrade."""

    code = "schema_mismatch"


class InvalidSecretName(InvalidRequest):
    """A secret name must be an environment variable name that agentd does not reserve."""

    code = "invalid_secret_name"


class InvalidSecretValue(InvalidRequest):
    """A secret value must be a string of 8 to 65536 characters."""

    code = "invalid_secret_value"


class SecretNotFound(AgentdError):
    """No such secret."""

    code = "secret_not_found"


class SecretsUnavailable(AgentdError):
    """Secrets need a master key: set AGENTD_MASTER_KEY (or AGENTD_MASTER_KEY_FILE) to the output of
    `agentd secrets new-master-key`, then restart agentd."""

    code = "secrets_unavailable"


class InvalidMasterKey(SecretsUnavailable):
    """The master key is not 32 bytes in url-safe base64: set it to the output of
    `agentd secrets new-master-key`."""

    code = "invalid_master_key"


class SandboxUnavailable(AgentdError):
    """AGENTD_SANDBOX=bwrap, but bubblewrap cannot start a sandbox here."""

    code = "sandbox_unavailable"


class Forbidden(AgentdError):
    """This key may not do that (a read-only key cannot write; only admin keys manage keys and global
    secrets)."""

    code = "forbidden"


class KeyNotFound(AgentdError):
    """No such API key."""

    code = "key_not_found"


class ProjectNotFound(AgentdError):
    """No such project: create it with PUT /projects/{project_id}."""

    code = "project_not_found"


class LimitExceeded(AgentdError):
    """A limit was hit; `details` name it (`limit`) and say when to retry (`retry_after_s`)."""

    code = "limit_exceeded"


class RateLimited(LimitExceeded):
    """This key submitted more jobs than AGENTD_RATE_LIMIT allows; retry after Retry-After seconds."""

    code = "rate_limited"


class QueueFull(LimitExceeded):
    """The project has AGENTD_MAX_QUEUED_PER_PROJECT queued jobs already; retry when some have started."""

    code = "queue_full"


class TooManyStreams(LimitExceeded):
    """This key has AGENTD_MAX_STREAMS_PER_KEY event streams open; close one first."""

    code = "too_many_streams"


class ServerBusy(LimitExceeded):
    """The server has AGENTD_MAX_STREAMS event streams open; retry shortly."""

    code = "server_busy"


class UnsupportedMediaType(InvalidRequest):
    """Send the body as JSON, with Content-Type: application/json."""

    code = "unsupported_media_type"


class MisdirectedRequest(InvalidRequest):
    """The Host header names a host this server does not answer for (AGENTD_ALLOWED_HOSTS)."""

    code = "misdirected_request"


class InvalidProject(InvalidRequest):
    """The project definition is not valid."""

    code = "invalid_project"


class TemplateNotFound(InvalidRequest):
    """No template of that name: GET /templates lists them."""

    code = "template_not_found"


class ProjectInUse(AgentdError):
    """The project has queued or running jobs; cancel them or wait for them to end, then try again."""

    code = "project_in_use"


class PatchNotFound(AgentdError):
    """This job has no patch: its project has no git repository, or the job has not ended yet."""

    code = "patch_not_found"


class PatchTooLarge(PatchNotFound):
    """This job's patch was larger than AGENTD_MAX_PATCH_BYTES: it was not kept."""

    code = "patch_too_large"


class WorkspaceFailed(AgentdError):
    """The job's git workspace could not be prepared or recorded."""

    code = "workspace_failed"

    def __init__(self, message: str | None = None, *, retryable: bool = False, **details: Any) -> None:
        super().__init__(message, **details)
        self.retryable = retryable


class RunSuperseded(AgentdError):
    """This run of the job is no longer its current one (its lease expired, it was handed back, or a later
    attempt started): its writes are refused and the run must stop."""

    code = "run_superseded"
