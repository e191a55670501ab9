"""The agent-process module with small stand-in programs: framing, watchdog, stop escalation, reaping."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import agentd.adapters.agent_process as ap
from agentd.adapters.sandbox import Jail, Sandbox, runtime_paths

PY = sys.executable


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "agent.py"
    path.write_text(textwrap.dedent(body))
    return [PY, str(path)]


async def _drain(proc: ap.AgentProcess, watchdog: ap.Watchdog | None = None) -> list[tuple[str, str]]:
    return [item async for item in proc.lines(watchdog)]


# --- framing ------------------------------------------------------------------------------------------


def test_framer_joins_lines_across_chunks_and_keeps_the_rest() -> None:
    f = ap.LineFramer()
    assert f.feed(b"ab") == []
    assert f.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert f.close() == [b"f"] and f.close() == []


def test_framer_drops_only_a_line_over_the_guard() -> None:
    f = ap.LineFramer(max_line=10)
    assert f.feed(b"x" * 11) == [] and f.dropped == 1
    assert f.feed(b"tail\nok\n") == [b"tail", b"ok"]  # the rest of the dropped line, then normal lines


async def test_iter_lines_has_no_length_cliff() -> None:
    reader = asyncio.StreamReader()
    big = b"y" * (3 * 1024 * 1024)  # far above asyncio's 64 KiB readline limit
    reader.feed_data(b"first\n" + big + b"\nlast")
    reader.feed_eof()
    lines = [line async for line in ap.iter_lines(reader)]
    assert lines == ["first", big.decode(), "last"]


def test_pick_env_is_a_whitelist() -> None:
    src = {"PATH": "/p", "SECRET": "s", "ANTHROPIC_API_KEY": "k", "NAMED": "n"}
    assert ap.pick_env(src, names=("NAMED",), prefixes=("ANTHROPIC_",)) == {
        "PATH": "/p",
        "LANG": "C.UTF-8",
        "NAMED": "n",
        "ANTHROPIC_API_KEY": "k",
    }
    assert ap.pick_env({}) == {"PATH": os.defpath, "LANG": "C.UTF-8"}


async def test_probe_version() -> None:
    env = ap.pick_env(os.environ)
    assert await ap.probe_version(PY, env) == f"Python {sys.version.split()[0]}"
    with pytest.raises(OSError):
        await ap.probe_version("/nonexistent/binary", env)


# --- spawn, lines, watchdog ---------------------------------------------------------------------------


async def test_stdout_stderr_stdin_and_markers(tmp_path: Path) -> None:
    argv = _script(
        tmp_path,
        """
        import os, sys
        print("got " + sys.stdin.read(), flush=True)
        print("oops", file=sys.stderr, flush=True)
        print(os.environ["AGENTD_RUN_ID"], os.environ["AGENTD_OWNER_PID"], os.environ.get("SECRET"))
        """,
    )
    proc = ap.AgentProcess("run-1")
    await proc.spawn(argv, cwd=tmp_path, env={"PATH": os.defpath}, stdin_data=b"the prompt")
    items = await _drain(proc)
    assert await proc.wait() == 0 and proc.forced is None
    assert ("stdout", "got the prompt") in items and ("stderr", "oops") in items
    assert ("stdout", f"run-1 {os.getpid()} None") in items  # agentd's own environment is not passed on
    assert list(proc.stderr_tail) == ["oops"]
    assert await proc.close() == 0


async def test_watchdog_deadline(tmp_path: Path) -> None:
    argv = _script(tmp_path, "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.1)\n")
    proc = ap.AgentProcess("run-deadline", escalation=((signal.SIGTERM, 1.0),))
    await proc.spawn(argv, cwd=tmp_path, env={})
    items = await asyncio.wait_for(_drain(proc, ap.Watchdog(timeout_s=1.0, idle_timeout_s=30)), 10)
    assert len(items) >= 3  # output kept coming: only the total deadline can end it
    assert (proc.forced, proc.reason) == ("timed_out", "timed out after 1 s")
    assert await proc.wait() == -signal.SIGTERM
    await proc.close()


async def test_watchdog_inactivity(tmp_path: Path) -> None:
    argv = _script(tmp_path, "import time\nprint('hello', flush=True)\ntime.sleep(60)\n")
    proc = ap.AgentProcess("run-idle", escalation=((signal.SIGTERM, 1.0),))
    await proc.spawn(argv, cwd=tmp_path, env={})
    items = await asyncio.wait_for(_drain(proc, ap.Watchdog(60, idle_timeout_s=0.5, name="the stand-in")), 10)
    assert items == [("stdout", "hello")]
    assert proc.forced == "timed_out"
    assert proc.reason == "no output from the stand-in for 0.5 s (inactivity watchdog)"
    await proc.close()


async def test_sigint_first_lets_the_agent_finish_its_output(tmp_path: Path) -> None:
    argv = _script(
        tmp_path,
        """
        import os, signal, time
        def bye(*_):
            os.write(1, b"interrupted: final result\\n")
            os._exit(0)
        signal.signal(signal.SIGINT, bye)
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    proc = ap.AgentProcess("run-int")
    await proc.spawn(argv, cwd=tmp_path, env={})
    items: list[tuple[str, str]] = []
    async for item in proc.lines():
        items.append(item)
        if item == ("stdout", "ready"):
            proc.stop("cancelled", "cancelled by request")
            proc.stop("timed_out", "second reason loses")
    assert items[-1] == ("stdout", "interrupted: final result")
    assert await proc.wait() == 0 and (proc.forced, proc.reason) == ("cancelled", "cancelled by request")
    await proc.close()


# --- the whole tree -----------------------------------------------------------------------------------

# The agent starts a tool in its own session (like Claude Code's Bash tool) and a daemon that double-forks
# away (re-parented to init); both ignore SIGINT and SIGTERM; so does the agent.
TREE = """
import os, signal, subprocess, sys, time
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
tool = subprocess.Popen([sys.executable, "-c", "import signal, time\\n"
                         "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_IGN)\\n"
                         "time.sleep(300)"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        open(sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(300)
    os._exit(0)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
print(tool.pid, open(sys.argv[1]).read(), flush=True)
time.sleep(300)
"""


async def test_escalation_kills_the_whole_tree_also_what_left_the_group(tmp_path: Path) -> None:
    argv = [*_script(tmp_path, TREE), str(tmp_path / "daemon.pid")]
    proc = ap.AgentProcess("run-tree", escalation=((signal.SIGINT, 0.3), (signal.SIGTERM, 0.3)))
    await proc.spawn(argv, cwd=tmp_path, env={})
    pids: set[int] = set()
    async for _, line in proc.lines():
        if not pids:
            tool, daemon = map(int, line.split())
            pids = {proc.pid or 0, tool, daemon}
            assert os.getpgid(tool) != proc.pid and daemon not in ap.descendants(proc.pid or 0)
            proc.stop("cancelled", "cancelled by request")
    assert await proc.wait() == -signal.SIGKILL
    await proc.close()
    assert await ap.wait_gone(pids, 3.0), [p for p in pids if ap.alive(p)]


async def test_close_when_the_consumer_goes_away(tmp_path: Path) -> None:
    argv = [*_script(tmp_path, TREE), str(tmp_path / "daemon.pid")]
    proc = ap.AgentProcess("run-gone", escalation=((signal.SIGTERM, 0.2),))
    await proc.spawn(argv, cwd=tmp_path, env={})
    lines = proc.lines()
    _, first = await anext(lines)
    await lines.aclose()
    pids = {proc.pid or 0, *map(int, first.split())}
    await proc.close(grace_s=0.5)
    assert proc.forced == "cancelled" and await ap.wait_gone(pids, 3.0)


async def test_a_leftover_after_the_agent_exited_is_killed_at_close(tmp_path: Path) -> None:
    argv = _script(
        tmp_path,
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True, stdout=subprocess.DEVNULL,\n"
        "    stderr=subprocess.DEVNULL)\n"
        "print(p.pid)\n",
    )
    proc = ap.AgentProcess("run-leftover")
    await proc.spawn(argv, cwd=tmp_path, env={"PATH": os.defpath})
    items = await _drain(proc)
    assert await proc.wait() == 0
    sleeper = int(items[0][1])
    assert ap.alive(sleeper)
    assert await proc.close() == 1 and await ap.wait_gone({sleeper}, 3.0)


def test_reap_orphans_kills_what_a_dead_agentd_left_and_nothing_else(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = subprocess.Popen(
        ["sleep", "300"],
        env={ap.RUN_MARKER: "old-run", ap.OWNER_MARKER: str(dead.pid)},
        start_new_session=True,
    )
    ours = subprocess.Popen(
        ["sleep", "300"], env={ap.RUN_MARKER: "live-run", ap.OWNER_MARKER: str(os.getpid())}
    )
    try:
        assert ap.reap_orphans() >= 1
        assert orphan.wait(5) == -signal.SIGKILL
        assert ours.poll() is None
    finally:
        for p in (orphan, ours):
            p.kill()
            p.wait()


# --- in the jail --------------------------------------------------------------------------------------

SANDBOX = Sandbox.start("auto")
needs_bwrap = pytest.mark.skipif(SANDBOX.mode != "bwrap", reason="bubblewrap cannot run here")
SYSTEM_PY = os.path.realpath(sys.executable)
PY_INSTALL = Path(SYSTEM_PY).parents[1]  # mounted read-only, like an agent CLI's install


def _jail(tmp_path: Path) -> Jail:
    return Jail(workspace=tmp_path / "ws", home=tmp_path / "home", ro_paths=(PY_INSTALL,))


def _jailed_script(tmp_path: Path, body: str) -> list[str]:
    (tmp_path / "ws").mkdir(exist_ok=True)
    path = tmp_path / "ws" / "agent.py"
    path.write_text(textwrap.dedent(body))
    return [SYSTEM_PY, str(path)]


@needs_bwrap
async def test_jailed_run_gets_the_run_env_only_and_no_marker(tmp_path: Path) -> None:
    argv = _jailed_script(tmp_path, "import json, os\nprint(json.dumps(dict(os.environ)), os.getpid())\n")
    proc = ap.AgentProcess("run-jail", sandbox=SANDBOX, jail=_jail(tmp_path))
    await proc.spawn(argv, cwd=tmp_path / "ws", env={"PATH": "/usr/bin:/bin", "RUN_SECRET": "s3cret-value"})
    items = await _drain(proc)
    assert await proc.wait() == 0, items
    env_json, pid = items[0][1].rsplit(" ", 1)
    env = json.loads(env_json)
    assert env["RUN_SECRET"] == "s3cret-value" and not [k for k in env if k.startswith("AGENTD_")]
    assert int(pid) == 2  # its own PID namespace: bwrap is 1
    await proc.close()


@needs_bwrap
async def test_jailed_escalation_signals_the_agent_then_kills_the_whole_namespace(tmp_path: Path) -> None:
    argv = [*_jailed_script(tmp_path, TREE), str(tmp_path / "ws" / "daemon.pid")]
    proc = ap.AgentProcess(
        "run-jail-tree", escalation=((signal.SIGINT, 0.3),), sandbox=SANDBOX, jail=_jail(tmp_path)
    )
    await proc.spawn(argv, cwd=tmp_path / "ws", env={"PATH": "/usr/bin:/bin"})
    members: set[int] = set()
    async for _, _line in proc.lines():
        if not members:
            assert proc.pid is not None and ap.command_name(proc.agent_pid()) != "bwrap"
            members = SANDBOX.members(proc.pid)
            assert len(members) >= 5  # bwrap, its init, the agent, the tool and the daemon
            proc.stop("cancelled", "cancelled by request")
    await proc.wait()
    await proc.close()
    assert proc.forced == "cancelled" and await ap.wait_gone(members, 3.0)


@needs_bwrap
async def test_jailed_agent_gets_sigint_not_bwrap(tmp_path: Path) -> None:
    argv = _jailed_script(
        tmp_path,
        """
        import os, signal, time
        def bye(*_):
            os.write(1, b"interrupted: final result\\n")
            os._exit(0)
        signal.signal(signal.SIGINT, bye)
        print("ready", flush=True)
        time.sleep(60)
        """,
    )
    proc = ap.AgentProcess("run-jail-int", sandbox=SANDBOX, jail=_jail(tmp_path))
    await proc.spawn(argv, cwd=tmp_path / "ws", env={"PATH": "/usr/bin:/bin"})
    items = []
    async for item in proc.lines():
        items.append(item)
        if item == ("stdout", "ready"):
            proc.stop("cancelled", "cancelled by request")
    assert items[-1] == ("stdout", "interrupted: final result") and await proc.wait() == 0
    await proc.close()


def test_runtime_paths_include_a_scripts_interpreter(tmp_path: Path) -> None:
    runtime, cli = tmp_path / "runtime" / "bin", tmp_path / "cli"
    runtime.mkdir(parents=True)
    cli.mkdir()
    (runtime / "mynode").write_text("#!/bin/sh\n")
    (runtime / "mynode").chmod(0o755)
    (cli / "agent").write_text("#!/usr/bin/env mynode\nconsole.log(1)\n")
    (cli / "agent").chmod(0o755)
    assert runtime_paths(str(cli / "agent"), path=str(runtime)) == (cli, runtime)
    assert runtime_paths(str(runtime / "mynode")) == (runtime,)  # /bin/sh: a system directory
