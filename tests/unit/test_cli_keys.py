"""`agentd keys …`: create (the key once, alone on the last stdout line), list (never the key), revoke."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from agentd.adapters.embedded.sqlite_key_store import SqliteKeyStore
from agentd.cli import main
from agentd.domain.keys import ApiKey, token_hash


@pytest.fixture(autouse=True)
def data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in [n for n in os.environ if n.startswith("AGENTD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr("agentd.logging.configure", lambda *a, **kw: None)
    monkeypatch.setenv("AGENTD_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def stored(data_dir: Path, token: str) -> ApiKey:
    async def go() -> ApiKey | None:
        store = SqliteKeyStore(data_dir / "queue.sqlite3")
        try:
            return await store.find(token_hash(token))
        finally:
            await store.close()

    key = asyncio.run(go())
    assert key is not None
    return key


def test_create_list_revoke(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--name", "ci-web", "--project", "web"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[-1]
    assert token.startswith("agentd_key_") and " " not in token and token not in "\n".join(out[:-1])
    key = stored(data_dir, token)
    assert key is not None and key.projects == ("web",) and key.access == "write"
    assert main(["keys", "create", "--project", "a", "--project", "b", "--read-only"]) == 0
    ro = capsys.readouterr().out.splitlines()[-1]
    ro_key = stored(data_dir, ro)
    assert ro_key.projects == ("a", "b") and ro_key.access == "read"
    assert main(["keys", "create", "--admin"]) == 0
    admin = capsys.readouterr().out.splitlines()[-1]
    assert stored(data_dir, admin).admin is True
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "ci-web\tweb\twrite" in listed and "a,b\tread" in listed and "admin\twrite" in listed
    assert token not in listed and ro not in listed and admin not in listed
    key_id = key.id
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "list"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(key_id)]
    assert "revoked" in line
    assert main(["keys", "revoke", "key_0000000000000000"]) == 1
    assert "no key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["keys", "create"],
        ["keys", "create", "--admin", "--project", "a"],
    ],
)
def test_a_key_needs_exactly_one_scope(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2


def test_a_bad_project_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--project", "Bad!"]) == 2
    assert "invalid project id" in capsys.readouterr().err
