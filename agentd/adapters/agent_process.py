"""One agent process and its whole tree: every CLI-driving adapter starts, reads, watches and stops its
agent CLI (or server) through this module. The adapters keep only their command line and protocol.

- `spawn`: a clean environment (`pick_env`), its own session, stdin fed and closed; inside the sandbox
  when it is on (adapters/sandbox.py: bwrap is started with the run's environment only).
- `lines`: stdout and stderr read concurrently, framed into lines of any length (`LineFramer`: a line
  longer than 64 MiB is dropped, not fatal); a bounded stderr tail; the watchdog (total deadline +
  inactivity) ends the run as timed out.
- `stop`: escalation (e.g. SIGINT → SIGTERM) to the agent itself, then SIGKILL of the whole tree, also
  of descendants that left the process group or were re-parented to init.
- `reap_orphans`: at start, kill what runs of a dead agentd left behind.

How the whole tree is found: without the sandbox, every process we start carries AGENTD_RUN_ID and
AGENTD_OWNER_PID in its environment, which its descendants inherit (tools run in their own session, so
a process group does not reach them). In the sandbox there is no marker: the run has its own PID
namespace (every descendant stays below bwrap's init) and bwrap dies with agentd (--die-with-parent),
taking the namespace with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from agentd.domain.models import Forced

if TYPE_CHECKING:
    from agentd.adapters.sandbox import Jail, Sandbox

log = structlog.get_logger(__name__)

RUN_MARKER = "AGENTD_RUN_ID"
OWNER_MARKER = "AGENTD_OWNER_PID"
MAX_LINE_BYTES = 64 * 1024 * 1024  # a guard against runaway memory, far above any line seen (300 KB)
READ_CHUNK = 256 * 1024
BASE_NAMES = ("PATH", "LANG")
Escalation = tuple[tuple[int, float], ...]  # (signal, grace seconds) before the final SIGKILL


# --- paths and environment ----------------------------------------------------------------------------


def workspace(data_dir: Path, project_id: str) -> Path:
    """A project's workspace (the agent's working directory)."""
    return data_dir / "workspaces" / project_id


def agent_home(data_dir: Path, provider: str, project_id: str) -> Path:
    """The agent's own HOME for one project and provider (settings, sessions, caches)."""
    return data_dir / "homes" / provider / project_id


def pick_env(
    source: Mapping[str, str], *, names: Iterable[str] = (), prefixes: tuple[str, ...] = ()
) -> dict[str, str]:
    """The whitelist: PATH and LANG (with defaults), plus the named variables and those with a prefix."""
    env = {"PATH": source.get("PATH", os.defpath), "LANG": source.get("LANG", "C.UTF-8")}
    wanted = set(names)
    env.update({k: v for k, v in source.items() if k in wanted or (prefixes and k.startswith(prefixes))})
    return env


# --- line framing -------------------------------------------------------------------------------------


class LineFramer:
    """Splits a byte stream into `\\n`-terminated lines of any length, across chunk boundaries."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_line
        self.dropped = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            if self._buf:
                self._buf += chunk[start:nl]
                lines.append(bytes(self._buf))
                self._buf.clear()
            else:
                lines.append(chunk[start:nl])
            start = nl + 1
        self._buf += chunk[start:]
        if len(self._buf) > self._max:
            # Survive a pathological line instead of dying with the reader: drop it and go on.
            self.dropped += 1
            self._buf.clear()
        return lines

    def close(self) -> list[bytes]:
        rest = bytes(self._buf)
        self._buf.clear()
        return [rest] if rest else []


async def iter_lines(reader: asyncio.StreamReader, framer: LineFramer | None = None) -> AsyncIterator[str]:
    framer = framer or LineFramer()
    while True:
        chunk = await reader.read(READ_CHUNK)
        if not chunk:
            break
        for line in framer.feed(chunk):
            yield line.decode("utf-8", errors="replace")
    for line in framer.close():
        yield line.decode("utf-8", errors="replace")


# --- the process tree (Linux /proc) -------------------------------------------------------------------


def proc_pids() -> list[int]:
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields after "(comm)" of /proc/<pid>/stat: [state, ppid, pgrp, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
    return stat[stat.rfind(")") + 2 :].split()


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for pid in proc_pids():
        if (fields := stat_fields(pid)) is not None and len(fields) > 1:
            kids.setdefault(int(fields[1]), []).append(pid)
    return kids


def children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return sorted(_children_map().get(pid, []))


def descendants(pid: int) -> list[int]:
    """Every living descendant of `pid`, parents before children."""
    kids = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in kids.get(todo.pop(0), []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def tree(root: int) -> set[int]:
    """`root` (if alive) and all its living descendants."""
    return ({root} if alive(root) else set()) | set(descendants(root))


def alive(pid: int) -> bool:
    fields = stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")  # type: ignore[index]


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def kill_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (start_new_session), if it leads one."""
    fields = stat_fields(pid)
    if fields and len(fields) > 2 and fields[2] == str(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> int:
    n = 0
    for p in set(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)
            n += 1
    return n


def marked_processes(marker_value: str, *, key: str = RUN_MARKER) -> list[int]:
    """Pids whose environment has key=marker_value (only processes we may read: our own user's)."""
    needle = f"{key}={marker_value}".encode()
    me = os.getpid()
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_tree(root: int | None, run_id: str | None = None) -> int:
    """SIGKILL the root, its descendants and every process marked with `run_id`. Returns how many."""

    def victims() -> set[int]:
        pids = set(marked_processes(run_id)) if run_id else set()
        if root is not None:
            pids.update(descendants(root))
            pids.add(root)
        return pids

    pids = victims()
    # Stop them first so none can fork while we work through the list, then kill.
    kill_all(pids, signal.SIGSTOP)
    pids |= victims()
    return kill_all(pids, signal.SIGKILL)


def reap_orphans() -> int:
    """SIGKILL marked processes whose owning agentd process is gone (crash, kill -9). Returns how many.

    Sandboxed runs need no reaping: bwrap dies with agentd and its PID namespace with it.
    """
    run_key, owner_key = RUN_MARKER.encode() + b"=", OWNER_MARKER.encode() + b"="
    victims: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if not any(kv.startswith(run_key) for kv in env):
            continue
        owner = next((kv[len(owner_key) :] for kv in env if kv.startswith(owner_key)), b"")
        if owner.isdigit() and not _pid_exists(int(owner)):
            victims.append(int(entry.name))
    kill_all(victims, signal.SIGSTOP)
    return kill_all(victims, signal.SIGKILL)


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def wait_exit(proc: asyncio.subprocess.Process, timeout_s: float | None = None) -> int | None:
    """The exit code once the process has exited; None after `timeout_s`.

    Not `proc.wait()`: on Python 3.11 that also waits until every pipe of the process is closed, which a
    grandchild that inherited stdout/stderr (a tool the agent started) can delay forever.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.01
    while proc.returncode is None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        await asyncio.sleep(delay)
        delay = min(0.25, delay * 2)
    return proc.returncode


async def wait_gone(pids: set[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def tree_rss(root: int) -> int:
    """Bytes of resident memory of `root` and its descendants."""
    total = 0
    for pid in tree(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    return total * 1024


# --- probes -------------------------------------------------------------------------------------------


async def probe(
    argv: Sequence[str], env: Mapping[str, str], timeout_s: float = 20.0, *, with_stderr: bool = False
) -> str:
    """Run a short command (`--version`, `--help`) and return its stdout (and stderr, if asked).

    Raises OSError when it cannot start and TimeoutError when it does not end in time (it is killed).
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if with_stderr else asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    finally:
        if proc.returncode is None:
            kill_tree(proc.pid)
            await proc.wait()
    return out.decode(errors="replace")


async def probe_version(binary: str, env: Mapping[str, str], timeout_s: float = 20.0) -> str | None:
    """What `<binary> --version` prints, or None when it prints nothing."""
    return (await probe([binary, "--version"], env, timeout_s)).strip() or None


# --- one agent process --------------------------------------------------------------------------------


Signaller = Callable[[int], Awaitable[None]]


@dataclass(frozen=True)
class Watchdog:
    """When a run ends by itself: `timeout_s` after it started, or `idle_timeout_s` without output."""

    timeout_s: float | None = None
    idle_timeout_s: float | None = None
    name: str = "the agent"


class AgentProcess:
    """One spawned agent (CLI or server) with its whole process tree.

    `forced`/`reason` say why agentd ended it ("cancelled" or "timed_out"), None when it ended by itself.
    """

    def __init__(
        self,
        run_id: str,
        *,
        escalation: Escalation = ((signal.SIGINT, 3.0), (signal.SIGTERM, 2.0)),
        sandbox: Sandbox | None = None,
        jail: Jail | None = None,
        stderr_lines: int = 20,
        signaller: Signaller | None = None,
    ) -> None:
        self.run_id = run_id
        self.escalation = escalation
        # Jailed when the sandbox is on and the adapter said what the run may see.
        self.sandbox = sandbox if sandbox is not None and sandbox.mode == "bwrap" and jail else None
        self.jail = jail
        self.signaller = signaller  # how to signal the agent when it does not run here (kubectl)
        self.proc: asyncio.subprocess.Process | None = None
        self.stderr_tail: deque[str] = deque(maxlen=stderr_lines)
        self.forced: Forced | None = None
        self.reason: str | None = None
        self.started = time.monotonic()
        self._stopper: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    async def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str],
        stdin_data: bytes | None = None,
        keep_stdin: bool = False,
    ) -> asyncio.subprocess.Process:
        """Start it in its own session. Raises OSError when it cannot start. `keep_stdin`: leave stdin open
        after `stdin_data`, for a protocol spoken over it (Codex's app-server: JSON-RPC over stdio)."""
        env = dict(env)
        if self.sandbox is not None and self.jail is not None:
            argv, env = self.sandbox.wrap(argv, env, self.jail)
        else:
            env[RUN_MARKER], env[OWNER_MARKER] = self.run_id, str(os.getpid())
        self.started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        self.proc = proc
        assert proc.stdin is not None
        # Closing stdin is not a cancel; a CLI reads the prompt from it when it is not on argv.
        try:
            if stdin_data:
                proc.stdin.write(stdin_data)
                await proc.stdin.drain()
            if not keep_stdin:
                proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if self.forced is not None:  # stopped while starting
            self._start_stopper()
        return proc

    async def lines(self, watchdog: Watchdog | None = None) -> AsyncGenerator[tuple[str, str], None]:
        """("stdout" | "stderr", line) as they come, until both streams end. Non-empty stderr lines also go
        to `stderr_tail`. With a watchdog, the run is stopped as timed out when a clock runs out (the
        iterator then goes on draining until the tree is gone)."""
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        queue: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()

        async def read(name: str, reader: asyncio.StreamReader) -> None:
            try:
                async for line in iter_lines(reader):
                    await queue.put((name, line))
            finally:
                await queue.put((name, None))

        readers = [
            asyncio.create_task(read("stdout", proc.stdout)),
            asyncio.create_task(read("stderr", proc.stderr)),
        ]
        wd = watchdog or Watchdog()
        deadline = self.started + wd.timeout_s if wd.timeout_s is not None else None
        try:
            open_streams, last = 2, time.monotonic()
            while open_streams:
                wait = self._watch(wd, deadline, last)
                try:
                    name, line = await asyncio.wait_for(queue.get(), max(wait, 0.01))
                except TimeoutError:
                    continue
                last = time.monotonic()
                if line is None:
                    open_streams -= 1
                    continue
                if name == "stderr" and line.strip():
                    self.stderr_tail.append(line)
                yield name, line
        finally:
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    def _watch(self, wd: Watchdog, deadline: float | None, last: float) -> float:
        """Stop the run when a clock ran out; how long to wait for the next line."""
        if self.forced is not None:
            return 1.0  # already stopping: just keep draining
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            self.stop("timed_out", f"timed out after {wd.timeout_s:g} s")
            return 1.0
        if wd.idle_timeout_s is not None and now >= last + wd.idle_timeout_s:
            idle = wd.idle_timeout_s
            self.stop("timed_out", f"no output from {wd.name} for {idle:g} s (inactivity watchdog)")
            return 1.0
        clocks = [t for t in (deadline, last + wd.idle_timeout_s if wd.idle_timeout_s else None) if t]
        return min(clocks) - now if clocks else 3600.0

    async def wait(self, timeout_s: float | None = None) -> int | None:
        assert self.proc is not None
        return await wait_exit(self.proc, timeout_s)

    def stop(self, forced: Forced, reason: str) -> None:
        """End the run (first reason wins): escalate in the background; safe to call again."""
        if self.forced is None:
            self.forced, self.reason = forced, reason
        self._start_stopper()

    def _start_stopper(self) -> None:
        if self._stopper is None and self.proc is not None and self.proc.returncode is None:
            self._stopper = asyncio.create_task(self._escalate())

    async def _escalate(self) -> None:
        proc = self.proc
        assert proc is not None
        for sig, grace in self.escalation:
            if proc.returncode is not None:
                return
            await self.signal(sig)
            await wait_exit(proc, grace)
        if proc.returncode is None:
            log.warning("agent_process.kill", run_id=self.run_id, pid=proc.pid)
            self._kill_tree()
            await wait_exit(proc)

    async def signal(self, sig: int) -> None:
        """Signal the agent itself (not bwrap, whose death would take the agent down before it could
        write its result)."""
        if self.signaller is not None:
            await self.signaller(sig)
            return
        assert self.proc is not None
        if self.sandbox is not None:
            self.sandbox.signal_command(self.proc.pid, sig)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.proc.pid, sig)

    def agent_pid(self) -> int:
        """The agent's pid: the spawned process, or in the sandbox the first one below bwrap."""
        assert self.proc is not None
        if self.sandbox is not None:
            for pid in descendants(self.proc.pid):
                if command_name(pid) != "bwrap":
                    return pid
        return self.proc.pid

    def _kill_tree(self) -> int:
        """SIGKILL the whole tree: the sandbox's PID namespace, or the descendants and marked processes."""
        assert self.proc is not None
        if self.sandbox is not None:
            members = self.sandbox.members(self.proc.pid)
            self.sandbox.kill_tree(self.proc.pid)
            return len(members)
        return kill_tree(self.proc.pid if self.proc.returncode is None else None, self.run_id)

    async def close(self, grace_s: float = 5.0) -> int:
        """Whatever ended the run: no process of it may survive. Returns how many leftovers were killed."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            # The consumer went away mid-run (iterator closed): stop politely, then by force.
            self.stop("cancelled", "the run's consumer went away")
            with contextlib.suppress(asyncio.CancelledError):
                await wait_exit(proc, grace_s)
        if self._stopper is not None:
            self._stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stopper
        if proc.returncode is None:
            killed = self._kill_tree()
            await wait_exit(proc)
            return killed
        # It exited. In the sandbox its namespace went with it; else kill what it left behind.
        return 0 if self.sandbox is not None else kill_tree(None, self.run_id)
