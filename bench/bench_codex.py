"""Codex: one `codex app-server` per job against one long-lived app-server, and `codex exec` per job.

Drives the native binary directly (no agentd) against the scripted Responses API server, with the same
short text turn each time, and prints median/min/max of:
- app-server per job: spawn + initialize + thread/start + turn + exit after stdin closes;
- of which spawn + initialize;
- app-server long-lived: thread/start + turn on a warm process (and its RSS);
- exec per job: spawn to exit.
The adapter runs one app-server per job (agentd/adapters/codex/agent.py says why).

    .venv/bin/python bench/bench_codex.py [--runs 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentd.adapters.codex.agent import native_binary  # noqa: E402
from agentd.adapters.codex.home import write_config  # noqa: E402
from tests.conftest import codex_path  # noqa: E402
from tests.support.fake_responses import FakeResponses  # noqa: E402


class Peer:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.n = 0

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.n += 1
        self.proc.stdin.write(
            (json.dumps({"id": self.n, "method": method, "params": params}) + "\n").encode()
        )
        await self.proc.stdin.drain()
        while True:
            msg: dict[str, Any] = json.loads(await self.proc.stdout.readline())
            if msg.get("id") == self.n and "method" not in msg:
                return msg

    async def until(self, method: str) -> None:
        assert self.proc.stdout is not None
        while json.loads(await self.proc.stdout.readline()).get("method") != method:
            pass


async def start(binary: str, env: dict[str, str], cwd: str) -> Peer:
    proc = await asyncio.create_subprocess_exec(
        binary, "app-server", cwd=cwd, env=env, stdin=-1, stdout=-1, stderr=-3, limit=2**26
    )
    peer = Peer(proc)
    await peer.call("initialize", {"clientInfo": {"name": "bench", "title": "bench", "version": "0"}})
    assert proc.stdin is not None
    proc.stdin.write(b'{"method":"initialized"}\n')
    return peer


async def turn(peer: Peer, cwd: str) -> None:
    r = await peer.call(
        "thread/start", {"cwd": cwd, "approvalPolicy": "never", "sandbox": "danger-full-access"}
    )
    tid = r["result"]["thread"]["id"]
    await peer.call("turn/start", {"threadId": tid, "input": [{"type": "text", "text": "SCENARIO:text"}]})
    await peer.until("turn/completed")


def rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def fmt(xs: list[float]) -> str:
    return (
        f"median {statistics.median(xs) * 1000:.0f} ms (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"
    )


async def main(runs: int) -> None:
    found = codex_path()
    if found is None:
        sys.exit("the Codex CLI is not installed: scripts/setup")
    binary = native_binary(found)
    async with FakeResponses() as fake:
        with tempfile.TemporaryDirectory(prefix="bench-codex-") as tmp:
            home, cwd = Path(tmp) / "home", Path(tmp) / "ws"
            cwd.mkdir()
            write_config(home, base_url=fake.base_url, provider="agentd", model="gpt-5.5")
            env = {"PATH": os.defpath, "HOME": tmp, "CODEX_HOME": str(home), "OPENAI_API_KEY": "sk-fake"}
            per_job, init = [], []
            for _ in range(runs):
                t = time.monotonic()
                peer = await start(binary, env, str(cwd))
                init.append(time.monotonic() - t)
                await turn(peer, str(cwd))
                assert peer.proc.stdin is not None
                peer.proc.stdin.close()
                await peer.proc.wait()
                per_job.append(time.monotonic() - t)
            peer = await start(binary, env, str(cwd))
            warm = []
            for _ in range(runs):
                t = time.monotonic()
                await turn(peer, str(cwd))
                warm.append(time.monotonic() - t)
            rss = rss_mb(peer.proc.pid)
            assert peer.proc.stdin is not None
            peer.proc.stdin.close()
            await peer.proc.wait()
            exec_runs = []
            for _ in range(runs):
                t = time.monotonic()
                p = await asyncio.create_subprocess_exec(
                    binary, "exec", "--json", "--skip-git-repo-check",
                    "--dangerously-bypass-approvals-and-sandbox", "SCENARIO:text",
                    cwd=cwd, env=env, stdin=-3, stdout=-1, stderr=-3,
                )  # fmt: skip
                await p.communicate()
                exec_runs.append(time.monotonic() - t)
    print(f"app-server per job (spawn+initialize+thread+turn+exit): {fmt(per_job)}")
    print(f"  of which spawn+initialize:                          {fmt(init)}")
    print(f"app-server long-lived (thread+turn):                  {fmt(warm)}, RSS {rss} MB")
    print(f"exec per job:                                         {fmt(exec_runs)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=6)
    asyncio.run(main(ap.parse_args().runs))
