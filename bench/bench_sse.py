"""Decode throughput of agentd.sse.SSEDecoder versus the peer httpx-sse.

Run: .venv/bin/python bench/bench_sse.py   (needs `pip install httpx-sse`, the `bench` extra)

Both decoders get the same bytes in 64 KB chunks. httpx-sse is driven the way its `_iter_sse_lines` /
`EventSource.iter_sse` drive it: an incremental UTF-8 decoder (as httpx's `iter_text` uses), then its
`SSELineDecoder`, then its `SSEDecoder` line by line.
"""

from __future__ import annotations

import codecs
import importlib.util
import json
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from agentd.sse import SSEDecoder, encode_event

CHUNK = 64 * 1024
ROUNDS = 3  # best of N, to dodge scheduler noise


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


def make_small(n: int = 200_000) -> bytes:
    out = []
    for i in range(n):
        payload = json.dumps(
            {"type": "text_delta", "seq": i, "index": 0, "delta": {"text": "Hello, world! " * 3}},
            separators=(",", ":"),
        )
        out.append(encode_event(payload, event="delta", id=i))
    return b"".join(out)


def make_large(n: int = 5_000) -> bytes:
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


def best_time(fn: Callable[[list[bytes]], int], chunks: list[bytes], expected: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.perf_counter()
        n = fn(chunks)
        best = min(best, time.perf_counter() - started)
        assert n == expected
    return best


def bench(name: str, stream: bytes) -> None:
    chunks = chunked(stream)
    # Same events from both, or the comparison is meaningless.
    ours_events = events_ours(chunks)
    assert ours_events == events_peer(chunks), f"{name}: decoders disagree"
    n = len(ours_events)
    mb = len(stream) / 1e6
    t_ours, t_peer = best_time(run_ours, chunks, n), best_time(run_peer, chunks, n)
    print(f"{name}: {n} events, {mb:.1f} MB in {len(chunks)} chunks of {CHUNK // 1024} KB")
    for label, t in (("agentd.sse", t_ours), ("httpx-sse", t_peer)):
        print(f"  {label:<11} {t * 1000:8.1f} ms  {mb / t:8.1f} MB/s  {n / t:12,.0f} events/s")
    print(f"  ours/peer throughput ratio: {t_peer / t_ours:.2f}x")


def main() -> None:
    bench("(a) 200k small JSON events", make_small())
    bench("(b) 5k 4 KB events", make_large())


if __name__ == "__main__":
    main()
