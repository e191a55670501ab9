"""Decode throughput of agentd.sse.SSEDecoder versus the peer httpx-sse.

Run: .venv/bin/python bench/bench_sse.py   (needs `pip install httpx-sse`, the `bench` extra)

Both decoders get the same bytes in 64 KB chunks. httpx-sse is driven the way its `_iter_sse_lines` /
`EventSource.iter_sse` drive it: an incremental UTF-8 decoder (as httpx's `iter_text` uses), then its
`SSELineDecoder`, then its `SSEDecoder` line by line.
"""

from __future__ import annotations

import argparse
import codecs
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_line, table

from agentd.sse import SSEDecoder, encode_event

CHUNK = 64 * 1024
ROUNDS = 7  # best of N, to dodge scheduler noise


def _load_httpx_sse_decoders() -> Any:
    """httpx_sse/__init__ imports httpx, which the bench does not need: the decoders are pure Python.
    Without httpx installed, expose the package without running its __init__."""
    try:
        from httpx_sse import _decoders

        return _decoders
    except ModuleNotFoundError as exc:
        if exc.name != "httpx":
            sys.exit("httpx-sse is not installed: .venv/bin/pip install httpx-sse")
    spec = importlib.util.find_spec("httpx_sse")
    assert spec is not None and spec.submodule_search_locations is not None
    pkg = types.ModuleType("httpx_sse")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["httpx_sse"] = pkg
    from httpx_sse import _decoders

    return _decoders


peer = _load_httpx_sse_decoders()


def make_small(n: int) -> bytes:
    out = []
    for i in range(n):
        payload = json.dumps(
            {"type": "text_delta", "seq": i, "index": 0, "delta": {"text": "Hello, world! " * 3}},
            separators=(",", ":"),
        )
        out.append(encode_event(payload, event="delta", id=i))
    return b"".join(out)


def make_large(n: int) -> bytes:
    text = ("lorem ipsum dolor sit amet " * 160)[:4000]
    return b"".join(
        encode_event(json.dumps({"seq": i, "text": text}), event="snapshot", id=i) for i in range(n)
    )


def chunked(stream: bytes) -> list[bytes]:
    return [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]


def events_ours(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    dec = SSEDecoder()
    events = [ev for chunk in chunks for ev in dec.feed(chunk)] + dec.close()
    return [(ev.event, ev.data, ev.id) for ev in events]


def events_peer(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines, dec = peer.SSELineDecoder(), peer.SSEDecoder()
    out = []
    for line in [ln for chunk in chunks for ln in lines.decode(text_decoder.decode(chunk))] + lines.flush():
        sse = dec.decode(line)
        if sse is not None:
            out.append((sse.event, sse.data, sse.id))
    return out


# The timed loops only count events, so neither side pays for the comparison above.
def run_ours(chunks: list[bytes]) -> int:
    dec = SSEDecoder()
    n = 0
    for chunk in chunks:
        n += len(dec.feed(chunk))
    return n + len(dec.close())


def run_peer(chunks: list[bytes]) -> int:
    text_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    lines = peer.SSELineDecoder()
    dec = peer.SSEDecoder()
    n = 0
    for chunk in chunks:
        text = text_decoder.decode(chunk)
        if not text:
            continue  # httpx never hands the line decoder an empty string
        for line in lines.decode(text):
            if dec.decode(line) is not None:
                n += 1
    for line in lines.flush():
        if dec.decode(line) is not None:
            n += 1
    return n


def best_times(chunks: list[bytes], expected: int) -> tuple[float, float]:
    """Best of ROUNDS for each side, the rounds interleaved (ours, peer, ours, ...): same machine weather."""
    t_ours = t_peer = float("inf")
    for _ in range(ROUNDS):
        for fn in (run_ours, run_peer):
            started = time.perf_counter()
            n = fn(chunks)
            t = time.perf_counter() - started
            assert n == expected
            if fn is run_ours:
                t_ours = min(t_ours, t)
            else:
                t_peer = min(t_peer, t)
    return t_ours, t_peer


def bench(name: str, stream: bytes, goal: str) -> list[str]:
    chunks = chunked(stream)
    # Same events from both, or the comparison is meaningless.
    ours_events = events_ours(chunks)
    assert ours_events == events_peer(chunks), f"{name}: decoders disagree"
    n = len(ours_events)
    mb = len(stream) / 1e6
    t_ours, t_peer = best_times(chunks, n)
    return [
        f"{name}: {n:,} events, {mb:.1f} MB in {CHUNK // 1024} KB chunks",
        f"{mb / t_peer:,.1f} MB/s",
        f"{mb / t_ours:,.1f} MB/s ({n / t_ours:,.0f} events/s)",
        f"{t_peer / t_ours:.2f}×",
        goal,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=200_000, help="number of ~114-byte events")
    parser.add_argument("--large", type=int, default=5_000, help="number of 4 KB events")
    args = parser.parse_args()
    rows = [
        bench("~114-byte JSON events", make_small(args.small), "≥ 2×"),
        bench("4 KB events", make_large(args.large), "≥ 1.5×"),
    ]
    print(cpu_line())
    print(
        table(
            f"SSE decoder: agentd.sse vs httpx-sse 0.4.3 (best of {ROUNDS}, interleaved)",
            ["stream", "anchor: httpx-sse iter_sse path", "agentd.sse", "ratio", "goal"],
            rows,
        )
    )


if __name__ == "__main__":
    main()
