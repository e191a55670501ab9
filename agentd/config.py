"""Settings: a plain typed model, and `load_settings(environ)`, the one place that reads AGENTD_* variables.

Tests build `Settings(...)` directly and never see the developer's environment. A bad value stops agentd at
start with a one-line `ConfigError` that names the variable (`agentd` prints it and exits 2).
"""

from __future__ import annotations

import base64
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from agentd.domain.errors import InvalidMasterKey
from agentd.domain.secrets import MIN_SECRET_LEN, parse_master_key

ENV_PREFIX = "AGENTD_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the AGENTD_* variable and what to fix."""


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".local/share/agentd")
    api_key: SecretStr | None = None
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    # Queue / stream storage. No database_url = embedded SQLite queue and event log in the data dir.
    database_url: str | None = None
    workers: int = Field(2, ge=1)
    stream_retention_s: float = Field(3600.0, ge=0)
    job_retention_s: float = Field(7 * 24 * 3600.0, ge=0)  # finished jobs (and idempotency keys) kept
    subscriber_buffer: int = Field(1000, ge=1)
    sse_heartbeat_s: float = Field(15.0, gt=0)
    heartbeat_s: float = Field(10.0, gt=0)
    lease_s: float = Field(30.0, gt=0)
    max_attempts: int = Field(3, ge=1)
    max_running: int | None = Field(None, ge=1)
    provider_limits: dict[str, int] = Field(default_factory=dict)  # "claude-code=4,opencode=2"
    shutdown_grace_s: float = Field(30.0, ge=0)
    db_pool_size: int = Field(10, ge=1)
    metrics_port: int | None = Field(
        None, ge=1, le=65535
    )  # /metrics + /healthz on a port of their own, no key

    # Access (README "Access"): Host allow-list, public URL, CORS, limits.
    allowed_hosts: tuple[str, ...] = ()  # "agentd.example.com,10.0.0.5:8080"; default: see allowed_hosts()
    public_url: str | None = None  # "https://agentd.example.com": absolute URLs in answers start with it
    cors_origins: tuple[str, ...] = ()  # "https://dash.example.com"; none: CORS off
    rate_limit: tuple[int, float] | None = None  # "60/min": submissions per key
    max_queued_per_project: int | None = Field(None, ge=1)
    max_streams_per_key: int = Field(20, ge=1)
    max_streams: int = Field(1000, ge=1)
    stream_token_ttl_s: float = Field(3600.0, gt=0)

    # Secrets: the master key (url-safe base64 of 32 bytes), inline or in a file.
    master_key: SecretStr | None = None
    master_key_file: Path | None = None

    # Webhooks: the signing secret when a project has no WEBHOOK_SECRET secret; the first retry's delay.
    webhook_secret: SecretStr | None = None
    webhook_retry_base_s: float = Field(10.0, gt=0)

    # Providers, in registration order (the first is the default): "claude-code,opencode,codex".
    providers: tuple[str, ...] = ("claude-code", "opencode", "codex")
    # Projects: user templates (folders with a template.toml) beside the shipped ones; the git command.
    templates_dir: Path | None = None
    git_bin: str = "git"
    # A job's patch is kept up to this size (a larger one is not read whole, nor stored).
    max_patch_bytes: int = Field(32 * 1024 * 1024, ge=1, le=512 * 1024 * 1024)
    # Jail agent processes with bubblewrap: auto = when it works, bwrap = required, off = never.
    sandbox: Literal["auto", "bwrap", "off"] = "auto"

    # Claude Code
    claude_bin: str = "claude"
    claude_transport: Literal["local", "kubectl"] = "local"
    claude_kubectl_bin: str = "kubectl"
    claude_pod: str | None = None
    claude_namespace: str = "default"
    claude_permission_mode: str = "bypassPermissions"
    claude_setting_sources: str = "user"
    claude_idle_timeout_s: float = Field(300.0, gt=0)
    claude_extra_args: tuple[str, ...] = ()  # shell words: '--append-system-prompt "be brief"'

    # OpenCode
    opencode_bin: str = "opencode"
    opencode_url: str | None = None
    opencode_password: SecretStr | None = None
    opencode_mode: Literal["auto", "server", "cli"] = "auto"
    opencode_idle_timeout_s: float = Field(300.0, gt=0)
    opencode_username: str = "opencode"
    opencode_env_passthrough: tuple[str, ...] = ()  # "GITHUB_TOKEN,NPM_TOKEN"
    opencode_permission_reply: Literal["once", "always", "reject"] = "reject"
    opencode_max_servers: int = 4  # managed servers, one per project; the least recently used one yields
    opencode_idle_stop_s: float = 600.0  # a managed server without a run for this long is stopped

    # Codex (OpenAI's Codex CLI); written into each project's private CODEX_HOME/config.toml.
    codex_bin: str = "codex"
    codex_mode: Literal["auto", "app-server", "exec"] = "auto"
    codex_base_url: str | None = None  # a Responses API base URL, e.g. http://127.0.0.1:8000/v1
    codex_provider: str = Field("openai", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    codex_model: str | None = None
    codex_env_key: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    codex_max_retries: int = Field(4, ge=0, le=100)
    codex_idle_timeout_s: float = Field(300.0, gt=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, v: Any) -> Any:
        if isinstance(v, str) and v.lower() in LOG_LEVELS:
            return v.lower()
        raise ValueError(f"use one of {', '.join(LOG_LEVELS)}, got {v!r}")

    @field_validator("api_key", mode="before")
    @classmethod
    def _api_key_not_empty(cls, v: Any) -> Any:
        if isinstance(v, str) and not v.strip():
            raise ValueError(
                "is set but empty, which would leave the API open to anyone who can reach it; set it to "
                "a long random key (e.g. `openssl rand -hex 32`) or unset it"
            )
        return v

    @field_validator(
        "database_url",
        "public_url",
        "rate_limit",
        "max_queued_per_project",
        "master_key",
        "master_key_file",
        "opencode_url",
        "opencode_password",
        "claude_pod",
        "max_running",
        "codex_base_url",
        "codex_model",
        "templates_dir",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _plain_comma_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(p.strip().lower() for p in v.split(",") if p.strip())
        return v

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for origin in v:
            u = urlsplit(origin)
            if u.scheme not in ("http", "https") or not u.netloc or u.path not in ("", "/"):
                raise ValueError(
                    f"an origin is scheme://host[:port], e.g. https://dash.example.com, got {origin!r}"
                )
        return tuple(o.rstrip("/") for o in v)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment:
            raise ValueError(f"use an absolute http(s) URL, e.g. https://agentd.example.com, got {v!r}")
        return v.rstrip("/")

    @field_validator("rate_limit", mode="before")
    @classmethod
    def _rate(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        m = re.fullmatch(r"\s*([0-9]{1,9})\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*", v)
        if m is None or int(m.group(1)) < 1:
            raise ValueError(f"expected a count per unit, e.g. 60/min, 5/s or 1000/hour, got {v!r}")
        unit = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}.get(
            m.group(2), 3600.0
        )
        return (int(m.group(1)), unit)

    @field_validator("providers", "opencode_env_passthrough", mode="before")
    @classmethod
    def _comma_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @field_validator("providers")
    @classmethod
    def _some_provider(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("name at least one provider, e.g. claude-code,opencode")
        if len(set(v)) != len(v):
            raise ValueError(f"a provider is named twice: {','.join(v)}")
        return v

    @field_validator("claude_extra_args", mode="before")
    @classmethod
    def _shell_words(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                return tuple(shlex.split(v))
            except ValueError as e:  # an unclosed quote
                raise ValueError(f"cannot split {v!r} into arguments: {e}") from None
        return v

    @field_validator("provider_limits", mode="before")
    @classmethod
    def _name_number_map(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        out: dict[str, int] = {}
        for part in v.split(","):
            if not part.strip():
                continue
            name, sep, n = part.partition("=")
            if not sep or not name.strip() or not n.strip().isdigit() or int(n) < 1:
                raise ValueError(
                    f"expected name=number (number >= 1), e.g. claude-code=4, got {part.strip()!r}"
                )
            out[name.strip()] = int(n)
        return out

    @field_validator("provider_limits")
    @classmethod
    def _positive_limits(cls, v: dict[str, int]) -> dict[str, int]:
        bad = [f"{k}={n}" for k, n in v.items() if n < 1]
        if bad:
            raise ValueError(f"limits must be >= 1, got {', '.join(bad)}")
        return v

    @field_validator("master_key")
    @classmethod
    def _master_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None:
            try:
                parse_master_key(v.get_secret_value(), source="the value")
            except InvalidMasterKey as e:
                raise ValueError(e.message) from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError(
                f"AGENTD_HEARTBEAT_S ({self.heartbeat_s:g}) must be less than AGENTD_LEASE_S "
                f"({self.lease_s:g}), or every running job loses its lease"
            )
        if self.master_key is not None and self.master_key_file is not None:
            raise ValueError("set AGENTD_MASTER_KEY or AGENTD_MASTER_KEY_FILE, not both")
        return self

    @property
    def rate_limit_text(self) -> str | None:
        if self.rate_limit is None:
            return None
        count, per = self.rate_limit
        return f"{count}/{ {1.0: 's', 60.0: 'min'}.get(per, 'hour') }"

    def allowed_hosts_for(self, host: str, port: int) -> frozenset[str] | None:
        """The Host values answered (AGENTD_ALLOWED_HOSTS, lower case; a name without a port allows any
        port). Default: bound to loopback, localhost / 127.0.0.1 / [::1] with the port; otherwise the bind
        address with the port (and the host of AGENTD_PUBLIC_URL, when set). None (any Host): bound to every
        address (0.0.0.0) with neither set; a key is required there, which a rebinding page does not have."""
        if self.allowed_hosts:
            return frozenset(self.allowed_hosts)
        if host in ("0.0.0.0", "::", "") and not self.public_url:
            return None
        suffix = f":{port}" if port else ""
        if host in ("127.0.0.1", "::1", "localhost"):
            names = {"localhost", "127.0.0.1", "[::1]"}
        elif host in ("0.0.0.0", "::", ""):
            names = set()  # every address: the public URL's host
        else:
            names = {f"[{host}]" if ":" in host else host}
        out = {n + suffix for n in names}
        if self.public_url:
            u = urlsplit(self.public_url)
            out.add(u.netloc.lower().rsplit("@", 1)[-1])
        return frozenset(out)

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    def workspace(self, project_id: str) -> Path:
        return self.workspaces_dir / project_id


def load_master_key(settings: Settings) -> bytes | None:
    """The master key's 32 bytes from AGENTD_MASTER_KEY or AGENTD_MASTER_KEY_FILE (None: neither is set).

    The one loader: `agentd serve`, the `agentd secrets` commands and every store get the key from here, in
    the form `agentd.domain.secrets.parse_master_key` gives (the stores, `rotate` included, take it)."""
    if settings.master_key is not None:
        return parse_master_key(settings.master_key.get_secret_value())
    if settings.master_key_file is None:
        return None
    try:
        text = settings.master_key_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not ASCII text"
        raise ConfigError(
            f"AGENTD_MASTER_KEY_FILE: cannot read {settings.master_key_file}: {reason}"
        ) from None
    try:
        return parse_master_key(text, source=f"the key in {settings.master_key_file}")
    except InvalidMasterKey as e:
        raise ConfigError(f"AGENTD_MASTER_KEY_FILE: {e.message}") from None


def master_key_text(key: bytes) -> str:
    """The key as it is written in AGENTD_MASTER_KEY, without the `=` (for redaction: it matches the key
    written with or without its padding)."""
    return base64.urlsafe_b64encode(key).decode("ascii").rstrip("=")


# Names in agentd's own environment that look like credentials: provider keys that agentd passes through
# to runs (ANTHROPIC_API_KEY, OPENAI_API_KEY, CLAUDE_CODE_OAUTH_TOKEN, ...) and anything else of the kind.
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|COOKIE", re.IGNORECASE)


def service_secrets(
    settings: Settings, master_key: bytes | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The service's own keys, redacted wherever a run's output could show them: agentd's settings, and
    every credential-looking variable of its environment (`environ`; provider keys passed to runs)."""
    out: dict[str, str] = {}
    for name, value in (environ or {}).items():
        if _SECRET_NAME.search(name) and not name.startswith("AGENTD_"):
            out[name] = value
    if settings.api_key is not None:
        out["AGENTD_API_KEY"] = settings.api_key.get_secret_value()
    if master_key is not None:
        out["AGENTD_MASTER_KEY"] = master_key_text(master_key)
    if settings.webhook_secret is not None:
        out["AGENTD_WEBHOOK_SECRET"] = settings.webhook_secret.get_secret_value()
    if settings.opencode_password is not None:
        out["AGENTD_OPENCODE_PASSWORD"] = settings.opencode_password.get_secret_value()
    password = database_password(settings.database_url)
    if password:
        out["AGENTD_DATABASE_PASSWORD"] = password
    # Redacting a short key would blank ordinary words from every run's output (and reveal the key).
    return {name: value for name, value in out.items() if len(value) >= MIN_SECRET_LEN}


_CONNINFO_PASSWORD = re.compile(r"(?:^|\s)password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def database_password(dsn: str | None) -> str | None:
    """The password in a PostgreSQL URL or key=value connection string, if any."""
    if not dsn:
        return None
    if "://" in dsn:
        try:
            return urlsplit(dsn).password
        except ValueError:
            return None
    m = _CONNINFO_PASSWORD.search(dsn)
    if m is None:
        return None
    value = m.group(1)
    if value.startswith("'"):
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Settings from AGENTD_* variables. Other AGENTD_* names are left to their readers (AGENTD_URL)."""
    fields = Settings.model_fields
    values = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in fields
    }
    try:
        return Settings.model_validate(values)
    except ValidationError as e:
        raise ConfigError(describe(e)) from None


def describe(e: ValidationError) -> str:
    """One line naming each bad variable: `AGENTD_PORT: Input should be a valid integer (got 'x')`."""
    parts = []
    for err in e.errors():
        loc = [str(x) for x in err.get("loc", ())]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc:  # a model-level rule: the message names its variables
            parts.append(msg)
            continue
        shown = err.get("input")
        secret = loc[0] in ("api_key", "master_key", "opencode_password", "database_url")
        got = "" if secret or "got " in msg or isinstance(shown, dict) else f" (got {shown!r})"
        parts.append(f"{ENV_PREFIX}{loc[0].upper()}: {msg}{got}")
    return "; ".join(parts)
