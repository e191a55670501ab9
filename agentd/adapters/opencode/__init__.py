"""OpenCode provider: jobs run on a real OpenCode server (managed or external) or via `opencode run`."""

from __future__ import annotations

from agentd.adapters.opencode.agent import OpenCodeAgent, OpenCodeConfig
from agentd.adapters.opencode.prompt import FileAttachment
from agentd.adapters.opencode.run import RunOptions
from agentd.config import Settings

__all__ = [
    "FileAttachment",
    "OpenCodeAgent",
    "OpenCodeConfig",
    "RunOptions",
    "build_opencode_agent",
    "opencode_config",
]


def opencode_config(settings: Settings) -> OpenCodeConfig:
    """The adapter's configuration from agentd's settings (AGENTD_OPENCODE_*)."""
    return OpenCodeConfig(
        data_dir=settings.data_dir,
        binary=settings.opencode_bin,
        url=settings.opencode_url or None,
        password=settings.opencode_password.get_secret_value() if settings.opencode_password else None,
        mode=settings.opencode_mode,
        idle_timeout_s=settings.opencode_idle_timeout_s,
        username=settings.opencode_username,
        passthrough=settings.opencode_env_passthrough,
        permission_reply=settings.opencode_permission_reply,
    )


def build_opencode_agent(settings: Settings) -> OpenCodeAgent:
    return OpenCodeAgent(opencode_config(settings))
