"""Encryption of stored secrets: AES-256-GCM under the master key, bound to the secret's scope and name.

Why AES-GCM and not Fernet: GCM authenticates associated data, so each ciphertext is bound to the scope and
name it was stored under (a ciphertext copied to another row, or another project, does not decrypt), and
the whole 32-byte key is the AES-256 key (Fernet splits it into a 128-bit AES key and a MAC key, and has no
associated data). The master key has the same form as a Fernet key (32 random bytes, url-safe base64), so
`Fernet.generate_key()` output works too.

Stored form: version byte 0x01 | 12-byte random nonce | ciphertext with its 16-byte tag.
"""

from __future__ import annotations

import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agentd.domain import errors
from agentd.domain.errors import InvalidMasterKey
from agentd.domain.secrets import MASTER_KEY_BYTES, check_master_key_bytes, new_master_key, parse_master_key

KEY_BYTES = MASTER_KEY_BYTES
_VERSION = b"\x01"
_NONCE_BYTES = 12

__all__ = [
    "GLOBAL_SCOPE",
    "KEY_BYTES",
    "InvalidMasterKey",
    "SecretCipher",
    "WrongMasterKey",
    "new_master_key",
    "parse_master_key",
    "project_of",
    "scope_of",
]


class WrongMasterKey(errors.SecretsUnavailable):
    """The master key does not decrypt the stored secrets: start agentd with the key they were stored under
    (after `agentd secrets rotate`, the new one)."""

    code = "wrong_master_key"


def _associated_data(project_id: str | None, name: str) -> bytes:
    return b"agentd-secret\x00" + json.dumps([project_id, name]).encode()


class SecretCipher:
    """Encrypts and decrypts secret values under one master key."""

    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(check_master_key_bytes(master_key))

    def encrypt(self, project_id: str | None, name: str, value: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), _associated_data(project_id, name))
        return _VERSION + nonce + sealed

    def decrypt(self, project_id: str | None, name: str, blob: bytes) -> str:
        """The value; WrongMasterKey when this key (or this scope and name) did not encrypt `blob`."""
        if blob[:1] != _VERSION:
            raise WrongMasterKey(f"secret {name!r} is stored in an unknown format")
        nonce, sealed = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, _associated_data(project_id, name))
        except InvalidTag:
            raise WrongMasterKey() from None
        return plain.decode("utf-8")


GLOBAL_SCOPE = ""  # how stores keep the global scope (project ids are never empty)


def scope_of(project_id: str | None) -> str:
    return GLOBAL_SCOPE if project_id is None else project_id


def project_of(scope: str) -> str | None:
    return None if scope == GLOBAL_SCOPE else scope
