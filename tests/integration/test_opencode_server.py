"""The managed-server supervisor with stand-in binaries: start, failed starts, restart, whole-tree stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

import agentd.adapters.agent_process as procs
from agentd.adapters.opencode.client import OpenCodeClient, OpenCodeUnavailable
from agentd.adapters.opencode.pool import ServerPool
from agentd.adapters.opencode.server import ManagedServer, ServerConfig

# A stand-in for `opencode serve`: checks the password, answers /global/health, has a child process
# (like the tools a real server runs) and records its environment.
FAKE_SERVE = """#!{python}
import base64, http.server, json, os, subprocess, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
json.dump(dict(os.environ), open(os.path.join(os.environ["HOME"], "env.json"), "w"))
child = subprocess.Popen(["sleep", "300"])
open(os.path.join(os.environ["HOME"], "child.pid"), "w").write(str(child.pid))
password = os.environ["OPENCODE_SERVER_PASSWORD"].encode()
expected = "Basic " + base64.b64encode(b"opencode:" + password).decode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == expected
        body = json.dumps({{"healthy": True, "version": "0.0-test"}}).encode() if ok else b""
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", port), H)
print(f"opencode server listening on http://127.0.0.1:{{port}}", flush=True)
srv.serve_forever()
"""


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


async def test_start_restart_and_stop_the_whole_tree(tmp_path: Path) -> None:
    binary = script(tmp_path, "serve.py", FAKE_SERVE)
    client = OpenCodeClient("http://127.0.0.1:0")
    server = ManagedServer(
        ServerConfig(binary=binary, base_dir=tmp_path / "oc", environ={"PATH": os.environ["PATH"]}), client
    )
    try:
        url = await server.ensure_started()
        assert url == client.base_url and server.version == "0.0-test" and server.pid is not None
        home = tmp_path / "oc" / "home"
        assert (home / "env.json").exists() and server.rss_bytes() > 0
        first, child = server.pid, int((home / "child.pid").read_text())
        assert child in procs.tree(first)
        os.kill(first, signal.SIGKILL)  # it dies: the watcher restarts it, its leftovers are killed
        for _ in range(100):
            if server.running and server.pid != first:
                break
            await asyncio.sleep(0.05)
        assert server.deaths == 1 and server.restarts == 1 and server.pid not in (None, first)
        assert await procs.wait_gone({first, child}, 2.0)
        second, child = server.pid, int((home / "child.pid").read_text())
        assert second is not None
        await server.stop()
        assert await procs.wait_gone({second, child}, 2.0)
        with pytest.raises(OpenCodeUnavailable, match="closed"):
            await server.ensure_started()
    finally:
        await server.stop()
        await client.close()


async def test_a_server_that_does_not_start_is_reported(tmp_path: Path) -> None:
    crash = script(
        tmp_path,
        "crash.py",
        "#!{python}\nimport sys\nprint('boom: bad config', file=sys.stderr)\nsys.exit(3)\n",
    )
    mute = script(tmp_path, "mute.py", "#!{python}\nimport time\ntime.sleep(300)\n")
    env = {"PATH": os.environ["PATH"]}
    for binary, expected in (
        (crash, r"exited with code 3 before listening.*boom: bad config"),
        (mute, "Timeout"),
    ):
        client = OpenCodeClient("http://127.0.0.1:0")
        server = ManagedServer(
            ServerConfig(binary=binary, base_dir=tmp_path / "oc", environ=env, startup_timeout_s=1.0), client
        )
        try:
            with pytest.raises(OpenCodeUnavailable, match=expected):
                await server.ensure_started()
            assert server.proc is None and not [p for p in procs.tree(os.getpid()) if p != os.getpid()]
        finally:
            await server.stop()
            await client.close()
    client = OpenCodeClient("http://127.0.0.1:0")
    server = ManagedServer(ServerConfig(binary=str(tmp_path / "missing"), base_dir=tmp_path / "oc"), client)
    try:
        with pytest.raises(OpenCodeUnavailable, match="AGENTD_OPENCODE_BIN"):
            await server.ensure_started()
    finally:
        await client.close()


async def test_pool_one_server_per_project_bounded_and_idle_stopped(tmp_path: Path) -> None:
    binary = script(tmp_path, "serve.py", FAKE_SERVE)

    def factory(project: str, env: Mapping[str, str]) -> ManagedServer:
        base = tmp_path / "homes" / project
        cfg = ServerConfig(binary=binary, base_dir=base, environ={"PATH": os.environ["PATH"]}, run_env=env)
        return ManagedServer(cfg, OpenCodeClient("http://127.0.0.1:0"))

    pool = ServerPool(factory, max_servers=2, idle_stop_s=0.5)
    try:
        a = await pool.acquire("a", {"SECRET_A": "1"})
        b = await pool.acquire("b", {})
        assert a.server is not b.server and a.client.base_url != b.client.base_url
        env_a = json.loads((tmp_path / "homes" / "a" / "home" / "env.json").read_text())
        assert env_a["SECRET_A"] == "1" and "SECRET_A" not in str(
            (tmp_path / "homes" / "b").rglob("env.json")
        )
        again = await pool.acquire("a", {"SECRET_A": "1"})  # the same project: the same server
        assert again is a and a.active == 2
        with pytest.raises(OpenCodeUnavailable, match="AGENTD_OPENCODE_MAX_SERVERS"):
            await pool.acquire("c", {})  # both busy
        pool.release(b)
        b_pid = b.server.pid
        c = await pool.acquire("c", {})  # b was idle: it makes room
        assert set(pool.slots) == {"a", "c"} and b_pid is not None and not procs.alive(b_pid)
        pool.release(c)
        for _ in range(40):  # idle for 0.5 s: stopped
            if "c" not in pool.slots:
                break
            await asyncio.sleep(0.1)
        assert set(pool.slots) == {"a"}
        pool.release(a)
        pool.release(again)
        changed = await pool.acquire("a", {"SECRET_A": "2"})  # new secrets, idle server: replaced
        assert changed is not a and a.server.pid is None
        pool.release(changed)
    finally:
        await pool.close()
    assert not pool.slots and not [p for p in procs.tree(os.getpid()) if p != os.getpid()]
