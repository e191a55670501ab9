"""The KeyStore contract (ports/key_store.py), run against every adapter (tests/contract/conftest)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta

from agentd.domain.keys import ApiKey, KeyAccess, new_token, token_hash
from tests.contract.conftest import KeyStores

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def a_key(
    *, admin: bool = False, projects: tuple[str, ...] = ("p",), at: datetime = T0
) -> tuple[ApiKey, str]:
    key_id, token = new_token()
    key = ApiKey(
        id=key_id,
        name=f"key for {','.join(projects) or 'admin'}",
        admin=admin,
        projects=() if admin else projects,
        access=KeyAccess.read if projects == ("ro",) else KeyAccess.write,
        created_at=at,
    )
    return key, token


async def test_create_then_find_by_the_hash_of_the_token(key_stores: KeyStores) -> None:
    store = await key_stores.open()
    key, token = a_key(projects=("p", "q"))
    await store.create(key, token_hash(token))
    found = await store.find(token_hash(token))
    assert found == key and found.projects == ("p", "q") and found.access == KeyAccess.write
    assert await store.find(token_hash(token + "x")) is None
    other = await key_stores.open()  # another process on the same database
    if key_stores.at_rest is not None:
        assert await other.find(token_hash(token)) == key


async def test_the_token_is_never_stored(key_stores: KeyStores) -> None:
    store = await key_stores.open()
    key, token = a_key()
    await store.create(key, token_hash(token))
    if key_stores.at_rest is not None:
        stored = key_stores.at_rest()
        secret_part = token.rsplit("_", 1)[1]
        assert token not in stored and secret_part not in stored and token_hash(token) in stored


async def test_list_is_oldest_first_and_shows_scopes(key_stores: KeyStores) -> None:
    store = await key_stores.open()
    admin, t1 = a_key(admin=True, projects=(), at=T0)
    ro, t2 = a_key(projects=("ro",), at=T0 + timedelta(seconds=1))
    await store.create(ro, token_hash(t2))
    await store.create(admin, token_hash(t1))
    listed = await store.list()
    assert [k.id for k in listed] == [admin.id, ro.id]
    assert listed[0].admin and listed[0].projects == () and listed[1].access == KeyAccess.read


async def test_revoke_is_recorded_once_and_unknown_ids_are_none(key_stores: KeyStores) -> None:
    store = await key_stores.open()
    key, token = a_key()
    await store.create(key, token_hash(token))
    assert await store.any_active() is True
    revoked = await store.revoke(key.id, T0 + timedelta(minutes=1))
    assert revoked is not None and revoked.revoked_at == T0 + timedelta(minutes=1)
    again = await store.revoke(key.id, T0 + timedelta(minutes=5))
    assert again is not None and again.revoked_at == T0 + timedelta(minutes=1)
    found = await store.find(token_hash(token))
    assert found is not None and found.revoked_at is not None  # the caller refuses it
    assert await store.revoke("key_0000000000000000", T0) is None
    assert await store.any_active() is False


async def test_touch_records_the_last_use(key_stores: KeyStores) -> None:
    store = await key_stores.open()
    key, token = a_key()
    await store.create(key, token_hash(token))
    assert (await store.list())[0].last_used_at is None
    await store.touch(key.id, T0 + timedelta(hours=1))
    assert (await store.list())[0].last_used_at == T0 + timedelta(hours=1)


async def test_a_server_secret_is_created_once_and_shared(key_stores: KeyStores) -> None:
    store = await key_stores.open()
    other = await key_stores.open()
    first, second = os.urandom(32), os.urandom(32)
    got = await asyncio.gather(store.server_secret("stream", first), other.server_secret("stream", second))
    assert got[0] == got[1] and got[0] in (first, second)
    assert await store.server_secret("stream", os.urandom(32)) == got[0]
    assert await store.server_secret("another", second) == second
