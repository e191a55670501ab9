"""Process plumbing for agent CLIs: spawn, frame unbounded stdout lines, and kill whole process trees.

Why the tree work: Claude Code runs its tools in their own session/process group, so killpg on the CLI's
group does not reach them. Every process we start gets AGENTD_RUN_ID=<run id> in its environment, which
its descendants inherit; cleanup kills the descendant tree (by parent pid) AND every process that carries
the marker, so even a tool process that was re-parented to init is found.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

RUN_MARKER = "AGENTD_RUN_ID"
OWNER_MARKER = "AGENTD_OWNER_PID"
MAX_LINE_BYTES = 64 * 1024 * 1024  # a guard against runaway memory, far above any line seen (300 KB)


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
        chunk = await reader.read(256 * 1024)
        if not chunk:
            break
        for line in framer.feed(chunk):
            yield line.decode("utf-8", errors="replace")
    for line in framer.close():
        yield line.decode("utf-8", errors="replace")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
            # The command name may contain spaces and parentheses: the ppid follows the LAST ')'.
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    kids = _children_map()
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


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


def kill_all(pids: Iterable[int], sig: int = signal.SIGKILL) -> int:
    n = 0
    for p in set(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)
            n += 1
    return n


def kill_run_tree(root_pid: int | None, run_id: str) -> int:
    """SIGKILL the root, its descendants and every process marked with `run_id`. Returns how many."""
    pids = set(marked_processes(run_id))
    if root_pid is not None:
        pids.update(descendants(root_pid))
        pids.add(root_pid)
    # Stop them first so none can fork while we work through the list, then kill.
    kill_all(pids, signal.SIGSTOP)
    pids.update(marked_processes(run_id))
    if root_pid is not None:
        pids.update(descendants(root_pid))
    return kill_all(pids, signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_orphans() -> int:
    """SIGKILL marked processes whose owning agentd process is gone. Returns how many."""
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
        if owner.isdigit() and not _pid_alive(int(owner)):
            victims.append(int(entry.name))
    kill_all(victims, signal.SIGSTOP)
    return kill_all(victims, signal.SIGKILL)


async def spawn(
    argv: list[str], *, cwd: Path, env: dict[str, str], stdin_data: bytes | None
) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=str(cwd),
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdin is not None
    # Closing stdin is not a cancel; the CLI reads the prompt from it when it is not on argv.
    try:
        if stdin_data:
            proc.stdin.write(stdin_data)
            await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass
    return proc
