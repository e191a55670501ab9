"""OpenCode provider: jobs run on a real OpenCode server (managed or external) or via `opencode run`."""

from __future__ import annotations

from agentd.adapters.opencode.agent import OpenCodeAgent, OpenCodeConfig
from agentd.adapters.opencode.run import RunOptions

__all__ = ["OpenCodeAgent", "OpenCodeConfig", "RunOptions"]
