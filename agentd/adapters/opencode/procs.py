"""Process-tree helpers (Linux /proc): find, signal and measure a process and all its descendants."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when agentd dies, even by SIGKILL (no orphaned server)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _parents() -> dict[int, int]:
    out: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
            except OSError:
                continue
            # "pid (comm) state ppid ...": comm may contain spaces and parentheses.
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 1:
                out[int(name)] = int(fields[1])
    return out


def tree(root: int) -> set[int]:
    """`root` and all its living descendants."""
    parents = _parents()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found = {root} if root in parents else set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def signal_all(root: int, pids: set[int], sig: int) -> None:
    """Signal the process group of `root` (it leads one: start_new_session) and every pid in `pids`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(root, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def kill_tree(root: int, sig: int = signal.SIGKILL) -> None:
    signal_all(root, tree(root), sig)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X", "")


async def wait_exit(proc: asyncio.subprocess.Process, timeout_s: float | None = None) -> int | None:
    """The exit code once the process has exited; None after `timeout_s`.

    Not `proc.wait()`: on Python 3.11 that also waits until every pipe of the process is closed, which a
    grandchild that inherited stdout/stderr (a tool the server started) can delay forever.
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


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_rss(root: int) -> int:
    """Bytes of resident memory of `root` and its descendants."""
    return sum(rss_kib(p) for p in tree(root)) * 1024
