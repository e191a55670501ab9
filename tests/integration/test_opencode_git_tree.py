"""The real OpenCode server (jailed, managed) runs a git project's job in the job's own tree: the session's
directory is the tree, the bash tool writes there, and agentd records the change."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentd.adapters.git_workspace import GitWorkspaces
from agentd.domain.models import AgentEvent, AgentRequest, SessionEvent
from agentd.domain.projects import GitSource, Project
from tests.integration.test_opencode_agent import OC, done, oc  # noqa: F401 - the module's server fixture
from tests.support import fake_openai
from tests.support.git_repos import make_remote

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]


async def test_a_run_in_a_job_tree(oc: OC, tmp_path: Path) -> None:  # noqa: F811
    remote = make_remote(tmp_path / "remotes")
    now = datetime.now(UTC)
    project = Project(id="p1", git=GitSource(url=remote.as_uri()), created_at=now, updated_at=now)
    workspaces = GitWorkspaces.in_data_dir(oc.config.data_dir)
    ws = await workspaces.prepare(project, "job-oc", "feature", token=None)
    req = AgentRequest(project_id="p1", prompt="Please run a command. SCENARIO:tool_bash")
    events: list[AgentEvent] = [
        e async for e in oc.agent.execute(req, run_id=uuid.uuid4().hex, workdir=ws.path)
    ]
    session = next(e for e in events if isinstance(e, SessionEvent))
    assert session.cwd == str(ws.path)
    assert done(events).status == "succeeded" and done(events).result == fake_openai.TOOL_ANSWER
    assert (ws.path / "out.txt").read_text() == "hello\n"
    changes = await workspaces.changes(ws)
    assert [(f.path, f.status) for f in changes.files] == [("out.txt", "added")]
    await workspaces.remove(ws)
