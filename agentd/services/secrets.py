"""Use cases for secrets: set, list (names only) and delete, per project or global."""

from __future__ import annotations

import structlog

from agentd.domain.errors import SecretNotFound
from agentd.domain.models import validate_project_id
from agentd.domain.secrets import SecretInfo, validate_secret_name, validate_secret_value
from agentd.ports.secret_store import SecretStore

log = structlog.get_logger(__name__)


def _scope(project_id: str | None) -> str:
    return f"project {project_id!r}" if project_id is not None else "the global scope"


class SecretService:
    """`project_id=None` is the global scope: secrets every project's runs get (its own win by name)."""

    def __init__(self, store: SecretStore) -> None:
        self.store = store

    async def put(self, project_id: str | None, name: str, value: object) -> None:
        if project_id is not None:
            validate_project_id(project_id)
        validate_secret_name(name)
        await self.store.put(project_id, name, validate_secret_value(value))
        log.info("secret.set", project_id=project_id, name=name)  # the name only, never the value

    async def list(self, project_id: str | None) -> list[SecretInfo]:
        if project_id is not None:
            validate_project_id(project_id)
        return await self.store.list(project_id)

    async def delete(self, project_id: str | None, name: str) -> None:
        if project_id is not None:
            validate_project_id(project_id)
        validate_secret_name(name)
        if not await self.store.delete(project_id, name):
            raise SecretNotFound(f"no secret {name} in {_scope(project_id)}")
        log.info("secret.deleted", project_id=project_id, name=name)
