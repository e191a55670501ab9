"""Encryption of stored secrets: AES-256-GCM under the master key, bound to the secret's scope and name.

Why AES-GCM and not Fernet: GCM authenticates associated data, so each ciphertext is bound to the scope and
name it was stored under (a ciphertext copied to another row, or another project, does not decrypt), and
the whole 32-byte key is the AES-256 key (Fernet splits it into a 128-bit AES key and a MAC key, and has no
associated data). The master key has the same form as a Fernet key (32 random bytes, url-safe base64), so
`Fernet.generate_key()` output works too.

Stored form: version byte 0x01 | 12-byte random nonce | ciphertext with its 16-byte tag.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agentd.domain import errors

MASTER_KEY_ENV = "AGENTD_MASTER_KEY"
MASTER_KEY_FILE_ENV = "AGENTD_MASTER_KEY_FILE"
KEY_BYTES = 32
_VERSION = b"\x01"
_NONCE_BYTES = 12
_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}=?")


class InvalidMasterKey(errors.SecretsUnavailable):
    """The master key is not 32 bytes in url-safe base64: set it to the output of
    `agentd secrets new-master-key`."""

    code = "invalid_master_key"


class WrongMasterKey(errors.SecretsUnavailable):
    """The master key does not decrypt the stored secrets: start agentd with the key they were stored under
    (after `agentd secrets rotate`, the new one)."""

    code = "wrong_master_key"


def new_master_key() -> str:
    """A fresh master key: 32 random bytes, url-safe base64 (44 characters)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def parse_master_key(text: str, *, source: str = MASTER_KEY_ENV) -> bytes:
    """The key bytes of `text` (whitespace around it ignored); InvalidMasterKey naming `source` otherwise."""
    value = text.strip()
    if not _KEY_TEXT.fullmatch(value):
        raise InvalidMasterKey(
            f"{source} is not a master key: expected 32 bytes in url-safe base64 (44 characters, "
            f"got {len(value)}); create one with `agentd secrets new-master-key`"
        )
    try:
        key = base64.urlsafe_b64decode(value if value.endswith("=") else value + "=")
    except (binascii.Error, ValueError) as e:  # pragma: no cover - the pattern above already excludes it
        raise InvalidMasterKey(f"{source} is not valid url-safe base64: {e}") from e
    return key


def load_master_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The master key from AGENTD_MASTER_KEY or the file AGENTD_MASTER_KEY_FILE names; None when neither
    is set (then the secret stores answer SecretsUnavailable). InvalidMasterKey, naming the variable, when
    the value is malformed, the file unreadable, or both are set."""
    env = os.environ if environ is None else environ
    inline, file = env.get(MASTER_KEY_ENV, ""), env.get(MASTER_KEY_FILE_ENV, "")
    if inline and file:
        raise InvalidMasterKey(f"set {MASTER_KEY_ENV} or {MASTER_KEY_FILE_ENV}, not both")
    if inline:
        return parse_master_key(inline, source=MASTER_KEY_ENV)
    if file:
        try:
            text = Path(file).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as e:
            raise InvalidMasterKey(f"{MASTER_KEY_FILE_ENV}={file!r} cannot be read: {e}") from e
        return parse_master_key(text, source=f"the file {MASTER_KEY_FILE_ENV} names ({file})")
    return None


def _associated_data(project_id: str | None, name: str) -> bytes:
    return b"agentd-secret\x00" + json.dumps([project_id, name]).encode()


class SecretCipher:
    """Encrypts and decrypts secret values under one master key."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != KEY_BYTES:
            raise InvalidMasterKey(f"a master key is {KEY_BYTES} bytes, got {len(master_key)}")
        self._aead = AESGCM(master_key)

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
