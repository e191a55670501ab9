"""Projects: a git repository (or a template) that jobs run on, and the templates projects start from.

A project is optional: a job for a project that was never created runs in a plain workspace, as before.
A project with a git URL (or made from a template, which gives it a local repository) runs each job in its
own working tree at the job's `ref`, and records the job's changes as a patch.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentd.domain import errors
from agentd.domain.models import validate_project_id, validate_ref
from agentd.domain.secrets import SECRET_NAME_RE

MAX_RUNNING_LIMIT = 100
MAX_DESCRIPTION = 2000
GIT_SCHEMES = ("https", "http", "ssh", "git", "file")
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^/\\].*$")  # git@github.com:org/repo.git
VARIABLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def validate_git_url(url: str) -> str:
    """A repository URL git may fetch from: https, http, ssh, git, file or `user@host:path`. Never one that
    carries a password (credentials come from the secret store) and never another transport (`ext::` runs
    commands)."""
    if not isinstance(url, str) or not url or len(url) > 2048 or url.startswith("-") or url != url.strip():
        raise errors.InvalidProject("git.url must be a repository URL, e.g. https://github.com/org/repo.git")
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise errors.InvalidProject("git.url must not contain control characters")
    if _SCP_LIKE.match(url):
        return url
    parts = urlsplit(url)
    if parts.scheme not in GIT_SCHEMES:
        raise errors.InvalidProject(
            f"git.url scheme {parts.scheme or '(none)'!r} is not supported; use one of "
            f"{', '.join(GIT_SCHEMES)} or user@host:path"
        )
    if parts.password is not None:
        raise errors.InvalidProject(
            "git.url must not contain a password or token: store the token as a secret "
            "(PUT /projects/{project_id}/secrets/{name}) and name it in git.credentials"
        )
    if parts.scheme != "file" and not parts.hostname:
        raise errors.InvalidProject(f"git.url {url!r} has no host")
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise errors.InvalidProject("a file:// git.url needs an absolute path, e.g. file:///srv/git/repo.git")
    return url


def redact_url(url: str) -> str:
    """The URL without any user information, for logs and messages."""
    parts = urlsplit(url)
    if parts.scheme and parts.netloc and "@" in parts.netloc:
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
    return url


class GitSource(BaseModel):
    """Where a project's code lives. `credentials` names a secret (of the project, or a global one) that
    holds a token git uses for this URL (as the password of user `x-access-token`, or the URL's user)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    default_ref: str | None = None  # None: the repository's default branch (its HEAD)
    credentials: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return validate_git_url(v)

    @field_validator("default_ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return None if v is None else validate_ref(v, "git.default_ref")

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, v: str | None) -> str | None:
        if v is not None and not SECRET_NAME_RE.fullmatch(v):
            raise errors.InvalidProject(
                f"git.credentials {v!r} must name a secret, e.g. GITHUB_TOKEN (A-Z, 0-9, '_')"
            )
        return v


class ProjectSpec(BaseModel):
    """The body of PUT /projects/{project_id}."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    git: GitSource | None = None
    template: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)  # the template's variables
    description: str | None = None
    max_running: int = 1

    @field_validator("max_running")
    @classmethod
    def _max_running(cls, v: int) -> int:
        if not 1 <= v <= MAX_RUNNING_LIMIT:
            raise errors.InvalidProject(f"max_running must be between 1 and {MAX_RUNNING_LIMIT}, got {v}")
        return v

    @model_validator(mode="after")
    def _parallel_needs_a_repository(self) -> ProjectSpec:
        if self.max_running > 1 and self.git is None and self.template is None:
            raise errors.InvalidProject(
                "max_running above 1 needs a git repository or a template: without one, the jobs of a "
                "project share one workspace and must run one at a time"
            )
        return self

    @field_validator("description")
    @classmethod
    def _description(cls, v: str | None) -> str | None:
        if v is not None and len(v) > MAX_DESCRIPTION:
            raise errors.InvalidProject(f"description is longer than {MAX_DESCRIPTION} characters")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None and not TEMPLATE_NAME_RE.match(v):
            raise errors.InvalidProject(f"template {v!r} is not a template name (a-z, 0-9, '-', '_')")
        return v

    @field_validator("variables")
    @classmethod
    def _variables(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not VARIABLE_NAME_RE.match(name):
                raise errors.InvalidProject(f"variables: {name!r} is not a variable name (a-z, 0-9, '_')")
        return v


TEMPLATE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class Project(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    git: GitSource | None = None
    template: str | None = None
    variables: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    max_running: int = 1
    created_at: datetime
    updated_at: datetime

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return validate_project_id(v)

    @property
    def has_repository(self) -> bool:
        """Jobs run in a git working tree: the project has a URL, or a local repository from its template."""
        return self.git is not None or self.template is not None

    def spec(self) -> ProjectSpec:
        return ProjectSpec(
            git=self.git,
            template=self.template,
            variables=self.variables,
            description=self.description,
            max_running=self.max_running,
        )

    def public(self) -> dict[str, Any]:
        """The JSON shape the API returns (the credentials are a secret's name, never a value)."""
        return {
            "project_id": self.id,
            "git": self.git.model_dump(mode="json") if self.git else None,
            "template": self.template,
            "variables": dict(self.variables),
            "description": self.description,
            "max_running": self.max_running,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class TemplateVariable(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    default: str | None = None  # None: required

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not VARIABLE_NAME_RE.match(v):
            raise ValueError(f"variable name {v!r} must match {VARIABLE_NAME_RE.pattern}")
        return v


class TemplateInfo(BaseModel):
    """A template's manifest (`template.toml`): what GET /templates lists."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    variables: tuple[TemplateVariable, ...] = ()

    def values(self, given: dict[str, str], project_id: str) -> dict[str, str]:
        """The variables to render with: the given ones over the defaults, plus `project_id`."""
        known = {v.name for v in self.variables} | {"project_id"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise errors.InvalidProject(
                f"template {self.name!r} has no variable(s) {', '.join(unknown)}; "
                f"it has: {', '.join(sorted(known))}"
            )
        out = {"project_id": project_id}
        for var in self.variables:
            value = given.get(var.name, var.default)
            if value is None:
                raise errors.InvalidProject(
                    f"template {self.name!r} needs variables.{var.name} ({var.description or 'no default'})"
                )
            out[var.name] = value
        return out
