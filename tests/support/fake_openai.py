"""A scripted OpenAI-compatible model server (streaming /v1/chat/completions) for end-to-end tests.

The scenario is picked by a keyword in the most recent user message (``SCENARIO:<name> [arg]``):

- ``text``           a short answer streamed in word chunks (`TEXT_ANSWER`)
- ``tool_bash``      first a `bash` tool call writing out.txt, then (after the tool result) `TOOL_ANSWER`
- ``slow``           ``tick0 tick1 ...`` every `SLOW_INTERVAL_S`, long enough to be aborted
- ``long``           `LONG_CHUNKS` numbered chunks, `LONG_INTERVAL_S` apart (for stream-cut tests)
- ``reasoning``      reasoning deltas, then text
- ``error400``       HTTP 400 with `ERROR400_MESSAGE`
- ``error500_once``  HTTP 500 on the first call of a session, then `TEXT_ANSWER`
- ``midstream_fail`` some text, then an error in the middle of the stream (every attempt)
- ``stall``          one chunk of text, then nothing until the client hangs up (or `STALL_S`)
- ``remember WORD``  acknowledges the word; ``recall`` answers with the word found in the history

Title-generation requests (OpenCode's small model) get a fixed title. Anything else gets `TEXT_ANSWER`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TEXT_ANSWER = "Hello from the fake model."
TOOL_ANSWER = "Done: the file was written."
TOOL_COMMAND = "echo hello > out.txt"
ERROR400_MESSAGE = "fake bad request: context too long"
ERROR500_MESSAGE = "fake internal error"
SLOW_INTERVAL_S = 0.2
SLOW_TICKS = 150
STALL_S = 60.0
LONG_CHUNKS = 40
LONG_INTERVAL_S = 0.04
LONG_ANSWER = "".join(f"w{i:02d} " for i in range(LONG_CHUNKS))
REASONING_TEXT = "Let me think about it."
REASONING_ANSWER = "Answer after thinking."
TITLE = "Fake Title"
MODEL_ID = "fake-model"
_SCENARIO_RE = re.compile(r"SCENARIO:(\w+)(?:[ \t]+(\S+))?")


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    scenario: str
    status: int = 200
    disconnected: bool = False


@dataclass
class _Counters:
    by_session: dict[str, int] = field(default_factory=dict)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def opencode_config(base_url: str, *, model_id: str = MODEL_ID) -> dict[str, Any]:
    """An OPENCODE_CONFIG_CONTENT document that makes OpenCode use this fake server as provider `fake`."""
    return {
        "model": f"fake/{model_id}",
        "small_model": f"fake/{model_id}",
        "autoupdate": False,
        "share": "disabled",
        "enabled_providers": ["fake"],
        "permission": {"bash": "allow", "edit": "allow", "webfetch": "deny"},
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake",
                "options": {"baseURL": base_url, "apiKey": "sk-fake"},
                "models": {
                    model_id: {
                        "name": "Fake",
                        "tool_call": True,
                        "limit": {"context": 128000, "output": 4096},
                    }
                },
            }
        },
    }


class FakeOpenAI:
    """`async with FakeOpenAI() as fake:` then point a provider at `fake.base_url` (ends with /v1)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._counters = _Counters()
        self.requests: list[RecordedRequest] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    def config(self) -> dict[str, Any]:
        return opencode_config(self.base_url)

    def requests_for(self, scenario: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.scenario == scenario]

    async def start(self) -> FakeOpenAI:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- request handling ---------------------------------------------------------------------------

    def _scenario(self, messages: list[dict[str, Any]]) -> tuple[str, str | None, int]:
        """(name, argument, index of the user message that carries it)."""
        if (
            messages
            and messages[0].get("role") == "system"
            and "title generator" in _text_of(messages[0].get("content"))
        ):
            return "title", None, -1
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].get("role") != "user":
                continue
            m = _SCENARIO_RE.search(_text_of(messages[i].get("content")))
            if m:
                return m.group(1), m.group(2), i
            return "default", None, i
        return "default", None, -1

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        messages: list[dict[str, Any]] = body.get("messages", [])
        name, arg, idx = self._scenario(messages)
        rec = RecordedRequest(request.path, dict(request.headers), body, name)
        self.requests.append(rec)
        after_tool = idx >= 0 and any(m.get("role") == "tool" for m in messages[idx + 1 :])
        session = request.headers.get("x-session-id", "")

        if name == "error400":
            rec.status = 400
            err = {"message": ERROR400_MESSAGE, "type": "invalid_request_error", "code": "bad_request"}
            return web.json_response({"error": err}, status=400)
        if name == "error500_once":
            key = f"{session}:{idx}"
            n = self._counters.by_session.get(key, 0)
            self._counters.by_session[key] = n + 1
            if n == 0:
                rec.status = 500
                return web.json_response(
                    {"error": {"message": ERROR500_MESSAGE, "type": "server_error", "code": 500}}, status=500
                )

        stream = _Stream(request, rec, self._closing)
        await stream.open()
        try:
            await self._script(stream, name, arg, messages, after_tool)
        except ConnectionError:  # the client hung up (an abort): nothing more to send
            rec.disconnected = True
        except asyncio.CancelledError:
            rec.disconnected = True
            raise
        return stream.response

    async def _script(
        self, s: _Stream, name: str, arg: str | None, messages: list[dict[str, Any]], after_tool: bool
    ) -> None:
        if name == "title":
            await s.text_chunks([TITLE])
        elif name == "tool_bash" and not after_tool:
            args = {"command": TOOL_COMMAND, "description": "Write hello to out.txt"}
            await s.tool_call("bash", args)
        elif name == "tool_bash":
            await s.text_chunks(["Done", ": the ", "file ", "was ", "written", "."])
        elif name == "slow":
            await s.text_chunks([f"tick{i} " for i in range(SLOW_TICKS)], delay=SLOW_INTERVAL_S)
        elif name == "long":
            await s.text_chunks([f"w{i:02d} " for i in range(LONG_CHUNKS)], delay=LONG_INTERVAL_S)
        elif name == "reasoning":
            thinking, answer = ["Let me ", "think ", "about it."], ["Answer ", "after ", "thinking."]
            await s.reasoning_then_text(thinking, answer)
        elif name == "midstream_fail":
            await s.fail_midstream(["partial "])
        elif name == "stall":
            await s.text_chunks(["waiting", ""], delay=STALL_S)
        elif name == "remember":
            await s.text_chunks(["OK, I will ", f"remember {arg}."])
        elif name == "recall":
            word = None
            for m in messages:
                found = re.search(r"SCENARIO:remember[ \t]+(\S+)", _text_of(m.get("content")))
                if m.get("role") == "user" and found:
                    word = found.group(1)
            await s.text_chunks(["The word ", f"was {word}."] if word else ["I do not remember a word."])
        else:
            await s.text_chunks(["Hello ", "from ", "the ", "fake ", "model."])


class _Stream:
    """One streamed chat.completion.chunk response."""

    def __init__(self, request: web.Request, rec: RecordedRequest, closing: asyncio.Event) -> None:
        self._request = request
        self._rec = rec
        self._closing = closing
        self._id = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        self.response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})

    async def open(self) -> None:
        await self.response.prepare(self._request)

    async def _send(self, payload: dict[str, Any] | str) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        await self.response.write(f"data: {data}\n\n".encode())

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": MODEL_ID,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    async def _finish(self, reason: str, prompt_tokens: int = 100, completion_tokens: int = 6) -> None:
        await self._send(self._chunk({}, reason))
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        await self._send({"id": self._id, "object": "chat.completion.chunk", "choices": [], "usage": usage})
        await self._send("[DONE]")
        await self.response.write_eof()

    async def _pause(self, delay: float) -> None:
        if delay > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), delay)
            except TimeoutError:
                return
            raise ConnectionResetError("fake server is closing")

    async def text_chunks(self, chunks: list[str], *, delay: float = 0.02) -> None:
        await self._send(self._chunk({"role": "assistant", "content": ""}))
        for i, c in enumerate(chunks):
            if i:
                await self._pause(delay)
            await self._send(self._chunk({"content": c}))
        await self._finish("stop", completion_tokens=len(chunks))

    async def reasoning_then_text(self, thinking: list[str], answer: list[str]) -> None:
        await self._send(self._chunk({"role": "assistant", "content": ""}))
        for c in thinking:
            await self._send(self._chunk({"reasoning_content": c}))
            await self._pause(0.02)
        for c in answer:
            await self._send(self._chunk({"content": c}))
            await self._pause(0.02)
        await self._finish("stop", completion_tokens=len(thinking) + len(answer))

    async def tool_call(self, name: str, args: dict[str, Any]) -> None:
        call = {
            "index": 0,
            "id": f"call_{uuid.uuid4().hex[:12]}",
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(args)},
        }
        await self._send(self._chunk({"role": "assistant", "content": None, "tool_calls": [call]}))
        await self._finish("tool_calls", completion_tokens=12)

    async def fail_midstream(self, chunks: list[str]) -> None:
        await self._send(self._chunk({"role": "assistant", "content": ""}))
        for c in chunks:
            await self._send(self._chunk({"content": c}))
        await self._pause(0.05)
        err = {"message": "fake mid-stream failure", "type": "server_error", "code": 500}
        await self._send({"error": err})
        await self.response.write_eof()
