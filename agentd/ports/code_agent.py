"""The CodeAgent port: what every provider adapter (Claude Code, OpenCode, fakes) implements."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol

from agentd.domain.models import AgentEvent, AgentRequest, Availability, Capabilities


class CodeAgent(Protocol):
    """Runs one request and streams what happens.

    `execute` yields provider-neutral events; its LAST event is always exactly one `DoneEvent` (also when
    the run fails, times out or is cancelled). It must not raise for run failures: those become a done
    event with status failed. When the iterator is closed early, the adapter must stop the run and leave
    no process behind.
    """

    name: str

    @abstractmethod
    def capabilities(self) -> Capabilities: ...

    @abstractmethod
    async def is_available(self) -> Availability: ...

    @abstractmethod
    def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        """Run `request`. `env` holds the run's secrets: extra environment variables for the agent
        process only (never logged, stored or put on a command line). `workdir` is where the agent works
        when the runner chose a directory for this run (the job's git working tree); None means the
        project's own workspace, as the adapter computes it."""
        ...

    @abstractmethod
    async def cancel(self, run_id: str) -> bool:
        """Ask the run to stop; its iterator then ends with a done event (status cancelled).

        Returns False when no such run is active. Safe to call twice and concurrently.
        """
        ...

    async def close(self) -> None:
        """Release long-lived resources (servers, sessions). Default: nothing."""
        return None
