"""A project's WEBHOOK_SECRET signs its webhooks and never reaches a run's environment."""

from __future__ import annotations

import base64
import os
from typing import Any

from agentd.adapters.memory.scripted_code_agent import ScriptedCodeAgent


async def test_the_run_gets_the_projects_secrets_but_not_webhook_secret(agentd_factory: Any) -> None:
    agent = ScriptedCodeAgent()  # it keeps the env of each run
    key = base64.urlsafe_b64encode(os.urandom(32)).decode()
    srv = await agentd_factory([agent], master_key=key)
    await srv.container.secrets.put("p", "WEBHOOK_SECRET", "signing-secret-123456")
    await srv.container.secrets.put("p", "GITHUB_TOKEN", "ghp_token-123456789")
    job = await srv.client.submit("p", "hello")
    assert (await srv.client.wait(job)).status == "succeeded"
    (env,) = agent.envs
    assert env.get("GITHUB_TOKEN") == "ghp_token-123456789" and "WEBHOOK_SECRET" not in env
