"""`agentd secrets …`: administrative commands that talk to the store directly."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from pathlib import Path

import pytest

from agentd.adapters.memory.memory_secret_store import MemorySecretStore
from agentd.cli import main
from agentd.config import Settings, check_master_key, load_master_key

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()
NEW_KEY = base64.urlsafe_b64encode(bytes(range(32, 64))).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer AGENTD_* variables; the tests' own logging stays as it is."""
    for name in [n for n in os.environ if n.startswith("AGENTD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("agentd.logging.configure", lambda *a, **kw: None)


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> MemorySecretStore:
    """One store for every command of a test (the real stores live in the queue's database)."""
    monkeypatch.setenv("AGENTD_MASTER_KEY", KEY)
    shared = MemorySecretStore(KEY.encode())

    async def open_store(settings: Settings) -> MemorySecretStore:
        assert load_master_key(settings) == KEY.encode()  # built from the settings, like the real one
        return shared

    monkeypatch.setattr("agentd.bootstrap.open_secret_store", open_store)
    return shared


def test_new_master_key_is_32_random_bytes_in_urlsafe_base64(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secrets", "new-master-key"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["secrets", "new-master-key"]) == 0
    second = capsys.readouterr().out.strip()
    assert first != second and len(base64.urlsafe_b64decode(first)) == 32 and len(first) == 44
    check_master_key(first)


def test_set_list_delete_with_and_without_project(
    store: MemorySecretStore, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["secrets", "set", "GITHUB_TOKEN", "--project", "web", "--value", "ghp_fromTheFlag"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("global-from-stdin\n"))
    assert main(["secrets", "set", "NPM_TOKEN"]) == 0  # no --value: stdin (one trailing newline dropped)
    capsys.readouterr()
    assert main(["secrets", "list", "--project", "web"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("GITHUB_TOKEN\t") and "ghp_" not in out
    assert main(["secrets", "list"]) == 0
    assert capsys.readouterr().out.startswith("NPM_TOKEN\t")

    assert asyncio.run(store.resolve("web")) == {
        "GITHUB_TOKEN": "ghp_fromTheFlag",
        "NPM_TOKEN": "global-from-stdin",
    }
    assert main(["secrets", "delete", "GITHUB_TOKEN", "--project", "web"]) == 0
    assert main(["secrets", "delete", "GITHUB_TOKEN", "--project", "web"]) == 1
    assert "no secret GITHUB_TOKEN in project 'web'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["secrets", "set", "PATH", "--value", "long-enough"], "reserved"),
        (["secrets", "set", "TOKEN", "--value", "short"], "at least 8"),
        (["secrets", "list", "--project", "Bad!"], "invalid project id"),
    ],
)
def test_bad_input_exits_2_with_the_message(
    store: MemorySecretStore, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_rotate_takes_the_new_key_from_the_environment_or_a_file(
    store: MemorySecretStore,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert main(["secrets", "set", "TOKEN", "--value", "value-123456"]) == 0
    assert main(["secrets", "rotate"]) == 2
    assert "set AGENTD_NEW_MASTER_KEY" in capsys.readouterr().err
    monkeypatch.setenv("AGENTD_NEW_MASTER_KEY", "not-a-key")
    assert main(["secrets", "rotate"]) == 2
    assert "AGENTD_NEW_MASTER_KEY: the new key must be 32 bytes" in capsys.readouterr().err
    monkeypatch.setenv("AGENTD_NEW_MASTER_KEY", NEW_KEY)
    assert main(["secrets", "rotate"]) == 0
    out = capsys.readouterr().out
    assert "re-encrypted 1 secret(s)" in out and "set AGENTD_MASTER_KEY" in out and NEW_KEY not in out
    assert store._key == NEW_KEY.encode()
    monkeypatch.delenv("AGENTD_NEW_MASTER_KEY")
    key_file = tmp_path / "new.key"
    key_file.write_text(KEY + "\n")
    assert main(["secrets", "rotate", "--new-key-file", str(key_file)]) == 0
    assert store._key == KEY.encode()


def test_without_a_master_key_it_says_how_to_set_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["secrets", "list"]) == 2
    err = capsys.readouterr().err
    assert "AGENTD_MASTER_KEY" in err and "new-master-key" in err
