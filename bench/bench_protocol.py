"""Protocol parsing: agent output lines/s through the Claude Code and OpenCode protocol modules.

Input: the recorded output of the real CLIs in tests/fixtures (claude_code/*/stdout.jsonl: stream-json lines;
opencode/*/sse_event.raw: the server's /event stream, whose `data:` lines are the JSON events), each case
replayed with a fresh translation state, repeated to about LINES lines. Measured: the module's whole path from
one raw line to agentd events (`translate_line`; OpenCode: JSON parse + `RunState.handle`). Anchor, same run:
the same lines through `json.loads` alone (the stdlib floor any translation pays: ratio = how much of the
floor the translation keeps), and orjson.loads alone. Then a cProfile top-10 of each module's path.

    .venv/bin/python bench/bench_protocol.py [--lines 200000] [--no-profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, cpu_line, table

from agentd.adapters.claude_code import protocol as claude
from agentd.adapters.json_codec import loads
from agentd.adapters.opencode import protocol as opencode
from agentd.sse import SSEDecoder

FIX = ROOT / "tests" / "fixtures"
ROUNDS = 3


def claude_cases() -> list[list[str]]:
    cases = []
    for f in sorted((FIX / "claude_code").glob("*/stdout.jsonl")):
        lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
        if lines:
            cases.append(lines)
    return cases


def opencode_cases() -> list[tuple[str, str | None, list[str]]]:
    """(session id, user message id, the JSON data of each event) per capture."""
    cases = []
    for f in sorted((FIX / "opencode").glob("*/sse_event.raw")):
        datas = [ev.data for ev in SSEDecoder().feed(f.read_bytes())]
        events = [json.loads(d) for d in datas]
        session = next((e["properties"]["sessionID"] for e in events if e["type"] == "session.created"), None)
        if session is None:
            continue
        users = [
            e["properties"]["info"]["id"]
            for e in events
            if e["type"] == "message.updated" and (e["properties"].get("info") or {}).get("role") == "user"
        ]
        cases.append((session, users[0] if users else None, datas))
    return cases


def repeat(cases: list[Any], size: Callable[[Any], int], want: int) -> list[Any]:
    out, n = [], 0
    while n < want:
        for c in cases:
            out.append(c)
            n += size(c)
    return out


def run_claude(runs: list[list[str]]) -> int:
    n = 0
    for lines in runs:
        state = claude.StreamState()
        for line in lines:
            claude.translate_line(state, line)
        n += len(lines)
    return n


def run_opencode(runs: list[tuple[str, str | None, list[str]]]) -> int:
    n = 0
    parse = loads  # what the OpenCode adapter parses each event with
    for session, user, datas in runs:
        state = opencode.RunState(session, user_message_id=user)
        for data in datas:
            state.handle(parse(data))
        n += len(datas)
    return n


def run_loads(loads: Callable[[str], Any]) -> Callable[[list[list[str]]], int]:
    def run(runs: list[list[str]]) -> int:
        n = 0
        for lines in runs:
            for line in lines:
                loads(line)
            n += len(lines)
        return n

    return run


def best(fn: Callable[[Any], int], arg: Any) -> tuple[float, int]:
    t_best, n = float("inf"), 0
    for _ in range(ROUNDS):
        t = time.perf_counter()
        n = fn(arg)
        t_best = min(t_best, time.perf_counter() - t)
    return n / t_best, n


def top10(fn: Callable[[Any], int], arg: Any) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn(arg)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).strip_dirs().sort_stats("tottime").print_stats(10)
    lines = s.getvalue().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls"))
    return "\n".join(lines[start : start + 11])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    try:
        import orjson

        oloads: Callable[[str], Any] | None = orjson.loads
    except ImportError:
        oloads = None
    c_runs = repeat(claude_cases(), len, args.lines)
    o_runs = repeat(opencode_cases(), lambda c: len(c[2]), args.lines)
    o_lines = [datas for _, _, datas in o_runs]
    rows = []
    for name, fn, runs, raw in (
        ("Claude Code stream-json → events (claude_code/protocol.py)", run_claude, c_runs, c_runs),
        ("OpenCode /event JSON → events (opencode/protocol.py)", run_opencode, o_runs, o_lines),
    ):
        ours, n = best(fn, runs)
        floor, _ = best(run_loads(json.loads), raw)
        fast = best(run_loads(oloads), raw)[0] if oloads is not None else 0.0
        mb = sum(len(ln) for lines in raw for ln in lines) / 1e6
        rows.append(
            [
                name,
                f"{n:,} lines, {mb:.0f} MB",
                f"{ours:,.0f}",
                f"{floor:,.0f}",
                f"{ours / floor:.2f}×",
                f"{fast:,.0f}" if fast else "-",
            ]
        )
    print(cpu_line())
    print(
        table(
            "Protocol parsing: recorded CLI output, lines/s (best of 3)",
            ["path", "input", "agentd lines/s", "anchor: json.loads alone", "ratio", "orjson.loads alone"],
            rows,
        )
    )
    if not args.no_profile:
        for name, fn, runs in (("Claude Code", run_claude, c_runs), ("OpenCode", run_opencode, o_runs)):
            print(f"\ncProfile top-10 by own time, {name}:\n{top10(fn, runs)}")


if __name__ == "__main__":
    main()
