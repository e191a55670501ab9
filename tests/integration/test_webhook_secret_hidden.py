"""A project's WEBHOOK_SECRET signs its webhooks and never reaches a run's environment."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent
from agentd.domain.models import AgentEvent, AgentRequest


class EnvRecorder(ScriptedCodeAgent):
    def __init__(self) -> None:
        super().__init__("scripted")
        self.envs: list[dict[str, str]] = []

    async def execute(
        self,
        request: AgentRequest,
        *,
        run_id: str,
        env: Mapping[str, str] | None = None,
        workdir: Path | None = None,
    ) -> AsyncIterator[AgentEvent]:
        self.envs.append(dict(env or {}))
        async for ev in super().execute(request, run_id=run_id, env=env, workdir=workdir):
            yield ev


async def test_the_run_gets_the_projects_secrets_but_not_webhook_secret(agentd_factory: Any) -> None:
    agent = EnvRecorder()
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    srv = await agentd_factory([agent], master_key=key)
    await srv.container.secrets.put("p", "WEBHOOK_SECRET", "signing-secret-123456")
    await srv.container.secrets.put("p", "GITHUB_TOKEN", "ghp_token-123456789")
    job = await srv.client.submit("p", "hello")
    assert (await srv.client.wait(job)).status == "succeeded"
    (env,) = agent.envs
    assert env.get("GITHUB_TOKEN") == "ghp_token-123456789" and "WEBHOOK_SECRET" not in env
