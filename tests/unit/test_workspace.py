"""`files[].path` stays inside the project's workspace after symlinks: at submission and when the OpenCode
adapter reads the file (a link can change between the two)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.adapters.opencode.prompt import file_part
from agentd.domain.errors import InvalidRequest
from agentd.domain.models import PromptFile
from agentd.domain.workspace import workspace_path


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_text("mine")
    (tmp_path / "secret.txt").write_text("not mine")
    (root / "out").symlink_to(tmp_path / "secret.txt")
    (root / "outdir").symlink_to(tmp_path)
    (root / "in").symlink_to(root / "sub" / "a.txt")
    return root


def test_paths_inside_resolve(ws: Path) -> None:
    assert workspace_path(ws, "sub/a.txt") == (ws / "sub" / "a.txt").resolve()
    assert workspace_path(ws, "in") == (ws / "sub" / "a.txt").resolve()  # a link that stays inside
    assert workspace_path(ws, "not-yet-there.txt") == ws.resolve() / "not-yet-there.txt"


@pytest.mark.parametrize("path", ["out", "outdir/secret.txt", "../secret.txt", "/etc/passwd", "", "a\0b"])
def test_paths_that_leave_are_refused(ws: Path, path: str) -> None:
    with pytest.raises(InvalidRequest, match="workspace"):
        workspace_path(ws, path)


def test_the_opencode_adapter_reads_through_the_same_check(ws: Path) -> None:
    assert file_part(PromptFile(path="sub/a.txt"), ws)["url"] == (ws / "sub" / "a.txt").resolve().as_uri()
    with pytest.raises(InvalidRequest, match="outside the project workspace"):
        file_part(PromptFile(path="out"), ws)
