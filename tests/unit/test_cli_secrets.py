"""`agentd secrets …`: administrative commands that talk to the store directly."""

from __future__ import annotations

import asyncio
import base64
import io
import os
from pathlib import Path

import pytest

from agentd.adapters.embedded.sqlite_secret_store import SqliteSecretStore
from agentd.cli import main
from agentd.domain.errors import SecretsUnavailable
from agentd.domain.secrets import parse_master_key

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()
NEW_KEY = base64.urlsafe_b64encode(bytes(range(32, 64))).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer AGENTD_* variables; the tests' own logging stays as it is."""
    for name in [n for n in os.environ if n.startswith("AGENTD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("agentd.logging.configure", lambda *a, **kw: None)


class Store:
    """The store the commands write: the SQLite file of the embedded queue in AGENTD_DATA_DIR."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def resolve(self, project: str, key: str = KEY) -> dict[str, str]:
        async def go() -> dict[str, str]:
            store = SqliteSecretStore(self.path, parse_master_key(key))
            try:
                return await store.resolve(project)
            finally:
                await store.close()

        return asyncio.run(go())


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Store:
    monkeypatch.setenv("AGENTD_MASTER_KEY", KEY)
    monkeypatch.setenv("AGENTD_DATA_DIR", str(tmp_path / "data"))
    return Store(tmp_path / "data" / "queue.sqlite3")


def test_new_master_key_is_32_random_bytes_in_urlsafe_base64(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["secrets", "new-master-key"]) == 0
    first = capsys.readouterr().out.strip()
    assert main(["secrets", "new-master-key"]) == 0
    second = capsys.readouterr().out.strip()
    assert first != second and len(base64.urlsafe_b64decode(first)) == 32 and len(first) == 44
    assert parse_master_key(first) == base64.urlsafe_b64decode(first)


def test_set_list_delete_with_and_without_project(
    store: Store, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
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

    assert store.resolve("web") == {
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
    store: Store, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


def test_rotate_takes_the_new_key_from_the_environment_or_a_file(
    store: Store,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    assert main(["secrets", "set", "TOKEN", "--value", "value-123456"]) == 0
    assert main(["secrets", "rotate"]) == 2
    assert "set AGENTD_NEW_MASTER_KEY" in capsys.readouterr().err
    monkeypatch.setenv("AGENTD_NEW_MASTER_KEY", "not-a-key")
    assert main(["secrets", "rotate"]) == 2
    assert "the new key (AGENTD_NEW_MASTER_KEY) is not a master key" in capsys.readouterr().err
    monkeypatch.setenv("AGENTD_NEW_MASTER_KEY", NEW_KEY)
    assert main(["secrets", "rotate"]) == 0
    out = capsys.readouterr().out
    assert "re-encrypted 1 secret(s)" in out and "set AGENTD_MASTER_KEY" in out and NEW_KEY not in out
    assert store.resolve("p", NEW_KEY) == {"TOKEN": "value-123456"}
    with pytest.raises(SecretsUnavailable, match="master key does not decrypt"):
        store.resolve("p", KEY)
    monkeypatch.setenv("AGENTD_MASTER_KEY", NEW_KEY)
    monkeypatch.delenv("AGENTD_NEW_MASTER_KEY")
    key_file = tmp_path / "new.key"
    key_file.write_text(KEY + "\n")
    assert main(["secrets", "rotate", "--new-key-file", str(key_file)]) == 0
    assert store.resolve("p", KEY) == {"TOKEN": "value-123456"}


def test_without_a_master_key_it_says_how_to_set_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTD_DATA_DIR", str(tmp_path))
    assert main(["secrets", "list"]) == 2
    err = capsys.readouterr().err
    assert "AGENTD_MASTER_KEY" in err and "new-master-key" in err
