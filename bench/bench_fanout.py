"""Fan-out: one job's event stream to many SSE subscribers, agentd against a bare aiohttp SSE server.

Servers, each its own process on loopback: `agentd serve` (embedded, the `scripted` agent's
`stream:<count>:<per_second>:<delay_s>` prompt makes a job that sends timed text deltas), and the bare server
written below (`python bench/bench_fanout.py bare PORT`): the least an aiohttp SSE server can do (each event
encoded once, a shared list of bytes, an asyncio.Event to wake the handlers). Subscribers live in separate
client processes (`... client ...`, uvloop, raw asyncio protocols that only count, so that the clients take as
little of the machine as possible), HTTP/1.1, chunked, as any EventSource gets it.

Scenarios (both servers, interleaved, the same clients):
  - idle: SUBS subscribers connected to a job that sleeps: server RSS growth per subscriber (first round:
    later ones reuse the memory the previous round freed);
  - burst: COUNT events sent as fast as they come: delivered events/s over all subscribers (first event
    sent → last event received), and server CPU time per delivered event;
  - paced: 10 deltas/s for a few seconds: delivery latency (sent → received) p50/p99 over every delivery.

    .venv/bin/python bench/bench_fanout.py [--subs 1000] [--count 200] [--paced-s 5] [--clients 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PY,
    Proc,
    agentd_env,
    cpu_line,
    cpu_seconds,
    free_port,
    median,
    pct,
    processes,
    ratio,
    rss_bytes,
    setup_uvloop,
    start_agentd,
    table,
    tmpdir,
    wait_http,
)

STAMP = re.compile(rb"t=(\d+\.\d+);")

# --------------------------------------------------------------------------------------- the bare server


def bare_server(port: int) -> None:  # noqa: C901
    """The anchor: a minimal aiohttp SSE server with the same job shape (a delay, then timed deltas)."""
    from aiohttp import web

    class Stream:
        def __init__(self) -> None:
            self.log: list[bytes] = []
            self.closed = False
            self.changed = asyncio.Event()

        def append(self, frame: bytes) -> None:
            self.log.append(frame)
            self.changed.set()
            self.changed = asyncio.Event()

    streams: dict[str, Stream] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def run(sid: str, count: int, rate: float, delay: float) -> None:
        st = streams[sid]
        await asyncio.sleep(delay)
        start = time.monotonic()
        for i in range(count):
            if rate > 0:
                wait = start + i / rate - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            data = json.dumps(
                {
                    "message_id": "msg_0123456789abcdef",
                    "index": 0,
                    "chunk": f"t={time.monotonic():.6f};",
                    "is_complete": False,
                    "agent": None,
                    "abandoned": False,
                },
                separators=(",", ":"),
            )
            st.append(f"id: {len(st.log) + 1}\nevent: text\ndata: {data}\n\n".encode())
        st.append(f'id: {len(st.log) + 1}\nevent: done\ndata: {{"status":"succeeded"}}\n\n'.encode())
        st.closed = True
        st.changed.set()

    async def submit(request: web.Request) -> web.Response:
        q = request.query
        sid = f"s{len(streams)}"
        streams[sid] = Stream()
        t = asyncio.create_task(run(sid, int(q["count"]), float(q["rate"]), float(q["delay"])))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        return web.json_response({"stream_id": sid, "stream_url": f"/events/{sid}"}, status=202)

    async def events(request: web.Request) -> web.StreamResponse:
        st = streams[request.match_info["sid"]]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")
        pos = 0
        while True:
            while pos < len(st.log):
                await resp.write(st.log[pos])
                pos += 1
            if st.closed:
                break
            await st.changed.wait()
        await resp.write_eof()
        return resp

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/jobs", submit)
    app.router.add_get("/events/{sid}", events)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# ------------------------------------------------------------------------------------------- the clients


class _Sub(asyncio.Protocol):
    __slots__ = ("buf", "done", "last", "lat", "n", "request", "sent_first", "stamps", "started", "transport")

    def __init__(self, request: bytes, stamps: bool, done: asyncio.Future[None]) -> None:
        self.request = request
        self.stamps = stamps
        self.done = done
        self.buf = b""
        self.started = False
        self.n = 0
        self.sent_first = 0.0  # the send time of the first delta this subscriber got
        self.last = 0.0
        self.lat: list[float] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.started = True
        buf = self.buf + data
        end = buf.rfind(b"\n\n")
        if end < 0:
            self.buf = buf
            return
        block, self.buf = buf[: end + 2], buf[end + 2 :]
        n = block.count(b'"chunk":"t=')
        if n:
            self.last = now
            if self.stamps:  # every delta: its latency
                self.lat.extend(now - float(m) for m in STAMP.findall(block))
            if not self.n:
                m = STAMP.search(block)
                self.sent_first = float(m.group(1)) if m else now
            self.n += n
        if b"event: done" in block and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def client_main(port: int, path: str, subs: int, stamps: bool) -> None:
    loop = asyncio.get_running_loop()
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    conns: list[_Sub] = []

    async def connect() -> None:
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(lambda: _Sub(request, stamps, done), "127.0.0.1", port)
        conns.append(proto)

    for start in range(0, subs, 50):  # 50 at a time: under the server's listen backlog
        await asyncio.gather(*(connect() for _ in range(min(50, subs - start))))
    # Wait until every subscriber has its response under way (the first write, `retry:`, arrived).
    while not all(c.started for c in conns):  # noqa: ASYNC110 (a poll of 1,000 flags, not an event)
        await asyncio.sleep(0.01)
    print(json.dumps({"connected": time.monotonic()}), flush=True)
    await asyncio.wait_for(asyncio.gather(*(c.done for c in conns)), 600)
    out: dict[str, Any] = {
        "events": sum(c.n for c in conns),
        "last": max(c.last for c in conns),
        "sent_first": min((c.sent_first for c in conns if c.n), default=0.0),
        "lat": [round(x, 6) for c in conns for x in c.lat],
    }
    for c in conns:
        c.transport.close()
    print(json.dumps(out), flush=True)


# ------------------------------------------------------------------------------------------- the driver


class Server:
    def __init__(self, name: str, proc: Proc, port: int, submit_path: str, agentd: bool) -> None:
        self.name, self.proc, self.port, self.submit_path, self.agentd = name, proc, port, submit_path, agentd

    async def submit(self, count: int, rate: float, delay: float) -> str:
        import aiohttp

        base = f"http://127.0.0.1:{self.port}"
        async with aiohttp.ClientSession() as http:
            if self.agentd:
                body = {"prompt": f"stream:{count}:{rate:g}:{delay:g}"}
                async with http.post(f"{base}/projects/fan/jobs", json=body) as r:
                    job = await r.json()
                return f"/projects/fan/events/{job['stream_id']}"
            params = {"count": str(count), "rate": f"{rate:g}", "delay": f"{delay:g}"}
            async with http.post(f"{base}/jobs", params=params) as r:
                job = await r.json()
            return str(job["stream_url"])


async def scenario(
    server: Server, subs: int, clients: int, count: int, rate: float, delay: float, stamps: bool
) -> dict[str, Any]:
    """Submit a job, connect `subs` subscribers from `clients` processes, wait for the end."""
    path = await server.submit(count, rate, delay)
    rss0 = rss_bytes(server.proc.pid)
    per = [subs // clients + (1 if i < subs % clients else 0) for i in range(clients)]
    procs = [
        await asyncio.create_subprocess_exec(
            PY,
            __file__,
            "client",
            str(server.port),
            path,
            str(n),
            "1" if stamps else "0",
            stdout=asyncio.subprocess.PIPE,
            limit=256 * 1024 * 1024,
        )
        for n in per
    ]
    try:
        connected = [json.loads(await asyncio.wait_for(p.stdout.readline(), 120))["connected"] for p in procs]  # type: ignore[union-attr]
        await asyncio.sleep(0.3)  # let the server settle (buffers, GC) before measuring memory
        rss1 = rss_bytes(server.proc.pid)
        cpu0 = cpu_seconds(server.proc.pid)
        results = [json.loads(await asyncio.wait_for(p.stdout.readline(), 600)) for p in procs]  # type: ignore[union-attr]
        cpu1 = cpu_seconds(server.proc.pid)
        for p in procs:
            await p.wait()
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    events = sum(r["events"] for r in results)
    if events != subs * count:
        raise RuntimeError(f"{server.name}: {events} events delivered, expected {subs * count}")
    sent_first = min(r["sent_first"] for r in results)
    if sent_first < max(connected):
        raise RuntimeError(
            f"{server.name}: the first event went out {max(connected) - sent_first:.1f} s before every "
            "subscriber was connected"
        )
    return {
        "rss_per_sub": (rss1 - rss0) / subs,
        "events": events,
        "span": max(r["last"] for r in results) - sent_first,
        "cpu": cpu1 - cpu0,
        "lat": [x for r in results for x in r["lat"]],
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--count", type=int, default=200, help="events in the burst")
    ap.add_argument("--paced-s", type=float, default=5.0, help="seconds of 10 deltas/s")
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--delay", type=float, help="seconds before the first event (default: subs / 100, ≥ 3)")
    args = ap.parse_args()
    # Time for every subscriber to connect before the first event.
    delay = args.delay if args.delay is not None else max(3.0, args.subs / 100)
    with tmpdir() as d, processes() as procs:
        bare_port, agentd_port = free_port(), free_port()
        bare_proc = Proc(
            [PY, __file__, "bare", str(bare_port)], agentd_env(Path(d) / "bare"), log=Path(d) / "bare.log"
        )
        procs.append(bare_proc)
        # One client key holds every subscriber: lift the per-key and total stream limits above the test.
        limit = str(args.subs * 2 + 100)
        env = agentd_env(
            Path(d) / "agentd",
            AGENTD_WORKERS="2",
            AGENTD_SSE_HEARTBEAT_S="60",
            AGENTD_MAX_STREAMS=limit,
            AGENTD_MAX_STREAMS_PER_KEY=limit,
        )
        agentd_proc = start_agentd(procs, "serve", env, port=agentd_port, log=Path(d) / "agentd.log")
        await wait_http(bare_port, bare_proc)
        await wait_http(agentd_port, agentd_proc)
        servers = [
            Server("bare", bare_proc, bare_port, "/jobs", agentd=False),
            Server("agentd", agentd_proc, agentd_port, "/projects/fan/jobs", agentd=True),
        ]
        for s in servers:  # warm up: imports, first connections, allocator arenas
            await scenario(s, min(50, args.subs), 1, 20, 0, delay, stamps=False)
        out: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}
        for _ in range(args.rounds):  # interleaved: both servers see the same machine weather
            for s in servers:
                res = await scenario(s, args.subs, args.clients, args.count, 0, delay, stamps=False)
                rec = out[s.name]
                if "rss" not in rec:  # the first round only: later rounds reuse the memory the last one freed
                    rec["rss"] = [res["rss_per_sub"]]
                rec.setdefault("rate", []).append(res["events"] / res["span"])
                rec.setdefault("cpu", []).append(res["cpu"] / res["events"])
            for s in servers:
                n = max(1, int(10 * args.paced_s))
                res = await scenario(s, args.subs, args.clients, n, 10, delay, stamps=True)
                out[s.name].setdefault("p50", []).append(pct(res["lat"], 0.5))
                out[s.name].setdefault("p99", []).append(pct(res["lat"], 0.99))
    _report(args, out)


def _report(args: argparse.Namespace, out: dict[str, dict[str, list[float]]]) -> None:
    b, a = out["bare"], out["agentd"]
    b_rate, a_rate = median(b["rate"]), median(a["rate"])
    b_cpu, a_cpu = median(b["cpu"]), median(a["cpu"])
    b_rss, a_rss = median(b["rss"]), median(a["rss"])
    print(cpu_line())
    rows = [
        [
            f"events/s, one stream → {args.subs} subscribers ({args.count}-event burst)",
            f"{b_rate:,.0f}",
            f"{a_rate:,.0f}",
            ratio(a_rate, b_rate),
            "≥ 0.5×",
        ],
        [
            "server CPU per delivered event",
            f"{b_cpu * 1e6:.1f} µs",
            f"{a_cpu * 1e6:.1f} µs",
            ratio(a_cpu, b_cpu),
            "",
        ],
        [
            f"delivery latency p50 / p99 at 10 deltas/s × {args.subs}",
            f"{median(b['p50']) * 1000:.1f} / {median(b['p99']) * 1000:.1f} ms",
            f"{median(a['p50']) * 1000:.1f} / {median(a['p99']) * 1000:.1f} ms",
            "",
            "p99 ≤ 50 ms",
        ],
        [
            "RSS per idle subscriber",
            f"{b_rss / 1024:.1f} KiB",
            f"{a_rss / 1024:.1f} KiB",
            ratio(a_rss, b_rss),
            "≤ 1.2×",
        ],
    ]
    print(
        table(
            f"Fan-out: agentd serve (embedded) vs a bare aiohttp SSE server, {args.subs} subscribers in "
            f"{args.clients} client processes; median of {args.rounds} interleaved rounds",
            ["what", "anchor: bare aiohttp", "agentd", "ratio", "goal"],
            rows,
        )
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "bare":  # the default asyncio loop, as `agentd serve` has
        bare_server(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "client":
        setup_uvloop()
        asyncio.run(client_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"))
    else:
        setup_uvloop()
        asyncio.run(main())
