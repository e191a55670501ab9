"""The real Claude Code CLI, fully offline, against tests.support.fake_anthropic.FakeAnthropic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support import fake_anthropic as fa
from tests.support.fake_anthropic import FakeAnthropic

pytestmark = pytest.mark.e2e

REPO_ROOT = Path(__file__).resolve().parents[2]
CLAUDE_BIN = Path(os.environ.get("AGENTD_CLAUDE_BIN") or REPO_ROOT / ".tools/node/node_modules/.bin/claude")
CLI_FLAGS = (
    "-p",
    "--output-format",
    "stream-json",
    "--verbose",
    "--include-partial-messages",
    "--permission-mode=bypassPermissions",
)
RUN_TIMEOUT_S = 30.0
LINE_LIMIT = 64 * 1024 * 1024  # stream-json lines are unbounded (the big scenario gives ~300 KB lines)


@dataclass
class CliRun:
    returncode: int | None
    lines: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    @property
    def result(self) -> dict[str, Any]:
        results = [line for line in self.lines if line.get("type") == "result"]
        assert results, f"no result line (rc={self.returncode}, stderr={self.stderr[-2000:]!r})"
        return results[-1]

    @property
    def session_id(self) -> str:
        return str(self.result["session_id"])

    def of_type(self, type_: str, subtype: str | None = None) -> list[dict[str, Any]]:
        return [
            line
            for line in self.lines
            if line.get("type") == type_ and (subtype is None or line.get("subtype") == subtype)
        ]

    def assistant_blocks(self, block_type: str) -> list[dict[str, Any]]:
        return [
            block
            for line in self.of_type("assistant")
            for block in line["message"]["content"]
            if block.get("type") == block_type
        ]

    def events(self, event_type: str) -> list[dict[str, Any]]:
        return [line for line in self.of_type("stream_event") if line["event"]["type"] == event_type]


def _parse(stdout: bytes) -> list[dict[str, Any]]:
    text = stdout.decode("utf-8")
    lines = text.split("\n")
    assert lines[-1] == "", "stdout must end with a newline"
    parsed = [json.loads(line) for line in lines[:-1]]
    assert all(isinstance(obj, dict) and "type" in obj for obj in parsed)
    return parsed


class Cli:
    def __init__(self, fake: FakeAnthropic, root: Path) -> None:
        self.fake = fake
        self.home = root / "home"
        self.tmp = root / "tmp"
        self.workspace = root / "workspace"
        for d in (self.home, self.tmp, self.workspace):
            d.mkdir(parents=True, exist_ok=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.home),
            "CLAUDE_CODE_TMPDIR": str(self.tmp),
            "ANTHROPIC_BASE_URL": self.fake.base_url,
            "ANTHROPIC_API_KEY": "sk-fake",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1",
            "IS_SANDBOX": "1",
            "CLAUDE_CODE_MAX_RETRIES": "1",
        }
        env.update(extra)
        return env

    async def start(self, prompt: str, *args: str, **env: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            str(CLAUDE_BIN),
            *CLI_FLAGS,
            *args,
            prompt,
            cwd=self.workspace,
            env=self.env(**env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )

    async def run(self, prompt: str, *args: str, **env: str) -> CliRun:
        proc = await self.start(prompt, *args, **env)
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.communicate()
            raise
        return CliRun(proc.returncode, _parse(stdout), stderr.decode("utf-8", "replace"))

    async def interrupt_when(
        self,
        proc: asyncio.subprocess.Process,
        predicate: Callable[[dict[str, Any]], bool],
        before_sigint: Callable[[], Awaitable[None]] | None = None,
    ) -> CliRun:
        """Read lines until predicate(line) is true, SIGINT the CLI, then collect the rest."""
        assert proc.stdout is not None
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while True:
                raw = await asyncio.wait_for(proc.stdout.readline(), max(0.1, deadline - time.monotonic()))
                assert raw, "CLI closed stdout before the awaited line"
                seen.append(json.loads(raw))
                if predicate(seen[-1]):
                    break
            if before_sigint is not None:
                await before_sigint()
            proc.send_signal(signal.SIGINT)
            rest, stderr = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
            raise
        return CliRun(proc.returncode, seen + _parse(rest), stderr.decode("utf-8", "replace"))


def _processes_with_env(marker: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose environment contains ``marker`` (e.g. our TMPDIR)."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append((int(entry.name), cmdline.strip()))
    return found


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


@pytest.fixture
def cli(fake: FakeAnthropic, tmp_path: Path) -> Cli:
    if not (CLAUDE_BIN.exists() and os.access(CLAUDE_BIN, os.X_OK)):
        pytest.skip(f"claude CLI not found at {CLAUDE_BIN} (install it or set AGENTD_CLAUDE_BIN)")
    return Cli(fake, tmp_path)


def _assert_ok(run: CliRun, text: str) -> None:
    assert run.returncode == 0, run.stderr
    assert run.result["is_error"] is False
    assert run.result["result"] == text
    # the last text block of the assistant lines is the answer
    assert run.assistant_blocks("text")[-1]["text"] == text


def _assert_interrupted(run: CliRun, terminal_reason: str) -> None:
    """After SIGINT: exit 0 and normally an is_error result with ``terminal_reason``.

    Observed with 2.1.330 under CPU load (4 test runs in parallel on 2 cores, ~1 in 6 SIGINTs): the CLI
    exits 0 WITHOUT writing the result line; the "[Request interrupted by user...]" user line is there.
    """
    assert run.returncode == 0, run.stderr
    interrupted = [
        block
        for line in run.of_type("user")
        for block in line["message"]["content"]
        if block.get("type") == "text" and block["text"].startswith("[Request interrupted by user")
    ]
    results = run.of_type("result")
    if results:
        assert results[-1]["is_error"] is True
        assert results[-1]["terminal_reason"] == terminal_reason
    else:
        assert interrupted, "neither a result line nor an interrupted user line after SIGINT"


# ------------------------------------------------------------------------------------------------------
# Server alone (no CLI)


async def test_server_json_answers_and_logging(fake: FakeAnthropic) -> None:
    async with aiohttp.ClientSession(base_url=fake.base_url) as http:
        body = {
            "model": "claude-test",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "SCENARIO:tool_bash"}],
        }
        async with http.post("/v1/messages", json=body) as resp:
            assert resp.status == 200
            msg = await resp.json()
        assert msg["id"].startswith("msg_01") and msg["model"] == "claude-test"
        assert msg["stop_reason"] == "tool_use"
        assert [b["type"] for b in msg["content"]] == ["text", "tool_use"]
        assert msg["content"][1]["id"].startswith("toolu_01")
        assert msg["content"][1]["input"] == fa.TOOL_BASH_INPUT

        async with http.post("/v1/messages/count_tokens?beta=true", json=body) as resp:
            assert resp.status == 200
            assert (await resp.json())["input_tokens"] > 0

        body["stream"] = True
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "SCENARIO:thinking"}]}]
        async with http.post("/v1/messages?beta=true", json=body) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = (await resp.read()).decode()
        events = [chunk.split("\n") for chunk in raw.strip().split("\n\n")]
        types = [e[0].removeprefix("event: ") for e in events]
        assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
        assert all(
            json.loads(e[1].removeprefix("data: "))["type"] == t for e, t in zip(events, types, strict=True)
        )
        deltas = [
            json.loads(e[1][6:])["delta"]["type"] for e in events if e[0] == "event: content_block_delta"
        ]
        assert {"thinking_delta", "signature_delta", "text_delta"} <= set(deltas)

        async with http.head("/") as resp:
            assert resp.status == 404
        async with http.post(
            "/v1/messages", json={"messages": [{"role": "user", "content": "SCENARIO:error529"}]}
        ) as resp:
            assert resp.status == 529
            assert (await resp.json())["error"]["type"] == "overloaded_error"

    assert [(e["method"], e["status"]) for e in fake.http_log] == [
        ("POST", 200),
        ("POST", 200),
        ("POST", 200),
        ("HEAD", 404),
        ("POST", 529),
    ]
    assert len(fake.requests) == 4
    assert len(fake.message_requests()) == 3


async def test_server_stop_ends_a_slow_stream_promptly() -> None:
    fake = FakeAnthropic()
    await fake.start()
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "SCENARIO:slow"}]}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.base_url}/v1/messages", json=body) as resp:
            first = await resp.content.readuntil(b"\n\n")
            assert first.startswith(b"event: message_start\n")
            started = time.monotonic()
            await fake.stop()
            assert time.monotonic() - started < 1.5
            with contextlib.suppress(aiohttp.ClientPayloadError):
                await resp.read()


# ------------------------------------------------------------------------------------------------------
# Real CLI


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Say hi", fa.TEXT_REPLY),
        ("SCENARIO:text", fa.TEXT_REPLY),
        ("SCENARIO:slow delay_ms=5 chunks=6", fa.slow_text(6)),
    ],
)
async def test_cli_text(cli: Cli, fake: FakeAnthropic, prompt: str, expected: str) -> None:
    run = await cli.run(prompt)
    _assert_ok(run, expected)
    init = run.of_type("system", "init")
    assert init and init[0]["permissionMode"] == "bypassPermissions"
    streamed = "".join(
        e["event"]["delta"]["text"]
        for e in run.events("content_block_delta")
        if e["event"]["delta"]["type"] == "text_delta"
    )
    assert streamed == expected
    assert len(run.events("content_block_delta")) > 1
    (req,) = fake.message_requests()
    assert req["stream"] is True
    assert fake.http_log[-1]["query"] == "beta=true"


async def test_cli_tool_bash(cli: Cli, fake: FakeAnthropic) -> None:
    run = await cli.run("SCENARIO:tool_bash")
    _assert_ok(run, fa.TOOL_BASH_DONE)
    assert (cli.workspace / "out.txt").read_text() == "hello\n"
    (tool_use,) = run.assistant_blocks("tool_use")
    assert tool_use["name"] == "Bash" and tool_use["input"] == fa.TOOL_BASH_INPUT
    assert run.assistant_blocks("text")[0]["text"] == fa.TOOL_BASH_INTRO
    results = [b for u in run.of_type("user") for b in u["message"]["content"] if b["type"] == "tool_result"]
    assert results[0]["tool_use_id"] == tool_use["id"] and results[0]["is_error"] is False
    assert run.result["num_turns"] == 2
    assert len(fake.message_requests()) == 2


async def test_cli_thinking(cli: Cli) -> None:
    run = await cli.run("SCENARIO:thinking")
    _assert_ok(run, fa.THINKING_REPLY)
    (thinking,) = run.assistant_blocks("thinking")
    assert thinking["thinking"] == fa.THINKING_TEXT and thinking["signature"] == fa.THINKING_SIGNATURE


async def test_cli_big_line(cli: Cli) -> None:
    run = await cli.run("SCENARIO:big")
    _assert_ok(run, fa.big_text())
    assert len(run.result["result"]) == fa.BIG_DEFAULT_SIZE


async def test_cli_remember_then_resume_recall(cli: Cli, fake: FakeAnthropic) -> None:
    first = await cli.run("SCENARIO:remember pineapple")
    _assert_ok(first, "I will remember pineapple.")
    second = await cli.run("SCENARIO:recall", f"--resume={first.session_id}")
    _assert_ok(second, "You said pineapple.")
    assert second.session_id == first.session_id
    assert len(fake.message_requests()[-1]["messages"]) >= 3


async def test_cli_error400(cli: Cli) -> None:
    run = await cli.run("SCENARIO:error400")
    assert run.returncode == 1
    assert run.result["is_error"] is True
    assert "Bad request (fake)" in run.result["result"]
    (synthetic,) = run.of_type("assistant")
    assert synthetic["api_error_status"] == 400


@pytest.mark.parametrize(("scenario", "status"), [("error500", 500), ("error529", 529)])
async def test_cli_retryable_errors(cli: Cli, fake: FakeAnthropic, scenario: str, status: int) -> None:
    run = await cli.run(f"SCENARIO:{scenario}")
    assert run.returncode == 1
    assert run.result["is_error"] is True
    assert run.result["terminal_reason"] == "api_error"
    (retry,) = run.of_type("system", "api_retry")
    assert retry["error_status"] == status and retry["max_retries"] == 1
    assert [e["status"] for e in fake.http_log] == [status, status]


async def test_cli_midstream_error_falls_back_to_non_streaming(cli: Cli, fake: FakeAnthropic) -> None:
    run = await cli.run("SCENARIO:midstream_error")
    _assert_ok(run, fa.MIDSTREAM_RECOVERED)
    # the partial block was streamed, then abandoned
    (stop,) = [e for e in run.events("message_stop") if "abandoned_blocks" in e]
    assert stop["abandoned_blocks"]["from_block_index"] == 0
    partial = "".join(e["event"]["delta"].get("text", "") for e in run.events("content_block_delta"))
    assert partial and fa.MIDSTREAM_PARTIAL.startswith(partial)
    assert not run.of_type("system", "api_retry")
    assert [r["stream"] for r in fake.message_requests()] == [True, False]


async def test_cli_midstream_error_without_fallback_fails(cli: Cli) -> None:
    run = await cli.run("SCENARIO:midstream_error", CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK="1")
    assert run.returncode == 1
    assert run.result["is_error"] is True
    assert run.result["result"] == "API Error: Overloaded (fake)"


async def test_cli_midstream_drop_retries_streaming(cli: Cli, fake: FakeAnthropic) -> None:
    run = await cli.run("SCENARIO:midstream_error mode=drop")
    _assert_ok(run, fa.MIDSTREAM_RECOVERED)
    (retry,) = run.of_type("system", "api_retry")
    assert retry["error_status"] is None
    assert [r["stream"] for r in fake.message_requests()] == [True, True]


async def test_cli_slow_sigint_mid_stream(cli: Cli) -> None:
    proc = await cli.start("SCENARIO:slow")
    started = time.monotonic()
    run = await cli.interrupt_when(
        proc,
        lambda line: (
            line.get("type") == "stream_event" and line["event"].get("delta", {}).get("text") == "tick 1 "
        ),
    )
    assert time.monotonic() - started < 10  # 200 x 100 ms would take 20 s
    _assert_interrupted(run, "aborted_streaming")


async def test_cli_sleep_tool_sigint_kills_tool(cli: Cli) -> None:
    marker = f"CLAUDE_CODE_TMPDIR={cli.tmp}"
    sleepers: list[tuple[int, str]] = []

    async def find_sleeper() -> None:
        for _ in range(100):
            sleepers[:] = [p for p in _processes_with_env(marker) if p[1] == fa.SLEEP_TOOL_INPUT["command"]]
            if sleepers:
                return
            await asyncio.sleep(0.05)

    proc = await cli.start("SCENARIO:sleep_tool")
    run = await cli.interrupt_when(
        proc,
        lambda line: (
            line.get("type") == "assistant"
            and any(b.get("type") == "tool_use" for b in line["message"]["content"])
        ),
        before_sigint=find_sleeper,
    )
    assert sleepers, "the Bash tool's sleep process never started"
    _assert_interrupted(run, "aborted_tools")
    for _ in range(100):
        if not _processes_with_env(marker):
            break
        await asyncio.sleep(0.05)
    assert _processes_with_env(marker) == []
