"""Every bench runs, at its smallest, and prints its table with its anchor and a ratio: they do not rot.

The benches themselves (bench/, `bench/run_all`) are not part of the test run; this runs each once with
tiny sizes, all at the same time (about 10 s of wall time), against the machine's PostgreSQL (skipped when
it cannot be reached, like the other PostgreSQL tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
ADMIN_DSN = os.environ.get("AGENTD_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

BENCHES = {
    "bench_worker.py": ["--jobs", "20", "--rounds", "1"],
    "bench_queue.py": ["--jobs", "40", "--rounds", "1"],
    "bench_latency.py": ["--jobs", "5"],
    "bench_fanout.py": ["--subs", "10", "--count", "5", "--paced-s", "0.3", "--rounds", "1", "--clients", "1",
                        "--delay", "3"],
    "bench_sse.py": ["--small", "2000", "--large", "50"],
    "bench_protocol.py": ["--lines", "2000", "--no-profile"],
}  # fmt: skip


@pytest.fixture(scope="module")
def postgres() -> None:
    try:
        psycopg.connect(ADMIN_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL is not reachable at {ADMIN_DSN}: {e}")


def test_every_bench_prints_its_table(postgres: None) -> None:
    env = {**os.environ, "AGENTD_BENCH_DATABASE_URL": ADMIN_DSN, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / name), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in BENCHES.items()
    }
    outputs = {}
    try:
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=max(1.0, 120 - (time.monotonic() - started)))
            outputs[name] = out
            assert proc.returncode == 0, f"{name} failed:\n{out[-3000:]}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()  # SIGTERM: the bench stops its own agentd processes and drops its databases
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    for name, out in outputs.items():
        assert "CPU: " in out and " cores" in out, f"{name} does not print the machine's CPU:\n{out}"
        assert "| what" in out or "| agentd" in out or "| stream" in out or "| path" in out, out
        assert "\u00d7" in out, f"{name} prints no ratio:\n{out}"
