"""The dependency rule, checked by import-linter (contracts in pyproject.toml, `[tool.importlinter]`).

`lint-imports` runs in scripts/test on the real tree; here each contract is shown to catch a planted
violation, on a copy of the package, so a contract that silently stopped checking fails this test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = [
    sys.executable,
    "-c",
    "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
]


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [*LINT, str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(ROOT / "agentd", tree / "agentd", ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def test_real_tree_keeps_every_contract() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


PLANTED = [
    # (file to plant into, line, contract that must break)
    ("domain/models.py", "from aiohttp import web", "The domain and the ports know no framework"),
    ("domain/errors.py", "from psycopg import sql", "The domain and the ports know no framework"),
    ("ports/work_queue.py", "import structlog", "The domain and the ports know no framework"),
    ("domain/ids.py", "from agentd.services import jobs", "Entrypoints, composition root"),
    (
        "adapters/memory/memory_event_stream.py",
        "from agentd import bootstrap",
        "Entrypoints, composition root",
    ),
    ("adapters/embedded/sqlite_work_queue.py", "from ..postgres import database", "Adapter packages do not"),
    ("adapters/http/app.py", "from agentd.adapters.claude_code import protocol", "Adapter packages do not"),
    ("services/jobs.py", "from agentd import adapters", "Entrypoints, composition root"),
    ("services/runner.py", "import psycopg", "Services use ports"),
    ("adapters/memory/memory_event_stream.py", "from agentd import config", "Adapters get their settings"),
]


@pytest.mark.parametrize(("where", "line", "contract"), PLANTED, ids=[f"{w}:{ln}" for w, ln, _ in PLANTED])
def test_planted_violation_is_caught(
    clean_copy: Path, tmp_path: Path, where: str, line: str, contract: str
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(clean_copy, tree)
    target = tree / "agentd" / where
    target.write_text(target.read_text() + f"\n{line}  # planted\n")
    out = lint(tree)
    assert out.returncode != 0, f"planting {line!r} in {where} broke no contract:\n{out.stdout}"
    broken = out.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, out.stdout
