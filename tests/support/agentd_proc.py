"""`agentd serve` as a real process on loopback, for tests that drive agentd the way its users do."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port

AGENTD = [sys.executable, "-m", "agentd.cli"]
ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*AGENTD, "serve", "--port", str(self.port)],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                time.sleep(0.1)
        raise AssertionError("agentd serve did not start: " + self.log.read_text())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)


def base_env_for(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", os.defpath),
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path / "home"),
        "AGENTD_DATA_DIR": str(tmp_path / "data"),
        "AGENTD_STATE_DIR": str(tmp_path / "state"),
        "AGENTD_LOG_FORMAT": "json",
        "AGENTD_SHUTDOWN_GRACE_S": "2",
        "PYTHONPATH": str(ROOT),
    }


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    return base_env_for(tmp_path)


@pytest.fixture
def serve(base_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start `agentd serve` with extra environment; stopped (SIGKILL) at the end if still running."""
    servers: list[Server] = []

    def start(**env: str) -> Server:
        port = int(env.pop("port", 0)) or free_port()
        s = Server({**base_env, **env}, port, tmp_path / "serve.log")
        s.start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        if s.proc and s.proc.poll() is None:
            s.stop(signal.SIGKILL)
