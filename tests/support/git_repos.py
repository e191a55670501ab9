"""Local git repositories for tests: a bare "remote" with a few commits, and helpers to read it back."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

GIT_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "LC_ALL": "C",
}
BINARY = bytes(range(256)) * 8  # not text: git stores it as binary


def git(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, input=stdin, capture_output=True, check=False, timeout=60
    )
    assert out.returncode == 0, f"git {' '.join(args)}: {out.stderr.decode()}"
    return out.stdout.decode(errors="replace")


def make_remote(where: Path, name: str = "repo.git") -> Path:
    """A bare repository with `main` (two commits, a binary file), a branch `feature` and a tag `v1`."""
    work = where / f"{name}-work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    (work / "README.md").write_text("# demo\n")
    (work / "src").mkdir()
    (work / "src" / "app.py").write_text("def answer():\n    return 41\n")
    (work / "old_name.txt").write_text("keep me\nsame\ncontent\n")
    (work / "remove_me.txt").write_text("bye\n")
    (work / "logo.bin").write_bytes(BINARY)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("tag", "v1", cwd=work)
    (work / "CHANGES.md").write_text("- second commit\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "second", cwd=work)
    git("checkout", "-q", "-b", "feature", cwd=work)
    (work / "feature.txt").write_text("feature work\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "feature", cwd=work)
    git("checkout", "-q", "main", cwd=work)
    bare = where / name
    git("clone", "-q", "--bare", str(work), str(bare))
    return bare


def rev(repo: Path, ref: str) -> str:
    return git("rev-parse", ref, cwd=repo).strip()


def checkout(bare: Path, ref: str, dest: Path) -> Path:
    """A fresh working copy of `bare` at `ref` (to apply a patch to)."""
    git("clone", "-q", str(bare), str(dest))
    git("checkout", "-q", "--detach", rev(bare, ref), cwd=dest)
    return dest
