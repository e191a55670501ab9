"""The composition root puts secrets and keys in the queue's database, for `agentd serve` and for the
`agentd secrets` / `agentd keys` commands alike: what a command writes, a running server reads."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters.embedded.sqlite_key_store import SqliteKeyStore
from agentd.adapters.embedded.sqlite_secret_store import SqliteSecretStore
from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.adapters.postgres import PostgresKeyStore, PostgresSecretStore
from agentd.bootstrap import build, key_service, open_key_store, open_secret_store
from agentd.config import Settings
from agentd.services.secrets import SecretService
from tests.support.postgres import pg_dsn, pg_template  # noqa: F401 - fixtures

KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("pg_dsn") if request.param == "postgres" else None
    return Settings(data_dir=tmp_path / "data", master_key=KEY, database_url=url, providers="scripted")


async def test_a_command_and_a_server_share_secrets_and_keys(settings: Settings) -> None:
    container = await build(settings, agents=[ScriptedCodeAgent("scripted")], with_workers=False)
    try:
        store: Any = container.secrets.store
        keys: Any = container.keys.store
        want = (
            (PostgresSecretStore, PostgresKeyStore)
            if settings.database_url
            else (SqliteSecretStore, SqliteKeyStore)
        )
        assert isinstance(store, want[0]) and isinstance(keys, want[1])
        queue: Any = container.queue
        assert store.db is queue.db and keys.db is queue.db  # one database, one pool
        # as `agentd secrets set` / `agentd keys create` would, in another process
        cli_store = await open_secret_store(settings)
        await SecretService(cli_store).put("web", "GH_TOKEN", "from-the-command")
        await cli_store.close()  # type: ignore[attr-defined]
        cli_keys = key_service(settings, await open_key_store(settings))
        _, token = await cli_keys.create(name="ci", admin=False, projects=["web"], read_only=False)
        await cli_keys.store.close()  # type: ignore[attr-defined]
        assert await container.secrets.store.resolve("web") == {"GH_TOKEN": "from-the-command"}
        who = await container.keys.authenticate(token)
        assert who.projects == {"web"} and who.write
    finally:
        await container.stop()
