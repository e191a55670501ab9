"""A scripted, offline OpenAI Responses API server (streaming ``POST /v1/responses``) for the Codex CLI.

Usage::

    async with FakeResponses() as fake:          # 127.0.0.1, random free port
        fake.base_url                             # http://127.0.0.1:PORT/v1 (Codex appends /responses)
        ...                                       # run `codex exec --json "SCENARIO:tool"` ...
        fake.requests[0].body["model"]

Standalone (manual runs, recording fixtures): ``python -m tests.support.fake_responses --port 18080``

The reply is chosen by a ``SCENARIO:<name> [word] [key=value ...]`` keyword searched in the LAST user
message of ``input`` that carries one (Codex puts its own environment context in user messages too,
and tool outputs are ``function_call_output`` items, so a tool turn keeps the scenario of its prompt,
and a resumed thread uses its new prompt). No keyword: ``text``.

  SCENARIO:text            reasoning summary "**Thinking**\\n\\nConsidering the request." (deltas), then
                           `TEXT_ANSWER` in word deltas
  SCENARIO:tool            turn 1: an `exec_command` call running `TOOL_COMMAND`; after its output:
                           `TOOL_ANSWER` in deltas
  SCENARIO:sleep_tool      turn 1: `exec_command` running `SLEEP_COMMAND`; after its output: "slept"
  SCENARIO:slow [delay_ms=100] [chunks=300]   deltas "tick0 ", "tick1 ", ... delay_ms apart
  SCENARIO:error400        HTTP 400 invalid_request_error `ERROR400_MESSAGE`
  SCENARIO:error500        HTTP 500 server_error `ERROR500_MESSAGE`, every attempt
  SCENARIO:error500_once   HTTP 500 on the first attempt of a conversation, then `TEXT_ANSWER`
  SCENARIO:shell COMMAND   turn 1: `exec_command` running COMMAND (the rest of the line); after its output:
                           "ran: " + that output
  SCENARIO:remember WORD   "I will remember WORD."
  SCENARIO:recall          "You said WORD." (WORD from an earlier "SCENARIO:remember WORD" in the same
                           request's input), else "I don't remember anything."
A request for model `BAD_MODEL` gets HTTP 404 model_not_found (`bad_model_message`), like OpenAI's API.
Every response ends with ``response.completed`` carrying `USAGE` (per request; Codex sums them up per
thread). Anything else than POST /v1/responses: 404 JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

TEXT_ANSWER = "Hello from the fake model."
TEXT_CHUNKS = ["Hello", " from", " the", " fake", " model", "."]
REASONING_CHUNKS = ["**Thinking**\n\n", "Considering", " the", " request."]
REASONING_TEXT = "".join(REASONING_CHUNKS)
TOOL_COMMAND = "echo hello > out.txt && echo tool-ran"
TOOL_ANSWER = "Done: the file was written."
TOOL_CHUNKS = ["Done", ": the", " file", " was", " written", "."]
SLEEP_COMMAND = "sleep 300"
ERROR400_MESSAGE = "fake bad request: context too long"
ERROR500_MESSAGE = "fake internal error"
BAD_MODEL = "no-such-model"
USAGE = {
    "input_tokens": 100,
    "input_tokens_details": {"cached_tokens": 10},
    "output_tokens": 20,
    "output_tokens_details": {"reasoning_tokens": 5},
    "total_tokens": 120,
}
_SCENARIO_RE = re.compile(r"SCENARIO:(\w+)((?:[ \t]+\S+)*)")


def bad_model_message(model: str) -> str:
    return f"The model `{model}` does not exist or you do not have access to it."


def slow_text(chunks: int) -> str:
    return "".join(f"tick{i} " for i in range(chunks))


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    scenario: str
    status: int = 200
    disconnected: bool = False


@dataclass
class _Scenario:
    name: str
    word: str | None = None
    opts: dict[str, str] = field(default_factory=dict)
    index: int = -1  # of the input item that carries it
    rest: str = ""  # the rest of the line after the name


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _user_texts(items: list[Any]) -> list[tuple[int, str]]:
    return [
        (i, _text_of(it.get("content")))
        for i, it in enumerate(items)
        if isinstance(it, dict) and it.get("type", "message") == "message" and it.get("role") == "user"
    ]


def find_scenario(items: list[Any]) -> _Scenario:
    for i, text in reversed(_user_texts(items)):
        m = _SCENARIO_RE.search(text)
        if m:
            word, opts = None, {}
            for tok in m.group(2).split():
                k, eq, v = tok.partition("=")
                if eq:
                    opts[k] = v
                elif word is None:
                    word = tok
            return _Scenario(m.group(1), word, opts, i, m.group(2).strip())
    return _Scenario("text")


class FakeResponses:
    """`async with FakeResponses() as fake:`; point Codex's provider `base_url` at `fake.base_url`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self._failed_once: set[str] = set()
        self.requests: list[RecordedRequest] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}/v1"

    def requests_for(self, scenario: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.scenario == scenario]

    async def start(self) -> FakeResponses:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_route("*", "/{tail:.*}", self._other)
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

    async def __aenter__(self) -> FakeResponses:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _other(self, request: web.Request) -> web.Response:
        err = {"message": f"fake: no route {request.method} {request.path}", "type": "not_found"}
        return web.json_response({"error": err}, status=404)

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        items: list[Any] = body.get("input") or []
        sc = find_scenario(items)
        rec = RecordedRequest(request.path, dict(request.headers), body, sc.name)
        self.requests.append(rec)
        after_tool = any(
            isinstance(it, dict) and it.get("type") == "function_call_output" for it in items[sc.index + 1 :]
        )
        model = str(body.get("model") or "")
        if model == BAD_MODEL:
            rec.status = 404
            err: dict[str, Any] = {
                "message": bad_model_message(model),
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
            return web.json_response({"error": err}, status=404)
        if sc.name == "error400":
            rec.status = 400
            err = {
                "message": ERROR400_MESSAGE,
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_value",
            }
            return web.json_response({"error": err}, status=400)
        conversation = f"{body.get('prompt_cache_key')}:{len(_user_texts(items))}"
        if sc.name == "error500" or (sc.name == "error500_once" and conversation not in self._failed_once):
            self._failed_once.add(conversation)
            rec.status = 500
            err = {"message": ERROR500_MESSAGE, "type": "server_error", "param": None, "code": None}
            return web.json_response({"error": err}, status=500)

        stream = _Stream(request, model, self._closing)
        await stream.open()
        try:
            await self._script(stream, sc, items, after_tool)
            await stream.completed()
        except ConnectionError:  # the client hung up (cancel): nothing more to send
            rec.disconnected = True
        except asyncio.CancelledError:
            rec.disconnected = True
            raise
        return stream.response

    async def _script(self, s: _Stream, sc: _Scenario, items: list[Any], after_tool: bool) -> None:
        if sc.name == "tool" and not after_tool:
            await s.function_call("exec_command", {"cmd": TOOL_COMMAND})
        elif sc.name == "tool":
            await s.message(TOOL_CHUNKS)
        elif sc.name == "sleep_tool" and not after_tool:
            await s.function_call("exec_command", {"cmd": SLEEP_COMMAND, "yield_time_ms": 600000})
        elif sc.name == "sleep_tool":
            await s.message(["slept"])
        elif sc.name == "slow":
            n = int(sc.opts.get("chunks", "300"))
            delay = int(sc.opts.get("delay_ms", "100")) / 1000
            await s.message([f"tick{i} " for i in range(n)], delay=delay)
        elif sc.name == "shell" and not after_tool:
            await s.function_call("exec_command", {"cmd": sc.rest})
        elif sc.name == "shell":
            await s.message(["ran: ", _tool_output(items)])
        elif sc.name == "remember":
            await s.message(["I will ", f"remember {sc.word}."])
        elif sc.name == "recall":
            word = None
            for _, text in _user_texts(items):
                m = re.search(r"SCENARIO:remember[ \t]+(\S+)", text)
                if m:
                    word = m.group(1)
            await s.message(["You said ", f"{word}."] if word else ["I don't remember anything."])
        else:
            await s.reasoning(REASONING_CHUNKS)
            await s.message(TEXT_CHUNKS)


def _tool_output(items: list[Any]) -> str:
    outs = [it for it in items if isinstance(it, dict) and it.get("type") == "function_call_output"]
    out = outs[-1].get("output") if outs else ""
    return out if isinstance(out, str) else json.dumps(out)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode()


class _Stream:
    """One streamed response: output items with deltas, then response.completed."""

    def __init__(self, request: web.Request, model: str, closing: asyncio.Event) -> None:
        self._request = request
        self._closing = closing
        self._model = model
        self._id = f"resp_{uuid.uuid4().hex[:12]}"
        self._index = 0
        self.response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})

    async def open(self) -> None:
        await self.response.prepare(self._request)
        await self._send("response.created", {"response": self._resp("in_progress")})

    def _resp(self, status: str, **extra: Any) -> dict[str, Any]:
        return {"id": self._id, "object": "response", "model": self._model, "status": status, **extra}

    async def _send(self, event: str, data: dict[str, Any]) -> None:
        await self.response.write(_sse(event, data))

    async def _pause(self, delay: float) -> None:
        if delay > 0:
            try:
                await asyncio.wait_for(self._closing.wait(), delay)
            except TimeoutError:
                return
            raise ConnectionResetError("fake server is closing")

    async def _item(self, added: dict[str, Any]) -> int:
        idx = self._index
        self._index += 1
        await self._send("response.output_item.added", {"output_index": idx, "item": added})
        return idx

    async def _done(self, idx: int, item: dict[str, Any]) -> None:
        await self._send("response.output_item.done", {"output_index": idx, "item": item})

    async def reasoning(self, chunks: list[str]) -> None:
        rid = f"rs_{uuid.uuid4().hex[:8]}"
        idx = await self._item({"type": "reasoning", "id": rid, "summary": []})
        for c in chunks:
            await self._send(
                "response.reasoning_summary_text.delta",
                {"item_id": rid, "output_index": idx, "summary_index": 0, "delta": c},
            )
        text = "".join(chunks)
        await self._done(
            idx, {"type": "reasoning", "id": rid, "summary": [{"type": "summary_text", "text": text}]}
        )

    async def message(self, chunks: list[str], *, delay: float = 0.0) -> None:
        mid = f"msg_{uuid.uuid4().hex[:8]}"
        added = {"type": "message", "id": mid, "role": "assistant", "status": "in_progress", "content": []}
        idx = await self._item(added)
        for i, c in enumerate(chunks):
            if i:
                await self._pause(delay)
            await self._send(
                "response.output_text.delta",
                {"item_id": mid, "output_index": idx, "content_index": 0, "delta": c},
            )
        content = [{"type": "output_text", "text": "".join(chunks), "annotations": []}]
        await self._done(
            idx,
            {"type": "message", "id": mid, "role": "assistant", "status": "completed", "content": content},
        )

    async def function_call(self, name: str, args: dict[str, Any]) -> None:
        fid, call_id = f"fc_{uuid.uuid4().hex[:8]}", f"call_{uuid.uuid4().hex[:8]}"
        arguments = json.dumps(args)
        item = {
            "type": "function_call",
            "id": fid,
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "status": "completed",
        }
        idx = await self._item({**item, "arguments": "", "status": "in_progress"})
        await self._send(
            "response.function_call_arguments.delta",
            {"item_id": fid, "output_index": idx, "delta": arguments},
        )
        await self._done(idx, item)

    async def completed(self) -> None:
        await self._send("response.completed", {"response": self._resp("completed", usage=USAGE)})
        await self.response.write_eof()


async def _serve(port: int) -> None:
    fake = await FakeResponses(port=port).start()
    print(f"fake Responses API on {fake.base_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=18080)
    asyncio.run(_serve(ap.parse_args().port))


if __name__ == "__main__":
    main()
