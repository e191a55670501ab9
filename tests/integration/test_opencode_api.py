"""`"provider": "opencode"` through agentd's HTTP API: a real managed `opencode serve`, a scripted model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.opencode import OpenCodeAgent, OpenCodeConfig
from agentd.config import Settings
from tests.conftest import tool_path
from tests.support import fake_openai
from tests.support.fake_openai import FakeOpenAI

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def opencode_bin() -> str | None:
    return tool_path("AGENTD_OPENCODE_BIN", "opencode")


async def test_jobs_through_the_api(agentd_factory: Any, tmp_path: Path) -> None:
    binary = opencode_bin()
    if binary is None:
        pytest.skip("opencode is not installed: run scripts/setup or set AGENTD_OPENCODE_BIN")
    async with FakeOpenAI() as fake:
        data = tmp_path / "data"
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "OPENCODE_CONFIG_CONTENT": json.dumps(fake.config()),
        }
        agent = OpenCodeAgent(OpenCodeConfig(data_dir=data, binary=binary, mode="server", environ=env))
        srv = await agentd_factory([agent], data_dir=data)
        job = await srv.client.submit("demo", "SCENARIO:tool_bash please", provider="opencode")
        items = [it async for it in srv.client.follow(job["stream_url"])]
        kinds = [it.event for it in items]
        assert kinds[0] == "status" and kinds.count("done") == 1 and kinds[-1] == "done"
        assert [it.seq for it in items] == list(range(1, len(items) + 1))
        assert (
            kinds.index("session")
            < kinds.index("tool_use")
            < kinds.index("tool_result")
            < kinds.index("text")
        )
        use = next(it.data for it in items if it.event == "tool_use")
        assert (use["name"], use["input"]["command"]) == ("bash", fake_openai.TOOL_COMMAND)
        text = "".join(it.data["chunk"] for it in items if it.event == "text")
        assert text == fake_openai.TOOL_ANSWER and items[-2].data["is_complete"]
        done = items[-1].data
        assert (done["status"], done["result"]) == ("succeeded", fake_openai.TOOL_ANSWER)
        assert done["session_id"].startswith("ses_") and done["usage"]["output_tokens"] > 0
        assert (Settings(data_dir=data).workspace("demo") / "out.txt").read_text() == "hello\n"
        state = await srv.client.job("demo", job["job_id"])
        assert state["status"] == "succeeded" and state["provider"] == "opencode"

        sid = done["session_id"]
        job = await srv.client.submit("demo", "SCENARIO:slow", provider="opencode", session_id=sid)
        items, cancelled = [], False
        async for it in srv.client.follow(job["stream_url"]):
            items.append(it)
            if it.event == "text" and not cancelled:
                await srv.client.cancel("demo", job["job_id"])
                cancelled = True
        done = items[-1].data
        assert (done["status"], done["session_id"]) == ("cancelled", sid)
        assert "".join(it.data["chunk"] for it in items if it.event == "text").startswith("tick0 ")
