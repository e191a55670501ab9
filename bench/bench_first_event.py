"""Submit → first streamed event, through the whole stack with the REAL claude CLI and a scripted model.

Runs 20 jobs one after the other through agentd (HTTP submit, embedded queue, worker, claude, SSE) and,
side by side, the same prompt through a bare `claude -p` subprocess (the peer: what any wrapper pays).
Prints p50/p90 for: first event (the "queued" status), first agent event (session), first text chunk,
done; and agentd's overhead ratio on first text.

    .venv/bin/python bench/bench_first_event.py [--jobs 20]
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

from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentd.bootstrap import build  # noqa: E402
from agentd.client import AgentdClient  # noqa: E402
from agentd.config import Settings  # noqa: E402
from tests.conftest import claude_agent, tool_path  # noqa: E402
from tests.support.fake_anthropic import FakeAnthropic  # noqa: E402

PROMPT = "SCENARIO:text say hello"


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def fmt(values: list[float]) -> str:
    return f"p50 {pct(values, 0.5) * 1000:7.1f} ms   p90 {pct(values, 0.9) * 1000:7.1f} ms"


async def through_agentd(claude: str, model: FakeAnthropic, n: int, data: Path) -> dict[str, list[float]]:
    settings = Settings(data_dir=data, workers=1)
    container = await build(settings, agents=[claude_agent(settings, claude, model.base_url)])
    runner = web.AppRunner(container.app(port=0))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    out: dict[str, list[float]] = {
        "first event": [],
        "running": [],
        "session": [],
        "first text": [],
        "done": [],
    }
    async with AgentdClient(base) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            job = await client.submit("bench", PROMPT)
            seen: dict[str, float] = {}
            async for item in client.follow(job["stream_url"]):
                t = time.perf_counter() - t0
                seen.setdefault("first event", t)
                if item.event == "status" and item.data["status"] == "running":
                    seen.setdefault("running", t)
                if item.event == "session":
                    seen.setdefault("session", t)
                if item.event == "text":
                    seen.setdefault("first text", t)
                if item.event == "done":
                    seen["done"] = t
                    assert item.data["status"] == "succeeded", item.data
            for k in out:
                out[k].append(seen[k])
    await runner.cleanup()
    return out


async def bare_cli(claude: str, model: FakeAnthropic, n: int, data: Path) -> dict[str, list[float]]:
    home, tmp, ws = data / "home", data / "tmp", data / "ws"
    for d in (home, tmp, ws):
        d.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "CLAUDE_CODE_TMPDIR": str(tmp),
        "ANTHROPIC_BASE_URL": model.base_url,
        "ANTHROPIC_API_KEY": "sk-fake",
        "IS_SANDBOX": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
    }
    out: dict[str, list[float]] = {"first line": [], "first text": [], "exit": []}
    for _ in range(n):
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            claude,
            "-p",
            "--output-format=stream-json",
            "--verbose",
            "--include-partial-messages",
            "--permission-mode=bypassPermissions",
            PROMPT,
            cwd=ws,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            stdin=asyncio.subprocess.DEVNULL,
            limit=64 * 1024 * 1024,
        )
        assert proc.stdout is not None
        seen: dict[str, float] = {}
        async for line in proc.stdout:
            t = time.perf_counter() - t0
            seen.setdefault("first line", t)
            msg = json.loads(line)
            if msg.get("type") == "stream_event" and msg["event"].get("type") == "content_block_delta":
                seen.setdefault("first text", t)
        await proc.wait()
        seen["exit"] = time.perf_counter() - t0
        for k in out:
            out[k].append(seen[k])
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20)
    args = ap.parse_args()
    claude = tool_path("AGENTD_CLAUDE_BIN", "claude")
    if claude is None:
        raise SystemExit("claude CLI not found: run scripts/setup")
    with tempfile.TemporaryDirectory() as d:
        async with FakeAnthropic() as model:
            await through_agentd(claude, model, 2, Path(d) / "warm")  # warm caches, as in steady state
            ours = await through_agentd(claude, model, args.jobs, Path(d) / "agentd")
            peer = await bare_cli(claude, model, args.jobs, Path(d) / "bare")
    print(f"{args.jobs} jobs each, real claude {os.path.basename(claude)} + scripted model on loopback\n")
    print("agentd (HTTP submit → SSE):")
    for k, v in ours.items():
        print(f"  submit → {k:12s} {fmt(v)}")
    print("bare `claude -p` subprocess (peer):")
    for k, v in peer.items():
        print(f"  spawn  → {k:12s} {fmt(v)}")
    ratio = statistics.median(ours["first text"]) / statistics.median(peer["first text"])
    extra = (statistics.median(ours["first text"]) - statistics.median(peer["first text"])) * 1000
    print(f"\nfirst text, agentd / bare CLI (p50): {ratio:.3f}x  (agentd adds {extra:+.1f} ms)")


if __name__ == "__main__":
    asyncio.run(main())
