"""Shared fixtures: paths to the real agent CLIs, and a running agentd on loopback."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agentd.adapters.claude_code.agent import ClaudeCodeAgent
from agentd.adapters.codex.agent import CodexAgent
from agentd.adapters.sandbox import Sandbox
from agentd.bootstrap import Container, build, claude_config, codex_config
from agentd.client import AgentdClient
from agentd.config import Settings
from agentd.ports.code_agent import CodeAgent
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = ROOT / ".tools" / "node" / "node_modules" / ".bin"
CODEX_BIN = ROOT / ".tools" / "codex" / "node_modules" / ".bin" / "codex"  # its own prefix (scripts/setup)


def tool_path(env_var: str, name: str) -> str | None:
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit
    local = TOOLS_BIN / name
    if local.exists():
        return str(local)
    return shutil.which(name)


def codex_path() -> str | None:
    explicit = os.environ.get("AGENTD_CODEX_BIN")
    if explicit:
        return explicit
    return str(CODEX_BIN) if CODEX_BIN.exists() else shutil.which("codex")


@pytest.fixture(scope="session")
def codex_bin() -> str:
    path = codex_path()
    if path is None:
        pytest.skip(
            "the Codex CLI is not installed: run scripts/setup (npm @openai/codex@0.169.0 into .tools/codex;"
            " AGENTD_SKIP_CODEX=1 skips it)"
        )
    return path


@pytest.fixture(scope="session")
def claude_bin() -> str:
    path = tool_path("AGENTD_CLAUDE_BIN", "claude")
    if path is None:
        pytest.skip(
            "the claude CLI is not installed: run scripts/setup (npm @anthropic-ai/claude-code@2.1.330)"
        )
    return path


@dataclass
class RunningAgentd:
    container: Container
    base_url: str
    client: AgentdClient

    @property
    def settings(self) -> Settings:
        return self.container.settings


@pytest.fixture
async def agentd_factory(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    """Start agentd (API + workers, embedded queue) on a random loopback port with the given agents."""
    started: list[tuple[web.AppRunner, AgentdClient]] = []

    async def start(
        agents: list[CodeAgent] | None = None, *, data_dir: Path | None = None, **settings: Any
    ) -> RunningAgentd:
        s = Settings(data_dir=data_dir or tmp_path / "data", **settings)
        container = await build(s, agents=agents)
        port = free_port()  # known before the app is built: its Host allow-list names it
        runner = web.AppRunner(container.app(port=port), shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        base = f"http://127.0.0.1:{port}"
        key = s.api_key.get_secret_value() if s.api_key else None
        client = AgentdClient(base, api_key=key)
        started.append((runner, client))
        return RunningAgentd(container, base, client)

    yield start
    for runner, client in reversed(started):
        await client.close()
        await runner.cleanup()


def jail_for_tests(data_dir: Path) -> Sandbox:
    """The sandbox tests run agents in: on when bubblewrap works here (AGENTD_TEST_SANDBOX=off|bwrap|auto)."""
    setting = os.environ.get("AGENTD_TEST_SANDBOX", "auto")
    assert setting in ("auto", "bwrap", "off"), setting
    return Sandbox.start(setting, hide=(data_dir,))  # type: ignore[arg-type]


def claude_agent(settings: Settings, claude_bin: str, model_url: str, **env: str) -> ClaudeCodeAgent:
    """A real Claude Code adapter pointed at a scripted model server."""
    base_env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "ANTHROPIC_BASE_URL": model_url,
        "ANTHROPIC_API_KEY": "sk-fake",
        "CLAUDE_CODE_MAX_RETRIES": "1",
        **env,
    }
    cfg = replace(
        claude_config(settings, jail_for_tests(settings.data_dir)), binary=claude_bin, environ=base_env
    )
    return ClaudeCodeAgent(cfg)


def codex_agent(
    settings: Settings, codex_bin: str, model_url: str, *, mode: str = "app-server", **env: str
) -> CodexAgent:
    """A real Codex adapter pointed at a scripted Responses API server (tests/support/fake_responses.py)."""
    base_env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "OPENAI_API_KEY": "sk-fake",
        **env,
    }
    cfg = replace(
        codex_config(settings, jail_for_tests(settings.data_dir)),
        binary=codex_bin,
        mode=mode,  # type: ignore[arg-type]
        base_url=model_url,
        provider="agentd",
        model=settings.codex_model or "gpt-5.5",
        max_retries=2,
        environ=base_env,
    )
    return CodexAgent(cfg)
