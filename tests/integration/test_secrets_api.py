"""Secrets over HTTP, and what a run does with them: its agent gets them as environment, nobody else does,
and every value (and the service's own keys) is redacted from what the run produces and from the logs."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import structlog.testing

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.domain.models import (
    AgentEvent,
    AgentRequest,
    AgentResult,
    DoneEvent,
    OutputEvent,
    ReasoningEvent,
    TextEvent,
    ToolResultEvent,
    ToolUseEvent,
)
from agentd.logging import configure
from agentd.services.redaction import LOG_SECRETS
from tests.conftest import RunningAgentd

KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()
API_KEY = "the-service-api-key"
TOKEN = "ghp_projectToken123"
GLOBAL = "global-value-456789"


async def call(srv: RunningAgentd, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    headers = {"X-API-Key": API_KEY, **kw.pop("headers", {})}
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, srv.base_url + path, headers=headers, **kw) as r,
    ):
        body = await r.read()
        return r.status, json.loads(body) if body else None


@pytest.fixture
async def srv(agentd_factory: Any) -> RunningAgentd:
    server: RunningAgentd = await agentd_factory(
        [LeakyAgent(), ScriptedCodeAgent()], master_key=KEY, api_key=API_KEY
    )
    return server


@pytest.mark.parametrize("base", ["/projects/web/secrets", "/secrets"])
async def test_put_list_delete(srv: RunningAgentd, base: str) -> None:
    assert await call(srv, "PUT", f"{base}/GITHUB_TOKEN", json={"value": TOKEN}) == (204, None)
    assert await call(srv, "PUT", f"{base}/NPM_TOKEN", json={"value": "npm-token-value"}) == (204, None)
    assert await call(srv, "PUT", f"{base}/GITHUB_TOKEN", json={"value": TOKEN + "-v2"}) == (204, None)
    status, body = await call(srv, "GET", base)
    assert status == 200 and [s["name"] for s in body["secrets"]] == ["GITHUB_TOKEN", "NPM_TOKEN"]
    assert all(set(s) == {"name", "updated_at"} for s in body["secrets"])
    assert TOKEN not in json.dumps(body) and "npm-token-value" not in json.dumps(body)
    assert await call(srv, "DELETE", f"{base}/GITHUB_TOKEN") == (204, None)
    status, body = await call(srv, "DELETE", f"{base}/GITHUB_TOKEN")
    assert status == 404 and body["error"] == "secret_not_found" and "GITHUB_TOKEN" in body["message"]
    status, body = await call(srv, "GET", base)
    assert [s["name"] for s in body["secrets"]] == ["NPM_TOKEN"]


async def test_scopes_are_apart(srv: RunningAgentd) -> None:
    await call(srv, "PUT", "/projects/a/secrets/ONLY_A", json={"value": "value-for-a"})
    await call(srv, "PUT", "/secrets/EVERYWHERE", json={"value": GLOBAL})
    assert (await call(srv, "GET", "/projects/b/secrets"))[1] == {"secrets": []}
    assert [s["name"] for s in (await call(srv, "GET", "/secrets"))[1]["secrets"]] == ["EVERYWHERE"]
    assert (await call(srv, "DELETE", "/projects/b/secrets/ONLY_A"))[0] == 404


@pytest.mark.parametrize(
    ("path", "body", "code", "fragment"),
    [
        ("/secrets/lower_case", {"value": "long-enough"}, "invalid_secret_name", "environment variable name"),
        ("/secrets/1ABC", {"value": "long-enough"}, "invalid_secret_name", "[A-Z_]"),
        ("/secrets/PATH", {"value": "long-enough"}, "invalid_secret_name", "reserved"),
        ("/secrets/AGENTD_API_KEY", {"value": "long-enough"}, "invalid_secret_name", "reserved"),
        ("/projects/p/secrets/SHORT", {"value": "short"}, "invalid_secret_value", "at least 8"),
        ("/projects/p/secrets/NUMBER", {"value": 12345678}, "invalid_secret_value", "string"),
        (
            "/projects/p/secrets/EXTRA",
            {"value": "long-enough", "x": 1},
            "invalid_request",
            '{"value": "..."}',
        ),
        ("/projects/p/secrets/NO_BODY", None, "invalid_request", '{"value": "..."}'),
        ("/projects/Bad!/secrets/NAME", {"value": "long-enough"}, "invalid_project_id", "project id"),
    ],
)
async def test_bad_input_is_a_400_that_says_what_to_fix(
    srv: RunningAgentd, path: str, body: Any, code: str, fragment: str
) -> None:
    status, data = (
        await call(srv, "PUT", path, json=body)
        if body is not None
        else await call(srv, "PUT", path, headers={"Content-Type": "application/json"})
    )
    assert status == 400 and data["error"] == code and fragment in data["message"], data


async def test_without_a_master_key_the_routes_answer_503_saying_how(agentd_factory: Any) -> None:
    srv = await agentd_factory([ScriptedCodeAgent()], api_key=API_KEY)
    for method, path, kw in (
        ("GET", "/secrets", {}),
        ("PUT", "/projects/p/secrets/TOKEN", {"json": {"value": TOKEN}}),
        ("DELETE", "/projects/p/secrets/TOKEN", {}),
    ):
        status, data = await call(srv, method, path, **kw)
        assert status == 503 and data["error"] == "secrets_unavailable", data
        assert "AGENTD_MASTER_KEY" in data["message"] and "agentd secrets new-master-key" in data["message"]
    # Jobs still run, without secrets.
    status, job = await call(srv, "POST", "/projects/p/jobs", json={"prompt": "hi there"})
    items = [it async for it in srv.client.follow(job["stream_url"])]
    assert items[-1].data["status"] == "succeeded"


async def test_secrets_need_the_api_key(srv: RunningAgentd) -> None:
    status, data = await call(srv, "GET", "/secrets", headers={"X-API-Key": "wrong"})
    assert status == 401 and data["error"] == "unauthorized"


# --- a run and its secrets ----------------------------------------------------------------------------


class LeakyAgent(ScriptedCodeAgent):
    """Prints every secret it was given everywhere it can: split across chunks, in tool calls, on stderr."""

    def __init__(self) -> None:
        super().__init__("leaky")
        self.envs: list[dict[str, str]] = []

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        given = dict(env or {})
        self.envs.append(given)
        everything = " ".join(f"{k}={v}" for k, v in sorted(given.items())) + f" api={API_KEY}"
        for i, value in enumerate(given.values()):
            cut = len(value) // 2 + i
            yield TextEvent(message_id=f"m{i}", chunk=f"see {value[:cut]}")
            yield TextEvent(message_id=f"m{i}", chunk=f"{value[cut:]} there", is_complete=True)
            yield ReasoningEvent(message_id=f"r{i}", chunk=value[:3])
            yield ReasoningEvent(message_id=f"r{i}", chunk=value[3:])  # never completed: flushed at done
        yield ToolUseEvent(tool_use_id="t", name="Bash", input={"command": f"echo {everything}"})
        yield ToolResultEvent(tool_use_id="t", output=everything)
        yield OutputEvent(type="stderr", content=everything)
        structlog.get_logger("leaky").warning("leaky.logs", what=everything)
        status = "failed" if "fail" in request.prompt else "succeeded"
        yield DoneEvent.from_result(AgentResult(status=status, result=everything, error=everything))


@pytest.fixture
def log_lines() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog with agentd's redaction step, capturing what would be rendered."""
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.processors.format_exc_info, LOG_SECRETS, capture])
    yield capture.entries
    structlog.reset_defaults()


def test_agentd_logging_redacts_after_formatting_the_traceback() -> None:
    configure("info", "json")
    try:
        procs = structlog.get_config()["processors"]
        assert procs.index(LOG_SECRETS) == procs.index(structlog.processors.format_exc_info) + 1
        assert procs.index(LOG_SECRETS) == len(procs) - 2  # just before the renderer
    finally:
        structlog.reset_defaults()


async def test_a_run_gets_its_project_secrets_and_nothing_else_sees_them(
    srv: RunningAgentd, log_lines: list[MutableMapping[str, Any]]
) -> None:
    await call(srv, "PUT", "/secrets/GITHUB_TOKEN", json={"value": "global-gh-token"})
    await call(srv, "PUT", "/secrets/SHARED", json={"value": GLOBAL})
    await call(srv, "PUT", "/projects/web/secrets/GITHUB_TOKEN", json={"value": TOKEN})
    await call(srv, "PUT", "/projects/other/secrets/OTHER_ONLY", json={"value": "other-project-value"})
    for prompt in ("work", "fail"):
        status, job = await call(srv, "POST", "/projects/web/jobs", json={"prompt": prompt})
        assert status == 202
        items = [it async for it in srv.client.follow(job["stream_url"])]
        agent = srv.container.registry.get("leaky")
        assert isinstance(agent, LeakyAgent)
        assert agent.envs[-1] == {"GITHUB_TOKEN": TOKEN, "SHARED": GLOBAL}  # the project's over the global

        seen = json.dumps([[it.event, it.data] for it in items])
        for value in (TOKEN, GLOBAL, API_KEY, KEY):
            assert value not in seen
        assert seen.count("[REDACTED:GITHUB_TOKEN]") >= 6 and "[REDACTED:AGENTD_API_KEY]" in seen
        text = "".join(
            it.data["chunk"] for it in items if it.event == "text" and it.data["message_id"] == "m0"
        )
        assert text == "see [REDACTED:GITHUB_TOKEN] there"
        thought = "".join(
            it.data["chunk"] for it in items if it.event == "reasoning" and it.data["message_id"] == "r1"
        )
        assert thought == "[REDACTED:SHARED]"
        done = items[-1].data
        assert done["status"] == ("failed" if prompt == "fail" else "succeeded")
        assert (
            done["result"]
            == done["error"]
            == ("GITHUB_TOKEN=[REDACTED:GITHUB_TOKEN] SHARED=[REDACTED:SHARED] api=[REDACTED:AGENTD_API_KEY]")
        )
        _, record = await call(srv, "GET", f"/projects/web/jobs/{job['job_id']}")
        assert TOKEN not in json.dumps(record) and record["result"]["result"] == done["result"]
    _, providers = await call(srv, "GET", "/providers")
    assert TOKEN not in json.dumps(providers)
    logged = repr(log_lines)
    assert "leaky.logs" in logged and "[REDACTED:GITHUB_TOKEN]" in logged
    for value in (TOKEN, GLOBAL, API_KEY):
        assert value not in logged
