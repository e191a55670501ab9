"""The master key and the encryption of stored secrets (agentd/adapters/secret_crypto.py)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from agentd.adapters.secret_crypto import (
    InvalidMasterKey,
    SecretCipher,
    WrongMasterKey,
    new_master_key,
    parse_master_key,
)
from agentd.config import load_master_key, load_settings
from agentd.domain.errors import SecretsUnavailable


def test_a_new_master_key_is_32_bytes_in_url_safe_base64() -> None:
    text = new_master_key()
    assert len(text) == 44 and new_master_key() != text
    assert parse_master_key(text) == base64.urlsafe_b64decode(text) and len(parse_master_key(text)) == 32


def test_a_fernet_key_and_an_unpadded_key_are_accepted() -> None:
    fernet = Fernet.generate_key().decode()
    assert parse_master_key(fernet) == base64.urlsafe_b64decode(fernet)
    assert parse_master_key(fernet.rstrip("=") + "\n") == base64.urlsafe_b64decode(fernet)


@pytest.mark.parametrize("bad", ["", " ", "short", "x" * 44, "+/" * 21 + "A=", new_master_key() + "AAAA"])
def test_a_malformed_key_names_its_source(bad: str) -> None:
    with pytest.raises(InvalidMasterKey, match="AGENTD_MASTER_KEY is not a master key") as info:
        parse_master_key(bad)
    assert isinstance(info.value, SecretsUnavailable) and "new-master-key" in info.value.message
    with pytest.raises(InvalidMasterKey, match="the new key is not a master key"):
        parse_master_key(bad, source="the new key")


def test_one_loader_the_settings_give_the_bytes_the_stores_take(tmp_path: Path) -> None:
    key = new_master_key()
    assert load_master_key(load_settings({"AGENTD_MASTER_KEY": key})) == parse_master_key(key)
    file = tmp_path / "master.key"
    file.write_text(key + "\n")
    raw = load_master_key(load_settings({"AGENTD_MASTER_KEY_FILE": str(file)}))
    assert raw == parse_master_key(key)
    assert raw is not None
    SecretCipher(raw)  # what the stores build from it


def test_encrypt_decrypt_round_trip_with_fresh_nonces() -> None:
    cipher = SecretCipher(parse_master_key(new_master_key()))
    a, b = cipher.encrypt("p", "TOKEN", "s3cret-välue"), cipher.encrypt("p", "TOKEN", "s3cret-välue")
    assert a != b and b"s3cret" not in a
    assert cipher.decrypt("p", "TOKEN", a) == cipher.decrypt("p", "TOKEN", b) == "s3cret-välue"


def test_a_ciphertext_is_bound_to_its_scope_and_name() -> None:
    cipher = SecretCipher(parse_master_key(new_master_key()))
    blob = cipher.encrypt("p", "TOKEN", "s3cret-value")
    for project_id, name in (("q", "TOKEN"), (None, "TOKEN"), ("p", "OTHER")):
        with pytest.raises(WrongMasterKey):
            cipher.decrypt(project_id, name, blob)
    global_blob = cipher.encrypt(None, "TOKEN", "s3cret-value")
    with pytest.raises(WrongMasterKey):
        cipher.decrypt("p", "TOKEN", global_blob)


def test_a_wrong_key_is_a_typed_error() -> None:
    blob = SecretCipher(parse_master_key(new_master_key())).encrypt("p", "TOKEN", "s3cret-value")
    with pytest.raises(WrongMasterKey, match="master key does not decrypt") as info:
        SecretCipher(parse_master_key(new_master_key())).decrypt("p", "TOKEN", blob)
    assert info.value.code == "wrong_master_key" and isinstance(info.value, SecretsUnavailable)
    with pytest.raises(InvalidMasterKey, match="32 bytes"):
        SecretCipher(b"too short")
