"""ci/: the Woodpecker plugin's entrypoint run against a live agentd (as the plugin container runs it), the
example pipelines valid against the published schemas, the plugin's Dockerfile lint-clean."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.agentd_proc import ROOT, Server, base_env, serve

pytestmark = pytest.mark.e2e
__all__ = ["base_env", "serve"]  # fixtures
CI = ROOT / "ci"
ENTRYPOINT = CI / "woodpecker" / "entrypoint.sh"
KEY = "ci-key-0123456789abcdef0123456789"


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pinned in pyproject's dev extras)")
    return path


def plugin(srv: Server, **settings: str) -> subprocess.CompletedProcess[str]:
    """The entrypoint with only what a Woodpecker step gives it: PLUGIN_* settings and a PATH."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": srv.env["HOME"],
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(ROOT),
        **{f"PLUGIN_{k.upper()}": v for k, v in settings.items()},
    }
    return subprocess.run(["bash", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=60)


def test_the_woodpecker_entrypoint_runs_a_job_and_exits_with_its_outcome(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted", AGENTD_API_KEY=KEY)
    common = {"server": srv.url, "key": KEY, "project": "ci-demo", "provider": "scripted"}
    ok = plugin(srv, **common, prompt="-- review the change", model="m1", timeout="60")
    assert ok.returncode == 0, ok.stderr
    text = "".join(json.loads(ln)["data"]["chunk"] for ln in ok.stdout.splitlines() if '"event":"text"' in ln)
    assert text == "-- review the change"  # a prompt starting with '-' is not taken for an option
    assert KEY not in ok.stdout + ok.stderr
    assert plugin(srv, **common, prompt="fail:tests are red").returncode == 1
    assert plugin(srv, **common, prompt="sleep:5", timeout="1").returncode == 124
    wrong_key = plugin(srv, **{**common, "key": "nope"}, prompt="x")
    assert wrong_key.returncode == 2 and "X-API-Key" in wrong_key.stderr
    missing = plugin(srv, server=srv.url, key=KEY)
    assert missing.returncode == 2 and "missing setting(s): project prompt" in missing.stderr
    bad_timeout = plugin(srv, **common, prompt="x", timeout="soon")
    assert bad_timeout.returncode == 2 and "timeout" in bad_timeout.stderr


def _check(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    checker = _tool("check-jsonschema")
    return subprocess.run(
        [checker, "--builtin-schema", schema, str(path)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        ("vendor.woodpecker-ci", CI / "woodpecker" / "example.woodpecker.yaml"),
        ("vendor.github-workflows", CI / "github-action" / "example-workflow.yml"),
        ("vendor.github-actions", CI / "github-action" / "action.yml"),
    ],
)
def test_examples_match_the_published_schemas(schema: str, path: Path, tmp_path: Path) -> None:
    res = _check(schema, path)
    assert res.returncode == 0, res.stdout + res.stderr
    # The checker is really checking: the same file with a planted mistake fails.
    doc = yaml.safe_load(path.read_text())
    if "steps" in doc and isinstance(doc["steps"], list):
        doc["steps"][0]["image"] = ["not", "a", "string"]
    elif "jobs" in doc:
        doc["jobs"]["review"]["runs-on"] = {"bad": 1}
    else:
        doc["runs"]["using"] = "teleport"
    bad = tmp_path / path.name
    bad.write_text(yaml.safe_dump(doc))
    assert _check(schema, bad).returncode != 0


def test_the_action_and_the_plugin_take_the_same_settings() -> None:
    action = yaml.safe_load((CI / "github-action" / "action.yml").read_text())
    run_step = action["runs"]["steps"][-1]
    assert "woodpecker/entrypoint.sh" in run_step["run"]
    settings = {"server", "key", "project", "prompt", "provider", "model", "timeout"}
    assert {k.removeprefix("PLUGIN_").lower() for k in run_step["env"]} == settings
    assert settings <= set(action["inputs"])
    documented = ENTRYPOINT.read_text()
    assert all(f"PLUGIN_{s.upper()}" in documented for s in settings)


def test_the_plugin_dockerfile_is_hadolint_clean() -> None:
    hadolint = _tool("hadolint")
    res = subprocess.run(
        [hadolint, "--failure-threshold", "style", str(CI / "woodpecker" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stdout + res.stderr
