"""A hostile agent against the whole service: `agentd serve` as a real process, tests/support/hostile_agent.py
as its `claude` binary. With the jail on, every escape comes back empty or denied, and the run's own secrets
(set through the secrets API) come back as [REDACTED:NAME]; with AGENTD_SANDBOX=off the same run gets what it
should not (so the test can fail). The agent reports other processes' environments as digests, which the
redaction of the stream cannot hide: the difference between the two modes shows through it."""

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
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.sandbox import probe
from agentd.client import AgentdClient
from agentd.services.redaction import placeholder

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT / "tests" / "support" / "hostile_agent.py"
AGENTD = [sys.executable, "-m", "agentd.cli"]
BWRAP, BWRAP_ERROR = probe()
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason=f"bubblewrap cannot run here: {BWRAP_ERROR}")


@dataclass
class Secrets:
    """What must never reach a run: the service's keys, the other project's data and secrets. And alpha's
    own secrets (from the store: the project's over the global ones), which its run gets but which must not
    come back in the stream."""

    api_key: str
    master_key: str
    beta_file: str
    beta_prompt: str
    global_secrets: dict[str, str]
    alpha_secrets: dict[str, str]
    beta_secrets: dict[str, str]

    def service(self) -> dict[str, str]:
        return {"AGENTD_API_KEY": self.api_key, "AGENTD_MASTER_KEY": self.master_key}

    def alpha_run(self) -> dict[str, str]:
        """The secrets alpha's run is given."""
        return {**self.global_secrets, **self.alpha_secrets}

    def every_value(self) -> list[str]:
        stores = (self.global_secrets, self.alpha_secrets, self.beta_secrets, self.service())
        return [v for store in stores for v in store.values()]


@dataclass
class Attack:
    report: dict[str, Any]
    stream: str  # every event of alpha's stream, as JSON
    data_dir: Path
    secrets: Secrets
    log: str  # agentd's own log (stderr)


def _new_master_key() -> str:
    out = subprocess.run(
        [*AGENTD, "secrets", "new-master-key"],
        env={"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip()


def _put_secret(base: str, api_key: str, project: str | None, name: str, value: str) -> None:
    """PUT /projects/{project}/secrets/{name} (or /secrets/{name}, global) through the HTTP API."""
    path = f"/projects/{project}/secrets/{name}" if project else f"/secrets/{name}"
    req = urllib.request.Request(
        base + path,
        data=json.dumps({"value": value}).encode(),
        method="PUT",
        headers={"X-API-Key": api_key, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 204, (path, r.status)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _new_secrets() -> Secrets:
    sec = Secrets(
        api_key="svc-key-" + secrets.token_hex(16),
        master_key=_new_master_key(),
        beta_file="beta-workspace-secret-" + secrets.token_hex(8),
        beta_prompt="BETA-PROMPT-" + secrets.token_hex(8),
        global_secrets={
            "GLOBAL_TOKEN": "global-" + secrets.token_hex(16),
            "ANTHROPIC_API_KEY": "sk-ant-global-" + secrets.token_hex(16),  # alpha's own wins
        },
        alpha_secrets={
            "ANTHROPIC_API_KEY": "sk-ant-alpha-" + secrets.token_hex(16),  # the run's provider key
            "DEPLOY_TOKEN": "deploy-" + secrets.token_hex(16),
        },
        beta_secrets={"BETA_TOKEN": "beta-token-" + secrets.token_hex(16)},
    )
    assert len(base64.urlsafe_b64decode(sec.master_key)) == 32
    return sec


def _serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """`agentd serve` on `port`, its stderr into `log`; returns once it accepts connections."""
    with log.open("ab") as f:
        proc = subprocess.Popen(
            [*AGENTD, "serve", "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=f
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError("agentd serve did not start: " + log.read_text()) from None
            time.sleep(0.1)


@pytest.fixture
def attack(tmp_path: Path) -> Iterator[Any]:
    """Start agentd with the hostile agent, run it as project beta (it plants a file, a hook and a
    prompt in the queue), then as project alpha; return alpha's report."""
    servers: list[subprocess.Popen[bytes]] = []

    def run(sandbox: str) -> Attack:
        sec = _new_secrets()
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
            **sec.service(),
        }
        log = tmp_path / f"serve-{sandbox}.log"
        servers.append(_serve(env, port, log))
        base = f"http://127.0.0.1:{port}"
        for scope, values in (
            (None, sec.global_secrets),
            ("alpha", sec.alpha_secrets),
            ("beta", sec.beta_secrets),
        ):
            for name, value in values.items():
                _put_secret(base, sec.api_key, scope, name, value)
        shared_home = data / "claude" / "home"  # the one home every project shared before the jail

        async def jobs() -> tuple[dict[str, Any], str]:
            async with AgentdClient(base, api_key=sec.api_key) as client:
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
        report = json.loads(text.removeprefix("HOSTILE-REPORT "))
        return Attack(report, stream, data, sec, log.read_text(errors="replace"))

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
    # Another project's secrets: not given to this run.
    assert not set(sec.beta_secrets) & set(r["env"])
    # And none of it reached the stream, not even as a digest.
    for value in (sec.api_key, sec.master_key, sec.beta_file, sec.beta_prompt, *sec.beta_secrets.values()):
        assert value not in got.stream and _sha(value) not in got.stream


@needs_bwrap
def test_with_the_jail_the_runs_own_secrets_are_redacted_from_the_stream(attack: Any) -> None:
    """The run gets its secrets from the store (the project's over the global ones, its provider key among
    them) and prints its whole environment: every value comes back as [REDACTED:NAME], in no event and
    no log line in full."""
    got: Attack = attack("bwrap")
    r, sec = got.report, got.secrets
    for name, value in sec.alpha_run().items():
        assert r["env_sha"].get(name) == _sha(value), f"the run did not get its secret {name}"
        assert r["env"][name] == placeholder(name)
        assert placeholder(name) in got.stream
    for value in sec.every_value():
        assert value not in got.stream
        assert value not in got.log


def test_without_the_jail_the_same_run_gets_what_it_should_not(attack: Any) -> None:
    """AGENTD_SANDBOX=off: the difference the jail makes (and proof that the attempts above are real)."""
    got: Attack = attack("off")
    r, sec = got.report, got.secrets
    assert r["agentd"], "the agentd process is visible"
    assert _environ_hits(r, [sec.api_key]), "agentd's AGENTD_API_KEY is readable in /proc/<pid>/environ"
    assert _environ_hits(r, [sec.master_key]), "and so is its AGENTD_MASTER_KEY"
    assert "beta" in r["siblings_ls"]
    assert sec.beta_file in json.dumps(r["other_read"])
    assert any(e.startswith("queue") for e in r["data_ls"])
    assert sec.beta_prompt in json.dumps(r["data_files"])  # the other project's prompt, from the queue
    # And it all went back to the caller: redaction hides the key itself, not what the run learnt about it.
    assert sec.api_key not in got.stream and _sha(sec.api_key) in got.stream
