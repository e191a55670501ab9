"""`agentd submit --follow`, `follow`, `jobs`, `cancel` as real processes, on a pseudo-terminal (what a
person sees) and on pipes (what a CI step sees): rendering, exit codes, Ctrl-C, re-attaching."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.agentd_proc import AGENTD, Server, base_env, serve
from tests.support.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.e2e
__all__ = ["base_env", "serve"]  # fixtures
JOB_ID = re.compile(rb"job_[0-9a-f]{36}")


class PtyRun:
    """`agentd ARGS` with a pseudo-terminal as its controlling terminal (so ^C is a real SIGINT)."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: exec at once
            os.execve(sys.executable, [sys.executable, *AGENTD[1:], *args], env)
        self.pid, self.fd, self.out = pid, fd, b""

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.out += data
        return bool(data)

    def expect(self, pattern: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while pattern not in self.out:
            assert time.monotonic() < deadline, f"no {pattern!r} in {self.out!r}"
            assert self._read(0.2), f"ended before {pattern!r}: {self.out!r}"
        return self.out

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.2):
            assert time.monotonic() < deadline, f"still running: {self.out!r}"
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)

    def job_id(self) -> str:
        m = JOB_ID.search(self.out)
        assert m, self.out
        return m.group().decode()


def client_env(srv: Server, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in srv.env.items() if k != "AGENTD_API_KEY"}
    return {**env, "AGENTD_URL": srv.url, "TERM": "xterm", **extra}


def agentd(srv: Server, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENTD, *args], env=env or client_env(srv), capture_output=True, text=True, timeout=60
    )


def job_state(srv: Server, project: str, job_id: str) -> dict[str, Any]:
    async def get() -> dict[str, Any]:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{srv.url}/projects/{project}/jobs/{job_id}") as r:
                out: dict[str, Any] = await r.json()
                return out

    return asyncio.run(get())


def test_on_a_terminal_the_run_is_rendered_live(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")
    run = PtyRun(["submit", "--project", "demo", "--follow", "hello from a terminal"], client_env(srv))
    assert run.wait() == 0
    out = run.out.decode()
    assert "hello from a terminal" in out  # the text, as it streamed
    assert "\r\x1b[K" in out  # the status line is redrawn in place…
    assert re.search(r"(queued|running|writing) · \d+\.\ds · job_", out)  # …with the elapsed time
    summary = out.rstrip().splitlines()[-1]
    assert re.search(r"✓ succeeded in \d+\.\ds · 1 turn · cost n/a · session scripted-", summary), summary
    assert '{"id"' not in out  # no JSON lines for a person


def test_json_on_a_terminal_and_plain_lines_on_a_pipe(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")
    run = PtyRun(["submit", "--project", "demo", "--follow", "--json", "hi"], client_env(srv))
    assert run.wait() == 0
    lines = [json.loads(line) for line in run.out.decode().splitlines() if line.startswith("{")]
    assert [e["id"] for e in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["event"] == "done" and "\x1b[" not in run.out.decode()
    piped = agentd(srv, "submit", "--project", "demo", "--follow", "hi")
    assert piped.returncode == 0 and all(json.loads(ln) for ln in piped.stdout.splitlines())
    assert "\x1b[" not in piped.stdout + piped.stderr


def test_exit_codes_tell_how_the_job_ended(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")
    assert agentd(srv, "submit", "--project", "p", "--follow", "ok").returncode == 0
    assert agentd(srv, "submit", "--project", "p", "--follow", "fail:no").returncode == 1
    timed_out = agentd(srv, "submit", "--project", "p", "--follow", "--timeout", "1", "sleep:5")
    assert timed_out.returncode == 124, timed_out.stdout
    usage = agentd(srv, "submit", "--project", "p", "--follow", "--timeout", "0", "x")
    assert usage.returncode == 2 and "timeout_s" in usage.stderr
    nobody = agentd(srv, "jobs", "--project", "p", "--server", "http://127.0.0.1:9")
    assert nobody.returncode == 2 and "cannot reach agentd" in nobody.stderr
    # Cancelled from another process while it is followed here: 130.
    follower = subprocess.Popen(
        [*AGENTD, "submit", "--project", "q", "--follow", "sleep:30"],
        env=client_env(srv),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert follower.stdout is not None
    for line in follower.stdout:
        if json.loads(line)["data"].get("status") == "running":
            break
    job_id = agentd(srv, "jobs", "--project", "q", "--json").stdout.splitlines()[0]
    job_id = json.loads(job_id)["job_id"]
    cancelled = agentd(srv, "cancel", job_id)  # the project is remembered from the submit
    assert cancelled.returncode == 0 and job_id in cancelled.stdout, cancelled.stderr
    assert follower.wait(timeout=30) == 130
    follower.stdout.close()
    assert agentd(srv, "cancel", job_id, "--project", "q").returncode == 0  # cancelled already: fine
    listing = agentd(srv, "jobs", "--project", "p")
    assert listing.returncode == 0
    rows = [ln.split() for ln in listing.stdout.splitlines()[1:]]
    assert [r[1] for r in rows] == ["timed_out", "failed", "succeeded"]
    ended = agentd(srv, "cancel", rows[2][0], "--project", "p")
    assert ended.returncode == 1 and "already ended: succeeded" in ended.stderr


def test_ctrl_c_cancels_the_job_on_the_server(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")
    run = PtyRun(["submit", "--project", "demo", "--follow", "sleep:60"], client_env(srv))
    run.expect("running ·".encode())
    run.send(b"\x03")  # Ctrl-C on the terminal: SIGINT to the foreground process
    assert run.wait() == 130
    assert b"cancelling the job on the server" in run.out
    assert "cancelled" in run.out.decode().splitlines()[-1]
    assert job_state(srv, "demo", run.job_id())["status"] == "cancelled"


def test_sigterm_from_a_ci_runner_cancels_the_job(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")
    proc = subprocess.Popen(
        [*AGENTD, "submit", "--project", "ci", "--follow", "sleep:60"],
        env=client_env(srv),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["data"].get("status") == "running":
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=30) == 130
    done = json.loads(rest.splitlines()[-1])
    assert done["event"] == "done" and done["data"]["status"] == "cancelled"


def test_detach_then_follow_resumes_from_the_last_event_seen(serve: Any, tmp_path: Path) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")
    run = PtyRun(["submit", "--project", "demo", "--follow", "--detach", "sleep:4"], client_env(srv))
    run.expect("running ·".encode())
    run.send(b"\x03")
    assert run.wait() == 130
    job_id = run.job_id()
    assert f"agentd follow {job_id}".encode() in run.out
    assert job_state(srv, "demo", job_id)["status"] == "running"  # not cancelled
    seen = json.loads((tmp_path / "state" / "jobs" / f"{job_id}.json").read_text())["last_seq"]
    assert seen >= 2
    resumed = agentd(srv, "follow", job_id)  # the project is remembered
    assert resumed.returncode == 0, resumed.stderr
    ids = [json.loads(ln)["id"] for ln in resumed.stdout.splitlines()]
    assert ids[0] == seen + 1 and ids == list(range(seen + 1, seen + 1 + len(ids)))
    # Seen to the end: following again shows only the outcome; --from-start replays everything.
    assert agentd(srv, "follow", job_id).returncode == 0
    replay = agentd(srv, "follow", job_id, "--from-start", "--project", "demo")
    assert json.loads(replay.stdout.splitlines()[0])["id"] == 1
    unknown = agentd(srv, "follow", "job_nope")
    assert unknown.returncode == 2 and "--project" in unknown.stderr


def test_api_key_from_the_flag_or_the_environment(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted", AGENTD_API_KEY="k-123456789012345678901234")
    denied = agentd(srv, "submit", "--project", "p", "--follow", "x")
    assert denied.returncode == 2 and "X-API-Key" in denied.stderr
    flag = agentd(srv, "submit", "--project", "p", "--follow", "--api-key", "k-123456789012345678901234", "x")
    assert flag.returncode == 0, flag.stderr
    env = client_env(srv, AGENTD_API_KEY="k-123456789012345678901234")
    assert agentd(srv, "jobs", "--project", "p", env=env).returncode == 0


def test_tool_calls_get_one_line_each_with_their_outcome(serve: Any, claude_bin: str) -> None:
    async def scenario() -> PtyRun:
        async with FakeAnthropic() as model:
            srv = serve(
                AGENTD_PROVIDERS="claude-code",
                AGENTD_CLAUDE_BIN=claude_bin,
                ANTHROPIC_BASE_URL=model.base_url,
                ANTHROPIC_API_KEY="sk-fake",
                CLAUDE_CODE_MAX_RETRIES="1",
            )
            run = PtyRun(["submit", "--project", "demo", "--follow", "SCENARIO:tool_bash"], client_env(srv))
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, run.wait, 120)
            return run

    run = asyncio.run(scenario())
    lines = run.out.decode().replace("\r\x1b[K", "\n").splitlines()
    tool_lines = [ln for ln in lines if "Bash" in ln and ("✓" in ln or "✗" in ln)]
    assert len(tool_lines) == 1, lines
    assert re.search(r"✓.* Bash .*\(\d+\.\ds\)", tool_lines[0])
    assert "2 turns" in lines[-1] or "turns" in lines[-1]
