"""API keys: who may call agentd, on which projects, reading or also writing.

A key is a random token shown once; only its SHA-256 is stored. A fast hash is the right one here: slow
hashes (bcrypt, argon2) protect guessable passwords; a token of 256 random bits cannot be guessed whatever
the hash costs, and a plain digest lets every request find its key with one indexed lookup.

The token names its key id (`agentd_<key id>_<secret>`), so a refusal can be logged with the id the caller
claimed without logging anything that opens a door.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from agentd.domain import errors
from agentd.domain.models import validate_project_id

KEY_ID_RE = re.compile(r"key_[0-9a-f]{16}")
TOKEN_RE = re.compile(r"agentd_(key_[0-9a-f]{16})_[A-Za-z0-9_-]{43}")
MAX_KEY_NAME = 100
MAX_KEY_PROJECTS = 1000
BOOTSTRAP_KEY_ID = "bootstrap"  # AGENTD_API_KEY
ANONYMOUS_KEY_ID = "anonymous"  # no key configured at all: loopback-only development mode


class KeyAccess(StrEnum):
    read = "read"
    write = "write"


class ApiKey(BaseModel):
    """A stored key (never its token): `admin`, or the `projects` it may see."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    admin: bool
    projects: tuple[str, ...] = ()
    access: KeyAccess
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_key_name(v)

    def public(self) -> dict[str, Any]:
        return {
            "key_id": self.id,
            "name": self.name,
            "scope": "admin" if self.admin else list(self.projects),
            "access": self.access.value,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class Principal:
    """Who a request is: a key's id and what it may do (never the token)."""

    key_id: str
    admin: bool
    projects: frozenset[str] = frozenset()
    write: bool = True
    stream_id: str | None = None  # a stream token: this one stream, read only

    def sees(self, project_id: str) -> bool:
        return self.admin or project_id in self.projects

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        return cls(key.id, key.admin, frozenset(key.projects), key.access == KeyAccess.write)


def new_token() -> tuple[str, str]:
    """(key id, token): the id is public, the token is shown once."""
    key_id = f"key_{secrets.token_hex(8)}"
    return key_id, f"agentd_{key_id}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def claimed_key_id(token: str) -> str | None:
    """The key id a token claims (for the log of a refusal), or None when it is not a token's form."""
    m = TOKEN_RE.fullmatch(token)
    return m.group(1) if m else None


def validate_key_name(name: object) -> str:
    if not isinstance(name, str) or not (0 < len(name) <= MAX_KEY_NAME) or not name.isprintable():
        raise errors.InvalidRequest(f"a key name is 1-{MAX_KEY_NAME} printable characters")
    return name


def validate_key_id(key_id: str) -> str:
    if not KEY_ID_RE.fullmatch(key_id):
        raise errors.KeyNotFound(f"no key {key_id!r}")
    return key_id


def validate_scope(admin: bool, projects: object) -> tuple[str, ...]:
    """The projects of a key: none for an admin key, one or more (distinct, valid ids) otherwise."""
    if not isinstance(projects, list | tuple) or not all(isinstance(p, str) for p in projects):
        raise errors.InvalidRequest("projects must be a list of project ids")
    if admin:
        if projects:
            raise errors.InvalidRequest("a key is either admin or scoped to projects, not both")
        return ()
    if not projects:
        raise errors.InvalidRequest("name the key's scope: admin, or at least one project")
    if len(projects) > MAX_KEY_PROJECTS:
        raise errors.InvalidRequest(f"a key may name at most {MAX_KEY_PROJECTS} projects")
    return tuple(dict.fromkeys(validate_project_id(p) for p in projects))
