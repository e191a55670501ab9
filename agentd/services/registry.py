"""The provider registry: name → CodeAgent. The first provider registered is the default.

Filled once by the composition root before anything runs, then only read: no lock needed.
"""

from __future__ import annotations

from agentd.domain.errors import UnknownProvider
from agentd.ports.code_agent import CodeAgent


class ProviderRegistry:
    def __init__(self) -> None:
        self._agents: dict[str, CodeAgent] = {}

    def register(self, agent: CodeAgent, *, name: str | None = None) -> None:
        key = name or agent.name
        if key in self._agents:
            raise ValueError(f"provider {key!r} is already registered")
        self._agents[key] = agent

    @property
    def default(self) -> str:
        if not self._agents:
            raise UnknownProvider("no provider is registered")
        return next(iter(self._agents))

    def names(self) -> list[str]:
        return list(self._agents)

    def resolve(self, name: str | None) -> str:
        """The provider name a request will use (its own, or the default); UnknownProvider if unknown."""
        if name is None:
            return self.default
        self.get(name)
        return name

    def get(self, name: str | None = None) -> CodeAgent:
        agent = self._agents.get(name if name is not None else self.default)
        if agent is None:
            known = ", ".join(self._agents) or "none"
            raise UnknownProvider(f"unknown provider {name!r}; known providers: {known}", known=known)
        return agent

    def items(self) -> list[tuple[str, CodeAgent]]:
        return list(self._agents.items())
