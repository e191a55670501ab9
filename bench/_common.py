"""Shared by the benches: the machine's CPU, scratch databases, agentd processes, tables.

Everything is on 127.0.0.1; every process a bench starts is ended by it (by its own pid) and every scratch
database it creates is dropped, also when the bench fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADMIN_DSN = os.environ.get(
    "AGENTD_BENCH_DATABASE_URL",
    os.environ.get("AGENTD_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
)
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """A bench stopped from outside (`kill`, a CI timeout) unwinds like Ctrl-C: every `processes()` block and
    scratch database is cleaned up on the way out, so no api/worker child is left running."""
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, _exit_on_sigterm)


def cpu_line() -> str:
    """`lscpu`'s model name and the number of CPUs, as the tables print it."""
    model, cores = "unknown CPU", str(os.cpu_count())
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "CPU(s)":
                cores = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"CPU: {model}, {cores} cores; Python {sys.version.split()[0]}"


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (it goes into the README as is)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [f"### {title}", ""]
    for n, r in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def ratio(ours: float, anchor: float) -> str:
    return f"{ours / anchor:.2f}×" if anchor else "-"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- /proc: CPU time and memory of a process ----------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE


# --- scratch PostgreSQL databases ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_database(kind: str) -> AsyncIterator[str]:
    import psycopg
    from psycopg import sql

    name = f"agentd_bench_{kind}_{os.getpid()}_{secrets.token_hex(3)}"
    async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(ADMIN_DSN, name)
    finally:
        async with await psycopg.AsyncConnection.connect(ADMIN_DSN, autocommit=True) as admin:
            await admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def with_dbname(url: str, name: str) -> str:
    """The same postgresql:// URL naming another database (asyncpg takes URLs only)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


# --- child processes ----------------------------------------------------------------------------------


class Proc:
    """A child process in its own process group, ended (TERM, then KILL) by its pid on exit."""

    def __init__(self, args: Sequence[str], env: dict[str, str], *, log: Path | None = None) -> None:
        self.log = log
        out = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            self.popen = subprocess.Popen(
                list(args), env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
            )
        finally:
            if log is not None:
                out.close()  # type: ignore[union-attr]
        self.pid = self.popen.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait(5)

    def tail(self, n: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """A list to put started processes in; all are stopped at the end, newest first."""
    procs: list[Proc] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.stop()


def agentd_env(data_dir: Path, **extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("AGENTD_")}
    env = {
        **keep,
        "PYTHONPATH": str(ROOT),
        "AGENTD_DATA_DIR": str(data_dir),
        "AGENTD_PROVIDERS": "scripted",
        "AGENTD_LOG_LEVEL": "warning",
        "AGENTD_LOG_FORMAT": "json",
        "AGENTD_SANDBOX": "off",
    }
    env.update(extra)
    return env


def start_agentd(
    procs: list[Proc], role: str, env: dict[str, str], *, port: int | None = None, log: Path | None = None
) -> Proc:
    args = [PY, "-m", "agentd.cli", role]
    if port is not None:
        args += ["--host", "127.0.0.1", "--port", str(port)]
    p = Proc(args, env, log=log)
    procs.append(p)
    return p


async def wait_http(port: int, proc: Proc, timeout: float = 30.0) -> None:
    """Until GET /healthz answers (or the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            head = await reader.read(100)
            writer.close()
            if head.startswith(b"HTTP/1.1 200"):
                return
        except OSError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:g} s:\n{proc.tail()}")


def tmpdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="agentd-bench-")


def setup_uvloop() -> None:
    """Clients use uvloop when it is installed (it is, with aiohttp's speedups): cheaper clients leave more
    of the 2 cores to the servers under test, the same for agentd and its anchors."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
