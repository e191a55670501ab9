"""Latency and memory of the OpenCode adapter against the real `opencode serve` and a scripted model.

Run: .venv/bin/python bench/bench_opencode.py [--runs 10] [--bin PATH]

Starts the managed server (as agentd does) and the fake OpenAI-compatible model on loopback, warms the
project up, then submits prompts one after another and reports submit -> first text chunk (p50/p90),
submit -> done, and the resident memory (VmRSS) of the server's process tree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agentd.adapters.opencode import OpenCodeAgent, OpenCodeConfig  # noqa: E402
from agentd.domain.models import AgentRequest, DoneEvent, TextEvent  # noqa: E402
from tests.support.fake_openai import FakeOpenAI  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def one(agent: OpenCodeAgent, prompt: str, session_id: str | None = None) -> tuple[float, float, str]:
    t0 = time.perf_counter()
    first = float("nan")
    status = "?"
    req = AgentRequest(project_id="bench", prompt=prompt, session_id=session_id)
    async for ev in agent.execute(req, run_id=f"bench-{t0}"):
        if isinstance(ev, TextEvent) and ev.chunk and first != first:
            first = time.perf_counter() - t0
        if isinstance(ev, DoneEvent):
            status = ev.status
    return first, time.perf_counter() - t0, status


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument(
        "--bin",
        default=os.environ.get("AGENTD_OPENCODE_BIN") or str(ROOT / ".tools/node/node_modules/.bin/opencode"),
    )
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="bench-opencode-") as tmp:
        async with FakeOpenAI() as fake:
            config = OpenCodeConfig(
                data_dir=Path(tmp),
                binary=args.bin,
                mode="server",
                environ={
                    "PATH": os.environ.get("PATH", os.defpath),
                    "OPENCODE_CONFIG_CONTENT": json.dumps(fake.config()),
                },
            )
            agent = OpenCodeAgent(config)
            try:
                t0 = time.perf_counter()
                await agent.ensure_server("bench")
                startup = time.perf_counter() - t0
                cold = await one(agent, "SCENARIO:text cold")
                rss_start = agent.server_rss_bytes()
                for _ in range(2):
                    await one(agent, "SCENARIO:text warm-up")
                firsts, totals = [], []
                for i in range(args.runs):
                    first, total, status = await one(agent, f"SCENARIO:text run {i}")
                    assert status == "succeeded", status
                    firsts.append(first * 1000)
                    totals.append(total * 1000)
                rss = agent.server_rss_bytes()
            finally:
                await agent.close()
    print(f"opencode {agent._version}  binary {args.bin}")
    print(f"server start -> healthy: {startup * 1000:.0f} ms")
    print(f"first prompt in a new project: first text {cold[0] * 1000:.0f} ms, done {cold[1] * 1000:.0f} ms")
    print(f"warm, {args.runs} prompts (new session each, model streams 5 chunks 20 ms apart):")
    print(
        f"  submit -> first text: p50 {pct(firsts, 50):.0f} ms  p90 {pct(firsts, 90):.0f} ms"
        f"  min {min(firsts):.0f}  max {max(firsts):.0f}  mean {statistics.mean(firsts):.0f}"
    )
    print(f"  submit -> done:       p50 {pct(totals, 50):.0f} ms  p90 {pct(totals, 90):.0f} ms")
    print(
        f"server RSS (process tree): {rss_start / 2**20:.0f} MiB after the first prompt, "
        f"{rss / 2**20:.0f} MiB after {args.runs + 3} prompts"
    )


if __name__ == "__main__":
    asyncio.run(main())
