"""Permission requests of the real OpenCode server are answered by the adapter (agentd runs unattended).

The model config makes bash "ask": without an answer the run would hang until the inactivity watchdog.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from agentd.adapters.opencode import OpenCodeAgent, OpenCodeConfig
from agentd.domain.models import AgentEvent, AgentRequest, DoneEvent, ErrorEvent, StatusEvent, ToolResultEvent
from tests.conftest import tool_path
from tests.support import fake_openai
from tests.support.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def opencode_bin() -> str | None:
    return tool_path("AGENTD_OPENCODE_BIN", "opencode")


async def test_permission_asks_are_answered(tmp_path: Path) -> None:
    binary = opencode_bin()
    if binary is None:
        pytest.skip("opencode is not installed: run scripts/setup or set AGENTD_OPENCODE_BIN")
    async with FakeOpenAI() as fake:
        config = fake.config()
        config["permission"]["bash"] = "ask"
        env = {"PATH": os.environ.get("PATH", ""), "OPENCODE_CONFIG_CONTENT": json.dumps(config)}
        agent = OpenCodeAgent(OpenCodeConfig(data_dir=tmp_path, binary=binary, mode="server", environ=env))
        try:
            req = AgentRequest(project_id="p", prompt="SCENARIO:tool_bash", timeout_s=60)
            events: list[AgentEvent] = [e async for e in agent.execute(req, run_id="rejected")]
            [err] = [e for e in events if isinstance(e, ErrorEvent)]
            assert err.code == "permission_denied" and fake_openai.TOOL_COMMAND in err.message
            [res] = [e for e in events if isinstance(e, ToolResultEvent)]
            assert res.is_error and "agentd runs unattended" in res.output
            assert isinstance(events[-1], DoneEvent) and events[-1].status == "succeeded"
            assert not (tmp_path / "workspaces" / "p" / "out.txt").exists()

            agent.config = replace(agent.config, permission_reply="once")  # same server, allow this time
            events = [e async for e in agent.execute(req, run_id="granted")]
            assert [e.status for e in events if isinstance(e, StatusEvent)][-1] == "permission_granted"
            assert (tmp_path / "workspaces" / "p" / "out.txt").read_text() == "hello\n"
        finally:
            await agent.close()
