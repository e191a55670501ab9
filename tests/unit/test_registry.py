from __future__ import annotations

import pytest

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.domain.errors import UnknownProvider
from agentd.services.registry import ProviderRegistry


def test_first_registered_is_default() -> None:
    reg = ProviderRegistry()
    a, b = ScriptedCodeAgent("alpha"), ScriptedCodeAgent("beta")
    reg.register(a)
    reg.register(b)
    assert reg.default == "alpha"
    assert reg.get() is a and reg.get(None) is a
    assert reg.get("beta") is b
    assert reg.resolve(None) == "alpha" and reg.resolve("beta") == "beta"
    assert reg.names() == ["alpha", "beta"]


def test_unknown_provider_lists_the_known_ones() -> None:
    reg = ProviderRegistry()
    reg.register(ScriptedCodeAgent("alpha"))
    reg.register(ScriptedCodeAgent("beta"))
    with pytest.raises(UnknownProvider, match=r"'gamma'.*alpha, beta"):
        reg.get("gamma")
    with pytest.raises(UnknownProvider):
        reg.resolve("gamma")


def test_empty_registry_has_no_default() -> None:
    with pytest.raises(UnknownProvider, match="no provider"):
        _ = ProviderRegistry().default


def test_duplicate_names_are_refused() -> None:
    reg = ProviderRegistry()
    reg.register(ScriptedCodeAgent("alpha"))
    with pytest.raises(ValueError, match="already registered"):
        reg.register(ScriptedCodeAgent("alpha"))
