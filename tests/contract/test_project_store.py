"""The ProjectStore contract (ports/project_store.py), run against every adapter (tests/contract/conftest)."""

from __future__ import annotations

import asyncio

from agentd.domain.projects import GitSource, ProjectSpec
from agentd.ports.project_store import ProjectStore

SPEC = ProjectSpec(
    git=GitSource(url="https://git.example/org/repo.git", default_ref="main", credentials="GIT_TOKEN"),
    description="the repo",
    max_running=3,
)


async def test_put_creates_then_updates_keeping_the_creation_time(project_store: ProjectStore) -> None:
    created, was_new = await project_store.put("p1", SPEC)
    assert was_new is True
    assert created.id == "p1" and created.git == SPEC.git and created.max_running == 3
    assert created.created_at.tzinfo is not None
    await asyncio.sleep(0.01)
    updated, was_new = await project_store.put("p1", ProjectSpec(template="empty", variables={"a": "b"}))
    assert was_new is False
    assert updated.created_at == created.created_at
    assert updated.updated_at > created.updated_at
    assert updated.git is None and updated.template == "empty" and updated.variables == {"a": "b"}
    assert updated.max_running == 1
    found = await project_store.find("p1")
    assert found == updated


async def test_find_list_and_delete(project_store: ProjectStore) -> None:
    assert await project_store.find("nope") is None
    assert await project_store.list() == []
    await project_store.put("zeta", SPEC)
    await project_store.put("alpha", ProjectSpec(description="x"))
    assert [p.id for p in await project_store.list()] == ["alpha", "zeta"]
    assert await project_store.delete("zeta") is True
    assert await project_store.delete("zeta") is False
    assert await project_store.find("zeta") is None
    assert [p.id for p in await project_store.list()] == ["alpha"]


async def test_patches_are_bytes_per_job_and_project_and_a_retry_replaces_them(
    project_store: ProjectStore,
) -> None:
    binary = b"diff --git a/x b/x\n\xff\xfe\x00 not utf-8\n"
    assert await project_store.get_patch("p", "job-1") is None
    await project_store.put_patch("p", "job-1", binary)
    assert await project_store.get_patch("p", "job-1") == binary
    assert await project_store.get_patch("other", "job-1") is None  # never another project's
    await project_store.put_patch("p", "job-1", b"second")
    assert await project_store.get_patch("p", "job-1") == b"second"
    await project_store.put("p", SPEC)
    await project_store.delete("p")
    assert await project_store.get_patch("p", "job-1") == b"second"  # the patch stays with the job
