"""agentd started the way a new user starts it: `scripts/serve`, inheriting the machine's WHOLE environment.

The other end-to-end tests give agentd a clean, chosen environment. Users do not: an inherited
`IS_SANDBOX=yes` once broke every Claude job while the suite stayed green. Here agentd gets everything
this process has (plus a few stray values a user's shell might carry), and a real `claude` job must still
succeed, jailed as usual, with the user's stray credentials kept out of the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from tests.support import fake_anthropic as fa
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
STRAY_TOKEN = "ghp_straytoken_from_the_users_shell_0123456789"


async def _wait_up(url: str, proc: asyncio.subprocess.Process, log: Path) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            assert proc.returncode is None, log.read_text()  # noqa: ASYNC240 (failure message only)
            try:
                async with http.get(f"{url}/healthz") as r:
                    if r.status == 200:
                        body: dict[str, Any] = await r.json()
                        return body
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("scripts/serve did not come up: " + log.read_text())  # noqa: ASYNC240


async def _run_job(url: str) -> list[dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/projects/demo/jobs",
            json={"prompt": "SCENARIO:env_tool", "provider": "claude-code"},
            headers=headers,
        ) as r:
            assert r.status == 202, await r.text()
            job = await r.json()
        events: list[dict[str, Any]] = []
        async with http.get(job["stream_url"], timeout=aiohttp.ClientTimeout(total=120)) as r:
            event = ""
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append({"event": event, "data": json.loads(line[6:])})
                    if event == "done":
                        break
    return events


def test_scripts_serve_with_the_machines_whole_environment(tmp_path: Path, claude_bin: str) -> None:
    port = free_port()
    log = tmp_path / "serve.log"

    async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], str]:
        async with FakeAnthropic() as model:
            env = {
                **os.environ,  # everything this machine's shell has, as `scripts/serve` would get it
                "IS_SANDBOX": "yes",  # what broke every Claude job once
                "GITHUB_TOKEN": STRAY_TOKEN,  # a user's unrelated credential
                "AGENTD_DATA_DIR": str(tmp_path / "data"),
                "AGENTD_PROVIDERS": "claude-code,scripted",
                "ANTHROPIC_BASE_URL": model.base_url,
                "ANTHROPIC_API_KEY": "sk-fake-from-the-users-shell",
                "CLAUDE_CODE_MAX_RETRIES": "1",
            }
            env.pop("AGENTD_DATABASE_URL", None)
            with log.open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    str(ROOT / "scripts" / "serve"),
                    "--port",
                    str(port),
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
            try:
                url = f"http://127.0.0.1:{port}"
                health = await _wait_up(url, proc, log)
                events = await _run_job(url)
            finally:
                os.killpg(proc.pid, signal.SIGTERM)
                await asyncio.wait_for(proc.wait(), 60)
            return health, events, log.read_text()

    health, events, server_log = asyncio.run(scenario())
    done = events[-1]
    assert done["event"] == "done", events
    assert done["data"]["status"] == "succeeded", done
    text = "".join(e["data"]["chunk"] for e in events if e["event"] == "text")
    assert fa.ENV_TOOL_DONE in text
    tool_output = json.dumps([e["data"] for e in events if e["event"] == "tool_result"])
    assert "PATH=" in tool_output, events  # the tool ran and printed the run's environment
    assert "[REDACTED:ANTHROPIC_API_KEY]" in tool_output  # the run had the key; the stream does not
    assert health["sandbox"] in ("bwrap", "off")
    stream = json.dumps(events)
    assert STRAY_TOKEN not in stream and "sk-fake-from-the-users-shell" not in stream
    assert STRAY_TOKEN not in server_log
