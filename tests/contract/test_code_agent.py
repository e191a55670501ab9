"""The CodeAgent contract (ports/code_agent.py), run against every provider adapter.

Each adapter comes with the prompts that make it answer quickly and run long, so the same assertions
hold for the in-process scripted agent and for the real CLIs/servers behind scripted model servers.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.adapters.opencode import OpenCodeAgent, OpenCodeConfig
from agentd.config import Settings
from agentd.domain.models import AgentEvent, AgentRequest, DoneEvent, TextEvent
from agentd.ports.code_agent import CodeAgent
from tests.conftest import claude_agent, codex_agent, jail_for_tests, tool_path
from tests.support import fake_openai, fake_responses
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_openai import FakeOpenAI
from tests.support.fake_responses import FakeResponses


@dataclass
class Subject:
    agent: CodeAgent
    quick: str  # a prompt that succeeds with some text
    quick_text: str
    slow: str  # a prompt that streams text for a long time
    streaming: bool = True  # what capabilities() says (codex in exec mode: text arrives whole)


ADAPTERS = [
    "scripted",
    pytest.param("claude-code", marks=pytest.mark.e2e),
    pytest.param("opencode", marks=pytest.mark.e2e),
    pytest.param("codex-app-server", marks=pytest.mark.e2e),
    pytest.param("codex-exec", marks=pytest.mark.e2e),
]


@pytest.fixture(params=ADAPTERS)
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    if request.param == "scripted":
        yield Subject(ScriptedCodeAgent(), "hello agent", "hello agent", "sleep:60")
        return
    if request.param == "claude-code":
        binary = tool_path("AGENTD_CLAUDE_BIN", "claude")
        if binary is None:
            pytest.skip("claude CLI not installed (scripts/setup)")
        async with FakeAnthropic() as model:
            agent = claude_agent(Settings(data_dir=tmp_path / "data"), binary, model.base_url)
            yield Subject(
                agent, "SCENARIO:text", "Hello from the fake model.", "SCENARIO:slow delay_ms=100 chunks=300"
            )
            await agent.close()
        return
    if request.param == "opencode":
        binary = tool_path("AGENTD_OPENCODE_BIN", "opencode")
        if binary is None:
            pytest.skip("opencode not installed (scripts/setup)")
        async with FakeOpenAI() as oai:
            env = {"PATH": os.environ.get("PATH", ""), "OPENCODE_CONFIG_CONTENT": json.dumps(oai.config())}
            oc = OpenCodeAgent(
                OpenCodeConfig(
                    data_dir=tmp_path / "data",
                    binary=binary,
                    mode="server",
                    environ=env,
                    sandbox=jail_for_tests(tmp_path / "data"),
                )
            )
            yield Subject(oc, "SCENARIO:text", fake_openai.TEXT_ANSWER, "SCENARIO:slow")
            await oc.close()
        return
    if request.param.startswith("codex-"):
        mode = request.param.removeprefix("codex-")
        codex = request.getfixturevalue("codex_bin")
        async with FakeResponses() as responses:
            cx = codex_agent(Settings(data_dir=tmp_path / "data"), codex, responses.base_url, mode=mode)
            slow = "SCENARIO:slow delay_ms=100 chunks=300"
            yield Subject(cx, "SCENARIO:text", fake_responses.TEXT_ANSWER, slow, streaming=mode != "exec")
            await cx.close()
        return
    raise AssertionError(request.param)  # pragma: no cover


def req(prompt: str, **kw: object) -> AgentRequest:
    return AgentRequest(project_id="contract", prompt=prompt, **kw)


async def run(agent: CodeAgent, request: AgentRequest, run_id: str | None = None) -> list[AgentEvent]:
    return [ev async for ev in agent.execute(request, run_id=run_id or uuid.uuid4().hex)]


def text_of(events: list[AgentEvent]) -> str:
    return "".join(e.chunk for e in events if isinstance(e, TextEvent) and not e.abandoned)


async def test_ends_with_exactly_one_done(subject: Subject) -> None:
    events = await run(subject.agent, req(subject.quick))
    assert isinstance(events[-1], DoneEvent)
    assert sum(isinstance(e, DoneEvent) for e in events) == 1
    done = events[-1]
    assert done.status == "succeeded" and done.session_id and done.error is None
    assert text_of(events) == subject.quick_text
    assert done.result == subject.quick_text


async def test_capabilities_and_availability(subject: Subject) -> None:
    caps = subject.agent.capabilities()
    assert caps.streaming is subject.streaming and caps.cancel
    avail = await subject.agent.is_available()
    assert avail.available, avail.detail


async def test_cancel_unknown_run_is_false(subject: Subject) -> None:
    assert await subject.agent.cancel("no-such-run") is False


async def test_cancel_mid_run_ends_cancelled_and_twice_is_safe(subject: Subject) -> None:
    run_id = uuid.uuid4().hex
    events: list[AgentEvent] = []

    async def consume() -> None:
        async for ev in subject.agent.execute(req(subject.slow), run_id=run_id):
            events.append(ev)

    task = asyncio.create_task(consume())
    for _ in range(200):  # wait until it is really running (first text or session)
        if any(e.event in ("text", "session") for e in events):
            break
        await asyncio.sleep(0.05)
    assert await subject.agent.cancel(run_id) is True
    await subject.agent.cancel(run_id)  # twice: harmless
    await asyncio.wait_for(task, 30)
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "cancelled"
    assert sum(isinstance(e, DoneEvent) for e in events) == 1
    assert await subject.agent.cancel(run_id) is False  # the run is gone


async def test_closing_the_iterator_early_stops_the_run(subject: Subject) -> None:
    run_id = uuid.uuid4().hex
    gen = subject.agent.execute(req(subject.slow), run_id=run_id)
    async for ev in gen:
        if ev.event in ("text", "session"):
            break
    await gen.aclose()  # type: ignore[attr-defined]
    assert await subject.agent.cancel(run_id) is False


async def test_timeout_ends_timed_out(subject: Subject) -> None:
    events = await run(subject.agent, req(subject.slow, timeout_s=2))
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "timed_out"
