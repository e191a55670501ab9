"""The in-memory SecretStore keeps the port's rules (the SQL stores pass the same in the contract suite)."""

from __future__ import annotations

import pytest

from agentd.adapters.memory.memory_secret_store import MemorySecretStore
from agentd.domain.errors import SecretsUnavailable

KEY = b"k" * 32


async def test_without_a_master_key_every_call_says_how_to_set_one() -> None:
    store = MemorySecretStore(None)
    calls = [
        store.put(None, "A_NAME", "value-123"),
        store.list(None),
        store.delete("p", "A_NAME"),
        store.resolve("p"),
        store.rotate(KEY),
    ]
    for call in calls:
        with pytest.raises(SecretsUnavailable, match="AGENTD_MASTER_KEY"):
            await call


async def test_project_secrets_win_over_global_ones_of_the_same_name() -> None:
    store = MemorySecretStore(KEY)
    await store.put(None, "TOKEN", "global-token")
    await store.put(None, "SHARED", "shared-value")
    await store.put("p", "TOKEN", "project-token")
    await store.put("q", "ONLY_Q", "q-only-value")
    assert await store.resolve("p") == {"TOKEN": "project-token", "SHARED": "shared-value"}
    assert await store.resolve("z") == {"TOKEN": "global-token", "SHARED": "shared-value"}


async def test_list_is_names_and_times_per_scope_sorted() -> None:
    store = MemorySecretStore(KEY)
    await store.put("p", "ZETA", "value-zeta")
    await store.put("p", "ALPHA", "value-alpha")
    await store.put(None, "GLOBAL_ONE", "value-glob")
    infos = await store.list("p")
    assert [i.name for i in infos] == ["ALPHA", "ZETA"] and {i.project_id for i in infos} == {"p"}
    assert "value" not in "".join(i.model_dump_json() for i in infos)
    assert [i.name for i in await store.list(None)] == ["GLOBAL_ONE"]


async def test_put_replaces_and_delete_says_whether_there_was_one() -> None:
    store = MemorySecretStore(KEY)
    await store.put("p", "TOKEN", "first-value")
    await store.put("p", "TOKEN", "second-value")
    assert await store.resolve("p") == {"TOKEN": "second-value"}
    assert await store.delete("p", "TOKEN") is True
    assert await store.delete("p", "TOKEN") is False
    assert await store.resolve("p") == {}


async def test_rotate_keeps_every_secret() -> None:
    store = MemorySecretStore(KEY)
    await store.put("p", "A_NAME", "value-aaaa")
    await store.put(None, "B_NAME", "value-bbbb")
    assert await store.rotate(b"n" * 32) == 2
    assert await store.resolve("p") == {"A_NAME": "value-aaaa", "B_NAME": "value-bbbb"}


async def test_it_takes_the_key_form_the_real_stores_take() -> None:
    from agentd.domain.errors import InvalidMasterKey

    with pytest.raises(InvalidMasterKey, match="32 bytes"):
        MemorySecretStore(b"k" * 44)  # the base64 text is not the key
    store = MemorySecretStore(KEY)
    with pytest.raises(InvalidMasterKey, match="32 bytes"):
        await store.rotate(b"short")
