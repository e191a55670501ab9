"""Re-record tests/fixtures/codex/ from the pinned Codex CLI against tests/support/fake_responses.py.

    .venv/bin/python -m tests.support.record_codex [--binary PATH] [--out tests/fixtures/codex]

Writes, for each case, ``exec/<case>.jsonl`` (stdout of ``codex exec --json``, verbatim) and
``app_server/<case>.jsonl`` (the JSON-RPC traffic of ``codex app-server``, one
``{"dir": "->"|"<-", "msg": ...}`` per line, in order). Thread ids, paths and times in them are whatever
that run produced. A developer tool: no test runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from agentd.adapters.codex.home import write_config
from tests.conftest import ROOT
from tests.support.fake_responses import FakeResponses

CASES: dict[str, tuple[str, str | None]] = {
    # case: (prompt, what ends the run early: None = nothing, else the trigger for SIGINT / turn/interrupt)
    "text": ("SCENARIO:text", None),
    "tool": ("SCENARIO:tool", None),
    "error400": ("SCENARIO:error400", None),
    "error500": ("SCENARIO:error500", None),
    "error500_once": ("SCENARIO:error500_once", None),
    "remember": ("SCENARIO:remember banana", None),
    "slow_cancel": ("SCENARIO:slow delay_ms=100 chunks=300", "tick3"),  # exec: no deltas, see below
    "sleep_tool_cancel": ("SCENARIO:sleep_tool", "sleep 300"),
}
DEFAULT_BINARY = ROOT / ".tools/codex/node_modules/.bin/codex"


async def record_exec(
    binary: str,
    env: dict[str, str],
    cwd: Path,
    out: Path,
    case: str,
    argv_tail: list[str],
    trigger: str | None,
) -> str:
    args = [
        binary,
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--dangerously-bypass-approvals-and-sandbox",
        *argv_tail,
    ]
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    async for raw in proc.stdout:
        line = raw.decode()
        lines.append(line)
        if trigger and trigger in line:
            await asyncio.sleep(0.5)
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
            trigger = None
    await proc.wait()
    (out / "exec" / f"{case}.jsonl").write_text("".join(lines))
    first = json.loads(lines[0]) if lines else {}
    return str(first.get("thread_id", ""))


class _Rpc:
    """A minimal JSON-RPC peer over the process's stdio that logs both directions."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log: list[dict[str, Any]] = []
        self.next_id = 0

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.log.append({"dir": "->", "msg": msg})
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()

    async def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not raw:
            raise EOFError
        msg: dict[str, Any] = json.loads(raw)
        self.log.append({"dir": "<-", "msg": msg})
        return msg

    async def request(self, method: str, params: dict[str, Any], *, wait: bool = True) -> dict[str, Any]:
        self.next_id += 1
        my = self.next_id
        await self.send({"id": my, "method": method, "params": params})
        while wait:
            msg = await self.read()
            if msg.get("id") == my and "method" not in msg:
                return msg
        return {}


async def _turn(rpc: _Rpc, cwd: Path, prompt: str, trigger: str | None, resume: str | None) -> None:
    await rpc.request("initialize", {"clientInfo": {"name": "agentd", "title": "agentd", "version": "0"}})
    await rpc.send({"method": "initialized"})
    common = {"cwd": str(cwd), "approvalPolicy": "never", "sandbox": "danger-full-access"}
    if resume:
        r = await rpc.request("thread/resume", {"threadId": resume, "excludeTurns": True, **common})
    else:
        r = await rpc.request("thread/start", common)
    thread_id = r.get("result", {}).get("thread", {}).get("id", "")
    r = await rpc.request("turn/start", {"threadId": thread_id, "input": [{"type": "text", "text": prompt}]})
    turn_id = r.get("result", {}).get("turn", {}).get("id", "")
    while True:
        msg = await rpc.read()
        if trigger and trigger in json.dumps(msg):
            await asyncio.sleep(0.5)
            await rpc.request("turn/interrupt", {"threadId": thread_id, "turnId": turn_id}, wait=False)
            trigger = None
        if msg.get("method") == "turn/completed":
            return


async def record_app_server(
    binary: str,
    env: dict[str, str],
    cwd: Path,
    out: Path,
    case: str,
    prompt: str,
    trigger: str | None,
    resume: str | None = None,
) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary,
        "app-server",
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        limit=64 * 1024 * 1024,
    )
    rpc = _Rpc(proc)
    try:
        await _turn(rpc, cwd, prompt, trigger, resume)
    except (EOFError, TimeoutError) as e:
        rpc.log.append({"dir": "!!", "msg": {"error": repr(e)}})
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), 5)
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    (out / "app_server" / f"{case}.jsonl").write_text("".join(json.dumps(m) + "\n" for m in rpc.log))
    thread: dict[str, Any] = next(
        (
            m["msg"]["result"]["thread"]
            for m in rpc.log
            if m["dir"] == "<-"
            and isinstance(m["msg"].get("result"), dict)
            and "thread" in m["msg"]["result"]
        ),
        {},
    )
    return str(thread.get("id", ""))


async def main(binary: str, out: Path) -> None:
    for d in ("exec", "app_server"):
        (out / d).mkdir(parents=True, exist_ok=True)
    async with FakeResponses() as fake:
        with tempfile.TemporaryDirectory(prefix="codex-rec-", dir=os.environ.get("TMPDIR")) as tmp:
            home, cwd = Path(tmp) / "home", Path(tmp) / "ws"
            cwd.mkdir()
            write_config(home, base_url=fake.base_url, model="gpt-5.5", request_max_retries=2)
            env = {
                "PATH": os.environ.get("PATH", os.defpath),
                "HOME": tmp,
                "CODEX_HOME": str(home),
                "OPENAI_API_KEY": "sk-fake",
                "LANG": "C.UTF-8",
            }
            for case, (prompt, trigger) in CASES.items():
                exec_trigger = "turn.started" if trigger == "tick3" else trigger
                tid = await record_exec(binary, env, cwd, out, case, [prompt], exec_trigger)
                if case == "remember":
                    await record_exec(
                        binary, env, cwd, out, "resume_recall", ["resume", tid, "SCENARIO:recall"], None
                    )
                tid = await record_app_server(binary, env, cwd, out, case, prompt, trigger)
                if case == "remember":
                    await record_app_server(
                        binary, env, cwd, out, "resume_recall", "SCENARIO:recall", None, resume=tid
                    )
            await record_exec(
                binary, env, cwd, out, "bad_model", ["-m", "no-such-model", "SCENARIO:text"], None
            )
            await record_exec(
                binary,
                env,
                cwd,
                out,
                "resume_unknown",
                ["resume", "01a22eea-0000-7000-8000-000000000000", "hi"],
                None,
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=str(DEFAULT_BINARY))
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures/codex"))
    a = ap.parse_args()
    asyncio.run(main(a.binary, Path(a.out)))
