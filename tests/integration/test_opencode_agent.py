"""OpenCodeAgent against the REAL `opencode serve` (started and supervised by the adapter) and a scripted
OpenAI-compatible model on loopback. One managed server serves the whole module."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import agentd.adapters.agent_process as procs
from agentd.adapters.opencode import OpenCodeAgent, OpenCodeConfig, RunOptions
from agentd.adapters.opencode.client import OpenCodeHTTPError
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    DoneEvent,
    ErrorEvent,
    PromptFile,
    SessionEvent,
    StatusEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)
from tests.conftest import jail_for_tests, tool_path
from tests.support import fake_openai
from tests.support.fake_openai import FakeOpenAI

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
ROOT = Path(__file__).resolve().parents[2]


def opencode_bin() -> str | None:
    return tool_path("AGENTD_OPENCODE_BIN", "opencode")


class Hook:
    """The module's agent is shared: each test may install its own raw-event hook."""

    fn: Callable[[dict[str, Any]], None] | None = None

    def __call__(self, ev: dict[str, Any]) -> None:
        if self.fn is not None:
            self.fn(ev)


@dataclass
class OC:
    fake: FakeOpenAI
    agent: OpenCodeAgent
    config: OpenCodeConfig
    hook: Hook

    def workspace(self, project: str = "p1") -> Path:
        return self.config.workspace(project)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def oc(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OC]:
    binary = opencode_bin()
    if binary is None:
        pytest.skip("opencode is not installed: run scripts/setup (opencode-ai) or set AGENTD_OPENCODE_BIN")
    async with FakeOpenAI() as fake:
        hook = Hook()
        env = {"PATH": os.environ.get("PATH", ""), "OPENCODE_CONFIG_CONTENT": json.dumps(fake.config())}
        data = tmp_path_factory.mktemp("oc")
        config = OpenCodeConfig(
            data_dir=data,
            sandbox=jail_for_tests(data),
            binary=binary,
            mode="server",
            idle_timeout_s=60,
            environ=env,
            run=RunOptions(reconnect_delays=(0.3, 0.5, 1.0), event_hook=hook),  # events get lost
        )
        agent = OpenCodeAgent(config)
        await agent.ensure_server("p1")
        server = agent.server_for("p1")
        assert server is not None and server.pid is not None
        pid = server.pid
        assert server.proc is not None and server.proc.pid is not None
        if config.sandbox is not None and config.sandbox.mode == "bwrap":  # jailed: below bwrap, no marker
            assert procs.command_name(server.proc.pid) == "bwrap" and pid != server.proc.pid
            assert not procs.marked_processes(str(os.getpid()), key=procs.OWNER_MARKER)
        try:
            yield OC(fake, agent, config, hook)
        finally:
            await agent.close()
        assert not procs.alive(pid), "the managed server survived close()"
        leftovers = [p for p in procs.tree(os.getpid()) if p != os.getpid()]
        assert not [p for p in leftovers if "opencode" in _cmdline(p)], "an opencode process was left behind"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


async def collect(agent: OpenCodeAgent, prompt: str, **kw: Any) -> list[AgentEvent]:
    run_id = kw.pop("run_id", None) or uuid.uuid4().hex
    req = AgentRequest(project_id=kw.pop("project_id", "p1"), prompt=prompt, **kw)
    events = [ev async for ev in agent.execute(req, run_id=run_id)]
    check_stream(events)
    return events


def check_stream(events: list[AgentEvent]) -> None:
    """Exactly one done, last; text chunks of each part add up and end with is_complete."""
    assert [isinstance(e, DoneEvent) for e in events].count(True) == 1 and isinstance(events[-1], DoneEvent)
    closed: set[tuple[str, int]] = set()
    for e in events:
        if isinstance(e, TextEvent):
            assert (e.message_id, e.index) not in closed or e.abandoned
            if e.is_complete:
                closed.add((e.message_id, e.index))
    assert {(e.message_id, e.index) for e in events if isinstance(e, TextEvent)} <= closed


def text(events: list[AgentEvent]) -> str:
    dropped = {e.message_id for e in events if isinstance(e, TextEvent) and e.abandoned}
    return "".join(e.chunk for e in events if isinstance(e, TextEvent) and e.message_id not in dropped)


def done(events: list[AgentEvent]) -> DoneEvent:
    last = events[-1]
    assert isinstance(last, DoneEvent)
    return last


async def test_tool_call_then_text(oc: OC) -> None:
    events = await collect(oc.agent, "Please run a command. SCENARIO:tool_bash")
    assert isinstance(events[0], SessionEvent) and events[0].cwd == str(oc.workspace())
    [use] = [e for e in events if isinstance(e, ToolUseEvent)]
    [res] = [e for e in events if isinstance(e, ToolResultEvent)]
    assert (use.name, use.input["command"]) == ("bash", fake_openai.TOOL_COMMAND)
    assert (res.tool_use_id, res.is_error) == (use.tool_use_id, False)
    assert (
        events.index(use)
        < events.index(res)
        < events.index(next(e for e in events if isinstance(e, TextEvent)))
    )
    assert text(events) == fake_openai.TOOL_ANSWER
    d = done(events)
    assert (d.status, d.result, d.error) == ("succeeded", fake_openai.TOOL_ANSWER, None)
    assert d.usage["input_tokens"] == 200 and d.usage["num_steps"] == 2 and d.cost_usd == 0
    assert (oc.workspace() / "out.txt").read_text() == "hello\n"
    tool_msgs = [
        m for r in oc.fake.requests_for("tool_bash") for m in r.body["messages"] if m["role"] == "tool"
    ]
    assert tool_msgs and tool_msgs[0]["tool_call_id"] == use.tool_use_id


async def test_abort_mid_stream_cancel_twice(oc: OC) -> None:
    run_id = uuid.uuid4().hex
    req = AgentRequest(project_id="p1", prompt="Stream slowly. SCENARIO:slow")
    events: list[AgentEvent] = []
    answers: list[bool] = []
    async for ev in oc.agent.execute(req, run_id=run_id):
        events.append(ev)
        if isinstance(ev, TextEvent) and not answers and len(text(events)) >= len("tick0 tick1 "):
            answers = list(await asyncio.gather(oc.agent.cancel(run_id), oc.agent.cancel(run_id)))
    check_stream(events)
    assert answers == [True, True] and await oc.agent.cancel(run_id) is False
    d = done(events)
    assert (d.status, d.error) == ("cancelled", "cancelled by request")
    streamed = text(events)
    assert streamed.startswith("tick0 tick1 ") and streamed.endswith(" ") and len(streamed) < 60
    assert d.result == streamed and d.session_id is not None
    assert d.session_id not in await oc.agent.client_for("p1").status(oc.workspace())  # not busy any more
    last = (await oc.agent.client_for("p1").messages(oc.workspace(), d.session_id))[-1]["info"]
    assert last["error"]["name"] == "MessageAbortedError"


async def test_cancel_before_the_prompt_is_accepted(oc: OC) -> None:
    # Cancelled while the adapter checks the server: nothing is created.
    run_id = uuid.uuid4().hex
    gen = oc.agent.execute(AgentRequest(project_id="p1", prompt="SCENARIO:text never-1"), run_id=run_id)
    task = asyncio.ensure_future(gen.__anext__())
    await asyncio.sleep(0)
    assert await oc.agent.cancel(run_id) is True
    first = await task
    rest = [first] + [e async for e in gen]
    assert done(rest).status == "cancelled" and done(rest).session_id is None
    # Cancelled once the session exists but before the prompt went out: the session is deleted again.
    run_id = uuid.uuid4().hex
    events: list[AgentEvent] = []
    async for ev in oc.agent.execute(
        AgentRequest(project_id="p1", prompt="SCENARIO:text never-2"), run_id=run_id
    ):
        events.append(ev)
        if isinstance(ev, SessionEvent):
            await oc.agent.cancel(run_id)
            await oc.agent.cancel(run_id)
    check_stream(events)
    sid = next(e.session_id for e in events if isinstance(e, SessionEvent))
    assert done(events).status == "cancelled" and done(events).session_id is None
    with pytest.raises(OpenCodeHTTPError) as err:
        await oc.agent.client_for("p1").get_session(oc.workspace(), sid)
    assert err.value.status == 404 and "GET" in str(err.value) and sid in str(err.value)
    sent = json.dumps([r.body for r in oc.fake.requests])
    assert "never-1" not in sent and "never-2" not in sent


async def test_model_400_fails_with_its_message(oc: OC) -> None:
    events = await collect(oc.agent, "SCENARIO:error400")
    d = done(events)
    assert (d.status, d.error) == ("failed", fake_openai.ERROR400_MESSAGE)
    [err] = [e for e in events if isinstance(e, ErrorEvent)]
    assert (err.code, err.message, err.retryable) == ("model_http_400", fake_openai.ERROR400_MESSAGE, False)


async def test_500_then_success_reports_the_retry(oc: OC) -> None:
    events = await collect(oc.agent, "SCENARIO:error500_once")
    retries = [e for e in events if isinstance(e, StatusEvent) and e.status == "retrying"]
    assert [(r.attempt, r.detail) for r in retries] == [(1, fake_openai.ERROR500_MESSAGE)]
    assert retries[0].retry_delay_ms is not None and 0 < retries[0].retry_delay_ms <= 5000
    assert events.index(retries[0]) < events.index(next(e for e in events if isinstance(e, TextEvent)))
    d = done(events)
    assert (d.status, d.result) == ("succeeded", fake_openai.TEXT_ANSWER)
    assert [r.status for r in oc.fake.requests_for("error500_once")][-2:] == [500, 200]


@pytest.mark.parametrize(
    ("scenario", "answer", "cut_on"),
    [
        (
            "long",
            fake_openai.LONG_ANSWER,
            "message.part.delta",
        ),  # mid-text: the rest comes with the final part
        ("tool_bash", fake_openai.TOOL_ANSWER, "message.part.updated"),  # before the text starts
    ],
)
async def test_event_stream_cut_mid_run(oc: OC, scenario: str, answer: str, cut_on: str) -> None:
    seen: list[str] = []
    state = {"cut": False}

    def cut(ev: dict[str, Any]) -> None:
        if ev.get("type") == "message.part.delta":
            seen.append(ev["properties"]["delta"])
        if (
            ev.get("type") == cut_on
            and not state["cut"]
            and (cut_on != "message.part.delta" or len(seen) >= 6)
        ):
            part = ev["properties"].get("part") or {}
            if cut_on == "message.part.updated" and part.get("type") != "tool":
                return
            state["cut"] = True
            raise ConnectionResetError("test: event stream cut")

    oc.hook.fn = cut
    try:
        events = await collect(oc.agent, f"SCENARIO:{scenario}")
    finally:
        oc.hook.fn = None
    assert state["cut"]
    assert text(events) == answer  # nothing lost, nothing twice
    assert (done(events).status, done(events).result) == ("succeeded", answer)
    if scenario == "long":
        assert len(seen) < fake_openai.LONG_CHUNKS  # deltas really were lost while reconnecting


async def test_continue_a_session(oc: OC) -> None:
    first = await collect(oc.agent, "SCENARIO:remember PLUM")
    sid = done(first).session_id
    assert sid and done(first).result == "OK, I will remember PLUM."
    second = await collect(oc.agent, "SCENARIO:recall", session_id=sid)
    assert (done(second).session_id, done(second).result) == (sid, "The word was PLUM.")
    assert next(e for e in second if isinstance(e, SessionEvent)).session_id == sid
    missing = await collect(oc.agent, "SCENARIO:recall", session_id="ses_doesnotexist")
    assert done(missing).status == "failed" and "404" in (done(missing).error or "")


async def test_files_model_and_bad_model(oc: OC) -> None:
    (oc.workspace() / "notes.txt").write_text("file content QRS-7\n")
    files = (PromptFile(path="notes.txt"), PromptFile(content="inline XYZ-42", filename="inline.txt"))
    events = await collect(oc.agent, "SCENARIO:text files", files=files, model="fake/fake-model")
    assert done(events).status == "succeeded"
    sent = json.dumps(oc.fake.requests[-1].body["messages"])
    assert "QRS-7" in sent and "XYZ-42" in sent
    unknown = done(await collect(oc.agent, "SCENARIO:text", model="nope/nada"))
    assert unknown.status == "failed" and "Model not found: nope/nada" in (unknown.error or "")
    bad = done(await collect(oc.agent, "SCENARIO:text", model="no-slash"))
    assert bad.status == "failed" and "'<providerID>/<modelID>'" in (bad.error or "")


async def test_request_timeout(oc: OC) -> None:
    events = await collect(oc.agent, "SCENARIO:slow", timeout_s=1)
    d = done(events)
    assert (d.status, d.error) == ("timed_out", "timed out after 1 s") and d.duration_ms < 8000
    assert d.session_id not in await oc.agent.client_for("p1").status(oc.workspace())


async def test_external_server(oc: OC, tmp_path: Path) -> None:
    server = oc.agent.server_for("p1")
    assert server is not None
    url, password = oc.agent.client_for("p1").base_url, server.config.password
    # The managed server is jailed to its project: as an external server, it serves the same workspace.
    ext = OpenCodeAgent(replace(oc.config, url=url, password=password))
    wrong = OpenCodeAgent(replace(oc.config, data_dir=tmp_path, url=url, password="nope"))
    down = OpenCodeAgent(replace(oc.config, data_dir=tmp_path, url="http://127.0.0.1:9"))
    try:
        assert (await ext.is_available()).version == "1.18.33"
        events = await collect(ext, "SCENARIO:text")
        assert (done(events).status, text(events)) == ("succeeded", fake_openai.TEXT_ANSWER)
        avail = await wrong.is_available()
        assert not avail.available and "401" in avail.detail and "AGENTD_OPENCODE_PASSWORD" in avail.detail
        events = await collect(down, "SCENARIO:text")
        assert done(events).status == "failed" and "cannot be reached" in (done(events).error or "")
        assert [e.code for e in events if isinstance(e, ErrorEvent)] == ["provider_unavailable"]
    finally:
        for a in (ext, wrong, down):
            await a.close()


async def test_cli_fallback(oc: OC, tmp_path: Path) -> None:
    """auto mode, no server reachable: `opencode run --format json` per job."""
    cli = OpenCodeAgent(replace(oc.config, data_dir=tmp_path, url="http://127.0.0.1:9", mode="auto"))
    try:
        events = await collect(cli, "SCENARIO:tool_bash")
        assert [e.name for e in events if isinstance(e, ToolUseEvent)] == ["bash"]
        d = done(events)
        assert (d.status, d.result, d.exit_code) == ("succeeded", fake_openai.TOOL_ANSWER, 0)
        assert text(events) == fake_openai.TOOL_ANSWER and d.session_id
        failed = done(await collect(cli, "SCENARIO:error400"))
        assert (failed.status, failed.error, failed.exit_code) == ("failed", fake_openai.ERROR400_MESSAGE, 1)
    finally:
        await cli.close()


async def test_parallel_runs_and_a_consumer_that_goes_away(oc: OC) -> None:
    a, b = await asyncio.gather(
        collect(oc.agent, "SCENARIO:remember ONE"),
        collect(oc.agent, "SCENARIO:remember TWO", project_id="p2"),
    )
    assert (done(a).result, done(b).result) == ("OK, I will remember ONE.", "OK, I will remember TWO.")
    gen = oc.agent.execute(AgentRequest(project_id="p1", prompt="SCENARIO:slow"), run_id="goes-away")
    assert isinstance(gen, AsyncGenerator)  # the port promises an AsyncIterator; the adapter's can be closed
    sid = None
    async for ev in gen:
        sid = ev.session_id if isinstance(ev, SessionEvent) else sid
        if isinstance(ev, TextEvent):
            break
    await gen.aclose()  # the consumer stops reading: the run is aborted on the server
    assert sid is not None and sid not in await oc.agent.client_for("p1").status(oc.workspace())
    assert await oc.agent.cancel("goes-away") is False


async def test_inactivity_watchdog(oc: OC) -> None:
    server = oc.agent.server_for("p1")
    assert server is not None
    url, password = oc.agent.client_for("p1").base_url, server.config.password
    # An external-server agent on the module's server, with a short watchdog.
    agent = OpenCodeAgent(replace(oc.config, url=url, password=password, idle_timeout_s=1.5))
    try:
        d = done(await collect(agent, "SCENARIO:stall"))
        assert d.status == "timed_out" and "inactivity watchdog" in (d.error or "")
        assert d.session_id not in await agent.client_for("p1").status(oc.workspace())
    finally:
        await agent.close()


async def test_retry_after_text_abandons_it(oc: OC) -> None:
    """The model fails mid-stream: OpenCode retries in new parts; the streamed text is marked abandoned."""
    run_id = uuid.uuid4().hex
    events: list[AgentEvent] = []
    req = AgentRequest(project_id="p1", prompt="SCENARIO:midstream_fail")
    async for ev in oc.agent.execute(req, run_id=run_id):
        events.append(ev)
        if isinstance(ev, StatusEvent) and ev.status == "retrying":
            assert ev.detail == "fake mid-stream failure" and ev.attempt == 1
            await oc.agent.cancel(run_id)  # stop during the retry wait instead of waiting ~70 s
    check_stream(events)
    assert [e.chunk for e in events if isinstance(e, TextEvent) and e.abandoned] == [""]
    d = done(events)
    assert d.status == "cancelled" and text(events) == (d.result or "")


async def test_server_dies_mid_run_then_is_restarted(oc: OC) -> None:
    """Kept last: it kills the module's server. The run in flight fails; the next job gets a new server."""
    server = oc.agent.server_for("p1")
    assert server is not None and server.pid is not None
    old = server.pid
    run_id = uuid.uuid4().hex
    events: list[AgentEvent] = []
    async for ev in oc.agent.execute(AgentRequest(project_id="p1", prompt="SCENARIO:slow"), run_id=run_id):
        events.append(ev)
        if isinstance(ev, TextEvent) and server.pid == old:
            procs.kill_tree(old)
    check_stream(events)
    d = done(events)
    assert d.status == "failed" and "died during the run" in (d.error or "")
    assert server.pid not in (None, old) and server.deaths == 1
    after = await collect(oc.agent, "SCENARIO:text")
    assert (done(after).status, done(after).result) == ("succeeded", fake_openai.TEXT_ANSWER)
    assert not procs.alive(old)
