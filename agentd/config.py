"""Settings, loaded from AGENTD_* environment variables (pydantic-settings).

The settings model is plain data; `Settings.from_env()` is the one place that reads the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTD_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".local/share/agentd")
    api_key: SecretStr | None = None
    log_level: str = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    # Queue / stream storage. Empty database_url = embedded SQLite queue + in-memory event streams.
    database_url: str | None = None
    workers: int = 2
    stream_retention_s: float = 3600.0
    subscriber_buffer: int = 1000
    sse_heartbeat_s: float = 15.0
    heartbeat_s: float = 10.0
    lease_s: float = 30.0
    max_attempts: int = 3
    max_running: int | None = None
    provider_limits: str = ""
    shutdown_grace_s: float = 30.0
    db_pool_size: int = 10

    # Providers, in registration order (the first is the default).
    providers: str = "claude-code,opencode"
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
    claude_idle_timeout_s: float = 300.0
    claude_extra_args: str = ""

    # OpenCode
    opencode_bin: str = "opencode"
    opencode_url: str | None = None
    opencode_password: SecretStr | None = None
    opencode_mode: Literal["auto", "server", "cli"] = "auto"
    opencode_idle_timeout_s: float = 300.0
    opencode_username: str = "opencode"
    opencode_env_passthrough: str = ""
    opencode_permission_reply: Literal["once", "always", "reject"] = "reject"
    opencode_max_servers: int = 4  # managed servers, one per project; the least recently used one yields
    opencode_idle_stop_s: float = 600.0  # a managed server without a run for this long is stopped

    @classmethod
    def from_env(cls) -> Settings:
        return cls()

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    def workspace(self, project_id: str) -> Path:
        return self.workspaces_dir / project_id

    def limits_per_provider(self) -> dict[str, int]:
        """AGENTD_PROVIDER_LIMITS="claude-code=4,opencode=2" → {"claude-code": 4, "opencode": 2}."""
        out: dict[str, int] = {}
        for part in self.provider_limits.split(","):
            if not part.strip():
                continue
            name, sep, n = part.partition("=")
            if not sep or not n.strip().isdigit():
                raise ValueError(f"AGENTD_PROVIDER_LIMITS: expected name=number, got {part.strip()!r}")
            out[name.strip()] = int(n)
        return out

    def provider_names(self) -> list[str]:
        return [p.strip() for p in self.providers.split(",") if p.strip()]
