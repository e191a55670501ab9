"""End to end: HTTP API → queue → worker → the REAL Codex CLI (both modes) → scripted Responses API → SSE."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentd.adapters import agent_process
from agentd.adapters.codex.agent import native_binary
from agentd.client import StreamItem
from agentd.config import Settings
from agentd.domain.models import AgentRequest, DoneEvent, ToolResultEvent
from agentd.wire import Submitted
from tests.conftest import RunningAgentd, codex_agent, jail_for_tests
from tests.support import fake_responses as fr
from tests.support.fake_responses import FakeResponses

pytestmark = pytest.mark.e2e
MODES = ["app-server", "exec"]


@pytest.fixture
async def model() -> AsyncIterator[FakeResponses]:
    async with FakeResponses() as fake:
        yield fake


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def no_orphans() -> Any:
    yield
    # Every process a run started is below this test process (jailed or not); none may outlive its job.
    deadline = time.monotonic() + 5
    while True:
        left = agent_process.descendants(os.getpid())
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes left behind: {[_cmdline(p) for p in left]}"


def _sleepers() -> list[int]:
    return [p for p in agent_process.descendants(os.getpid()) if "sleep 300" in _cmdline(p)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


async def _start(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> RunningAgentd:
    data = tmp_path / "data"
    agent = codex_agent(Settings(data_dir=data), codex_bin, model.base_url, mode=mode)
    srv: RunningAgentd = await agentd_factory([agent], data_dir=data)
    return srv


async def _collect(srv: RunningAgentd, job: Submitted) -> list[StreamItem]:
    return [item async for item in srv.client.follow(job["stream_url"])]


def _texts(items: list[StreamItem], event: str = "text") -> dict[str, str]:
    out: dict[str, str] = {}
    dropped: set[str] = set()
    for it in items:
        if it.event == event:
            mid = it.data["message_id"]
            out[mid] = out.get(mid, "") + it.data["chunk"]
            if it.data.get("abandoned"):
                dropped.add(mid)
    return {k: v for k, v in out.items() if k not in dropped}


def _assert_sequence(items: list[StreamItem]) -> None:
    assert [it.seq for it in items] == list(range(1, len(items) + 1))
    assert [it.event for it in items].count("done") == 1 and items[-1].event == "done"


async def test_providers_lists_codex_with_mode_capabilities(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    listing = await srv.client._json("GET", "/providers")
    codex = next(p for p in listing["providers"] if p["name"] == "codex")
    assert codex["capabilities"]["streaming"] is (mode == "app-server")
    assert codex["capabilities"]["resume"] and codex["capabilities"]["cancel"]
    assert codex["availability"]["available"] is True and codex["availability"]["version"] == "0.169.0"


async def test_text(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:text", provider="codex"))
    _assert_sequence(items)
    session = next(it for it in items if it.event == "session")
    assert list(_texts(items).values()) == [fr.TEXT_ANSWER]
    assert list(_texts(items, "reasoning").values()) == [fr.REASONING_TEXT]
    chunks = [it for it in items if it.event == "text"]
    assert chunks[-1].data["is_complete"] is True
    # app-server streams token deltas; exec gets the message whole.
    assert len(chunks) == (len(fr.TEXT_CHUNKS) + 1 if mode == "app-server" else 1)
    done = items[-1].data
    assert done["status"] == "succeeded" and done["exit_code"] == 0
    assert done["result"] == fr.TEXT_ANSWER and done["session_id"] == session.data["session_id"]
    assert done["usage"]["input_tokens"] == 100 and done["usage"]["output_tokens"] == 20
    # The run used the project's private CODEX_HOME, written from the settings (never ~/.codex).
    cfg = (srv.settings.data_dir / "homes" / "codex" / "demo" / ".codex" / "config.toml").read_text()
    assert model.base_url in cfg
    sent = model.requests[0]
    assert sent.body["model"] == "gpt-5.5" and sent.headers["Authorization"] == "Bearer sk-fake"


async def test_shell_tool_then_text(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:tool", provider="codex"))
    _assert_sequence(items)
    kinds = [it.event for it in items]
    use = next(it for it in items if it.event == "tool_use")
    res = next(it for it in items if it.event == "tool_result")
    assert use.data["name"] == "command_execution" and fr.TOOL_COMMAND in use.data["input"]["command"]
    assert res.data["tool_use_id"] == use.data["tool_use_id"] and res.data["output"] == "tool-ran\n"
    assert kinds.index("tool_use") < kinds.index("tool_result") < kinds.index("text")
    assert list(_texts(items).values()) == [fr.TOOL_ANSWER]
    done = items[-1].data
    assert done["status"] == "succeeded" and done["result"] == fr.TOOL_ANSWER
    assert done["usage"]["input_tokens"] == 200  # two model requests in this turn
    # Codex's own sandbox is off (agentd's jail is the sandbox): the command wrote into the workspace.
    assert (srv.settings.workspace("demo") / "out.txt").read_text().strip() == "hello"


async def test_resume_continues_the_thread_with_the_turns_own_usage(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    first = await _collect(srv, await srv.client.submit("demo", "SCENARIO:remember banana", provider="codex"))
    sid = first[-1].data["session_id"]
    assert first[-1].data["status"] == "succeeded" and sid
    second = await _collect(
        srv, await srv.client.submit("demo", "SCENARIO:recall", provider="codex", session_id=sid)
    )
    done = second[-1].data
    assert done["status"] == "succeeded" and done["session_id"] == sid
    assert done["result"] == "You said banana."
    # Codex reports the thread's running total (200); the job reports its own turn.
    assert done["usage"]["input_tokens"] == 100


async def test_resume_unknown_thread_fails_clearly(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    sid = "01a22eea-0000-7000-8000-000000000000"
    job = await srv.client.submit("demo", "hi", provider="codex", session_id=sid)
    done = (await _collect(srv, job))[-1].data
    assert done["status"] == "failed" and "no rollout found" in done["error"]
    assert "WARNING" not in done["error"]


async def test_cancel_mid_stream_keeps_the_partial_text(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    job = await srv.client.submit("demo", "SCENARIO:slow delay_ms=100 chunks=300", provider="codex")
    items: list[StreamItem] = []
    t_cancel = 0.0
    async for it in srv.client.follow(job["stream_url"]):
        items.append(it)
        trigger = "text" if mode == "app-server" else "session"  # exec shows no text until the end
        if it.event == trigger and sum(1 for i in items if i.event == trigger) == 3 - 2 * (mode == "exec"):
            await asyncio.sleep(0.3 if mode == "exec" else 0)
            t_cancel = time.monotonic()
            await srv.client.cancel("demo", job["job_id"])
    _assert_sequence(items)
    done = items[-1].data
    assert done["status"] == "cancelled" and done["error"] == "cancelled by request"
    assert time.monotonic() - t_cancel < 5
    text = "".join(_texts(items).values())
    if mode == "app-server":
        assert text and fr.slow_text(300).startswith(text) and done["result"] == text
    else:
        assert text == ""
    for _ in range(50):  # the fake notices the hang-up at its next write
        if model.requests[-1].disconnected:
            break
        await asyncio.sleep(0.1)
    assert model.requests[-1].disconnected  # the model stream was dropped, not finished
    assert (await srv.client.job("demo", job["job_id"]))["status"] == "cancelled"


async def test_cancel_during_a_tool_leaves_no_process(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    job = await srv.client.submit("demo", "SCENARIO:sleep_tool", provider="codex")
    items: list[StreamItem] = []
    async for it in srv.client.follow(job["stream_url"]):
        items.append(it)
        if it.event == "tool_use":
            await asyncio.sleep(0.5)  # let `sleep 300` start
            assert _sleepers(), "the command should be running"
            if jail_for_tests(srv.settings.data_dir).mode == "bwrap":  # it runs in the jail
                assert any(
                    agent_process.command_name(p) == "bwrap" for p in agent_process.descendants(os.getpid())
                )
            await srv.client.cancel("demo", job["job_id"])
    assert items[-1].data["status"] == "cancelled"
    for _ in range(50):
        if not _sleepers():
            break
        await asyncio.sleep(0.1)
    assert not _sleepers()


async def test_http_400_fails_with_the_providers_message(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:error400", provider="codex"))
    done = items[-1].data
    assert done["status"] == "failed" and fr.ERROR400_MESSAGE in done["error"]
    assert any(it.event == "error" and fr.ERROR400_MESSAGE in it.data["message"] for it in items)
    assert len(model.requests_for("error400")) == 1  # a 400 is not retried


async def test_http_500_then_retry_succeeds(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:error500_once", provider="codex"))
    assert items[-1].data["status"] == "succeeded" and items[-1].data["result"] == fr.TEXT_ANSWER
    assert [r.status for r in model.requests_for("error500_once")] == [500, 200]


async def test_http_500_after_all_retries_fails(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:error500", provider="codex"))
    done = items[-1].data
    # Codex replaces a 5xx body with its own words; the job says what Codex said.
    assert done["status"] == "failed" and "high demand" in done["error"]
    assert [r.status for r in model.requests_for("error500")] == [500, 500, 500]  # 1 + max_retries 2


async def test_bad_model_fails_with_the_providers_message(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    srv = await _start(agentd_factory, tmp_path, codex_bin, model, mode)
    job = await srv.client.submit("demo", "SCENARIO:text", provider="codex", model=fr.BAD_MODEL)
    done = (await _collect(srv, job))[-1].data
    assert done["status"] == "failed" and fr.bad_model_message(fr.BAD_MODEL) in done["error"]


async def test_auto_mode_falls_back_to_exec_when_the_app_server_cannot_start(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses
) -> None:
    # A codex whose app-server dies at once (as an older or broken install would); exec still works.
    real = native_binary(codex_bin)
    stand_in = tmp_path / "bin" / "codex"
    stand_in.parent.mkdir()
    script = f'if [ "$1" = app-server ]; then echo "no app-server here" >&2; exit 2; fi\nexec {real} "$@"\n'
    stand_in.write_text("#!/bin/sh\n" + script)
    stand_in.chmod(0o755)
    data = tmp_path / "data"
    agent = codex_agent(Settings(data_dir=data), str(stand_in), model.base_url, mode="auto")
    agent.config = replace(agent.config, sandbox=None)  # the stand-in's target is not mounted in a jail
    assert agent.capabilities().streaming is True
    srv = await agentd_factory([agent], data_dir=data)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:text", provider="codex"))
    assert items[-1].data["status"] == "succeeded" and items[-1].data["result"] == fr.TEXT_ANSWER
    assert any(it.event == "status" and "exec mode" in str(it.data["detail"]) for it in items)
    assert agent.capabilities().streaming is False  # from then on: exec


async def test_run_env_reaches_the_tool_and_nothing_else_of_agentds(
    agentd_factory: Any, tmp_path: Path, codex_bin: str, model: FakeResponses, mode: str
) -> None:
    data = tmp_path / "data"
    agent = codex_agent(Settings(data_dir=data), codex_bin, model.base_url, mode=mode)
    agent.config.environ["AGENTD_NOT_FOR_RUNS"] = "service-only"
    prompt = "SCENARIO:shell echo run=$RUN_TOKEN svc=${AGENTD_NOT_FOR_RUNS:-none} home=$CODEX_HOME"
    events = [
        ev
        async for ev in agent.execute(
            AgentRequest(project_id="demo", prompt=prompt), run_id="r1", env={"RUN_TOKEN": "tok-123"}
        )
    ]
    out = next(ev for ev in events if isinstance(ev, ToolResultEvent)).output
    assert "run=tok-123" in out and "svc=none" in out
    assert f"home={data}/homes/codex/demo/.codex" in out
    assert isinstance(events[-1], DoneEvent) and events[-1].status == "succeeded"
