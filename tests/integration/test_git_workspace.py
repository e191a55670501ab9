"""GitWorkspaces (agentd/adapters/git_workspace.py) against real local repositories: file:// ones, and a
private one over HTTP that needs a token (tests/support/git_http.py)."""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentd.adapters.git_workspace import GitWorkspaces, job_tree_mounts
from agentd.adapters.sandbox import Jail, Sandbox, probe
from agentd.domain.errors import WorkspaceFailed
from agentd.domain.projects import GitSource, Project
from tests.support.git_http import serve_git
from tests.support.git_repos import BINARY, checkout, git, make_remote, rev

TOKEN = "ghp_private-repo-token-0123456789"


def project(url: str | None, pid: str = "demo", **git_fields: str) -> Project:
    now = datetime.now(UTC)
    source = GitSource(url=url, **git_fields) if url else None
    return Project(id=pid, git=source, template=None if url else "empty", created_at=now, updated_at=now)


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_remote(tmp_path / "remotes")


@pytest.fixture
def workspaces(tmp_path: Path) -> GitWorkspaces:
    return GitWorkspaces(tmp_path / "data" / "git", tmp_path / "data" / "worktrees")


async def test_prepare_at_the_default_branch_a_branch_a_tag_and_a_commit(
    remote: Path, workspaces: GitWorkspaces
) -> None:
    p = project(remote.as_uri())
    ws = await workspaces.prepare(p, "job-default", None, token=None)
    assert ws.base == rev(remote, "main") and (ws.path / "CHANGES.md").exists()
    feature = await workspaces.prepare(p, "job-feature", "feature", token=None)
    assert feature.base == rev(remote, "feature") and (feature.path / "feature.txt").exists()
    tag = await workspaces.prepare(p, "job-tag", "v1", token=None)
    assert tag.base == rev(remote, "v1") and not (tag.path / "CHANGES.md").exists()
    sha = rev(remote, "main~1")
    by_sha = await workspaces.prepare(p, "job-sha", sha[:12], token=None)
    assert by_sha.base == sha
    assert len({ws.path, feature.path, tag.path, by_sha.path}) == 4  # a tree per job
    # The agent may use git in its tree; the origin it sees is the project's URL, not agentd's mirror.
    assert git("remote", "get-url", "origin", cwd=ws.path).strip() == remote.as_uri()
    assert git("status", "--porcelain", cwd=ws.path) == ""
    assert git("config", "user.name", cwd=ws.path).strip() == "agentd"  # the agent may commit
    for w in (ws, feature, tag, by_sha):
        await workspaces.remove(w)
        assert not w.path.exists()


async def test_the_project_default_ref_and_an_unknown_ref(remote: Path, workspaces: GitWorkspaces) -> None:
    p = project(remote.as_uri(), default_ref="feature")
    ws = await workspaces.prepare(p, "job-1", None, token=None)
    assert ws.base == rev(remote, "feature")
    with pytest.raises(WorkspaceFailed, match="'no-such-branch' is not a branch, tag or commit") as e:
        await workspaces.prepare(p, "job-2", "no-such-branch", token=None)
    assert e.value.retryable is False


async def test_changes_cover_edits_new_deleted_renamed_and_binary_files_and_the_patch_applies(
    remote: Path, workspaces: GitWorkspaces, tmp_path: Path
) -> None:
    p = project(remote.as_uri())
    ws = await workspaces.prepare(p, "job-1", "main", token=None)
    (ws.path / "src" / "app.py").write_text("def answer():\n    return 42\n")
    (ws.path / "src" / "new.py").write_text("NEW = 1\n")
    (ws.path / "remove_me.txt").unlink()
    (ws.path / "old_name.txt").rename(ws.path / "new_name.txt")
    (ws.path / "logo.bin").write_bytes(BINARY[::-1])
    (ws.path / "blob.dat").write_bytes(b"\x00\xff" * 300)
    # A commit the agent makes itself counts too.
    (ws.path / "committed.txt").write_text("by the agent\n")
    git("add", "committed.txt", cwd=ws.path)
    git("commit", "-q", "-m", "agent commit", cwd=ws.path)
    changes = await workspaces.changes(ws)
    by_path = {f.path: f for f in changes.files}
    assert by_path["src/app.py"].status == "modified"
    assert (by_path["src/app.py"].added, by_path["src/app.py"].removed) == (1, 1)
    assert by_path["src/new.py"].status == "added" and by_path["src/new.py"].added == 1
    assert by_path["remove_me.txt"].status == "deleted" and by_path["remove_me.txt"].removed == 1
    renamed = by_path["new_name.txt"]
    assert renamed.status == "renamed" and renamed.old_path == "old_name.txt"
    assert (renamed.added, renamed.removed) == (0, 0)
    assert by_path["logo.bin"].binary and by_path["logo.bin"].added is None
    assert by_path["blob.dat"].status == "added" and by_path["blob.dat"].binary
    assert by_path["committed.txt"].status == "added"
    assert set(by_path) == {
        "src/app.py",
        "src/new.py",
        "remove_me.txt",
        "new_name.txt",
        "logo.bin",
        "blob.dat",
        "committed.txt",
    }
    assert changes.patch is not None and b"GIT binary patch" in changes.patch
    # The patch applies to a fresh checkout of the base and gives the same files, binaries included.
    copy = checkout(remote, ws.base, tmp_path / "copy")
    git("apply", "--index", "-", cwd=copy, stdin=changes.patch)
    assert (copy / "src" / "app.py").read_text() == "def answer():\n    return 42\n"
    assert (copy / "logo.bin").read_bytes() == BINARY[::-1]
    assert (copy / "blob.dat").read_bytes() == b"\x00\xff" * 300
    assert not (copy / "remove_me.txt").exists() and not (copy / "old_name.txt").exists()
    assert (copy / "new_name.txt").read_text() == "keep me\nsame\ncontent\n"


async def test_no_changes_give_an_empty_patch(remote: Path, workspaces: GitWorkspaces) -> None:
    ws = await workspaces.prepare(project(remote.as_uri()), "job-1", None, token=None)
    changes = await workspaces.changes(ws)
    assert changes.files == [] and changes.patch == b""


async def test_a_patch_over_the_limit_is_not_read_whole_but_the_changed_files_are_listed(
    remote: Path, tmp_path: Path
) -> None:
    small = GitWorkspaces(tmp_path / "data" / "git", tmp_path / "data" / "worktrees", max_patch_bytes=4096)
    ws = await small.prepare(project(remote.as_uri()), "job-big", None, token=None)
    (ws.path / "big.txt").write_text("".join(f"line {i}\n" for i in range(50_000)))  # ~540 KB of patch
    (ws.path / "small.txt").write_text("small\n")
    changes = await small.changes(ws)
    assert changes.patch is None and changes.patch_limit == 4096
    assert {f.path: f.added for f in changes.files} == {"big.txt": 50_000, "small.txt": 1}
    (ws.path / "big.txt").unlink()  # under the limit again: the patch is there
    changes = await small.changes(ws)
    assert changes.patch is not None and b"small.txt" in changes.patch and changes.patch_limit is None
    await small.remove(ws)


async def test_agentd_never_runs_what_the_agent_configured_in_its_tree(
    remote: Path, workspaces: GitWorkspaces, tmp_path: Path
) -> None:
    """A hostile run sets a clean filter, an fsmonitor and hooks in its own repository: recording its
    changes must not execute them."""
    ws = await workspaces.prepare(project(remote.as_uri()), "job-1", None, token=None)
    marker = tmp_path / "pwned"
    evil = f"sh -c 'touch {marker}'"
    git("config", "filter.evil.clean", evil, cwd=ws.path)
    git("config", "core.fsmonitor", evil, cwd=ws.path)
    (ws.path / ".gitattributes").write_text("* filter=evil\n")
    (ws.path / "src" / "app.py").write_text("changed\n")
    changes = await workspaces.changes(ws)
    assert {f.path for f in changes.files} == {".gitattributes", "src/app.py"}
    assert not marker.exists()
    git("add", "-A", cwd=ws.path)  # the trap is real: git in the run's own repository springs it
    assert marker.exists()


async def test_push_commits_the_changes_to_a_branch(remote: Path, workspaces: GitWorkspaces) -> None:
    p = project(remote.as_uri())
    ws = await workspaces.prepare(p, "job-7", "main", token=None)
    (ws.path / "README.md").write_text("# pushed\n")
    (ws.path / "remove_me.txt").unlink()
    pushed = await workspaces.push(p, ws, "agentd/job-7", "agentd job job-7\n\nfix it", token=None)
    assert pushed.branch == "agentd/job-7"
    assert rev(remote, "refs/heads/agentd/job-7") == pushed.commit
    assert git("show", "-s", "--format=%an|%s|%P", pushed.commit, cwd=remote).strip() == (
        f"agentd|agentd job job-7|{ws.base}"
    )
    assert git("show", f"{pushed.commit}:README.md", cwd=remote) == "# pushed\n"
    assert "remove_me.txt" not in git("ls-tree", "--name-only", pushed.commit, cwd=remote)
    assert rev(remote, "main") == ws.base  # nothing else moved


async def test_concurrent_jobs_of_one_project_get_their_own_trees(
    remote: Path, workspaces: GitWorkspaces
) -> None:
    p = project(remote.as_uri())
    trees = await asyncio.gather(*(workspaces.prepare(p, f"job-{i}", "main", token=None) for i in range(4)))
    for i, ws in enumerate(trees):
        (ws.path / "README.md").write_text(f"# job {i}\n")
    changes = await asyncio.gather(*(workspaces.changes(ws) for ws in trees))
    for i, c in enumerate(changes):
        assert [f.path for f in c.files] == ["README.md"]
        assert c.patch is not None and f"+# job {i}".encode() in c.patch


async def test_a_mirror_folder_made_ahead_by_an_adapter_is_finished_not_refused(
    remote: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _, objects = job_tree_mounts(data, "demo")
    objects.mkdir(parents=True)  # what the OpenCode adapter does before it starts a project's server
    workspaces = GitWorkspaces.in_data_dir(data)
    ws = await workspaces.prepare(project(remote.as_uri()), "job-1", None, token=None)
    assert ws.base == rev(remote, "main") and any(objects.iterdir())


async def test_a_template_project_without_url_gets_a_local_repository_with_a_first_commit(
    workspaces: GitWorkspaces,
) -> None:
    p = project(None, pid="fresh")
    files = {"README.md": b"# fresh\n", ".github/workflows/ci.yml": b"on: push\n", "run.sh": b"echo hi\n"}
    assert await workspaces.seed(p, files) is True
    assert await workspaces.seed(p, {"other": b"x"}) is False  # never over an existing repository
    ws = await workspaces.prepare(p, "job-1", None, token=None)
    assert (ws.path / ".github" / "workflows" / "ci.yml").read_text() == "on: push\n"
    assert (ws.path / "run.sh").stat().st_mode & 0o111
    assert git("log", "--format=%s", cwd=ws.path).strip() == "Create fresh from template"
    (ws.path / "README.md").write_text("# changed\n")
    pushed = await workspaces.push(p, ws, "agentd/job-1", "msg", token=None)
    origin = workspaces.git_dir / "fresh" / "origin.git"
    assert rev(origin, "refs/heads/agentd/job-1") == pushed.commit


async def test_a_template_seeds_an_empty_remote_repository(tmp_path: Path, workspaces: GitWorkspaces) -> None:
    bare = tmp_path / "empty.git"
    git("init", "-q", "--bare", str(bare))
    p = project(bare.as_uri(), default_ref="trunk")
    assert await workspaces.seed(p, {"README.md": b"# seeded\n"}) is True
    assert git("show", "trunk:README.md", cwd=bare) == "# seeded\n"
    remote = make_remote(tmp_path / "r")
    assert await workspaces.seed(project(remote.as_uri()), {"README.md": b"x"}) is False


async def test_a_private_repository_over_http_needs_the_token(
    tmp_path: Path, workspaces: GitWorkspaces
) -> None:
    root = tmp_path / "srv"
    make_remote(root, "private.git")
    with serve_git(root, TOKEN) as server:
        p = project(server.url("private.git"), credentials="GIT_TOKEN")
        with pytest.raises(WorkspaceFailed) as e:
            await workspaces.prepare(p, "job-0", None, token=None)
        assert e.value.retryable is False and TOKEN not in e.value.message
        with pytest.raises(WorkspaceFailed) as e:
            await workspaces.prepare(p, "job-0", None, token="wrong-token-123456")
        assert "wrong-token" not in e.value.message

        ws = await workspaces.prepare(p, "job-1", "main", token=TOKEN)
        assert (ws.path / "README.md").read_text() == "# demo\n"
        assert "x-access-token" in server.users
        (ws.path / "README.md").write_text("# private change\n")
        pushed = await workspaces.push(p, ws, "agentd/job-1", "msg", token=TOKEN)
        assert rev(root / "private.git", "refs/heads/agentd/job-1") == pushed.commit
    # The token is nowhere on disk: not in the mirror, not in the job's tree, not in any config.
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


async def test_the_token_never_reaches_a_command_line(tmp_path: Path, workspaces: GitWorkspaces) -> None:
    """While git fetches, no process of this user shows the token in its argv."""
    root = tmp_path / "srv"
    make_remote(root, "private.git")
    seen: list[str] = []
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            ps = ["ps", "-eo", "args"]
            out = await asyncio.to_thread(subprocess.run, ps, capture_output=True, text=True, check=False)
            seen.append(out.stdout)
            await asyncio.sleep(0.01)

    with serve_git(root, TOKEN) as server:
        watcher = asyncio.create_task(watch())
        p = project(server.url("private.git"), credentials="GIT_TOKEN")
        for i in range(3):
            await workspaces.prepare(p, f"job-{i}", None, token=TOKEN)
        stop.set()
        await watcher
    assert seen and not any(TOKEN in s for s in seen)


@pytest.mark.skipif(probe()[0] is None, reason="bubblewrap cannot start a sandbox on this machine")
async def test_in_the_jail_the_agent_uses_git_in_its_tree_but_cannot_touch_the_mirror(
    remote: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    workspaces = GitWorkspaces.in_data_dir(data)
    ws = await workspaces.prepare(project(remote.as_uri()), "job-1", "main", token=None)
    trees, objects = job_tree_mounts(data, "demo")
    assert ws.path.parent == trees and objects.is_dir()
    sandbox = Sandbox.start("bwrap", hide=(data,))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "GIT_CONFIG_NOSYSTEM": "1"}
    script = (
        "git log --format=%s -1 && echo change >> README.md && git commit -qam mine && git log --format=%s -1"
        f" && (touch {objects}/x 2>/dev/null && echo WROTE || echo READONLY)"
    )

    def run(extra_ro: tuple[Path, ...]) -> subprocess.CompletedProcess[str]:
        jail = Jail(workspace=ws.path, home=tmp_path / "home", extra_ro=extra_ro)
        argv, jenv = sandbox.wrap(["/bin/sh", "-c", script], env, jail)
        return subprocess.run(argv, env=jenv, capture_output=True, text=True, timeout=60, check=False)

    ok = run((objects,))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["second", "mine", "READONLY"]
    without = run(())  # the mirror's objects hidden: the tree's git cannot read its history
    assert without.returncode != 0
