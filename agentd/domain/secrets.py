"""Secrets handed to runs: which names and values are allowed.

A run gets its project's secrets (over the global ones of the same name) as environment variables. The
names are environment variable names; names that would change how the run itself works are refused.
"""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from agentd.domain import errors

SECRET_NAME_RE = re.compile(r"[A-Z_][A-Z0-9_]{0,127}")
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
