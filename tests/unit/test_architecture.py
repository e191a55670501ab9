"""The dependency rule, checked: entrypoints → services → ports → domain; adapters never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "agentd"
SHARED = {"agentd", "agentd.sse", "agentd.config"}  # cross-cutting modules any adapter may use
# Support modules every CLI-driving adapter uses (the agent process, the sandbox); they import no adapter.
ADAPTER_SUPPORT = {"agentd.adapters.agent_process", "agentd.adapters.sandbox"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentd"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("agentd"))
    return out


def modules(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


@pytest.mark.parametrize("path", modules("domain"), ids=str)
def test_domain_is_pure(path: Path) -> None:
    bad = {m for m in imports_of(path) if not m.startswith("agentd.domain")}
    assert not bad, f"{path.name} imports {bad}"
    src = path.read_text()
    for lib in ("aiohttp", "psycopg", "sqlite3", "structlog"):
        assert f"import {lib}" not in src, f"{path.name} uses {lib}"


@pytest.mark.parametrize("path", modules("ports"), ids=str)
def test_ports_depend_only_on_domain(path: Path) -> None:
    bad = {m for m in imports_of(path) if not m.startswith(("agentd.domain", "agentd.ports"))}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", modules("services"), ids=str)
def test_services_do_not_know_adapters(path: Path) -> None:
    bad = {m for m in imports_of(path) if m.startswith(("agentd.adapters", "agentd.bootstrap", "agentd.cli"))}
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", modules("adapters"), ids=str)
def test_adapters_do_not_import_each_other(path: Path) -> None:
    own = path.relative_to(PKG / "adapters").with_suffix("").parts[0]
    allowed = ("agentd.domain", "agentd.ports", f"agentd.adapters.{own}")
    extra = ("agentd.services",) if own == "http" else ()  # the API drives the use cases
    bad = {
        m for m in imports_of(path) if not m.startswith(allowed + extra) and m not in SHARED | ADAPTER_SUPPORT
    }
    assert not bad, f"{path} imports {bad}"
