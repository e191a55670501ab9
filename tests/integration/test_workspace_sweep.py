"""Working trees left behind by a worker that was killed before its clean-up: swept once their job is over
(GitRuns.sweep, from the runner's housekeeping and at its start), never while the job may still run; and
what a run can do to make that, or its patch, go wrong."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agentd.adapters.embedded.database import SqliteDatabase
from agentd.adapters.embedded.sqlite_work_queue import SqliteWorkQueue
from agentd.adapters.git_workspace import GitWorkspaces
from agentd.adapters.memory.memory_project_store import MemoryProjectStore
from agentd.adapters.template_library import DirectoryTemplateLibrary
from agentd.domain.errors import PatchTooLarge
from agentd.domain.ids import new_job_ids
from agentd.domain.models import AgentRequest, AgentResult, Job
from agentd.domain.projects import GitSource, Project
from agentd.services.git_runs import GitRuns
from agentd.services.projects import ProjectService
from tests.support.git_repos import make_remote


async def queued(queue: SqliteWorkQueue, project_id: str) -> Job:
    job_id, stream_id = new_job_ids()
    job, _ = await queue.enqueue(
        AgentRequest(project_id=project_id, prompt="hi"),
        provider="scripted",
        job_id=job_id,
        stream_id=stream_id,
    )
    return job


async def test_trees_of_final_and_forgotten_jobs_go_the_others_stay(tmp_path: Path) -> None:
    remote = make_remote(tmp_path / "remotes")
    now = datetime.now(UTC)
    project = Project(id="demo", git=GitSource(url=remote.as_uri()), created_at=now, updated_at=now)
    project2 = project.model_copy(update={"id": "demo2"})
    workspaces = GitWorkspaces(tmp_path / "data" / "git", tmp_path / "data" / "worktrees")
    queue = SqliteWorkQueue(SqliteDatabase(tmp_path / "queue.sqlite3"))
    try:
        done, running, waiting = [await queued(queue, "demo") for _ in range(3)]
        busy_here = await queued(queue, "demo2")
        claimed = await queue.claim_many("w1", 10)
        assert {j.id for j in claimed} == {done.id, busy_here.id}  # one running job per project
        finished = [(done.id, AgentResult(status="succeeded")), (busy_here.id, AgentResult(status="failed"))]
        await queue.finish_many(finished, worker_id="w1")
        running = (await queue.claim_many("w2", 10))[0]  # the next one of demo: running elsewhere
        assert running.id != waiting.id
        # Trees as a killed worker leaves them: a final job's, a running one's, a queued one's, one whose
        # job was purged long ago, and one of a job this process runs right now (`busy`).
        trees = {}
        for job_id in (done.id, running.id, waiting.id, "job_purged_long_ago", busy_here.id):
            owner = project2 if job_id == busy_here.id else project
            ws = await workspaces.prepare(owner, job_id, None, token=None)
            (ws.path / "left.txt").write_text("left behind\n")
            trees[job_id] = ws.path
        link = trees[done.id] / "etc-link"
        outside = tmp_path / "outside"
        outside.mkdir(mode=0o500)
        link.symlink_to(outside, target_is_directory=True)  # the run's link to a folder elsewhere

        git_runs = GitRuns(MemoryProjectStore(), workspaces, None)
        assert await git_runs.sweep(queue, busy={busy_here.id}) == 2
        assert not trees[done.id].exists() and not trees["job_purged_long_ago"].exists()
        assert trees[running.id].exists() and trees[waiting.id].exists() and trees[busy_here.id].exists()
        assert outside.is_dir() and outside.stat().st_mode & 0o777 == 0o500  # followed by nothing
        left = sorted([("demo", running.id), ("demo", waiting.id), ("demo2", busy_here.id)])
        assert await workspaces.trees() == left
        assert await git_runs.sweep(queue, busy={busy_here.id}) == 0  # nothing more to do
    finally:
        await queue.close()


async def test_an_unreadable_project_folder_does_not_stop_the_sweep_of_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspaces = GitWorkspaces(tmp_path / "data" / "git", tmp_path / "data" / "worktrees")
    for project_id, job_id in (("a", "job-1"), ("b", "job-2")):
        (tmp_path / "data" / "worktrees" / project_id / job_id).mkdir(parents=True)
    locked = tmp_path / "data" / "worktrees" / "a"
    iterdir = Path.iterdir

    def unreadable(self: Path) -> Iterator[Path]:  # what `chmod 000` by a run gives a non-root worker
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    with monkeypatch.context() as m:
        m.setattr(Path, "iterdir", unreadable)
        assert await workspaces.trees() == [("b", "job-2")]
    await workspaces.remove_tree("b", "../a")  # refused: never a path outside the tree folder
    await workspaces.remove_tree("..", "a")
    await workspaces.remove_tree("b", "")
    assert (locked / "job-1").is_dir() and (tmp_path / "data" / "worktrees" / "b").is_dir()
    await workspaces.remove_tree("b", "job-2")
    assert await workspaces.trees() == [("a", "job-1")]


async def test_an_earlier_attempts_patch_is_not_served_when_the_last_one_was_too_large(
    tmp_path: Path,
) -> None:
    queue = SqliteWorkQueue(SqliteDatabase(tmp_path / "queue.sqlite3"))
    store = MemoryProjectStore()
    workspaces = GitWorkspaces(tmp_path / "data" / "git", tmp_path / "data" / "worktrees")
    service = ProjectService(store, queue, DirectoryTemplateLibrary(), workspaces)
    try:
        job = await queued(queue, "demo")
        await queue.claim_many("w", 1)
        await store.put_patch("demo", job.id, b"diff --git a/a.txt b/a.txt\n")  # attempt 1's, kept
        omitted = "the patch is larger than 2048 bytes (AGENTD_MAX_PATCH_BYTES): not kept"
        await queue.finish_many(
            [(job.id, AgentResult(status="succeeded", patch_omitted=omitted))], worker_id="w"
        )
        with pytest.raises(PatchTooLarge, match="AGENTD_MAX_PATCH_BYTES"):
            await service.patch("demo", job.id)
    finally:
        await queue.close()
