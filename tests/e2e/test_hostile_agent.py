"""A hostile agent against the whole service: `agentd serve` as a real process, tests/support/hostile_agent.py
as its `claude` binary. With the jail on, every escape comes back empty or denied; with AGENTD_SANDBOX=off
the same run gets what it should not (so the test can fail)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.sandbox import probe
from agentd.client import AgentdClient

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "support" / "hostile_agent.py"
AGENTD = [sys.executable, "-m", "agentd.cli"]
BWRAP, BWRAP_ERROR = probe()
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason=f"bubblewrap cannot run here: {BWRAP_ERROR}")


@dataclass
class Secrets:
    """What must never reach a run: the service's keys, the other project's data. And the run's own
    provider key, which it gets but which must not come back in the stream."""

    api_key: str
    master_key: str
    provider_key: str
    beta_file: str
    beta_prompt: str

    def service(self) -> dict[str, str]:
        return {"AGENTD_API_KEY": self.api_key, "AGENTD_MASTER_KEY": self.master_key}


@dataclass
class Attack:
    report: dict[str, Any]
    stream: str  # every event of alpha's stream, as JSON
    data_dir: Path
    secrets: Secrets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def attack(tmp_path: Path) -> Iterator[Any]:
    """Start agentd with the hostile agent, run it as project beta (it plants a file, a hook and a
    prompt in the queue), then as project alpha; return alpha's report."""
    servers: list[subprocess.Popen[bytes]] = []

    def run(sandbox: str) -> Attack:
        sec = Secrets(
            api_key="svc-key-" + secrets.token_hex(16),
            master_key=base64.urlsafe_b64encode(os.urandom(32)).decode(),
            provider_key="sk-ant-fake-" + secrets.token_hex(16),
            beta_file="beta-workspace-secret-" + secrets.token_hex(8),
            beta_prompt="BETA-PROMPT-" + secrets.token_hex(8),
        )
        data = tmp_path / f"data-{sandbox}"
        port = _free_port()
        env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(ROOT),
            "AGENTD_DATA_DIR": str(data),
            "AGENTD_LOG_FORMAT": "json",
            "AGENTD_SHUTDOWN_GRACE_S": "2",
            "AGENTD_PROVIDERS": "claude-code",
            "AGENTD_CLAUDE_BIN": str(HOSTILE),
            "AGENTD_SANDBOX": sandbox,
            "ANTHROPIC_API_KEY": sec.provider_key,
            **sec.service(),
        }
        log = tmp_path / f"serve-{sandbox}.log"
        with log.open("ab") as f:
            proc = subprocess.Popen(
                [*AGENTD, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=f
            )
        servers.append(proc)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "agentd serve did not start: " + log.read_text()
                time.sleep(0.1)
        shared_home = data / "claude" / "home"  # the one home every project shared before the jail

        async def jobs() -> tuple[dict[str, Any], str]:
            async with AgentdClient(f"http://127.0.0.1:{port}", api_key=sec.api_key) as client:
                beta = {"plant": sec.beta_file, "marker": sec.beta_prompt}
                job = await client.submit("beta", "HOSTILE " + json.dumps(beta))
                items = [it async for it in client.follow(job["stream_url"])]
                assert items[-1].data["status"] == "succeeded", items[-1].data
                targets = {"data_dir": str(data), "other": "beta", "shared": str(shared_home)}
                job = await client.submit("alpha", "HOSTILE " + json.dumps(targets))
                items = [it async for it in client.follow(job["stream_url"])]
            done = items[-1].data
            assert done["status"] == "succeeded", (done, log.read_text()[-3000:])
            stream = "\n".join(json.dumps(it.data) for it in items)
            return done, stream

        done, stream = asyncio.run(jobs())
        text = str(done["result"])
        assert text.startswith("HOSTILE-REPORT "), text[:500]
        return Attack(json.loads(text.removeprefix("HOSTILE-REPORT ")), stream, data, sec)

    yield run
    for proc in servers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _environ_hits(report: dict[str, Any], values: list[str]) -> list[str]:
    """pid: key of every environment variable seen in another process that holds one of `values`."""
    hits = []
    for pid, proc in report["environ"].items():
        env = proc["environ"]
        if isinstance(env, dict):
            hits += [f"{pid}: {k}" for k, v in env.items() if any(s in v or v == _sha(s) for s in values)]
    return hits


def _sha(value: str) -> str:
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def _written_outside(data: Path, needle: str, allowed: list[Path]) -> list[str]:
    """Files under the data dir that contain `needle`, outside the `allowed` folders."""
    out = []
    for p in data.rglob("*"):
        if p.is_file() and not any(a == p or a in p.parents for a in allowed):
            try:
                if needle in p.read_text(errors="replace"):
                    out.append(str(p.relative_to(data)))
            except OSError:
                continue
    return out


@needs_bwrap
def test_with_the_jail_every_escape_comes_back_empty(attack: Any) -> None:
    got: Attack = attack("bwrap")
    r, sec = got.report, got.secrets

    # Other processes' environments: only its own sandbox is visible, and no service key is in it.
    assert not _environ_hits(r, [sec.api_key, sec.master_key])
    assert not [k for p in r["environ"].values() if isinstance(p["environ"], dict) for k in p["environ"]
                if k.startswith("AGENTD_")]  # fmt: skip
    assert r["agentd"] == [] and r["signal_parent"]["agentd"] == {}
    parent = r["signal_parent"]["parent_cmdline"]
    assert "agentd.cli" not in parent and "bin/agentd" not in parent  # its parent is inside the jail
    # Its own environment: what the run needs, nothing of agentd's.
    assert not [k for k in r["env"] if k.startswith("AGENTD_")]
    # Other projects: not there.
    assert r["siblings_ls"] == ["alpha"]
    assert str(r["other_ls"]).startswith("<FileNotFound"), r["other_ls"]
    # The data dir: no queue database, nothing of another project.
    assert not [e for e in r["data_ls"] if e.startswith("queue")], r["data_ls"]
    assert r["data_files"] == {}
    # Homes: it does not see another project's hook, and its own hooks land only in its own home.
    assert r["foreign_hook"] == ""
    allowed = [Path(r["home"]), Path(r["cwd"])]
    assert not _written_outside(got.data_dir, "pwn alpha", allowed)
    # And none of it reached the stream.
    for value in (sec.api_key, sec.master_key, sec.beta_file, sec.beta_prompt):
        assert value not in got.stream


@needs_bwrap
@pytest.mark.xfail(
    strict=True,
    reason="jail and redaction not wired yet: the run's own provider key must come back as [REDACTED:NAME]",
)
def test_with_the_jail_the_runs_own_key_is_redacted_from_the_stream(attack: Any) -> None:
    got: Attack = attack("bwrap")
    assert got.secrets.provider_key not in got.stream
    assert "[REDACTED:ANTHROPIC_API_KEY]" in got.stream


def test_without_the_jail_the_same_run_gets_what_it_should_not(attack: Any) -> None:
    """AGENTD_SANDBOX=off: the difference the jail makes (and proof that the attempts above are real)."""
    got: Attack = attack("off")
    r, sec = got.report, got.secrets
    assert r["agentd"], "the agentd process is visible"
    assert _environ_hits(r, [sec.api_key]), "agentd's AGENTD_API_KEY is readable in /proc/<pid>/environ"
    assert "beta" in r["siblings_ls"]
    assert sec.beta_file in json.dumps(r["other_read"])
    assert any(e.startswith("queue") for e in r["data_ls"])
    assert sec.beta_prompt in json.dumps(r["data_files"])  # the other project's prompt, from the queue
    assert sec.api_key in got.stream  # and it all went back to the caller
