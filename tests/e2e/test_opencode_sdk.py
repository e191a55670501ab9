"""The OpenCode-compatible event stream, read by the real OpenCode SDK (npm @opencode-ai/sdk, pinned, in
.tools/sdk) while agentd runs a Claude Code job (the REAL `claude` CLI, scripted model) with a tool call.

The SDK's v1 and v2 clients subscribe at once (tests/support/opencode_sdk_watch.mjs); then every event
they received is type-checked by TypeScript against the SDK's own `Event` types (both generations).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentd.config import Settings
from tests.conftest import ROOT, RunningAgentd, claude_agent
from tests.support import fake_anthropic as fa
from tests.support.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.e2e

SDK_VERSION = "1.18.33"
SDK_DIR = Path(os.environ.get("AGENTD_OPENCODE_SDK_DIR") or ROOT / ".tools" / "sdk")
WATCH = ROOT / "tests" / "support" / "opencode_sdk_watch.mjs"


@pytest.fixture(scope="module")
def sdk() -> Path:
    if shutil.which("node") is None:
        pytest.skip("node is not installed: the OpenCode SDK test needs Node.js")
    pkg = SDK_DIR / "node_modules" / "@opencode-ai" / "sdk" / "package.json"
    tsc = SDK_DIR / "node_modules" / ".bin" / "tsc"
    if not pkg.is_file() or json.loads(pkg.read_text())["version"] != SDK_VERSION or not tsc.exists():
        pytest.skip(
            f"@opencode-ai/sdk@{SDK_VERSION} and typescript are not installed in {SDK_DIR}: run scripts/setup"
        )
    return SDK_DIR


async def watch_with_sdk(sdk: Path, base_url: str, out: Path, sessions: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(WATCH),
        str(sdk),
        base_url,
        str(out),
        str(sessions),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
    except TimeoutError:
        proc.kill()
        raise
    assert line == b"connected\n", (line, await proc.stderr.read() if proc.stderr else b"")
    return proc


def type_check(sdk: Path, events: list[dict[str, Any]], where: Path) -> tuple[int, str]:
    """tsc: every event must be a v1 `Event` and a v2 `Event` of the SDK (its own .d.ts types)."""
    types = sdk / "node_modules" / "@opencode-ai" / "sdk" / "dist"
    lines = [
        f'import type {{ Event as V1Event }} from "{types}/gen/types.gen.js";',
        f'import type {{ Event as V2Event }} from "{types}/v2/gen/types.gen.js";',
        # A control: a tool part in a state the SDK does not know must be rejected.
        "const bad = { type: 'message.part.updated', properties: { part: { id: 'prt_1', sessionID: 's',"
        " messageID: 'msg_1', type: 'tool', callID: 'c', tool: 't',"
        " state: { status: 'done', input: {} } } } }"
        " as const;",
        "// @ts-expect-error: not an OpenCode event",
        "export const badV1: V1Event = bad;",
    ]
    for i, ev in enumerate(events):
        lines.append(f"const e{i} = {json.dumps(ev)} as const;")
        lines.append(f"export const v1_{i}: V1Event = e{i};")
        lines.append(f"export const v2_{i}: V2Event = e{i};")
    src = where / "check.mts"
    src.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [
            str(sdk / "node_modules" / ".bin" / "tsc"),
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--target",
            "es2022",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def of(events: list[dict[str, Any]], etype: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == etype]


async def test_sdk_receives_and_types_a_claude_code_job(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, sdk: Path
) -> None:
    async with FakeAnthropic() as model:
        data = tmp_path / "data"
        srv: RunningAgentd = await agentd_factory(
            [claude_agent(Settings(data_dir=data), claude_bin, model.base_url)], data_dir=data
        )
        out = tmp_path / "events.json"
        proc = await watch_with_sdk(sdk, f"{srv.base_url}/projects/demo/opencode", out, 1)
        job = await srv.client.submit("demo", "SCENARIO:tool_bash please", provider="claude-code")
        try:
            rc = await asyncio.wait_for(proc.wait(), 90)
        finally:
            if proc.returncode is None:
                proc.kill()
        assert proc.stderr is not None
        assert rc == 0, (await proc.stderr.read()).decode()

    got = json.loads(out.read_text())
    v1, v2 = got["v1"], got["v2"]
    # Both SDK generations saw the same events (their clock readings aside).
    assert [(e["id"], e["type"]) for e in v1] == [(e["id"], e["type"]) for e in v2]
    assert v1[0]["type"] == "server.connected"
    sid = f"ses_{job['job_id']}"
    mine = [e for e in v1 if e["properties"].get("sessionID") == sid]
    assert [e for e in v1[1:] if e not in mine and e["type"] != "server.heartbeat"] == []
    types = [e["type"] for e in mine]
    assert types[:4] == ["session.created", "session.updated", "message.updated", "message.part.updated"]
    assert types[-3:] == ["session.status", "session.idle", "session.updated"]
    statuses = [e["properties"]["status"]["type"] for e in of(mine, "session.status")]
    assert statuses == ["busy", "idle"]

    parts = [e["properties"] for e in of(mine, "message.part.updated")]
    tool = [p["part"] for p in parts if p["part"]["type"] == "tool"]
    assert [t["state"]["status"] for t in tool] == ["pending", "running", "completed"]
    assert all(t["tool"] == "Bash" and t["state"]["input"] == fa.TOOL_BASH_INPUT for t in tool)
    assert tool[-1]["state"]["output"] == "(Bash completed with no output)"
    texts: dict[str, str] = {}
    for p in parts:
        if p["part"]["type"] == "text" and "delta" in p:
            texts[p["part"]["id"]] = texts.get(p["part"]["id"], "") + p["delta"]
            assert p["part"]["text"] == texts[p["part"]["id"]]  # the part is the text so far
    assert list(texts.values()) == [fa.TOOL_BASH_INTRO, fa.TOOL_BASH_DONE]
    final = of(mine, "message.updated")[-1]["properties"]["info"]
    assert final["role"] == "assistant" and final["finish"] == "stop" and final["cost"] > 0
    assert final["time"]["completed"] >= final["time"]["created"]

    rc, output = type_check(sdk, v1, tmp_path)
    assert rc == 0, output
