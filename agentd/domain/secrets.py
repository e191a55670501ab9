"""Secrets handed to runs: which names and values are allowed.

A run gets its project's secrets (over the global ones of the same name) as environment variables. The
names are environment variable names; names that would change how the run itself works are refused.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from agentd.domain import errors

SECRET_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
MASTER_KEY_BYTES = 32
_MASTER_KEY_TEXT = re.compile(r"[A-Za-z0-9_-]{43}=?")
MIN_SECRET_LEN = 8
MAX_SECRET_LEN = 64 * 1024

# Names a secret may not take: the run's own environment, the loader's and the service's.
RESERVED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "LC_ALL",
        "TERM",
        "TMPDIR",
        "PWD",
        "IS_SANDBOX",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "NODE_OPTIONS",
        "CLAUDE_CONFIG_DIR",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        "XDG_STATE_HOME",
        "XDG_CACHE_HOME",
        "CODEX_HOME",
        "OPENCODE_CONFIG",
        "OPENCODE_CONFIG_DIR",
        "OPENCODE_SERVER_PASSWORD",
        "OPENCODE_SERVER_USERNAME",
    }
)


def validate_secret_name(name: str) -> str:
    if not isinstance(name, str) or not SECRET_NAME_RE.fullmatch(name):
        raise errors.InvalidSecretName(
            f"invalid secret name {name!r}: use an environment variable name, [A-Z_][A-Z0-9_]{{0,127}}"
        )
    if name in RESERVED_NAMES or name.startswith("AGENTD_"):
        raise errors.InvalidSecretName(
            f"secret name {name!r} is reserved: it would change how the run itself works; pick another name"
        )
    return name


def validate_secret_value(value: object) -> str:
    if not isinstance(value, str):
        raise errors.InvalidSecretValue("`value` must be a string")
    if len(value) < MIN_SECRET_LEN:
        raise errors.InvalidSecretValue(
            f"a secret value must be at least {MIN_SECRET_LEN} characters (shorter ones would redact "
            "ordinary words from the run's output)"
        )
    if len(value) > MAX_SECRET_LEN:
        raise errors.InvalidSecretValue(f"a secret value must be at most {MAX_SECRET_LEN} characters")
    if "\0" in value:
        raise errors.InvalidSecretValue("a secret value must not contain U+0000")
    return value


class SecretInfo(BaseModel):
    """What listing secrets shows: never the value."""

    model_config = ConfigDict(frozen=True)

    name: str
    project_id: str | None  # None: a global secret, given to every project
    updated_at: datetime


def new_master_key() -> str:
    """A fresh master key: 32 random bytes, url-safe base64 (44 characters; Fernet.generate_key()'s form)."""
    return base64.urlsafe_b64encode(os.urandom(MASTER_KEY_BYTES)).decode("ascii")


def parse_master_key(text: str, *, source: str = "AGENTD_MASTER_KEY") -> bytes:
    """The 32 key bytes of a master key's text (whitespace around it ignored): the one parser, for the
    settings, `agentd secrets rotate` and the stores. InvalidMasterKey naming `source` otherwise."""
    value = text.strip() if isinstance(text, str) else ""
    if not _MASTER_KEY_TEXT.fullmatch(value):
        raise errors.InvalidMasterKey(
            f"{source} is not a master key: expected 32 bytes in url-safe base64 (44 characters, "
            f"got {len(value)}); create one with `agentd secrets new-master-key`"
        )
    try:
        return base64.urlsafe_b64decode(value if value.endswith("=") else value + "=")
    except (binascii.Error, ValueError) as e:  # pragma: no cover - the pattern above already excludes it
        raise errors.InvalidMasterKey(f"{source} is not valid url-safe base64: {e}") from e


def check_master_key_bytes(key: bytes) -> bytes:
    """A parsed master key (what the stores take): exactly 32 bytes."""
    if not isinstance(key, bytes) or len(key) != MASTER_KEY_BYTES:
        n = len(key) if isinstance(key, bytes) else type(key).__name__
        raise errors.InvalidMasterKey(f"a master key is {MASTER_KEY_BYTES} bytes, got {n}")
    return key
