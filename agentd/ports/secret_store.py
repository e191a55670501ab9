"""The SecretStore port: project and global secrets, encrypted at rest, handed to runs as environment."""

from __future__ import annotations

from typing import Protocol

from agentd.domain.secrets import SecretInfo


class SecretStore(Protocol):
    """Every adapter passes tests/contract/test_secret_store.py.

    `project_id=None` means the global scope (secrets every project gets). Names and values are validated
    by the caller with `agentd.domain.secrets`. Values are stored encrypted under the master key the
    adapter was built with; nothing but `resolve` ever returns a value.

    Optional, for storage that reads it with a job's claim (PostgreSQL with the run journal):
    `claimed_without_secrets(project_id) -> bool`, True (once) when the claim of this process's latest job of
    the project saw no secret its run would get, so that run needs no `resolve` (agentd.services.runner).
    """

    async def put(self, project_id: str | None, name: str, value: str) -> None:
        """Create or replace one secret."""
        ...

    async def list(self, project_id: str | None) -> list[SecretInfo]:
        """The secrets of one scope (names and update times only), sorted by name."""
        ...

    async def delete(self, project_id: str | None, name: str) -> bool:
        """False when there was no such secret."""
        ...

    async def resolve(self, project_id: str) -> dict[str, str]:
        """What a run of this project gets: the global secrets, overridden by the project's own."""
        ...

    async def rotate(self, new_master_key: bytes) -> int:
        """Re-encrypt every secret under a new master key (in one transaction); returns how many."""
        ...
