"""The bubblewrap jail, with the real bwrap: what a run sees, what it cannot reach, and that it ends whole."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agentd.adapters.sandbox import Jail, Sandbox, install_paths, probe
from agentd.config import ConfigError, load_settings
from agentd.domain.errors import SandboxUnavailable

PY = "/usr/bin/python3"  # the system interpreter: mounted in every jail (a venv's may not be)
SERVICE_SECRET = "svc-secret-9f8e7d6c5b4a"
RUN_SECRET = "run-secret-0a1b2c3d4e5f"
PROBE_PATH, PROBE_ERROR = probe()
needs_bwrap = pytest.mark.skipif(
    PROBE_PATH is None or not os.path.exists(PY), reason=f"bubblewrap cannot run here: {PROBE_ERROR}"
)


@dataclass
class Layout:
    data: Path
    workspace: Path
    home: Path
    other_workspace: Path
    other_home: Path
    env: dict[str, str]

    def jail(self, **kw: object) -> Jail:
        return Jail(workspace=self.workspace, home=self.home, **kw)  # type: ignore[arg-type]


@pytest.fixture
def layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """A data dir laid out the way agentd lays it out, and a secret in this process's environment."""
    monkeypatch.setenv("AGENTD_API_KEY", SERVICE_SECRET)
    data = tmp_path / "data"
    data.mkdir()
    (data / "queue.db").write_text("queue database " + SERVICE_SECRET)
    ws, other = data / "workspaces" / "alpha", data / "workspaces" / "beta"
    home, other_home = data / "homes" / "claude-code" / "alpha", data / "homes" / "claude-code" / "beta"
    for d in (ws, other, home, other_home):
        d.mkdir(parents=True)
    (ws / "mine.txt").write_text("mine")
    (home / "settings.json").write_text("{}")
    (other / "secret.txt").write_text("other project " + SERVICE_SECRET)
    (other_home / "settings.json").write_text("other home " + SERVICE_SECRET)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "RUN_TOKEN": RUN_SECRET}
    return Layout(data, ws, home, other, other_home, env)


@pytest.fixture
def sandbox(layout: Layout) -> Sandbox:
    return Sandbox.start("bwrap", hide=(layout.data,))


# What a hostile run would try, reported as JSON. Every read returns the content or the error's name.
SPY = r"""
import json, os, subprocess, sys
def read(p):
    try:
        with open(p, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as e:
        return type(e).__name__
def ls(p):
    try:
        return sorted(os.listdir(p))
    except OSError as e:
        return type(e).__name__
def write(p):
    try:
        with open(p, "w") as f:
            f.write("planted")
        return "written"
    except OSError as e:
        return type(e).__name__
def holds(p, needle):
    # whether the file holds the needle, or the error: never the content (the machine's environment)
    try:
        with open(p, "rb") as f:
            return needle.encode() in f.read()
    except OSError as e:
        return type(e).__name__
owner, data, other, other_home = sys.argv[1:5]
secret = sys.stdin.read()  # not in argv: that is /proc/1/cmdline
out = {
    "cwd": os.getcwd(),
    "pid": os.getpid(),
    "ws_read": read("mine.txt"),
    "home_read": read(os.path.join(os.environ["HOME"], "settings.json")),
    "owner_environ": holds(f"/proc/{owner}/environ", secret),
    "pid1_environ": read("/proc/1/environ"),
    "pid1_cmdline": read("/proc/1/cmdline"),
    "data_dir": ls(data),
    "queue_db": read(os.path.join(data, "queue.db")),
    "workspaces": ls(os.path.join(data, "workspaces")),
    "other_ws": ls(other),
    "other_secret": read(os.path.join(other, "secret.txt")),
    "other_home": read(os.path.join(other_home, "settings.json")),
    "shadow": read("/etc/shadow"),
    "data_write": write(os.path.join(data, "planted.txt")),
    "ps": subprocess.run(["ps", "-e", "-o", "pid=,comm="], capture_output=True, text=True).stdout,
    "environ": dict(os.environ),
}
with open("written.txt", "w") as f:
    f.write("from the jail")
with open(os.path.join(os.environ["HOME"], "written.txt"), "w") as f:
    f.write("from the jail")
print(json.dumps(out))
"""


def run_spy(sandbox: Sandbox, layout: Layout) -> dict[str, object]:
    argv = [PY, "-c", SPY, str(os.getpid()), str(layout.data), str(layout.other_workspace),
            str(layout.other_home)]  # fmt: skip
    cmd, env = sandbox.wrap(argv, layout.env, layout.jail())
    done = subprocess.run(
        cmd, env=env, input=SERVICE_SECRET, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@needs_bwrap
def test_a_jailed_run_sees_its_workspace_and_home_and_nothing_else(sandbox: Sandbox, layout: Layout) -> None:
    assert sandbox.mode == "bwrap"
    got = run_spy(sandbox, layout)

    assert got["cwd"] == str(layout.workspace)
    assert got["ws_read"] == "mine" and got["home_read"] == "{}"
    assert (layout.workspace / "written.txt").read_text() == "from the jail"
    assert (layout.home / "written.txt").read_text() == "from the jail"

    # The data dir shows only the mounted workspace and home: no queue database, no other project.
    assert got["data_dir"] == ["homes", "workspaces"]
    assert got["workspaces"] == ["alpha"]
    assert got["queue_db"] == "FileNotFoundError"
    assert got["other_ws"] == "FileNotFoundError"
    assert got["other_secret"] == "FileNotFoundError"
    assert got["other_home"] == "FileNotFoundError"
    assert got["shadow"] in ("", "PermissionError")
    assert got["data_write"] == "OSError" and not (layout.data / "planted.txt").exists()  # read-only
    assert got["environ"] == {**layout.env, "PWD": str(layout.workspace)}  # bwrap adds PWD, nothing else
    assert SERVICE_SECRET not in json.dumps(got)


@needs_bwrap
def test_pid_1_inside_holds_only_the_run_environment_and_no_secret_in_argv(
    sandbox: Sandbox, layout: Layout
) -> None:
    got = run_spy(sandbox, layout)
    pid1_env = dict(kv.split("=", 1) for kv in str(got["pid1_environ"]).split("\0") if kv)
    assert pid1_env == layout.env  # bwrap's own environment: the run's, not agentd's
    assert RUN_SECRET not in str(got["pid1_cmdline"])
    assert SERVICE_SECRET not in str(got["pid1_cmdline"])
    assert got["owner_environ"] in (False, "FileNotFoundError", "PermissionError")
    cmd, env = sandbox.wrap(["/bin/true"], layout.env, layout.jail())
    assert RUN_SECRET not in " ".join(cmd) and SERVICE_SECRET not in " ".join(cmd)
    assert env == layout.env


@needs_bwrap
def test_the_run_has_its_own_pid_namespace(sandbox: Sandbox, layout: Layout) -> None:
    got = run_spy(sandbox, layout)
    rows = [line.split(None, 1) for line in str(got["ps"]).splitlines() if line.strip()]
    names = {name.strip() for _, name in rows}
    assert names <= {"bwrap", "python3", "ps"}, names
    assert {int(pid) for pid, _ in rows} <= {1, 2, 3, 4, 5}
    assert got["pid"] == 2
    # agentd's pid is either unused inside or someone else's: never agentd's environment.
    assert got["owner_environ"] in (False, "FileNotFoundError")


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


def _wait_for(pred: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


# The command daemonizes a grandchild (double fork + setsid), then waits.
DAEMONIZER = "setsid sh -c 'sleep 1000 & echo $! > daemon.pid' & sleep 1000"


@pytest.fixture
def daemonized(sandbox: Sandbox, layout: Layout) -> Iterator[tuple[subprocess.Popen[bytes], set[int]]]:
    cmd, env = sandbox.wrap(["/bin/sh", "-c", DAEMONIZER], layout.env, layout.jail())
    proc = subprocess.Popen(cmd, env=env)
    try:
        assert _wait_for(lambda: (layout.workspace / "daemon.pid").exists())
        assert _wait_for(lambda: len(sandbox.members(proc.pid)) >= 5)  # bwrap x2, sh, sleep, daemon sleep
        yield proc, sandbox.members(proc.pid)
    finally:
        sandbox.kill_tree(proc.pid)
        proc.wait(timeout=10)


@needs_bwrap
def test_kill_tree_leaves_nothing(
    sandbox: Sandbox, daemonized: tuple[subprocess.Popen[bytes], set[int]]
) -> None:
    proc, members = daemonized
    assert sandbox.alive(proc.pid)
    sandbox.kill_tree(proc.pid)
    assert proc.wait(timeout=10) == 137
    assert _wait_for(lambda: all(_gone(p) for p in members)), [p for p in members if not _gone(p)]
    assert not sandbox.alive(proc.pid)


@needs_bwrap
def test_the_sandbox_dies_with_its_parent(sandbox: Sandbox, layout: Layout) -> None:
    """agentd killed with SIGKILL: its sandboxes go with it (--die-with-parent)."""
    cmd, env = sandbox.wrap(["/bin/sh", "-c", DAEMONIZER], layout.env, layout.jail())
    spawner = "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]); time.sleep(1000)"
    parent = subprocess.Popen([sys.executable, "-c", spawner, *cmd], env=env)
    try:
        assert _wait_for(lambda: (layout.workspace / "daemon.pid").exists())
        kids = Sandbox("off").members(parent.pid) - {parent.pid}
        assert len(kids) >= 4
    finally:
        parent.kill()
        parent.wait()
    assert _wait_for(lambda: all(_gone(p) or not _alive_nonzombie(p) for p in kids))


def _alive_nonzombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@needs_bwrap
def test_when_the_command_exits_its_daemons_die_too(sandbox: Sandbox, layout: Layout) -> None:
    cmd, env = sandbox.wrap(
        ["/bin/sh", "-c", "setsid sh -c 'sleep 1000 & echo $! > daemon.pid' & sleep 0.5"],
        layout.env,
        layout.jail(),
    )
    before = {p for p in _all_pids() if _is_sleep_1000(p)}
    assert subprocess.run(cmd, env=env, timeout=30, check=False).returncode == 0
    assert (layout.workspace / "daemon.pid").exists()
    assert _wait_for(lambda: not ({p for p in _all_pids() if _is_sleep_1000(p)} - before))


def _all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def _is_sleep_1000(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read() == b"sleep\x001000\x00" and _alive_nonzombie(pid)
    except OSError:
        return False


@needs_bwrap
def test_signal_command_reaches_the_agent_inside(sandbox: Sandbox, layout: Layout) -> None:
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n    open('term.txt', 'w').write('got SIGTERM'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\nopen('ready', 'w').close()\ntime.sleep(1000)\n"
    )
    cmd, env = sandbox.wrap([PY, "-c", script], layout.env, layout.jail())
    proc = subprocess.Popen(cmd, env=env)
    try:
        assert _wait_for(lambda: (layout.workspace / "ready").exists())
        sandbox.signal_command(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert (layout.workspace / "term.txt").read_text() == "got SIGTERM"
    finally:
        sandbox.kill_tree(proc.pid)
        proc.wait(timeout=10)


# -- modes ---------------------------------------------------------------------------------------------


@pytest.fixture
def failing_bwrap(tmp_path: Path) -> str:
    """A bwrap that fails the way it does where user namespaces are not allowed."""
    path = tmp_path / "bwrap"
    path.write_text(
        "#!/bin/sh\necho 'bwrap: No permissions to creating new namespace, likely because the kernel "
        "does not allow non-privileged user namespaces.' >&2\nexit 1\n"
    )
    path.chmod(0o755)
    return str(path)


def test_bwrap_mode_refuses_to_start_with_bwraps_own_error(failing_bwrap: str) -> None:
    with pytest.raises(SandboxUnavailable) as err:
        Sandbox.start("bwrap", bwrap=failing_bwrap)
    assert "No permissions to creating new namespace" in err.value.message
    assert "AGENTD_SANDBOX" in err.value.message
    assert err.value.code == "sandbox_unavailable"


def test_bwrap_mode_with_a_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="No such file"):
        Sandbox.start("bwrap", bwrap=str(tmp_path / "nowhere" / "bwrap"))
    with pytest.raises(SandboxUnavailable, match="not found on PATH"):
        Sandbox.start("bwrap", bwrap="no-such-bwrap-binary")


def test_auto_mode_falls_back_to_off_with_a_warning(failing_bwrap: str, tmp_path: Path) -> None:
    with capture_logs() as logs:
        sb = Sandbox.start("auto", bwrap=failing_bwrap)
    assert sb.mode == "off"
    warnings = [e for e in logs if e["log_level"] == "warning" and e["event"] == "sandbox.off"]
    assert warnings and "No permissions" in warnings[0]["reason"]
    argv, env = sb.wrap(["claude", "-p"], {"PATH": "/usr/bin"}, Jail(tmp_path / "w", tmp_path / "h"))
    assert argv == ["claude", "-p"] and env == {"PATH": "/usr/bin"}


@needs_bwrap
def test_auto_mode_uses_bwrap_when_it_works() -> None:
    assert Sandbox.start("auto").mode == "bwrap"


def test_off_mode_does_not_probe_and_wraps_nothing(tmp_path: Path) -> None:
    with capture_logs() as logs:
        sb = Sandbox.start("off", bwrap=str(tmp_path / "missing"))
    assert sb.mode == "off"
    assert any(e["event"] == "sandbox.off" for e in logs)
    assert sb.wrap(["x"], {"A": "1"}, Jail(tmp_path, tmp_path)) == (["x"], {"A": "1"})


def test_settings_read_agentd_sandbox() -> None:
    assert load_settings({}).sandbox == "auto"
    assert load_settings({"AGENTD_SANDBOX": "off"}).sandbox == "off"
    with pytest.raises(ConfigError, match="AGENTD_SANDBOX"):
        load_settings({"AGENTD_SANDBOX": "maybe"})


def test_off_mode_kill_tree_ends_the_process_group(tmp_path: Path) -> None:
    sb = Sandbox("off")
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 1000 & sleep 1000"], start_new_session=True)
    assert _wait_for(lambda: len(sb.members(proc.pid)) == 3)
    members = sb.members(proc.pid)
    sb.kill_tree(proc.pid)
    proc.wait(timeout=10)
    assert _wait_for(lambda: not any(_alive_nonzombie(p) for p in members))
    assert not sb.alive(proc.pid)


# -- install paths -------------------------------------------------------------------------------------


def test_install_paths_of_an_npm_binary_is_its_node_modules(tmp_path: Path) -> None:
    nm = tmp_path / "tools" / "node_modules"
    pkg = nm / "@scope" / "cli" / "bin"
    pkg.mkdir(parents=True)
    (pkg / "cli.exe").write_text("#!/bin/sh\n")
    (pkg / "cli.exe").chmod(0o755)
    (nm / ".bin").mkdir()
    (nm / ".bin" / "cli").symlink_to("../@scope/cli/bin/cli.exe")
    assert install_paths(str(nm / ".bin" / "cli")) == (nm,)
    assert install_paths("cli", path=str(nm / ".bin")) == (nm,)


def test_install_paths_of_other_binaries(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "agent.py"
    script.write_text("#!/usr/bin/python3\n")
    assert install_paths(str(script)) == (tmp_path / "bin",)
    assert install_paths("/usr/bin/env") == ()  # system dirs are always mounted
    assert install_paths("no-such-binary-anywhere") == ()


@needs_bwrap
def test_an_installed_cli_runs_in_the_jail(sandbox: Sandbox, layout: Layout, tmp_path: Path) -> None:
    tools = tmp_path / "tools" / "node_modules"
    (tools / ".bin").mkdir(parents=True)
    (tools / "agent").mkdir()
    (tools / "agent" / "agent.sh").write_text("#!/bin/sh\necho agent ran in $PWD\n")
    (tools / "agent" / "agent.sh").chmod(0o755)
    (tools / ".bin" / "agent").symlink_to("../agent/agent.sh")
    binary = str(tools / ".bin" / "agent")
    cmd, env = sandbox.wrap([binary], layout.env, layout.jail(ro_paths=install_paths(binary)))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.stdout == f"agent ran in {layout.workspace}\n", done.stderr
    # ...read-only: it cannot change its own install.
    cmd, env = sandbox.wrap(
        ["/bin/sh", "-c", f"echo x > {tools}/agent/agent.sh"], layout.env,
        layout.jail(ro_paths=install_paths(binary)),
    )  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode != 0 and "Read-only" in done.stderr


# -- the real Claude Code CLI in the jail ----------------------------------------------------------------

CLAUDE_BIN = Path(__file__).resolve().parents[2] / ".tools/node/node_modules/.bin/claude"


@needs_bwrap
@pytest.mark.e2e
async def test_the_real_claude_cli_runs_a_tool_in_the_jail(sandbox: Sandbox, layout: Layout) -> None:
    """Claude Code with its Bash tool, its own session (--new-session) and PID namespace, no capabilities."""
    binary = os.environ.get("AGENTD_CLAUDE_BIN") or str(CLAUDE_BIN)
    if not os.access(binary, os.X_OK):
        pytest.skip(f"claude CLI not found at {binary}: run scripts/setup")
    from tests.support.fake_anthropic import FakeAnthropic

    async with FakeAnthropic() as fake:
        env = {
            **layout.env,
            "ANTHROPIC_BASE_URL": fake.base_url,
            "ANTHROPIC_API_KEY": "sk-fake-in-jail",
            "CLAUDE_CODE_TMPDIR": str(layout.home / "tmp"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "IS_SANDBOX": "1",
            "CLAUDE_CODE_MAX_RETRIES": "1",
        }
        argv = [binary, "-p", "--output-format=stream-json", "--verbose",
                "--permission-mode=bypassPermissions", "SCENARIO:tool_bash"]  # fmt: skip
        cmd, env = sandbox.wrap(argv, env, layout.jail(ro_paths=install_paths(binary)))
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=64 * 1024 * 1024,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                sandbox.kill_tree(proc.pid)
                await proc.wait()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
    result = [line for line in lines if line.get("type") == "result"]
    assert proc.returncode == 0, err.decode()[-2000:]
    assert result and result[-1]["result"] == "Done: created out.txt."
    assert (layout.workspace / "out.txt").read_text() == "hello\n"  # the tool ran in the workspace


@needs_bwrap
def test_the_process_helpers_also_work_for_a_process_started_without_the_jail(sandbox: Sandbox) -> None:
    """In bwrap mode, kill_tree on e.g. a kubectl process (not wrapped) still ends it and its children."""
    proc = subprocess.Popen(["/bin/sh", "-c", "sleep 1000 & sleep 1000"], start_new_session=True)
    try:
        assert _wait_for(lambda: len(sandbox.members(proc.pid)) == 3)
        members = sandbox.members(proc.pid)
        sandbox.signal_command(proc.pid, signal.SIGSTOP)  # the process itself, not its children
        assert _wait_for(lambda: _state(proc.pid) == "T")
        assert all(_state(p) != "T" for p in members - {proc.pid})
        sandbox.kill_tree(proc.pid)
        assert proc.wait(timeout=10) == -signal.SIGKILL
        assert _wait_for(lambda: not any(_alive_nonzombie(p) for p in members))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


@needs_bwrap
def test_a_read_only_path_around_the_data_dir_does_not_expose_it(sandbox: Sandbox, layout: Layout) -> None:
    """The data dir stays hidden even when a mounted install folder contains it (the hide wins)."""
    parent = layout.data.parent
    cmd, env = sandbox.wrap(
        ["/bin/sh", "-c", f"ls {parent}; ls {layout.data}; cat {layout.data}/queue.db"],
        layout.env,
        layout.jail(ro_paths=(parent,)),
    )
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert "data" in done.stdout.split()  # the parent is there...
    assert "queue.db" not in done.stdout and SERVICE_SECRET not in done.stdout  # ...its data dir is not
    assert "No such file" in done.stderr
