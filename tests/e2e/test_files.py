"""The data dir is private: created 0700, and `agentd serve` (umask 077) and its runs create 0600/0700."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from agentd.client import AgentdClient

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "support" / "hostile_agent.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _too_open(data: Path) -> list[str]:
    """Everything under `data` (itself included) that its group or others may use."""
    out = []
    for p in [data, *data.rglob("*")]:
        mode = p.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & 0o077:
            out.append(f"{p.relative_to(data)} {stat.filemode(mode)}")
    return out


def test_serve_keeps_everything_in_the_data_dir_private(tmp_path: Path) -> None:
    data, port = tmp_path / "data", _free_port()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        "AGENTD_DATA_DIR": str(data),
        "AGENTD_PROVIDERS": "claude-code",
        "AGENTD_CLAUDE_BIN": str(HOSTILE),  # it writes into its workspace and its home
        "AGENTD_LOG_FORMAT": "json",
    }
    log = tmp_path / "serve.log"
    with log.open("ab") as f:
        # A permissive umask in the parent: agentd must not inherit it.
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentd.cli", "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=f,
            umask=0o002,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)

        async def one_job() -> dict[str, Any]:
            async with AgentdClient(f"http://127.0.0.1:{port}") as client:
                job = await client.submit("demo", "HOSTILE " + json.dumps({"plant": "file in the workspace"}))
                items = [it async for it in client.follow(job["stream_url"])]
            return items[-1].data

        done = asyncio.run(one_job())
        assert done["status"] == "succeeded", done
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (data / "workspaces" / "demo" / "secret.txt").read_text() == "file in the workspace"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert not _too_open(data)


async def test_an_existing_wide_data_dir_is_narrowed(agentd_factory: Any, tmp_path: Path) -> None:
    data = tmp_path / "old"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    await agentd_factory(data_dir=data, providers="scripted")
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
