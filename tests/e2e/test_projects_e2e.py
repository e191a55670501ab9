"""Projects end to end: the README's pipeline as real processes (`agentd serve`, `agentd projects create`,
`agentd submit --ref --follow --patch`, `git apply`), and the real claude CLI editing a job's working tree
through its Bash tool (against the scripted model server)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentd.config import Settings
from tests.conftest import claude_agent
from tests.e2e.test_cli import AGENTD, Server, base_env, serve  # noqa: F401 - fixtures
from tests.support import fake_anthropic as fa
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.git_repos import checkout, git, make_remote, rev

pytestmark = pytest.mark.e2e


def agentd(server: Server, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "AGENTD_URL": server.url}
    return subprocess.run([*AGENTD, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_a_pipeline_creates_a_project_runs_a_job_on_a_ref_and_applies_its_patch(
    serve: Any,  # noqa: F811 - the fixture of tests/e2e/test_cli.py
    tmp_path: Path,
) -> None:
    remote = make_remote(tmp_path / "remotes")
    srv = serve(AGENTD_PROVIDERS="scripted")

    created = agentd(srv, "projects", "create", "demo", "--git-url", remote.as_uri(), "--max-running", "2")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["git"]["url"] == remote.as_uri()
    listed = agentd(srv, "projects", "list")
    assert [p["project_id"] for p in json.loads(listed.stdout)] == ["demo"]
    shown = agentd(srv, "projects", "show", "demo")
    assert json.loads(shown.stdout)["max_running"] == 2
    templates = agentd(srv, "projects", "templates")
    assert "python-service" in [t["name"] for t in json.loads(templates.stdout)]

    script = {"write": {"src/app.py": "def answer():\n    return 42\n"}, "delete": ["remove_me.txt"]}
    patch_file = tmp_path / "agentd.patch"
    job = agentd(
        srv,
        "submit",
        "--project",
        "demo",
        "--ref",
        "feature",
        "--follow",
        "--patch",
        str(patch_file),
        "edit:" + json.dumps(script),
    )
    assert job.returncode == 0, job.stderr
    statuses = [json.loads(ln)["data"] for ln in job.stdout.splitlines() if '"event":"status"' in ln]
    assert any(s["status"] == "workspace" and "feature at" in (s["detail"] or "") for s in statuses), statuses
    assert "written to" in job.stderr
    copy = checkout(remote, "feature", tmp_path / "copy")
    git("apply", str(patch_file), cwd=copy)
    assert (copy / "src" / "app.py").read_text() == "def answer():\n    return 42\n"
    assert not (copy / "remove_me.txt").exists()

    pushed = agentd(
        srv, "submit", "--project", "demo", "--push", "ci/fix", "--follow", "edit:" + json.dumps(script)
    )
    assert pushed.returncode == 0, pushed.stderr
    assert git("show", "ci/fix:src/app.py", cwd=remote) == "def answer():\n    return 42\n"
    assert rev(remote, "main") != rev(remote, "ci/fix")

    plain = agentd(
        srv, "submit", "--project", "elsewhere", "--follow", "--patch", str(tmp_path / "none"), "hi"
    )
    assert plain.returncode == 0 and "no patch" in plain.stderr
    assert (tmp_path / "none").read_bytes() == b""

    bad = agentd(srv, "projects", "create", "bad", "--git-url", "https://u:p@host/r.git")
    assert bad.returncode == 2 and "password" in bad.stderr
    assert agentd(srv, "projects", "delete", "demo").returncode == 0
    missing = agentd(srv, "projects", "show", "demo")
    assert missing.returncode == 1 and "no project" in missing.stderr
    assert srv.stop() == 0


def test_a_patch_too_large_to_keep_is_not_written_as_an_empty_file(
    serve: Any,  # noqa: F811 - the fixture of tests/e2e/test_cli.py
    tmp_path: Path,
) -> None:
    remote = make_remote(tmp_path / "remotes")
    srv = serve(AGENTD_PROVIDERS="scripted", AGENTD_MAX_PATCH_BYTES="1024")
    assert agentd(srv, "projects", "create", "demo", "--git-url", remote.as_uri()).returncode == 0
    patch_file = tmp_path / "agentd.patch"
    script = {"write": {"big.txt": "".join(f"line {i}\n" for i in range(2000))}}
    job = agentd(
        srv,
        "submit",
        "--project",
        "demo",
        "--follow",
        "--patch",
        str(patch_file),
        "edit:" + json.dumps(script),
    )
    assert job.returncode == 0, job.stderr  # the run succeeded; only its patch was not kept
    done = [json.loads(ln)["data"] for ln in job.stdout.splitlines() if '"event":"done"' in ln][-1]
    assert done["changed_files"][0]["path"] == "big.txt" and "1024 bytes" in done["patch_omitted"]
    assert "patch not kept" in job.stderr and "AGENTD_MAX_PATCH_BYTES" in job.stderr
    assert not patch_file.exists()  # an empty file would tell a CI step there were no changes
    assert srv.stop() == 0


async def test_the_real_claude_cli_edits_the_jobs_working_tree(
    agentd_factory: Any, tmp_path: Path, claude_bin: str
) -> None:
    remote = make_remote(tmp_path / "remotes")
    async with FakeAnthropic() as model:
        data = tmp_path / "data"
        agent = claude_agent(Settings(data_dir=data), claude_bin, model.base_url)
        srv = await agentd_factory([agent], data_dir=data)
        await srv.client.put_project("demo", git={"url": remote.as_uri()})
        job = await srv.client.submit("demo", "SCENARIO:tool_bash", ref="v1")
        items = [item async for item in srv.client.follow(job["stream_url"])]
    done = items[-1].data
    assert done["status"] == "succeeded", done
    assert done["changed_files"] == [
        {"path": "out.txt", "status": "added", "old_path": None, "added": 1, "removed": 0, "binary": False}
    ]
    assert any(i.event == "tool_use" and i.data["input"] == fa.TOOL_BASH_INPUT for i in items)
    patch = await srv.client.patch("demo", job["job_id"])
    assert b"+hello" in patch and b"out.txt" in patch
    session = next(i.data for i in items if i.event == "session")
    assert session["cwd"] and job["job_id"] in session["cwd"]  # claude worked in the job's tree
    assert not (data / "worktrees" / "demo" / job["job_id"]).exists()
