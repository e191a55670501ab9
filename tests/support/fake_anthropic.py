"""Scripted, offline Anthropic Messages API server for driving the real Claude Code CLI in tests.

Usage::

    async with FakeAnthropic() as fake:           # 127.0.0.1, random free port
        env["ANTHROPIC_BASE_URL"] = fake.base_url
        ...                                       # run `claude -p "SCENARIO:tool_bash" ...`
        assert fake.message_requests()[0]["stream"] is True

Standalone (manual runs, benchmarks): ``python -m tests.support.fake_anthropic --port 8765 [--verbose]``

The reply is chosen by a ``SCENARIO:<name> [word] [key=value ...]`` keyword searched in the text blocks
of the LAST user message that carries one. tool_result turns and "[Request interrupted by user]" carry
none, so a tool turn keeps the scenario of the prompt that started the conversation, while a resumed
run (--resume) uses its new prompt. No keyword -> ``text``. Replies (constants below):

  (none) / SCENARIO:text        "Hello from the fake model." in 5 word deltas, end_turn
  SCENARIO:tool_bash            turn 1: text "I'll create the file." + Bash tool_use
                                {"command": "echo hello > out.txt", "description": "Write hello"}
                                (tool_use); after the tool_result: "Done: created out.txt."
  SCENARIO:slow [delay_ms=100] [chunks=200]   deltas "tick 0 ", "tick 1 ", ... delay_ms apart
                                (result text = slow_text(chunks), trailing space included)
  SCENARIO:sleep_tool           turn 1: Bash tool_use {"command": "/bin/sleep 300", ...}; then "slept"
  SCENARIO:daemon_tool          turn 1: Bash tool_use starting background sleeps (one in a new session via
                                setsid) and a foreground `/bin/sleep 304`; then "slept"
  SCENARIO:error400|error500|error529   HTTP 400 invalid_request_error "Bad request (fake)" |
                                500 api_error "Internal server error (fake)" | 529 overloaded_error
                                "Overloaded (fake)" (JSON error body, no stream)
  SCENARIO:thinking             thinking block "Let me think about this." (thinking_delta +
                                signature_delta) then text "After thinking: 42."
  SCENARIO:remember WORD        "I will remember WORD."
  SCENARIO:recall               "You said WORD." (WORD from an EARLIER user message's
                                "SCENARIO:remember WORD" in the same request), else
                                "I don't remember anything."
  SCENARIO:midstream_error [mode=drop]   first streamed attempt of a given conversation: message_start,
                                text block, 3 text deltas ("This answer will"), then an SSE `error`
                                event (overloaded_error) and end of stream (mode=drop: the TCP
                                connection is aborted instead). Any later attempt with the same
                                messages (or any non-streaming request): "Recovered after a mid-stream
                                error."
  SCENARIO:big [size=300000]    one text block of exactly big_text(size) characters, 8 KiB deltas
  SCENARIO:env_tool             turn 1: Bash tool_use {"command": "env"}; then "That is my environment."
Non-streaming requests (stream false/absent) get the same reply as one JSON message;
POST /v1/messages/count_tokens gets {"input_tokens": N}; anything else: 404 JSON (logged).

Observed with the real CLI 2.1.330 + this server (beyond the research notes):
- Per model turn exactly one POST /v1/messages?beta=true, stream:true, max_tokens 128000, model
  "claude-opus-5-5"; NO HEAD requests, no count_tokens and no title/side requests were seen.
- The first user message is [<system-reminder> text block, prompt text block]: the prompt is not the
  first block, so the keyword is searched in every text block.
- --permission-mode=bypassPermissions works as root when IS_SANDBOX=1 (exit 1 without it).
- SSE `error` event mid-stream (midstream_error): the CLI emits a synthetic content_block_stop and a
  message_stop stream_event carrying abandoned_blocks {api_message_id, from_block_index: 0}, NO
  api_retry line, then silently re-sends the request NON-streaming (stream:false, max_tokens 64000);
  that answer becomes the `assistant` line (no stream_events for it; its stop_reason is filled) and
  the `result` (is_error false, exit 0). So the streamed deltas must be discarded on abandoned_blocks.
  With CLAUDE_CODE_DISABLE_NONSTREAMING_FALLBACK=1: no second request, synthetic assistant
  "API Error: Overloaded (fake)" then result is_error true, terminal_reason api_error, exit 1.
- Dropped connection mid-stream (mode=drop): system/api_retry {error_status: null, error: "unknown"},
  the request is retried STREAMING (in our runs the dropped attempt's deltas never reached stdout).
- A 400 is re-sent 5 more times within ~0.5 s with altered bodies (thinking.display dropped, deferred
  tools expanded) before the synthetic "API Error: 400 Bad request (fake)" (exit 1).
- A Bash tool_use of a standalone `sleep 300` is refused by the CLI ("Blocked: standalone sleep 300",
  regex ^sleep\\s+N$) and the turn continues; `/bin/sleep 300` runs. Tool processes carry the CLI's
  environment (e.g. CLAUDE_CODE_TMPDIR), which lets a test find leftovers via /proc/*/environ.
- SIGINT under CPU load (4 suites in parallel on 2 cores, ~1 in 6): exit 0 but NO result line; the
  "[Request interrupted by user...]" user line is still written. Treat exit as the end.
- The result text is not stripped ("tick 0 ... tick 5 " keeps its trailing space); a 300 KB text
  gives ~307 KB stdout lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import re
import secrets
import signal
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.log import access_logger

DEFAULT_MODEL = "claude-fake-1"
TEXT_REPLY = "Hello from the fake model."
TOOL_BASH_INTRO = "I'll create the file."
TOOL_BASH_INPUT = {"command": "echo hello > out.txt", "description": "Write hello"}
TOOL_BASH_DONE = "Done: created out.txt."
SLEEP_TOOL_INPUT = {"command": "/bin/sleep 300", "description": "Sleep for a long time"}
SLEEP_TOOL_DONE = "slept"
ENV_TOOL_INPUT = {"command": "env", "description": "Show the environment"}
ENV_TOOL_DONE = "That is my environment."
# A tool that leaves background processes: a daemonized grandchild in its own session, a plain background
# child, and a foreground sleep (the fault suite's orphan scenario, bench/faults.py).
DAEMON_TOOL_INPUT = {
    "command": (
        "setsid sh -c '/bin/sleep 301 & /bin/sleep 302' >/dev/null 2>&1 & /bin/sleep 303 & /bin/sleep 304"
    ),
    "description": "Start background work",
}
THINKING_TEXT = "Let me think about this."
THINKING_SIGNATURE = "c2lnbmF0dXJlLWZha2U="
THINKING_REPLY = "After thinking: 42."
MIDSTREAM_PARTIAL = "This answer will be cut off"
MIDSTREAM_RECOVERED = "Recovered after a mid-stream error."
RECALL_NOTHING = "I don't remember anything."
BIG_DEFAULT_SIZE = 300_000
SLOW_DEFAULT_DELAY_MS = 100
SLOW_DEFAULT_CHUNKS = 200

SCENARIOS = (
    "text",
    "tool_bash",
    "slow",
    "sleep_tool",
    "daemon_tool",
    "error400",
    "error500",
    "error529",
    "thinking",
    "remember",
    "recall",
    "midstream_error",
    "big",
    "env_tool",
)

_SCENARIO_RE = re.compile(r"SCENARIO:(\w+)((?:[ \t]+[^\s]+)*)")
_REMEMBER_RE = re.compile(r"SCENARIO:remember[ \t]+(\S+)")
_BASE62 = string.ascii_letters + string.digits


def _api_id(prefix: str) -> str:
    """An id shaped like the real API's: msg_01 + 22 base62 chars (toolu_01..., req_01...)."""
    return f"{prefix}_01" + "".join(secrets.choice(_BASE62) for _ in range(22))


def slow_text(chunks: int = SLOW_DEFAULT_CHUNKS) -> str:
    """The full text of ``SCENARIO:slow chunks=N``: one delta "tick <i> " per chunk."""
    return "".join(f"tick {i} " for i in range(chunks))


def big_text(size: int = BIG_DEFAULT_SIZE) -> str:
    """Deterministic text of exactly ``size`` characters (numbered 64-char lines)."""
    lines = []
    total = 0
    i = 0
    while total < size:
        line = f"big line {i:06d} " + "x" * 46 + "\n"  # 64 chars
        lines.append(line)
        total += len(line)
        i += 1
    return "".join(lines)[:size]


# --------------------------------------------------------------------------------------------------
# Request inspection


def _text_blocks(content: Any) -> list[str]:
    """Top-level text of a message's content (never text nested inside tool_result blocks)."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                out.append(str(block.get("text", "")))
    return out


def _has_tool_result(content: Any) -> bool:
    return isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )


@dataclass
class Scenario:
    name: str = "text"
    params: dict[str, str] = field(default_factory=dict)
    # index (in body["messages"]) of the user message that carried the keyword, -1 if none
    message_index: int = -1
    # True when a tool_result arrived after the keyword's message (i.e. we are on turn >= 2)
    after_tool_result: bool = False

    def int_param(self, key: str, default: int) -> int:
        try:
            return int(self.params.get(key, default))
        except ValueError:
            return default


def parse_scenario(body: dict[str, Any]) -> Scenario:
    messages = body.get("messages") or []
    for idx in range(len(messages) - 1, -1, -1):
        msg = messages[idx]
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        for text in reversed(_text_blocks(msg.get("content"))):
            found = list(_SCENARIO_RE.finditer(text))
            if not found:
                continue
            m = found[-1]
            params: dict[str, str] = {}
            args: list[str] = []
            for tok in m.group(2).split():
                if "=" in tok:
                    k, _, v = tok.partition("=")
                    params[k] = v
                else:
                    args.append(tok)
            if args:
                params.setdefault("arg", args[0])
            after_tool = any(
                isinstance(later, dict)
                and later.get("role") == "user"
                and _has_tool_result(later.get("content"))
                for later in messages[idx + 1 :]
            )
            return Scenario(m.group(1).lower(), params, idx, after_tool)
    last = messages[-1] if messages else {}
    after_tool = isinstance(last, dict) and _has_tool_result(last.get("content"))
    return Scenario("text", {}, -1, after_tool)


# --------------------------------------------------------------------------------------------------
# Replies: a list of content blocks + stop_reason, rendered either as SSE or as one JSON message


@dataclass
class Block:
    type: str  # "text" | "tool_use" | "thinking"
    text: str = ""
    tool_name: str = ""
    tool_input: dict[str, Any] = field(default_factory=dict)
    tool_id: str = ""
    signature: str = ""
    chunk: int = 0  # split size for deltas (0 = default split)
    pieces: list[str] | None = None  # explicit deltas (overrides chunk)


@dataclass
class Reply:
    blocks: list[Block]
    stop_reason: str = "end_turn"
    delay_s: float = 0.0  # pause before each delta
    # SSE only: after this many deltas of the first block, send an `error` event and close
    midstream_error_after: int | None = None
    # with midstream_error_after: drop the TCP connection instead of sending an `error` event
    midstream_drop: bool = False


@dataclass
class ErrorReply:
    status: int
    error_type: str
    message: str


def _split_words(text: str) -> list[str]:
    """'Hello from the fake model.' -> ['Hello', ' from', ' the', ' fake', ' model.']"""
    parts = re.findall(r"\s*\S+", text)
    tail = text[len("".join(parts)) :]
    if tail:
        parts.append(tail)
    return parts or [""]


def _split_fixed(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _deltas(block: Block) -> list[str]:
    if block.pieces is not None:
        return block.pieces
    if block.type == "tool_use":
        raw = json.dumps(block.tool_input)
        return ["", *_split_fixed(raw, block.chunk or 16)]
    if block.chunk:
        return _split_fixed(block.text, block.chunk)
    return _split_words(block.text)


def _estimate_tokens(obj: Any) -> int:
    try:
        n = len(json.dumps(obj, ensure_ascii=False))
    except (TypeError, ValueError):
        n = 0
    return max(1, n // 4)


# --------------------------------------------------------------------------------------------------


class FakeAnthropic:
    """Scripted Anthropic Messages API on 127.0.0.1.

    - ``await start()`` binds a free port (or ``port``), ``await stop()``, ``base_url``;
      ``async with FakeAnthropic() as fake:`` does both.
    - ``requests``: JSON bodies of every POST (messages and count_tokens), in arrival order.
    - ``http_log``: one dict per HTTP request of any kind: method, path, query, status, scenario.
    - ``message_requests()``: only the /v1/messages bodies.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, access_log: bool = False) -> None:
        self.host = host
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self.http_log: list[dict[str, Any]] = []
        self._access_log = access_log
        self._runner: web.AppRunner | None = None
        self._attempts: dict[str, int] = {}
        self._closing = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("FakeAnthropic is not started")
        return f"http://{self.host}:{self.port}"

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_route("*", "/{tail:.*}", self._fallback)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._closing = asyncio.Event()
        runner = web.AppRunner(
            self.make_app(), access_log=access_logger if self._access_log else None, shutdown_timeout=2.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._runner = runner
        if self.port == 0:
            self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        self._closing.set()  # ends slow streams promptly
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> FakeAnthropic:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def message_requests(self) -> list[dict[str, Any]]:
        return [
            self.requests[e["body_index"]]
            for e in self.http_log
            if e["path"] == "/v1/messages" and "body_index" in e
        ]

    # -- handlers ----------------------------------------------------------------------------------

    def _log(self, request: web.Request, status: int, **extra: Any) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "status": status,
            **extra,
        }
        self.http_log.append(entry)
        return entry

    async def _fallback(self, request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(Exception):
            await request.read()
        self._log(request, 404)
        return web.json_response(
            {"type": "error", "error": {"type": "not_found_error", "message": "Not found (fake)"}},
            status=404,
        )

    async def _read_body(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        if body is None:
            self._log(request, 400)
            return _error_response(ErrorReply(400, "invalid_request_error", "Body is not JSON (fake)"))
        self.requests.append(body)
        self._log(request, 200, body_index=len(self.requests) - 1)
        return web.json_response({"input_tokens": _estimate_tokens(body.get("messages"))})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._read_body(request)
        if body is None:
            self._log(request, 400)
            return _error_response(ErrorReply(400, "invalid_request_error", "Body is not JSON (fake)"))
        self.requests.append(body)
        scenario = parse_scenario(body)
        stream = bool(body.get("stream", False))
        reply = self._plan(scenario, body, stream)
        status = reply.status if isinstance(reply, ErrorReply) else 200
        self._log(
            request,
            status,
            body_index=len(self.requests) - 1,
            scenario=scenario.name,
            stream=stream,
        )
        request_id = _api_id("req")
        if isinstance(reply, ErrorReply):
            return _error_response(reply, request_id)
        model = str(body.get("model") or DEFAULT_MODEL)
        input_tokens = _estimate_tokens(body.get("messages"))
        if not stream:
            return web.json_response(
                _full_message(reply, model, input_tokens), headers={"request-id": request_id}
            )
        return await self._stream(request, reply, model, input_tokens, request_id)

    # -- scenario logic ----------------------------------------------------------------------------

    def _plan(self, sc: Scenario, body: dict[str, Any], stream: bool) -> Reply | ErrorReply:
        name = sc.name
        if name == "tool_bash":
            if sc.after_tool_result:
                return Reply([Block("text", TOOL_BASH_DONE)])
            return Reply(
                [
                    Block("text", TOOL_BASH_INTRO),
                    Block("tool_use", tool_name="Bash", tool_input=dict(TOOL_BASH_INPUT)),
                ],
                stop_reason="tool_use",
            )
        if name == "env_tool":
            if sc.after_tool_result:
                return Reply([Block("text", ENV_TOOL_DONE)])
            return Reply(
                [Block("tool_use", tool_name="Bash", tool_input=dict(ENV_TOOL_INPUT))], stop_reason="tool_use"
            )
        if name == "sleep_tool":
            if sc.after_tool_result:
                return Reply([Block("text", SLEEP_TOOL_DONE)])
            return Reply(
                [Block("tool_use", tool_name="Bash", tool_input=dict(SLEEP_TOOL_INPUT))],
                stop_reason="tool_use",
            )
        if name == "daemon_tool":
            if sc.after_tool_result:
                return Reply([Block("text", SLEEP_TOOL_DONE)])
            return Reply(
                [Block("tool_use", tool_name="Bash", tool_input=dict(DAEMON_TOOL_INPUT))],
                stop_reason="tool_use",
            )
        if name == "slow":
            delay = sc.int_param("delay_ms", SLOW_DEFAULT_DELAY_MS) / 1000.0
            chunks = sc.int_param("chunks", SLOW_DEFAULT_CHUNKS)
            pieces = [f"tick {i} " for i in range(chunks)]
            return Reply([Block("text", "".join(pieces), pieces=pieces)], delay_s=delay)
        if name == "error400":
            return ErrorReply(400, "invalid_request_error", "Bad request (fake)")
        if name == "error500":
            return ErrorReply(500, "api_error", "Internal server error (fake)")
        if name == "error529":
            return ErrorReply(529, "overloaded_error", "Overloaded (fake)")
        if name == "thinking":
            thinking = Block("thinking", THINKING_TEXT, signature=THINKING_SIGNATURE)
            return Reply([thinking, Block("text", THINKING_REPLY)])
        if name == "remember":
            word = sc.params.get("arg", "nothing")
            return Reply([Block("text", f"I will remember {word}.")])
        if name == "recall":
            return Reply([Block("text", _recall(body, sc.message_index))])
        if name == "midstream_error":
            # The same request retried (same session metadata + messages) fails only on its first
            # streamed attempt; another CLI run (new session id) fails again.
            key = json.dumps([body.get("metadata"), body.get("messages")], sort_keys=True)
            attempt = self._attempts.get(key, 0) + 1
            self._attempts[key] = attempt
            if stream and attempt == 1:
                drop = sc.params.get("mode") == "drop"
                return Reply([Block("text", MIDSTREAM_PARTIAL)], midstream_error_after=3, midstream_drop=drop)
            return Reply([Block("text", MIDSTREAM_RECOVERED)])
        if name == "big":
            size = sc.int_param("size", BIG_DEFAULT_SIZE)
            return Reply([Block("text", big_text(size), chunk=8192)])
        return Reply([Block("text", TEXT_REPLY)])

    # -- SSE ---------------------------------------------------------------------------------------

    async def _stream(
        self, request: web.Request, reply: Reply, model: str, input_tokens: int, request_id: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": request_id,
            },
        )
        await resp.prepare(request)
        try:
            for event_type, data in _events(reply, model, input_tokens):
                if self._closing.is_set():
                    break
                if event_type == "__sleep__":
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), data["seconds"])
                    continue
                if event_type == "error" and reply.midstream_drop:
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                await resp.write(_sse(event_type, data))
                if event_type == "error":
                    break
            if self._closing.is_set() and request.transport is not None:
                request.transport.abort()  # server stopping mid-stream: cut the connection
                return resp
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away (a cancel test): nothing more to do
        return resp


def _sse(event_type: str, data: dict[str, Any]) -> bytes:
    return f"event: {event_type}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _output_tokens(reply: Reply) -> int:
    n = 0
    for b in reply.blocks:
        n += len(json.dumps(b.tool_input)) if b.type == "tool_use" else len(b.text)
    return max(1, n // 4)


def _prepare_ids(reply: Reply) -> None:
    for b in reply.blocks:
        if b.type == "tool_use" and not b.tool_id:
            b.tool_id = _api_id("toolu")


def _events(reply: Reply, model: str, input_tokens: int) -> Iterator[tuple[str, dict[str, Any]]]:
    _prepare_ids(reply)
    msg_id = _api_id("msg")
    yield (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _usage(input_tokens, 1),
            },
        },
    )
    yield "ping", {"type": "ping"}
    for index, block in enumerate(reply.blocks):
        if block.type == "text":
            start: dict[str, Any] = {"type": "text", "text": ""}
        elif block.type == "thinking":
            start = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            start = {"type": "tool_use", "id": block.tool_id, "name": block.tool_name, "input": {}}
        yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
        for n, piece in enumerate(_deltas(block)):
            if reply.midstream_error_after is not None and n >= reply.midstream_error_after:
                yield (
                    "error",
                    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded (fake)"}},
                )
                return
            if reply.delay_s:
                yield "__sleep__", {"seconds": reply.delay_s}
            if block.type == "text":
                delta: dict[str, Any] = {"type": "text_delta", "text": piece}
            elif block.type == "thinking":
                delta = {"type": "thinking_delta", "thinking": piece}
            else:
                delta = {"type": "input_json_delta", "partial_json": piece}
            yield "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        if block.type == "thinking":
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "signature_delta", "signature": block.signature},
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": _output_tokens(reply)},
        },
    )
    yield "message_stop", {"type": "message_stop"}


def _full_message(reply: Reply, model: str, input_tokens: int) -> dict[str, Any]:
    _prepare_ids(reply)
    content: list[dict[str, Any]] = []
    for b in reply.blocks:
        if b.type == "text":
            content.append({"type": "text", "text": b.text})
        elif b.type == "thinking":
            content.append({"type": "thinking", "thinking": b.text, "signature": b.signature})
        else:
            content.append({"type": "tool_use", "id": b.tool_id, "name": b.tool_name, "input": b.tool_input})
    return {
        "id": _api_id("msg"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": _usage(input_tokens, _output_tokens(reply)),
    }


def _error_response(err: ErrorReply, request_id: str | None = None) -> web.Response:
    headers = {"request-id": request_id or _api_id("req")}
    if err.status in (429, 529):
        headers["retry-after"] = "0"
    return web.json_response(
        {"type": "error", "error": {"type": err.error_type, "message": err.message}},
        status=err.status,
        headers=headers,
    )


def _recall(body: dict[str, Any], before: int) -> str:
    messages = body.get("messages") or []
    end = before if before >= 0 else len(messages)
    for msg in reversed(messages[:end]):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        for text in _text_blocks(msg.get("content")):
            found = _REMEMBER_RE.findall(text)
            if found:
                return f"You said {found[-1]}."
    return RECALL_NOTHING


# --------------------------------------------------------------------------------------------------


async def _serve_forever(host: str, port: int, verbose: bool) -> None:
    fake = FakeAnthropic(host, port, access_log=verbose)
    await fake.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"FakeAnthropic listening on {fake.base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await fake.stop()
        print(f"FakeAnthropic stopped after {len(fake.http_log)} requests", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Scripted Anthropic Messages API (fake) server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request to stderr")
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    asyncio.run(_serve_forever(args.host, args.port, args.verbose))


if __name__ == "__main__":
    main()
