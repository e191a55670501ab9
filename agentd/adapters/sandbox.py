"""The jail every local agent process runs in: a bubblewrap sandbox per run.

A jailed run sees its project's workspace and its own agent home (read-write, at their real paths, so the
CLIs' cwd and paths work), the system directories and the agent CLI's install (read-only, with the
secret-bearing files of /etc masked), a private /tmp, a minimal /dev, and its own /proc in its own PID
namespace. It shares the network (it must reach the model API). It does not see the data dir, the queue
database, other projects' workspaces and homes, or agentd's environment. All capabilities are dropped,
also when agentd runs as root.

Environment: `wrap()` returns the environment to start bwrap itself with, and it is exactly the run's
environment. bwrap passes it through to the command. bwrap's own process is PID 1 inside the namespace,
so its environment and argv can be read there through /proc/1/environ and /proc/1/cmdline. For that
reason nothing from agentd's environment may reach bwrap, and no value goes into bwrap's argv (no
`--setenv`).

Processes and signals (checked in tests/integration/test_sandbox.py; the /proc walking is
agent_process.py's):
- `wrap()` gives `bwrap ... -- argv`. The pid you get from spawning it is bwrap's outer (monitor) process.
  Its only child is the namespace's PID 1 (bwrap again), and that starts the command as PID 2.
- When the command exits, PID 1 exits, and the kernel SIGKILLs every process left in the namespace,
  daemonized grandchildren included. A run never leaves anything behind.
- `kill_tree(pid)` ends the whole sandbox at once. It SIGKILLs the namespace's PID 1 (the kernel then
  kills every member), and the outer bwrap exits with status 137 and can be reaped as usual. Killing only
  the outer bwrap also ends the namespace (`--die-with-parent`), but then the inner bwrap is left as a
  zombie for init to reap. So use `kill_tree`.
- For a graceful stop, `signal_command(pid, SIGTERM)` signals the agent command itself (PID 2 inside),
  because bwrap does not forward signals. Then `kill_tree` after a bounded wait.
- `--die-with-parent`: if agentd dies, even by SIGKILL, the sandbox dies with it. The parent-death
  signal is tied to the *thread* that spawned bwrap, so spawn from the event loop's thread (asyncio's
  subprocess functions do) and not from a short-lived worker thread.
- `alive(pid)` says whether anything of the sandbox is still running (not a zombie).

With mode "off" (`AGENTD_SANDBOX=off`, or `auto` where bwrap does not work), `wrap()` returns argv and env
unchanged. `kill_tree`/`signal_command`/`alive` then act on the process, its process group and its
descendants (best effort: a process that left its group and was re-parented is not found). They do the
same in "bwrap" mode for a pid that is not a bwrap (a process started without `wrap()`, e.g. kubectl).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

import agentd.adapters.agent_process as ap
from agentd.domain.errors import SandboxUnavailable

log = structlog.get_logger(__name__)

SandboxSetting = Literal["auto", "bwrap", "off"]
SandboxMode = Literal["bwrap", "off"]

# Read-only system directories. A symlink such as /bin -> usr/bin (merged /usr) is recreated as a symlink.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# Resolver state that /etc/resolv.conf may point into (systemd-resolved). Not the rest of /run, which
# holds sockets (PostgreSQL's among them).
EXTRA_RO = ("/run/systemd/resolve",)
# Secret-bearing parts of /etc: directories are covered with an empty tmpfs, files with /dev/null.
MASKED_DIRS = (
    "/etc/agentd",
    "/etc/ssl/private",
    "/etc/sudoers.d",
    "/etc/credstore",
    "/etc/credstore.encrypted",
    "/etc/letsencrypt",
    "/etc/wireguard",
    "/etc/NetworkManager/system-connections",
)
MASKED_FILES = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers")
MASKED_GLOBS = ("/etc/ssh/ssh_host_*key",)
NAMESPACE_FLAGS = (
    "--die-with-parent",
    "--new-session",  # no TIOCSTI into a terminal agentd may have
    "--unshare-pid",
    "--unshare-ipc",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--cap-drop",
    "ALL",
)
PROBE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Jail:
    """What one run may see. The workspace and home are mounted read-write at their own paths.

    `ro_paths` (e.g. `install_paths(binary)`) are mounted read-only and skipped when missing. `extra_rw`
    paths are mounted read-write and `extra_ro` read-only, both skipped when missing. `cwd` defaults to
    the workspace. The sandbox's hidden paths (the data dir) win over `ro_paths`, even a folder that
    contains the data dir; the workspace, the home, `extra_rw` and `extra_ro` win over the hidden paths
    (`extra_ro`: the git objects a job's tree borrows from its project's mirror).
    """

    workspace: Path
    home: Path
    ro_paths: tuple[Path, ...] = ()
    extra_rw: tuple[Path, ...] = ()
    extra_ro: tuple[Path, ...] = ()
    cwd: Path | None = None


def install_paths(binary: str, path: str | None = None) -> tuple[Path, ...]:
    """The directories to mount read-only so that `binary` can run in a jail.

    For a binary installed by npm (under a `node_modules/.bin`) this is the whole `node_modules` folder,
    so the symlink and the package it points to both resolve. For anything else it is the folder of the
    binary and of its resolved target. System directories are left out (they are always mounted). When
    the binary cannot be found the result is empty, and bwrap will then say "No such file or directory".
    """
    found = binary if os.sep in binary else shutil.which(binary, path=path)
    if not found:
        return ()
    given = Path(os.path.abspath(found))
    real = given.resolve()
    out: list[Path] = []
    for p in (given, real):
        parts = p.parts
        if "node_modules" in parts:
            i = len(parts) - 1 - parts[::-1].index("node_modules")
            out.append(Path(*parts[: i + 1]))
        else:
            out.append(p.parent)
    system = tuple(Path(d) for d in SYSTEM_DIRS)
    keep: list[Path] = []
    for p in out:
        if any(p == s or s in p.parents for s in system) or p in keep:
            continue
        keep.append(p)
    return tuple(keep)


def runtime_paths(binary: str, path: str | None = None) -> tuple[Path, ...]:
    """What a jail must mount read-only to run `binary`: its install and, for a script whose interpreter
    is not in the system directories, the interpreter's (`#!/usr/bin/env node` with node under ~/.nvm)."""
    paths = list(install_paths(binary, path))
    found = binary if os.sep in binary else shutil.which(binary, path=path)
    interpreter = None
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with open(found or "", "rb") as f:
            first = f.readline(256).decode()
        if first.startswith("#!"):
            words = first[2:].split()
            if words and os.path.basename(words[0]) == "env":
                interpreter = next((w for w in words[1:] if not w.startswith("-")), None)
            elif words:
                interpreter = words[0]
    system_path = os.pathsep.join(SYSTEM_DIRS)
    if interpreter and not shutil.which(os.path.basename(interpreter), path=system_path):
        # Not in the system directories (which every jail has): mount where PATH finds it.
        paths += [p for p in install_paths(interpreter, path) if p not in paths]
    return tuple(paths)


def _system_args() -> list[str]:
    args: list[str] = []
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for d in EXTRA_RO:
        args += ["--ro-bind-try", d, d]
    for d in MASKED_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--tmpfs", d]
    files = list(MASKED_FILES)
    for pattern in MASKED_GLOBS:
        files += sorted(glob.glob(pattern))
    for f in files:
        if os.path.isfile(f) and not os.path.islink(f):
            args += ["--ro-bind", "/dev/null", f]
    return args


def _base_args() -> list[str]:
    return [*NAMESPACE_FLAGS, *_system_args(), "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]


class Sandbox:
    """Built once at start (`Sandbox.start`). `mode` is "bwrap" or "off", for /healthz and /providers."""

    def __init__(self, mode: SandboxMode, *, bwrap: str = "bwrap", hide: Iterable[Path] = ()) -> None:
        self.mode: SandboxMode = mode
        self.bwrap = bwrap
        # Covered with an empty tmpfs in every jail (the data dir), in case a mounted path contains them.
        self.hide = tuple(Path(os.path.abspath(p)) for p in hide)

    @classmethod
    def start(cls, setting: SandboxSetting, *, bwrap: str = "bwrap", hide: Iterable[Path] = ()) -> Sandbox:
        """Resolve AGENTD_SANDBOX. `auto` falls back to "off" with a warning; `bwrap` raises
        SandboxUnavailable with bwrap's own error; `off` does not probe."""
        if setting == "off":
            log.warning("sandbox.off", reason="AGENTD_SANDBOX=off: agent runs are not jailed")
            return cls("off", bwrap=bwrap, hide=hide)
        path, error = probe(bwrap)
        if path is not None:
            log.info("sandbox.bwrap", bwrap=path)
            return cls("bwrap", bwrap=path, hide=hide)
        if setting == "bwrap":
            raise SandboxUnavailable(
                f"AGENTD_SANDBOX=bwrap, but bubblewrap cannot start a sandbox here: {error}. Install it "
                "(apt-get install bubblewrap), allow unprivileged user namespaces, or set "
                "AGENTD_SANDBOX=auto to run agents unjailed.",
                bwrap=bwrap,
                error=error,
            )
        log.warning(
            "sandbox.off",
            reason=f"bubblewrap cannot start a sandbox here: {error}",
            hint="agent runs are NOT jailed: install bubblewrap (apt-get install bubblewrap), "
            "or set AGENTD_SANDBOX=off to silence this",
        )
        return cls("off", bwrap=bwrap, hide=hide)

    # -- building the command -------------------------------------------------------------------------

    def wrap(
        self, argv: Sequence[str], env: Mapping[str, str], jail: Jail
    ) -> tuple[list[str], dict[str, str]]:
        """The command and environment to exec for `argv` run in `jail`.

        `env` must be the complete environment of the run (never agentd's). It becomes bwrap's own
        environment, which bwrap hands to the command. No value is put in argv. The workspace and home
        are created (0700) when missing. `argv[0]` is looked up with the PATH in `env` inside the jail,
        so give an absolute path and mount its install (`install_paths`).
        """
        if self.mode == "off":
            return list(argv), dict(env)
        for d in (jail.workspace, jail.home):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        return [self.bwrap, *self.jail_args(jail), "--", *argv], dict(env)

    def jail_args(self, jail: Jail) -> list[str]:
        args = _base_args()
        for p in jail.ro_paths:
            args += ["--ro-bind-try", str(p), str(p)]
        for p in self.hide:
            args += ["--tmpfs", str(p)]
        for p in (jail.workspace, jail.home):
            args += ["--bind", str(p), str(p)]
        for p in jail.extra_rw:
            args += ["--bind-try", str(p), str(p)]
        for p in jail.extra_ro:
            args += ["--ro-bind-try", str(p), str(p)]
        for p in self.hide:  # read-only too, so nothing can be written there that looks like data
            args += ["--remount-ro", str(p)]
        args += ["--chdir", str(jail.cwd or jail.workspace)]
        return args

    # -- ending it ---------------------------------------------------------------------------------------

    def kill_tree(self, pid: int) -> None:
        """SIGKILL everything started from `pid` (the pid `wrap()`'s command was spawned as). The caller
        still reaps `pid` itself (await proc.wait())."""
        if self._jailed(pid):
            inner = ap.children(pid)
            for p in inner:
                ap.kill_all([p], signal.SIGKILL)  # PID 1 of the namespace: the kernel kills every member
            if not inner:
                ap.kill_all([pid], signal.SIGKILL)
            return
        ap.kill_group(pid, signal.SIGKILL)
        for p in set(ap.descendants(pid)):
            ap.kill_all([p], signal.SIGKILL)
        ap.kill_all([pid], signal.SIGKILL)

    def signal_command(self, pid: int, sig: int) -> None:
        """Send `sig` to the agent command itself (inside the sandbox: PID 2, bwrap's grandchild)."""
        if self._jailed(pid):
            targets = [c for inner in ap.children(pid) for c in ap.children(inner)]
            for p in targets:
                ap.kill_all([p], sig)
            return
        ap.kill_all([pid], sig)

    def alive(self, pid: int) -> bool:
        """Whether `pid` or anything it started (in bwrap mode: anything in its namespace) still runs.
        Ask before reaping `pid`: after that its number may belong to someone else."""
        return any(ap.alive(p) for p in self.members(pid))

    def members(self, pid: int) -> set[int]:
        """`pid` and the processes that belong to it, as pids seen from agentd. In bwrap mode these are
        the outer bwrap and every process in the sandbox's PID namespace."""
        found = {pid} if ap.alive(pid) else set()
        if not self._jailed(pid):
            return found | set(ap.descendants(pid))
        namespaces = set()
        for inner in ap.children(pid):
            with contextlib.suppress(OSError):
                namespaces.add(os.readlink(f"/proc/{inner}/ns/pid"))
        if not namespaces:
            return found | set(ap.descendants(pid))
        for name in ap.proc_pids():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{name}/ns/pid") in namespaces:
                    found.add(name)
        return found

    def _jailed(self, pid: int) -> bool:
        """Whether `pid` is a bwrap we started (a process spawned without `wrap()`, e.g. kubectl, is not)."""
        if self.mode != "bwrap":
            return False
        try:
            return os.readlink(f"/proc/{pid}/exe") == os.path.realpath(self.bwrap)
        except OSError:
            return False


def probe(bwrap: str = "bwrap") -> tuple[str | None, str]:
    """Run `true` in a jail built with the flags we use. Returns (bwrap's path, "") or (None, why not)."""
    path = bwrap if os.sep in bwrap else shutil.which(bwrap)
    if path is None:
        return None, f"{bwrap}: not found on PATH"
    try:
        done = subprocess.run(
            [path, *_base_args(), "--", "true"],
            env={"PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except OSError as exc:
        return None, f"{path}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return None, f"{path}: no answer within {PROBE_TIMEOUT_S:.0f}s"
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
        return None, err
    return path, ""
