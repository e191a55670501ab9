"""Projects over HTTP with the scripted agent editing real git working trees (`edit:` prompts): a project
from a repository or a template, jobs at a ref, `changed_files`, the patch, a push, per-project limits."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from tests.conftest import RunningAgentd
from tests.support.git_http import serve_git
from tests.support.git_repos import BINARY, checkout, git, make_remote, rev

MASTER_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()
TOKEN = "ghp_private-repo-token-0123456789"


@pytest.fixture
async def agent() -> ScriptedCodeAgent:
    return ScriptedCodeAgent("scripted")


@pytest.fixture
async def srv(agentd_factory: Any, agent: ScriptedCodeAgent) -> RunningAgentd:
    server: RunningAgentd = await agentd_factory([agent], workers=4, master_key=MASTER_KEY)
    return server


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remotes")


async def call(srv: RunningAgentd, method: str, path: str, **kw: Any) -> tuple[int, Any, Any]:
    if method != "GET" and "json" not in kw and "data" not in kw:  # as agentd.client does: writes are JSON
        kw["headers"] = {"Content-Type": "application/json", **kw.get("headers", {})}
    async with aiohttp.ClientSession() as s, s.request(method, srv.base_url + path, **kw) as r:
        body = await r.read()
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = body
        return r.status, data, r.headers


def edit(sleep: float = 0, **ops: Any) -> str:
    return "edit:" + json.dumps({**ops, "sleep": sleep})


async def run(
    srv: RunningAgentd, project: str, prompt: str, **fields: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Submit, follow to the end; returns (the done event's data, the job)."""
    job = await srv.client.submit(project, prompt, **fields)
    done: dict[str, Any] = {}
    async for item in srv.client.follow(job["stream_url"]):
        if item.event == "done":
            done = item.data
    return done, (await srv.client.job(project, job["job_id"])).model_dump(mode="json")


async def test_templates_are_listed(srv: RunningAgentd) -> None:
    status, body, _ = await call(srv, "GET", "/templates")
    assert status == 200
    names = [t["name"] for t in body["templates"]]
    assert names == ["empty", "node-service", "python-service"]
    for t in body["templates"]:
        assert t["description"] and "agentd_url" in [v["name"] for v in t["variables"]]


async def test_create_show_list_update_and_delete_a_project(srv: RunningAgentd, remote: Path) -> None:
    spec: dict[str, Any] = {
        "git": {"url": remote.as_uri(), "default_ref": "main"},
        "description": "demo",
        "max_running": 2,
    }
    status, body, headers = await call(srv, "PUT", "/projects/demo", json=spec)
    assert status == 201 and headers["Location"] == "/projects/demo"
    assert body["project_id"] == "demo" and body["git"] == {**spec["git"], "credentials": None}
    assert body["max_running"] == 2 and body["description"] == "demo"
    status, again, _ = await call(srv, "PUT", "/projects/demo", json={**spec, "description": "changed"})
    assert status == 200 and again["description"] == "changed" and again["created_at"] == body["created_at"]
    status, shown, _ = await call(srv, "GET", "/projects/demo")
    assert status == 200 and shown == again
    status, listed, _ = await call(srv, "GET", "/projects")
    assert [p["project_id"] for p in listed["projects"]] == ["demo"]
    status, _, _ = await call(srv, "DELETE", "/projects/demo")
    assert status == 204
    status, err, _ = await call(srv, "GET", "/projects/demo")
    assert status == 404 and err["error"] == "project_not_found" and "PUT /projects/demo" in err["message"]
    status, err, _ = await call(srv, "DELETE", "/projects/demo")
    assert status == 404


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"git": {"url": "https://user:secret@github.com/o/r.git"}}, "invalid_project", "password"),
        ({"git": {"url": "ext::sh -c touch% /tmp/x"}}, "invalid_project", "not supported"),
        ({"git": {"url": "file://relative/path"}}, "invalid_project", "absolute"),
        (
            {"git": {"url": "https://github.com/o/r.git", "default_ref": "a..b"}},
            "invalid_request",
            "git.default_ref",
        ),
        ({"git": {"url": "https://github.com/o/r.git", "credentials": "lower"}}, "invalid_project", "secret"),
        (
            {"git": {"url": "https://github.com/o/r.git", "credentials": "NOT_SET"}},
            "invalid_project",
            "not set",
        ),
        ({"template": "nope"}, "template_not_found", "empty, node-service, python-service"),
        ({"template": "empty", "variables": {"bogus": "1"}}, "invalid_project", "bogus"),
        ({"variables": {"a": "1"}}, "invalid_project", "template"),
        ({"max_running": 0}, "invalid_project", "max_running"),
        ({"gti": {}}, "invalid_request", "unknown field"),
    ],
)
async def test_bad_projects_get_400_saying_what_to_fix(
    srv: RunningAgentd, body: dict[str, Any], code: str, words: str
) -> None:
    status, err, _ = await call(srv, "PUT", "/projects/bad", json=body)
    assert status == 400, err
    assert err["error"] == code and words in err["message"], err
    assert "user:secret" not in json.dumps(err)  # a password in a URL is never echoed
    assert (await call(srv, "GET", "/projects/bad"))[0] == 404  # nothing stored


async def test_a_job_at_a_ref_returns_changed_files_and_a_patch_that_applies(
    srv: RunningAgentd, agent: ScriptedCodeAgent, remote: Path, tmp_path: Path
) -> None:
    await srv.client.put_project("demo", git={"url": remote.as_uri()})
    prompt = edit(
        write={"src/app.py": "def answer():\n    return 42\n", "docs/new.md": "new\n"},
        write_b64={"logo.bin": base64.b64encode(BINARY[::-1]).decode()},
        delete=["remove_me.txt"],
        rename={"old_name.txt": "renamed.txt"},
    )
    done, job = await run(srv, "demo", prompt, ref="feature")
    assert done["status"] == "succeeded", done
    files = {f["path"]: f for f in done["changed_files"]}
    assert {p: f["status"] for p, f in files.items()} == {
        "src/app.py": "modified",
        "docs/new.md": "added",
        "logo.bin": "modified",
        "remove_me.txt": "deleted",
        "renamed.txt": "renamed",
    }
    assert files["renamed.txt"]["old_path"] == "old_name.txt"
    assert files["src/app.py"]["added"] == 1 and files["src/app.py"]["removed"] == 1
    assert files["logo.bin"]["binary"] is True and files["logo.bin"]["added"] is None
    assert job["result"]["changed_files"] == done["changed_files"]
    assert job["request"]["ref"] == "feature"
    # The agent ran in the job's own tree, which is gone now.
    workdir = agent.workdirs[-1]
    assert workdir is not None and job["job_id"] in str(workdir) and not workdir.exists()

    status, patch, headers = await call(srv, "GET", f"/projects/demo/jobs/{job['job_id']}/patch")
    assert status == 200 and headers["Content-Type"] == "text/x-diff"
    assert isinstance(patch, bytes) and b"GIT binary patch" in patch
    copy = checkout(remote, "feature", tmp_path / "copy")
    git("apply", "--index", "-", cwd=copy, stdin=patch)
    assert (copy / "src" / "app.py").read_text() == "def answer():\n    return 42\n"
    assert (copy / "logo.bin").read_bytes() == BINARY[::-1]
    assert (copy / "feature.txt").exists() and not (copy / "old_name.txt").exists()
    assert await srv.client.patch("demo", job["job_id"]) == patch


async def test_push_commits_and_pushes_the_jobs_branch(srv: RunningAgentd, remote: Path) -> None:
    await srv.client.put_project("demo", git={"url": remote.as_uri(), "default_ref": "main"})
    done, job = await run(srv, "demo", edit(write={"README.md": "# fixed\n"}), push={})
    branch = f"agentd/{job['job_id']}"
    assert done["push"] == {"branch": branch, "commit": rev(remote, f"refs/heads/{branch}")}
    assert git("show", f"{branch}:README.md", cwd=remote) == "# fixed\n"
    assert job["job_id"] in git("log", "-1", "--format=%B", branch, cwd=remote)
    done, job = await run(srv, "demo", edit(write={"a.txt": "a\n"}), push={"branch": "fix/{job_id}-a"})
    assert done["push"]["branch"] == f"fix/{job['job_id']}-a"
    assert git("show", f"fix/{job['job_id']}-a:a.txt", cwd=remote) == "a\n"


async def test_a_failed_run_keeps_its_patch_but_pushes_nothing(srv: RunningAgentd, remote: Path) -> None:
    await srv.client.put_project("demo", git={"url": remote.as_uri()})
    done, _ = await run(srv, "demo", edit(write={"x.txt": "x\n"}, delete=["not-there"]), push={})
    assert done["status"] == "failed" and "push" not in done
    assert "x.txt" in [f["path"] for f in done["changed_files"]]
    assert git("branch", "--list", "agentd/*", cwd=remote) == ""


async def test_a_patch_over_the_limit_is_not_kept_and_the_job_says_why(
    agentd_factory: Any, agent: ScriptedCodeAgent, remote: Path
) -> None:
    srv: RunningAgentd = await agentd_factory([agent], workers=1, max_patch_bytes=2048)
    await srv.client.put_project("demo", git={"url": remote.as_uri()})
    done, job = await run(srv, "demo", edit(write={"big.txt": "x" * 100 + "\n" * 5000}))
    assert done["status"] == "succeeded" and [f["path"] for f in done["changed_files"]] == ["big.txt"]
    assert "AGENTD_MAX_PATCH_BYTES" in done["patch_omitted"] and "2048 bytes" in done["patch_omitted"]
    assert job["result"]["patch_omitted"] == done["patch_omitted"]
    status, err, _ = await call(srv, "GET", f"/projects/demo/jobs/{job['job_id']}/patch")
    assert status == 404 and err["error"] == "patch_too_large"
    assert "AGENTD_MAX_PATCH_BYTES" in err["message"] and job["job_id"] in err["message"]
    done, job = await run(srv, "demo", edit(write={"small.txt": "ok\n"}))  # a small one is kept as ever
    assert "patch_omitted" not in done and "patch_omitted" not in job["result"]
    status, patch, _ = await call(srv, "GET", f"/projects/demo/jobs/{job['job_id']}/patch")
    assert status == 200 and b"small.txt" in patch


async def test_a_tree_left_by_a_killed_worker_is_swept_once_its_job_is_over(
    srv: RunningAgentd, remote: Path
) -> None:
    await srv.client.put_project("demo", git={"url": remote.as_uri()})
    _, job = await run(srv, "demo", edit(write={"a.txt": "a\n"}))
    left = srv.settings.data_dir / "worktrees" / "demo" / job["job_id"]  # as a kill -9 mid-job leaves it
    (left / "src").mkdir(parents=True)
    (left / "src" / "big.bin").write_bytes(b"\0" * 1024)
    assert srv.container.runner is not None
    await srv.container.runner._sweep_trees()  # what its housekeeping runs at start and every prune
    assert not left.exists()


def overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    start = max(datetime.fromisoformat(a["started_at"]), datetime.fromisoformat(b["started_at"]))
    end = min(datetime.fromisoformat(a["finished_at"]), datetime.fromisoformat(b["finished_at"]))
    return start < end


@pytest.mark.parametrize("max_running", [1, 2])
async def test_jobs_of_one_project_run_together_up_to_max_running(
    srv: RunningAgentd, remote: Path, max_running: int
) -> None:
    await srv.client.put_project("demo", git={"url": remote.as_uri()}, max_running=max_running)
    results = await asyncio.gather(
        *(run(srv, "demo", edit(sleep=1.0, write={"README.md": f"# job {i}\n"})) for i in range(2))
    )
    assert overlap(results[0][1], results[1][1]) is (max_running == 2)
    for i, (done, job) in enumerate(results):
        assert done["status"] == "succeeded"
        patch = await srv.client.patch("demo", job["job_id"])
        assert f"+# job {i}".encode() in patch and b"# job" not in patch.replace(f"+# job {i}".encode(), b"")


async def test_delete_is_refused_while_a_job_runs(srv: RunningAgentd, remote: Path) -> None:
    await srv.client.put_project("demo", git={"url": remote.as_uri()})
    job = await srv.client.submit("demo", edit(sleep=1.5, write={"a": "b"}))
    for _ in range(100):
        if (await srv.client.job("demo", job["job_id"]))["status"] == "running":
            break
        await asyncio.sleep(0.05)
    status, err, _ = await call(srv, "DELETE", "/projects/demo")
    assert status == 409 and err["error"] == "project_in_use" and job["job_id"] in err["message"]
    async for _ in srv.client.follow(job["stream_url"]):
        pass
    assert (await call(srv, "DELETE", "/projects/demo"))[0] == 204


async def test_jobs_of_plain_projects_work_as_before(srv: RunningAgentd, agent: ScriptedCodeAgent) -> None:
    done, job = await run(srv, "never-created", "hello")
    assert done["status"] == "succeeded" and "changed_files" not in done and "push" not in done
    assert "changed_files" not in job["result"] and agent.workdirs[-1] is None
    status, err, _ = await call(srv, "GET", f"/projects/never-created/jobs/{job['job_id']}/patch")
    assert status == 404 and err["error"] == "patch_not_found"
    status, err, _ = await call(srv, "GET", "/projects/never-created/jobs/nope/patch")
    assert status == 404 and err["error"] == "job_not_found"
    fields: list[dict[str, Any]] = [{"ref": "main"}, {"push": {}}]
    for field in fields:
        status, err, _ = await call(
            srv, "POST", "/projects/never-created/jobs", json={"prompt": "x", **field}
        )
        assert status == 400 and "git repository" in err["message"], err
    status, err, _ = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "x", "ref": "-rf"})
    assert status == 400 and "ref" in err["message"]
    status, err, _ = await call(
        srv, "POST", "/projects/p/jobs", json={"prompt": "x", "push": {"branch": "a b"}}
    )
    assert status == 400 and "push.branch" in err["message"]


async def test_an_unknown_ref_fails_the_job_with_a_clear_error(srv: RunningAgentd, remote: Path) -> None:
    await srv.client.put_project("demo", git={"url": remote.as_uri()})
    done, job = await run(srv, "demo", "hello", ref="no-such-ref")
    assert done["status"] == "failed" and "'no-such-ref' is not a branch, tag or commit" in done["error"]
    assert job["attempts"] == 1  # not retried: a wrong ref stays wrong


async def test_a_project_from_a_template_starts_with_its_files(srv: RunningAgentd) -> None:
    status, body, _ = await call(
        srv,
        "PUT",
        "/projects/svc",
        json={"template": "python-service", "variables": {"agentd_url": "https://agentd.example"}},
    )
    assert status == 201 and body["git"] is None and body["template"] == "python-service"
    prompt = edit(write={"app/extra.py": "X = 1\n"}, rename={"README.md": "docs/README.md"})
    done, _ = await run(srv, "svc", prompt)
    assert done["status"] == "succeeded", done
    assert {f["path"]: f["status"] for f in done["changed_files"]} == {
        "app/extra.py": "added",
        "docs/README.md": "renamed",
    }
    origin = srv.settings.data_dir / "git" / "svc" / "origin.git"
    woodpecker = git("show", "main:.woodpecker.yml", cwd=origin)
    assert "--project svc" in woodpecker and "AGENTD_URL: https://agentd.example" in woodpecker
    workflow = git("show", "main:.github/workflows/agentd.yml", cwd=origin)
    assert "${{ secrets.AGENTD_API_KEY }}" in workflow and "agentd submit --project svc" in workflow
    assert "svc" in git("show", "main:CLAUDE.md", cwd=origin)
    assert git("log", "--format=%s", "main", cwd=origin).strip() == "Create svc from template"
    # Updating the project does not seed it again.
    await srv.client.put_project("svc", template="python-service", description="d")
    assert git("rev-list", "--count", "main", cwd=origin).strip() == "1"


async def test_a_private_repository_through_the_credentials_secret(
    srv: RunningAgentd, agent: ScriptedCodeAgent, tmp_path: Path
) -> None:
    root = tmp_path / "srv"
    make_remote(root, "private.git")
    with serve_git(root, TOKEN) as server:
        url = server.url("private.git")
        status, err, _ = await call(
            srv, "PUT", "/projects/priv", json={"git": {"url": url, "credentials": "GIT_TOKEN"}}
        )
        assert status == 400 and "GIT_TOKEN" in err["message"] and "not set" in err["message"]
        status, _, _ = await call(srv, "PUT", "/projects/priv/secrets/GIT_TOKEN", json={"value": TOKEN})
        assert status == 204
        status, body, _ = await call(
            srv, "PUT", "/projects/priv", json={"git": {"url": url, "credentials": "GIT_TOKEN"}}
        )
        assert status == 201 and body["git"]["credentials"] == "GIT_TOKEN"
        done, job = await run(srv, "priv", edit(write={"README.md": "# private\n"}), push={})
        assert done["status"] == "succeeded", done
        assert any(r.endswith("-> 401") for r in server.requests)  # it did need the token
        assert git("show", f"agentd/{job['job_id']}:README.md", cwd=root / "private.git") == "# private\n"
    assert "GIT_TOKEN" not in agent.envs[-1]  # agentd fetches and pushes: the agent never gets the token
    status, events, _ = await call(srv, "GET", f"/projects/priv/events/{job['stream_id']}")
    assert TOKEN.encode() not in events
    assert TOKEN not in json.dumps(job)


async def test_a_slow_fetch_keeps_the_jobs_lease(agentd_factory: Any, tmp_path: Path) -> None:
    """Preparing the tree takes longer than a lease: the worker renews it meanwhile, so the job is not
    handed to another worker (it runs once)."""
    srv = await agentd_factory(
        [ScriptedCodeAgent("scripted")], master_key=MASTER_KEY, lease_s=0.6, heartbeat_s=0.2
    )
    root = tmp_path / "srv"
    make_remote(root, "slow.git")
    with serve_git(root, TOKEN) as server:
        server.delay_s = 0.5
        await call(srv, "PUT", "/projects/slow/secrets/GIT_TOKEN", json={"value": TOKEN})
        await srv.client.put_project("slow", git={"url": server.url("slow.git"), "credentials": "GIT_TOKEN"})
        done, job = await run(srv, "slow", edit(write={"a.txt": "a\n"}))
    assert done["status"] == "succeeded", done
    assert job["attempts"] == 1
    assert len(server.requests) >= 3  # at least 1.5 s of fetching, over two leases
