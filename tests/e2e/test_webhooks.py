"""Webhooks end to end: `agentd serve` as a real process, a receiver on 127.0.0.1 that verifies every
signature with the README's ten lines, retries after a 5xx, no retry after a 4xx, deliveries that survive
a crash of agentd, the project's WEBHOOK_SECRET over AGENTD_WEBHOOK_SECRET. Also the README's SDK example,
run as written."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import textwrap
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.agentd_proc import ROOT, Server, base_env, serve

pytestmark = pytest.mark.e2e
__all__ = ["base_env", "serve"]  # fixtures
FALLBACK = "fallback-secret-0123456789"
PROJECT_SECRET = "project-secret-abcdefghij"


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = (ROOT / "README.md").read_text()
    m = re.search(re.escape(heading) + r".*?```python\n(.*?)```", text, re.S)
    assert m, f"no python block under {heading!r} in README.md"
    return m.group(1)


README_NS: dict[str, Any] = {}
exec(readme_block("## Webhooks"), README_NS)  # the receiver's `verify`, exactly as documented
verify = README_NS["verify"]


class Receiver:
    def __init__(self, answers: list[int] | None = None) -> None:
        self.answers = answers or []
        self.got: list[dict[str, Any]] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append(
            {
                "body": json.loads(body),
                "raw": body,
                "signature": request.headers["X-Agentd-Signature"],
                "delivery": request.headers["X-Agentd-Delivery"],
                "event": request.headers["X-Agentd-Event"],
            }
        )
        return web.Response(status=self.answers.pop(0) if self.answers else 204)

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def api(srv: Server, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.request(method, srv.url + path, **kw) as r:
        return r.status, (await r.json() if r.content_type == "application/json" else None)


async def until(check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.1)


async def deliveries(srv: Server, project: str, job_id: str) -> list[dict[str, Any]]:
    status, body = await api(srv, "GET", f"/projects/{project}/jobs/{job_id}/deliveries")
    assert status == 200, body
    out: list[dict[str, Any]] = body["deliveries"]
    return out


async def test_signed_deliveries_retried_after_5xx_not_after_4xx(serve: Any) -> None:
    rx = Receiver([503])  # the first POST fails: agentd tries again
    url = await rx.start()
    srv = serve(
        AGENTD_PROVIDERS="scripted",
        AGENTD_WEBHOOK_SECRET=FALLBACK,
        AGENTD_WEBHOOK_RETRY_BASE_S="0.3",
        AGENTD_MASTER_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
    )
    try:
        hook = {"url": url, "events": ["done", "status"]}
        status, job = await api(srv, "POST", "/projects/hooks/jobs", json={"prompt": "hi", "webhook": hook})
        assert status == 202, job

        async def delivered() -> list[dict[str, Any]] | None:
            found = await deliveries(srv, "hooks", job["job_id"])
            return found if found and all(d["status"] == "delivered" for d in found) else None

        found = await until(delivered)
        assert [d["event"] for d in found] == ["status", "done"]  # running, then the end
        first = found[0]
        assert first["attempts"] == 2 and [h["status_code"] for h in first["history"]] == [503, 204]
        assert first["last_status_code"] == 204
        for got in rx.got:
            assert verify(FALLBACK, got["signature"], got["raw"])
            assert not verify("another-secret", got["signature"], got["raw"])
        done = next(g for g in rx.got if g["event"] == "done")
        assert done["body"]["status"] == "succeeded" and done["body"]["result"]["result"] == "hi"
        assert done["delivery"] == done["body"]["delivery_id"]
        retried = [g["delivery"] for g in rx.got if g["event"] == "status"]
        assert len(retried) == 2 and len(set(retried)) == 1  # one delivery id, sent twice

        # The project's own secret wins over AGENTD_WEBHOOK_SECRET; a 4xx is final.
        status, _ = await api(
            srv, "PUT", "/projects/hooks/secrets/WEBHOOK_SECRET", json={"value": PROJECT_SECRET}
        )
        assert status == 204
        rx.answers = [410]
        status, job2 = await api(
            srv, "POST", "/projects/hooks/jobs", json={"prompt": "fail:x", "webhook": {"url": url}}
        )

        async def failed() -> list[dict[str, Any]] | None:
            found = await deliveries(srv, "hooks", job2["job_id"])
            return found if found and found[0]["status"] == "failed" else None

        (gone,) = await until(failed)
        assert gone["attempts"] == 1 and gone["last_status_code"] == 410 and gone["next_attempt_at"] is None
        last = rx.got[-1]
        assert verify(PROJECT_SECRET, last["signature"], last["raw"]) and last["body"]["status"] == "failed"
        # Bad webhooks are refused with a message that says what to fix.
        status, err = await api(
            srv, "POST", "/projects/hooks/jobs", json={"prompt": "x", "webhook": {"url": "ftp://x"}}
        )
        assert status == 400 and "webhook.url" in err["message"]
        status, err = await api(srv, "GET", "/projects/hooks/jobs/job_nope/deliveries")
        assert status == 404
    finally:
        await rx.stop()


async def test_deliveries_survive_a_crash_and_reach_a_receiver_that_comes_back(serve: Any) -> None:
    rx = Receiver()
    url = await rx.start()
    port = rx.port
    await rx.stop()  # nobody listens: connection refused, retried
    srv = serve(
        AGENTD_PROVIDERS="scripted", AGENTD_WEBHOOK_SECRET=FALLBACK, AGENTD_WEBHOOK_RETRY_BASE_S="0.5"
    )
    status, job = await api(
        srv, "POST", "/projects/crash/jobs", json={"prompt": "x", "webhook": {"url": url}}
    )
    assert status == 202

    async def tried() -> bool:
        found = await deliveries(srv, "crash", job["job_id"])
        return bool(found) and found[0]["attempts"] >= 1

    await until(tried)
    (pending,) = await deliveries(srv, "crash", job["job_id"])
    assert pending["status"] == "pending" and pending["last_status_code"] is None and pending["last_error"]
    srv.stop(signal.SIGKILL)
    await rx.start(port)
    try:
        srv.start()  # same data dir: the delivery is still there

        async def delivered() -> bool:
            found = await deliveries(srv, "crash", job["job_id"])
            return bool(found[0]["status"] == "delivered")

        await until(delivered)
        assert len(rx.got) == 1 and verify(FALLBACK, rx.got[0]["signature"], rx.got[0]["raw"])
    finally:
        await rx.stop()


async def test_the_readme_sdk_example_runs_as_written(serve: Any) -> None:
    srv = serve(AGENTD_PROVIDERS="scripted")
    code = readme_block("## The Python SDK").replace("http://127.0.0.1:8080", srv.url)
    ns: dict[str, Any] = {}
    exec("async def example():\n" + textwrap.indent(code, "    "), ns)
    await ns["example"]()
