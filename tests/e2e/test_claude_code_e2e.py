"""End to end: HTTP API → queue → worker → the REAL `claude` CLI → scripted model server → SSE stream."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import agentd.adapters.agent_process as process
from agentd.client import StreamItem
from agentd.config import Settings
from agentd.sse import aiter_sse
from agentd.wire import Submitted
from tests.conftest import RunningAgentd, claude_agent, jail_for_tests
from tests.support import fake_anthropic as fa
from tests.support.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.e2e


@pytest.fixture
async def model() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(autouse=True)
def no_orphans() -> Any:
    yield
    # Every process a run started is below this test process (jailed or not); none may outlive its job.
    deadline = time.monotonic() + 5
    while True:
        left = process.descendants(os.getpid())
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"processes left behind: {[_cmdline(p) for p in left]}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "?"


async def _start(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic, **kw: Any
) -> RunningAgentd:
    data = tmp_path / "data"
    cfg_kw = {k: kw.pop(k) for k in list(kw) if k.startswith("claude_")}
    settings = Settings(data_dir=data, **cfg_kw)
    agent = claude_agent(settings, claude_bin, model.base_url, **kw)
    running: RunningAgentd = await agentd_factory([agent], data_dir=data, **cfg_kw)
    return running


async def _collect(srv: RunningAgentd, job: Submitted) -> list[StreamItem]:
    return [item async for item in srv.client.follow(job["stream_url"])]


def _texts(items: list[StreamItem]) -> dict[str, str]:
    """Concatenated chunks per message, dropping messages the stream marked abandoned."""
    out: dict[str, str] = {}
    dropped: set[str] = set()
    for it in items:
        if it.event == "text":
            mid = it.data["message_id"]
            out[mid] = out.get(mid, "") + it.data["chunk"]
            if it.data.get("abandoned"):
                dropped.add(mid)
    return {k: v for k, v in out.items() if k not in dropped}


def _assert_sequence(items: list[StreamItem]) -> None:
    seqs = [it.seq for it in items]
    assert seqs == list(range(1, len(items) + 1)), seqs
    assert [it.event for it in items].count("done") == 1
    assert items[-1].event == "done"


async def test_tool_call_then_text(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    job = await srv.client.submit("demo", "SCENARIO:tool_bash please", provider="claude-code")
    assert job["status"] == "queued" and job["stream_url"].endswith(job["stream_id"])
    items = await _collect(srv, job)
    _assert_sequence(items)
    kinds = [it.event for it in items]
    assert kinds[0] == "status" and items[0].data["status"] == "queued"
    assert "session" in kinds
    tool_use = next(it for it in items if it.event == "tool_use")
    assert tool_use.data["name"] == "Bash"
    assert tool_use.data["input"]["command"] == fa.TOOL_BASH_INPUT["command"]
    tool_result = next(it for it in items if it.event == "tool_result")
    assert tool_result.data["tool_use_id"] == tool_use.data["tool_use_id"]
    assert tool_result.data["is_error"] is False
    assert kinds.index("tool_use") < kinds.index("tool_result")
    assert list(_texts(items).values()) == [fa.TOOL_BASH_INTRO, fa.TOOL_BASH_DONE]
    # Each message streams in several chunks and ends with is_complete.
    intro = [
        it
        for it in items
        if it.event == "text"
        and it.data["chunk"]
        and "create" in _texts(items).get(it.data["message_id"], "")
    ]
    assert len(intro) > 1
    done = items[-1].data
    assert done["status"] == "succeeded" and done["exit_code"] == 0
    assert done["result"] == fa.TOOL_BASH_DONE and done["session_id"]
    assert done["usage"]["output_tokens"] > 0 and done["cost_usd"] is not None
    ws = srv.settings.workspace("demo")
    assert (ws / "out.txt").read_text().strip() == "hello"
    state = await srv.client.job("demo", job["job_id"])
    assert state["status"] == "succeeded" and state["result"]["session_id"] == done["session_id"]


async def test_first_chunk_arrives_while_model_still_writes(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    job = await srv.client.submit("demo", "SCENARIO:slow delay_ms=100 chunks=20")
    t0 = time.monotonic()
    first_text = done_at = None
    items = []
    async for it in srv.client.follow(job["stream_url"]):
        items.append(it)
        if it.event == "text" and first_text is None:
            first_text = time.monotonic() - t0
        if it.event == "done":
            done_at = time.monotonic() - t0
    assert first_text is not None and done_at is not None
    # 20 chunks 100 ms apart: the first chunk must be visible well before the model finished.
    assert done_at - first_text > 1.0, (first_text, done_at)
    assert list(_texts(items).values()) == [fa.slow_text(20)]
    assert items[-1].data["status"] == "succeeded"


async def test_resume_continues_the_session(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    first = await _collect(srv, await srv.client.submit("demo", "SCENARIO:remember banana"))
    sid = first[-1].data["session_id"]
    assert first[-1].data["status"] == "succeeded" and sid
    second = await _collect(srv, await srv.client.submit("demo", "SCENARIO:recall", session_id=sid))
    assert second[-1].data["status"] == "succeeded"
    assert second[-1].data["session_id"] == sid
    assert second[-1].data["result"] == "You said banana."


async def test_resume_unknown_session_fails_clearly(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    sid = "11111111-2222-3333-4444-555555555555"
    items = await _collect(srv, await srv.client.submit("demo", "hi", session_id=sid))
    done = items[-1].data
    assert done["status"] == "failed" and done["exit_code"] == 1
    assert "No conversation found" in done["error"]


async def test_cancel_during_tool_leaves_no_process(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    job = await srv.client.submit("demo", "SCENARIO:sleep_tool")
    items: list[StreamItem] = []
    async for it in srv.client.follow(job["stream_url"]):
        items.append(it)
        if it.event == "tool_use":
            await asyncio.sleep(0.5)  # let the tool's `sleep 300` start
            sleepers = [p for p in process.descendants(os.getpid()) if "sleep" in _cmdline(p)]
            assert sleepers, "the Bash tool should be running"
            if jail_for_tests(srv.settings.data_dir).mode == "bwrap":  # it runs in the jail
                assert any(process.command_name(p) == "bwrap" for p in process.descendants(os.getpid()))
            cancelled = await srv.client.cancel("demo", job["job_id"])
            assert cancelled["cancel_requested"] is True
    done = items[-1].data
    assert done["status"] == "cancelled"
    assert not [p for p in process.descendants(os.getpid()) if "sleep" in _cmdline(p)]
    assert (await srv.client.job("demo", job["job_id"]))["status"] == "cancelled"


async def test_cancel_mid_text_stream(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    job = await srv.client.submit("demo", "SCENARIO:slow delay_ms=100 chunks=200")
    items: list[StreamItem] = []
    async for it in srv.client.follow(job["stream_url"]):
        items.append(it)
        if it.event == "text" and sum(1 for i in items if i.event == "text") == 3:
            await srv.client.cancel("demo", job["job_id"])
    _assert_sequence(items)
    assert items[-1].data["status"] == "cancelled"
    # The text streamed before the cancel adds up to a prefix of what the model was writing.
    text = "".join(_texts(items).values())
    assert text and fa.slow_text(200).startswith(text)
    # Cancelling a finished job changes nothing.
    again = await srv.client.cancel("demo", job["job_id"])
    assert again["status"] == "cancelled"


async def test_model_error_is_a_failed_job(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:error400"))
    done = items[-1].data
    assert done["status"] == "failed"
    assert done["exit_code"] == 1
    assert "400" in done["error"] and "Bad request" in done["error"]
    assert any(it.event == "error" for it in items[:-1])


async def test_server_error_after_retries_is_failed(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:error500"))
    retries = [it for it in items if it.event == "status" and it.data["status"] == "retrying"]
    assert retries and retries[0].data["attempt"] == 1 and "500" in retries[0].data["detail"]
    assert items[-1].data["status"] == "failed" and "500" in items[-1].data["error"]


async def test_reconnect_with_last_event_id_gets_exactly_the_missed_events(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    job = await srv.client.submit("demo", "SCENARIO:slow delay_ms=50 chunks=30")
    url = job["stream_url"]
    seen: list[tuple[int, str, str]] = []
    async with aiohttp.ClientSession() as http:
        # Read a few events, then drop the connection mid-run.
        async with http.get(url) as r:
            async for ev in aiter_sse(r.content.iter_any()):
                seen.append((int(ev.id), ev.event, ev.data))
                if len(seen) == 5:
                    break
        last = seen[-1][0]
        async with http.get(url, headers={"Last-Event-ID": str(last)}) as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            assert r.headers["X-Accel-Buffering"] == "no"
            async for ev in aiter_sse(r.content.iter_any()):
                seen.append((int(ev.id), ev.event, ev.data))
        assert [s[0] for s in seen] == list(range(1, len(seen) + 1))
        assert seen[-1][1] == "done"
        # A full replay afterwards is identical, and ?after=N gives exactly the tail.
        async with http.get(url) as r:
            replay = [(int(ev.id), ev.event, ev.data) async for ev in aiter_sse(r.content.iter_any())]
        assert replay == seen
        async with http.get(url, params={"after": "7"}) as r:
            tail = [(int(ev.id), ev.event, ev.data) async for ev in aiter_sse(r.content.iter_any())]
        assert tail == seen[7:]


async def test_total_timeout_ends_as_timed_out(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    job = await srv.client.submit("demo", "SCENARIO:slow delay_ms=200 chunks=200", timeout_s=3)
    items = await _collect(srv, job)
    done = items[-1].data
    assert done["status"] == "timed_out" and "timed out after 3 s" in done["error"]
    assert not process.descendants(os.getpid())


async def test_inactivity_watchdog(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model, claude_idle_timeout_s=2.0)
    job = await srv.client.submit("demo", "SCENARIO:slow delay_ms=10000 chunks=3")
    done = (await _collect(srv, job))[-1].data
    assert done["status"] == "timed_out" and "inactivity" in done["error"]


async def test_prompt_starting_with_dash_goes_on_stdin(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    prompt = "--help is not a flag here SCENARIO:text"
    items = await _collect(srv, await srv.client.submit("demo", prompt))
    assert items[-1].data["status"] == "succeeded"
    assert items[-1].data["result"] == fa.TEXT_REPLY
    sent = str(model.message_requests()[0]["messages"])
    assert "--help is not a flag here" in sent


async def test_kubectl_transport_with_stand_in_kubectl(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    # A stand-in kubectl: `kubectl exec [-i] POD -n NS -- CMD...` runs CMD here and logs the call.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "kubectl-calls.log"
    fake = bindir / "kubectl"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        '[ "$1" = exec ] || exit 2\nshift\n'
        'while [ "$1" != "--" ]; do shift; done\nshift\nexec "$@"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    srv = await _start(
        agentd_factory,
        tmp_path,
        claude_bin,
        model,
        claude_transport="kubectl",
        claude_pod="agent-0",
        claude_kubectl_bin=str(fake),
        CLAUDE_CODE_OAUTH_HINT="oauth-like secret\\with\nnewline",
    )
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:tool_bash"))
    assert items[-1].data["status"] == "succeeded", items[-1].data
    assert items[-1].data["result"] == fa.TOOL_BASH_DONE
    assert "exec -i agent-0 -n default -- sh -c" in calls.read_text()
    # No secret on any command line: the environment went over stdin (and arrived: the run reached
    # the model through ANTHROPIC_BASE_URL, and the value with a backslash and a newline is intact).
    for secret in ("sk-fake", "oauth-like", model.base_url):
        assert secret not in calls.read_text()
    for pid in process.descendants(os.getpid()):
        assert "sk-fake" not in _cmdline(pid)
    assert (srv.settings.workspace("demo") / "out.txt").read_text().strip() == "hello"
    # Cancel through kubectl: the remote pid file gets the signal.
    job = await srv.client.submit("demo", "SCENARIO:slow delay_ms=100 chunks=100")
    got: list[StreamItem] = []
    async for it in srv.client.follow(job["stream_url"]):
        got.append(it)
        if it.event == "text" and len([g for g in got if g.event == "text"]) == 2:
            await srv.client.cancel("demo", job["job_id"])
    assert got[-1].data["status"] == "cancelled"
    assert "kill -2" in calls.read_text()


async def test_midstream_error_text_adds_up_to_the_final_answer(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    # The CLI abandons the half-streamed block and asks again without streaming (see fake_anthropic.py).
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:midstream_error"))
    _assert_sequence(items)
    assert items[-1].data["status"] == "succeeded"
    assert list(_texts(items).values()) == [fa.MIDSTREAM_RECOVERED]
    abandoned = [it for it in items if it.event == "text" and it.data["abandoned"]]
    streamed = [it for it in items if it.event == "text" and it.data["chunk"] and not it.data["is_complete"]]
    if streamed:  # the partial text did reach subscribers: it must be marked abandoned
        assert abandoned and abandoned[0].data["message_id"] == streamed[0].data["message_id"]


async def test_huge_lines_stream_through(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:big size=300000"))
    assert items[-1].data["status"] == "succeeded"
    assert list(_texts(items).values()) == [fa.big_text(300_000)]


async def test_root_with_an_inherited_is_sandbox_value(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    """bypassPermissions as root: the CLI accepts only IS_SANDBOX=1, whatever agentd's environment says."""
    srv = await _start(agentd_factory, tmp_path, claude_bin, model, IS_SANDBOX="yes")
    items = await _collect(srv, await srv.client.submit("demo", "SCENARIO:text"))
    assert items[-1].data["status"] == "succeeded", items[-1].data
    assert items[-1].data["result"] == fa.TEXT_REPLY
    async with aiohttp.ClientSession() as http, http.get(f"{srv.base_url}/healthz") as r:
        assert (await r.json())["sandbox"] == srv.container.sandbox.mode


async def test_each_project_has_its_own_home(
    agentd_factory: Any, tmp_path: Path, claude_bin: str, model: FakeAnthropic
) -> None:
    srv = await _start(agentd_factory, tmp_path, claude_bin, model)
    for project in ("alpha", "beta"):
        items = await _collect(srv, await srv.client.submit(project, "SCENARIO:text"))
        assert items[-1].data["status"] == "succeeded", items[-1].data
    homes = srv.settings.data_dir / "homes" / "claude-code"
    assert sorted(p.name for p in homes.iterdir()) == ["alpha", "beta"]
    assert not (srv.settings.data_dir / "claude").exists()  # no shared home any more
