"""The SecretStore contract (ports/secret_store.py), run against every adapter (tests/contract/conftest)."""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable

import pytest

from agentd.domain.errors import SecretsUnavailable
from agentd.ports.secret_store import SecretStore
from tests.contract.conftest import SecretStores

KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)
TOKEN = "ghp_project-token-1234"
GLOBAL_TOKEN = "global-token-abcdefgh"


def shared_storage(stores: SecretStores) -> None:
    if stores.at_rest is None:
        pytest.skip(f"the {stores.adapter} adapter keeps nothing at rest to reopen")


async def test_put_then_list_shows_names_and_times_never_values(secret_stores: SecretStores) -> None:
    store = await secret_stores.open(KEY)
    await store.put("p", "ZETA_TOKEN", TOKEN)
    await store.put("p", "ALPHA_TOKEN", "another-value-42")
    listed = await store.list("p")
    assert [s.name for s in listed] == ["ALPHA_TOKEN", "ZETA_TOKEN"]
    assert all(s.project_id == "p" and s.updated_at.tzinfo is not None for s in listed)
    assert TOKEN not in repr(listed) and "another-value-42" not in repr(listed)


async def test_put_replaces_the_value_and_the_update_time(secret_stores: SecretStores) -> None:
    store = await secret_stores.open(KEY)
    await store.put("p", "TOKEN", "first-value-1")
    (first,) = await store.list("p")
    await store.put("p", "TOKEN", "second-value-2")
    (second,) = await store.list("p")
    assert second.updated_at >= first.updated_at
    assert await store.resolve("p") == {"TOKEN": "second-value-2"}


async def test_delete(secret_stores: SecretStores) -> None:
    store = await secret_stores.open(KEY)
    await store.put("p", "TOKEN", TOKEN)
    await store.put(None, "TOKEN", GLOBAL_TOKEN)
    assert await store.delete("p", "TOKEN") is True
    assert await store.delete("p", "TOKEN") is False
    assert await store.delete("p", "NEVER_SET") is False
    assert await store.list("p") == []
    assert await store.resolve("p") == {"TOKEN": GLOBAL_TOKEN}  # the global one of that name stays


async def test_resolve_gives_the_globals_overridden_by_the_projects_own(secret_stores: SecretStores) -> None:
    store = await secret_stores.open(KEY)
    await store.put(None, "SHARED", GLOBAL_TOKEN)
    await store.put(None, "ONLY_GLOBAL", "global-only-value")
    await store.put("p", "SHARED", TOKEN)
    await store.put("p", "ONLY_P", "project-only-value")
    await store.put("q", "ONLY_Q", "other-project-value")
    assert await store.resolve("p") == {
        "SHARED": TOKEN,
        "ONLY_GLOBAL": "global-only-value",
        "ONLY_P": "project-only-value",
    }
    assert await store.resolve("q") == {
        "SHARED": GLOBAL_TOKEN,
        "ONLY_GLOBAL": "global-only-value",
        "ONLY_Q": "other-project-value",
    }
    assert await store.resolve("nobody") == {"SHARED": GLOBAL_TOKEN, "ONLY_GLOBAL": "global-only-value"}


async def test_scopes_are_separate_and_a_project_never_lists_another(secret_stores: SecretStores) -> None:
    store = await secret_stores.open(KEY)
    await store.put(None, "GLOBAL_ONE", GLOBAL_TOKEN)
    await store.put("p", "P_ONE", TOKEN)
    await store.put("q", "Q_ONE", TOKEN)
    assert [(s.name, s.project_id) for s in await store.list(None)] == [("GLOBAL_ONE", None)]
    assert [(s.name, s.project_id) for s in await store.list("p")] == [("P_ONE", "p")]
    assert [(s.name, s.project_id) for s in await store.list("q")] == [("Q_ONE", "q")]
    assert await store.delete(None, "P_ONE") is False  # a project's secret is not the global scope's
    assert await store.delete("q", "P_ONE") is False
    assert [s.name for s in await store.list("p")] == ["P_ONE"]


async def test_values_at_rest_are_not_in_clear(secret_stores: SecretStores) -> None:
    shared_storage(secret_stores)
    assert secret_stores.at_rest is not None
    store = await secret_stores.open(KEY)
    await store.put("p", "TOKEN", TOKEN)
    await store.put(None, "TOKEN", TOKEN)  # the same value twice: two different ciphertexts
    stored = secret_stores.at_rest()
    assert len(stored) == 2 and stored[0] != stored[1]
    for blob in stored:
        for form in (TOKEN.encode(), base64.b64encode(TOKEN.encode()), TOKEN.encode("utf-16-le")):
            assert form not in blob


async def test_a_wrong_master_key_is_a_typed_error(secret_stores: SecretStores) -> None:
    shared_storage(secret_stores)
    await (await secret_stores.open(KEY)).put("p", "TOKEN", TOKEN)
    wrong = await secret_stores.open(OTHER_KEY)
    with pytest.raises(SecretsUnavailable, match="master key does not decrypt") as info:
        await wrong.resolve("p")
    assert info.value.code == "wrong_master_key"
    with pytest.raises(SecretsUnavailable):
        await wrong.put("p", "OTHER", "would-mix-two-keys")  # refused: one store, one key
    with pytest.raises(SecretsUnavailable):
        await wrong.list("p")
    assert await (await secret_stores.open(KEY)).resolve("p") == {"TOKEN": TOKEN}


async def test_rotate_re_encrypts_everything_under_the_new_key(secret_stores: SecretStores) -> None:
    store = await secret_stores.open(KEY)
    await store.put(None, "GLOBAL_ONE", GLOBAL_TOKEN)
    await store.put("p", "P_ONE", TOKEN)
    before = secret_stores.at_rest() if secret_stores.at_rest else None
    assert await store.rotate(OTHER_KEY) == 2
    assert await store.resolve("p") == {"GLOBAL_ONE": GLOBAL_TOKEN, "P_ONE": TOKEN}  # the new key in use
    await store.put("p", "AFTER", "written-after-rotation")
    if secret_stores.at_rest is not None:
        after = secret_stores.at_rest()
        assert before is not None and not set(before) & set(after)
        reopened = await secret_stores.open(OTHER_KEY)
        assert await reopened.resolve("p") == {
            "GLOBAL_ONE": GLOBAL_TOKEN,
            "P_ONE": TOKEN,
            "AFTER": "written-after-rotation",
        }
        with pytest.raises(SecretsUnavailable, match="master key does not decrypt"):
            await (await secret_stores.open(KEY)).resolve("p")


async def test_rotate_with_the_wrong_current_key_changes_nothing(secret_stores: SecretStores) -> None:
    shared_storage(secret_stores)
    assert secret_stores.at_rest is not None
    await (await secret_stores.open(KEY)).put("p", "TOKEN", TOKEN)
    before = secret_stores.at_rest()
    with pytest.raises(SecretsUnavailable):
        await (await secret_stores.open(OTHER_KEY)).rotate(os.urandom(32))
    assert secret_stores.at_rest() == before


async def test_without_a_master_key_every_call_is_secrets_unavailable(secret_stores: SecretStores) -> None:
    store: SecretStore = await secret_stores.open(None)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.put("p", "TOKEN", TOKEN),
        lambda: store.list("p"),
        lambda: store.list(None),
        lambda: store.delete("p", "TOKEN"),
        lambda: store.resolve("p"),
        lambda: store.rotate(KEY),
    ]
    for call in calls:
        with pytest.raises(SecretsUnavailable, match="AGENTD_MASTER_KEY"):
            await call()
