"""The newcomer's flow as real processes: `agentd serve` in one, `agentd submit --follow` in another."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import time
from typing import Any

import aiohttp
import pytest

from tests.support import fake_anthropic as fa
from tests.support.agentd_proc import AGENTD, Server, base_env, serve
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.net import free_port

pytestmark = pytest.mark.e2e
__all__ = ["AGENTD", "Server", "base_env", "serve"]  # fixtures and helpers other tests import


def submit(server: Server, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "AGENTD_URL": server.url}
    return subprocess.run(
        [*AGENTD, "submit", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def text_of(stdout: str) -> str:
    """The agent's text in `agentd submit --follow` output off a terminal (one JSON line per event)."""
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return "".join(e["data"]["chunk"] for e in events if e["event"] == "text")


def test_serve_and_submit_follow_with_the_scripted_agent(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")
    ok = submit(srv, "--project", "demo", "--follow", "hello from the cli")
    assert ok.returncode == 0, ok.stderr
    lines = [json.loads(line) for line in ok.stdout.splitlines()]  # not a terminal: one JSON line each
    assert "".join(e["data"]["chunk"] for e in lines if e["event"] == "text") == "hello from the cli"
    assert lines[-1]["event"] == "done" and lines[-1]["data"]["status"] == "succeeded"
    failed = submit(srv, "--project", "demo", "--follow", "fail:it broke")
    assert failed.returncode == 1 and "it broke" in failed.stdout
    bad = submit(srv, "--project", "Bad/Id", "--follow", "x")
    assert bad.returncode == 2 and "project" in bad.stderr
    no_follow = submit(srv, "--project", "demo", "x")
    assert no_follow.returncode == 0 and '"stream_url"' in no_follow.stdout
    # Graceful stop.
    assert srv.stop() == 0


def test_submit_follow_runs_the_real_claude_cli(serve: Any, claude_bin: str) -> None:
    async def with_model() -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
        async with FakeAnthropic() as model:
            srv = serve(
                AGENTD_PROVIDERS="claude-code",
                AGENTD_CLAUDE_BIN=claude_bin,
                ANTHROPIC_BASE_URL=model.base_url,
                ANTHROPIC_API_KEY="sk-fake",
                CLAUDE_CODE_MAX_RETRIES="1",
            )
            loop = asyncio.get_running_loop()
            res = await loop.run_in_executor(
                None, lambda: submit(srv, "--project", "demo", "--follow", "SCENARIO:tool_bash")
            )
            srv.stop()
            return res, model.message_requests()

    res, requests = asyncio.run(with_model())
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in res.stdout.splitlines()]
    text = "".join(e["data"]["chunk"] for e in events if e["event"] == "text")
    assert fa.TOOL_BASH_INTRO in text and fa.TOOL_BASH_DONE in text
    assert [e["data"]["name"] for e in events if e["event"] == "tool_use"] == ["Bash"]
    assert len(requests) == 2  # two model turns: tool call, then the answer


def test_secrets_set_by_the_cli_reach_a_running_servers_runs_and_survive_a_restart(
    serve: Any, base_env: dict[str, str]
) -> None:
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    value = "ghp_from-the-cli-" + os.urandom(4).hex()
    srv = serve(AGENTD_PROVIDERS="scripted", AGENTD_MASTER_KEY=key)
    cli_env = {**base_env, "AGENTD_MASTER_KEY": key}
    res = subprocess.run(
        [*AGENTD, "secrets", "set", "GH_TOKEN", "--project", "demo"],
        env=cli_env,
        input=value + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )  # beside the running server, on the same database
    assert res.returncode == 0, res.stderr
    want = f"GH_TOKEN sha256 {hashlib.sha256(value.encode()).hexdigest()}"
    ran = submit(srv, "--project", "demo", "--follow", "env:GH_TOKEN")
    assert ran.returncode == 0 and want in text_of(ran.stdout), ran.stderr
    assert srv.stop() == 0
    srv.start()  # a restart keeps it
    ran = submit(srv, "--project", "demo", "--follow", "env:GH_TOKEN")
    assert ran.returncode == 0 and want in text_of(ran.stdout), ran.stderr
    listed = subprocess.run(
        [*AGENTD, "secrets", "list", "--project", "demo"], env=cli_env, capture_output=True, text=True
    )
    assert listed.stdout.startswith("GH_TOKEN\t") and value not in listed.stdout
    deleted = subprocess.run(
        [*AGENTD, "secrets", "delete", "GH_TOKEN", "--project", "demo"], env=cli_env, capture_output=True
    )
    assert deleted.returncode == 0
    ran = submit(srv, "--project", "demo", "--follow", "env:GH_TOKEN")
    assert "GH_TOKEN unset" in text_of(ran.stdout), ran.stderr


def test_a_key_made_by_the_cli_opens_its_project_on_a_running_server(
    serve: Any, base_env: dict[str, str]
) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted", AGENTD_API_KEY="bootstrap-admin-key-123456")
    made = subprocess.run(
        [*AGENTD, "keys", "create", "--name", "ci", "--project", "demo"],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    env = {**srv.env, "AGENTD_URL": srv.url, "AGENTD_API_KEY": key}
    ok = subprocess.run(
        [*AGENTD, "submit", "--project", "demo", "--follow", "hello with a scoped key"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "hello with a scoped key" in text_of(ok.stdout), ok.stderr
    other = subprocess.run(
        [*AGENTD, "submit", "--project", "elsewhere", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert other.returncode == 2 and "project_not_found" in other.stderr
    key_id = key.split("_")[1] + "_" + key.split("_")[2]
    revoked = subprocess.run(
        [*AGENTD, "keys", "revoke", key_id], env=base_env, capture_output=True, timeout=30
    )
    assert revoked.returncode == 0
    gone = subprocess.run(
        [*AGENTD, "submit", "--project", "demo", "x"], env=env, capture_output=True, text=True, timeout=60
    )
    assert gone.returncode == 2 and "401" in gone.stderr


def test_open_bind_without_api_key_is_refused(base_env: dict[str, str]) -> None:
    res = subprocess.run(
        [*AGENTD, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env={**base_env, "AGENTD_PROVIDERS": "scripted"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and "AGENTD_API_KEY" in res.stderr


def test_an_open_bind_with_keys_made_by_the_cli_needs_one_even_after_the_last_is_revoked(
    serve: Any, base_env: dict[str, str]
) -> None:
    made = subprocess.run(
        [*AGENTD, "keys", "create", "--admin"], env=base_env, capture_output=True, text=True, timeout=30
    )
    key = made.stdout.strip().splitlines()[-1]
    srv = serve(
        AGENTD_PROVIDERS="scripted", AGENTD_HOST="0.0.0.0"
    )  # no AGENTD_API_KEY: the stored key will do

    async def status(key: str | None) -> int:
        headers = {"X-API-Key": key} if key else {}
        async with aiohttp.ClientSession() as s, s.get(f"{srv.url}/providers", headers=headers) as r:
            return r.status

    assert asyncio.run(status(None)) == 401 and asyncio.run(status(key)) == 200
    key_id = "_".join(key.split("_")[1:3])
    subprocess.run(
        [*AGENTD, "keys", "revoke", key_id], env=base_env, capture_output=True, timeout=30, check=True
    )
    assert asyncio.run(status(None)) == 401  # no key left: still closed, never open to the network
    assert asyncio.run(status(key)) == 401


def test_api_and_worker_roles_need_a_database(base_env: dict[str, str]) -> None:
    for role in ("api", "worker", "migrate"):
        res = subprocess.run([*AGENTD, role], env=base_env, capture_output=True, text=True, timeout=30)
        assert res.returncode == 2 and "AGENTD_DATABASE_URL" in res.stderr, (role, res.stderr)


def test_no_job_is_lost_when_the_process_is_killed(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")

    async def scenario() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{srv.url}/projects/p/jobs", json={"prompt": "sleep:2"}) as r:
                job = await r.json()
            async with http.post(f"{srv.url}/projects/p/jobs", json={"prompt": "queued behind"}) as r:
                second = await r.json()
            await asyncio.sleep(0.5)
            srv.stop(signal.SIGKILL)  # no goodbye: the running and the queued job are in the file
            srv.start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async with http.get(f"{srv.url}/projects/p/jobs/{second['job_id']}") as r:
                    state = await r.json()
                if state["status"] == "succeeded":
                    break
                await asyncio.sleep(0.2)
            async with http.get(f"{srv.url}/projects/p/jobs/{job['job_id']}") as r:
                first = await r.json()
            return {"first": first, "second": state}

    out = asyncio.run(scenario())
    assert out["second"]["status"] == "succeeded"
    assert out["first"]["status"] == "succeeded" and out["first"]["attempts"] == 2
    assert srv.stop() == 0


def test_clear_errors_for_an_unreachable_or_unmigrated_database(base_env: dict[str, str]) -> None:
    down = {**base_env, "AGENTD_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}
    res = subprocess.run([*AGENTD, "migrate"], env=down, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "unavailable" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run(
        [*AGENTD, "worker"],
        env={**down, "AGENTD_PROVIDERS": "scripted"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 2 and "unavailable" in res.stderr and "Traceback" not in res.stderr
