"""The client commands of `agentd`: submit, follow, jobs, cancel (the API through agentd.client).

Exit codes, for CI steps: 0 succeeded, 1 failed, 2 usage or connection error, 124 timed out, 130
cancelled. Ctrl-C (or SIGTERM, what a CI runner sends when a pipeline is cancelled) while following
cancels the job on the server and exits 130, unless `--detach`: then the job goes on and
`agentd follow JOB_ID` re-attaches from the last event seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from agentd.cli_render import JsonLinesRenderer, Renderer, TerminalRenderer, fmt_duration
from agentd.client import AgentdClient, AgentdClientError, ApiError, JobRef
from agentd.domain.models import AgentResult, DoneEvent
from agentd.wire import JobInfo

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMED_OUT, EXIT_CANCELLED = 0, 1, 2, 124, 130
EXIT_FOR_STATUS = {
    "succeeded": EXIT_OK,
    "failed": EXIT_FAILED,
    "timed_out": EXIT_TIMED_OUT,
    "cancelled": EXIT_CANCELLED,
}
COMMANDS = ("submit", "follow", "jobs", "cancel")
TICK_S = 0.25


class UsageError(Exception):
    pass


def add_parsers(sub: Any) -> None:
    conn = argparse.ArgumentParser(add_help=False)
    conn.add_argument(
        "--server",
        default=os.environ.get("AGENTD_URL"),
        help="agentd URL (AGENTD_URL; default from settings)",
    )
    conn.add_argument(
        "--api-key",
        default=os.environ.get("AGENTD_API_KEY"),
        help="API key (AGENTD_API_KEY; prefer the variable: a command line is visible to others)",
    )
    view = argparse.ArgumentParser(add_help=False)
    view.add_argument("--json", action="store_true", help="one JSON line per event, even on a terminal")
    view.add_argument(
        "--detach", action="store_true", help="Ctrl-C stops following but leaves the job running"
    )

    s = sub.add_parser("submit", parents=[conn, view], help="submit a prompt; with --follow show the run")
    s.add_argument("--project", required=True, help="project id, e.g. my-repo")
    s.add_argument("--provider", help="claude-code | opencode | codex | scripted (default: the server's)")
    s.add_argument("--model")
    s.add_argument("--session-id", help="continue this agent session")
    s.add_argument("--timeout", type=float, dest="timeout_s", help="seconds before the job times out")
    s.add_argument("--max-turns", type=int)
    s.add_argument("--webhook", help="URL agentd POSTs to (signed) when the job ends")
    s.add_argument("--ref", help="git projects: the branch, tag or commit to start from")
    s.add_argument(
        "--push",
        nargs="?",
        const="",
        metavar="BRANCH",
        help="git projects: commit and push the changes to BRANCH (default agentd/<job id>)",
    )
    s.add_argument(
        "--patch", metavar="FILE", help="with --follow: write the job's patch to FILE when it ends"
    )
    s.add_argument("--follow", action="store_true", help="show the run until it ends; exit with its outcome")
    s.add_argument("prompt", help="the prompt; '-' reads it from stdin")

    f = sub.add_parser("follow", parents=[conn, view], help="re-attach to a job's run")
    f.add_argument("job_id")
    f.add_argument("--project", help="the job's project (remembered for jobs submitted from here)")
    f.add_argument("--from-start", action="store_true", help="replay from the first event")

    j = sub.add_parser("jobs", parents=[conn], help="list a project's jobs, newest first")
    j.add_argument("--project", required=True)
    j.add_argument("--status", help="queued | running | succeeded | failed | cancelled | timed_out")
    j.add_argument("--limit", type=int, default=20)
    j.add_argument("--json", action="store_true", help="one JSON object per line")

    c = sub.add_parser("cancel", parents=[conn], help="cancel a job")
    c.add_argument("job_id")
    c.add_argument("--project", help="the job's project (remembered for jobs submitted from here)")


# --- the "last event seen" memory of `agentd follow` ---------------------------------------------------


def _state_dir() -> Path:
    """AGENTD_STATE_DIR/jobs, else $XDG_STATE_HOME/agentd/jobs (~/.local/state/agentd/jobs)."""
    if os.environ.get("AGENTD_STATE_DIR"):
        return Path(os.environ["AGENTD_STATE_DIR"]) / "jobs"
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "agentd" / "jobs"


def _load_state(job_id: str) -> dict[str, Any]:
    try:
        data = json.loads((_state_dir() / f"{job_id}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save_state(job_id: str, project_id: str, last_seq: int) -> None:
    if not job_id.replace("_", "").isalnum():
        return
    with contextlib.suppress(OSError):
        d = _state_dir()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = d / f".{job_id}.tmp"
        tmp.write_text(json.dumps({"project_id": project_id, "last_seq": last_seq}))
        tmp.replace(d / f"{job_id}.json")


# --- commands -------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, default_server: str) -> int:
    try:
        return asyncio.run(_dispatch(args, args.server or default_server))
    except UsageError as e:
        print(f"agentd {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except AgentdClientError as e:
        code = EXIT_USAGE
        if isinstance(e, ApiError) and e.status == 409 and args.command == "cancel":
            code = EXIT_FAILED  # the job already ended
        detail = f" ({e.code}, HTTP {e.status})" if isinstance(e, ApiError) else ""
        print(f"agentd {args.command}: {e.message}{detail}", file=sys.stderr)
        return code


async def _dispatch(args: argparse.Namespace, server: str) -> int:
    async with AgentdClient(server, api_key=args.api_key or None) as client:
        if args.command == "submit":
            return await _submit(client, args)
        if args.command == "follow":
            return await _follow_cmd(client, args)
        if args.command == "jobs":
            return await _jobs(client, args)
        return await _cancel(client, args)


def _project_of(args: argparse.Namespace) -> str:
    project = args.project or _load_state(args.job_id).get("project_id")
    if not project:
        raise UsageError(f"which project is {args.job_id} in? pass --project")
    return str(project)


async def _submit(client: AgentdClient, args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    job = await client.submit(
        args.project,
        prompt,
        provider=args.provider,
        model=args.model,
        session_id=args.session_id,
        timeout_s=args.timeout_s,
        max_turns=args.max_turns,
        webhook={"url": args.webhook} if args.webhook else None,
        ref=args.ref,
        push={"branch": args.push or None} if args.push is not None else None,
    )
    _save_state(job.job_id, job.project_id, 0)
    if not args.follow:
        print(job.model_dump_json(indent=2))
        return EXIT_OK
    code = await _follow(client, args, job, after=0)
    if args.patch and code != EXIT_USAGE:
        await _save_patch(client, job.project_id, job.job_id, args.patch)
    return code


async def _save_patch(client: AgentdClient, project: str, job_id: str, path: str) -> None:
    """Write the job's patch to `path` (empty when the job has none, so CI steps can test `-s`; not written
    at all when it was too large to keep: there were changes)."""
    try:
        patch = await client.patch(project, job_id)
    except ApiError as e:
        if e.code == "patch_too_large":  # there were changes: an empty file would say there were none
            print(f"agentd: patch not kept, {path} not written: {e.message}", file=sys.stderr)
            return
        print(f"agentd: no patch: {e.message}", file=sys.stderr)
        patch = b""
    except AgentdClientError as e:
        print(f"agentd: no patch: {e.message}", file=sys.stderr)
        patch = b""
    await asyncio.to_thread(Path(path).write_bytes, patch)
    print(f"agentd: patch ({len(patch)} bytes) written to {path}", file=sys.stderr)


async def _follow_cmd(client: AgentdClient, args: argparse.Namespace) -> int:
    project = _project_of(args)
    job = await client.get(project, args.job_id)
    after = 0 if args.from_start else int(_load_state(job.job_id).get("last_seq") or 0)
    if after and job.status.is_final and job.result is not None:
        # Seen to the end before: nothing new will come; show how it ended.
        result = AgentResult(**job.result.model_dump(include=set(AgentResult.model_fields)))
        _renderer(args, job.job_id).summary(result)
        return EXIT_FOR_STATUS[result.status]
    return await _follow(client, args, job, after=after)


def _renderer(args: argparse.Namespace, job_id: str) -> Renderer:
    if args.json or not sys.stdout.isatty():
        return JsonLinesRenderer(sys.stdout, sys.stderr)
    return TerminalRenderer(sys.stdout, job_id=job_id)


async def _follow(client: AgentdClient, args: argparse.Namespace, job: JobRef, *, after: int) -> int:
    """Show the run until `done`; Ctrl-C/SIGTERM cancel the job (or detach). The exit code of the outcome."""
    render = _renderer(args, job.job_id)
    if isinstance(render, TerminalRenderer):
        render.note(f"job {job.job_id} on {job.provider} (project {job.project_id})")
    loop = asyncio.get_running_loop()
    last = after
    result: AgentResult | None = None
    interrupts = 0
    pending: set[asyncio.Task[None]] = set()

    async def consume() -> None:
        nonlocal last, result
        async for stored in client.stream(job, after=after):
            last = stored.seq
            render.event(stored)
            if isinstance(stored.event, DoneEvent):
                result = stored.event.to_result()

    follower = asyncio.create_task(consume())
    detached = asyncio.Event()

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if args.detach or interrupts > 1:
            detached.set()
            follower.cancel()
            return
        render.note("cancelling the job on the server (Ctrl-C again to stop waiting)…")
        pending.add(loop.create_task(_send_cancel(client, job, render)))

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_interrupt)
    ticker = asyncio.create_task(_tick(render)) if isinstance(render, TerminalRenderer) else None
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if ticker is not None:
            ticker.cancel()
        _save_state(job.job_id, job.project_id, last)
    if detached.is_set():
        render.note(
            f"stopped following; the job goes on. Re-attach: agentd follow {job.job_id} "
            f"--project {job.project_id}"
            if args.detach
            else "stopped waiting for the cancellation"
        )
        return EXIT_CANCELLED
    if result is None:
        render.note("the stream ended without a result")
        return EXIT_USAGE
    render.summary(result)
    return EXIT_FOR_STATUS[result.status]


async def _send_cancel(client: AgentdClient, job: JobRef, render: Renderer) -> None:
    try:
        await client.cancel(job.project_id, job.job_id)
    except AgentdClientError as e:
        render.note(f"cancel: {e.message}")


async def _tick(render: Renderer) -> None:
    while True:
        render.tick()
        await asyncio.sleep(TICK_S)


async def _jobs(client: AgentdClient, args: argparse.Namespace) -> int:
    page = await client.list(args.project, status=args.status, limit=args.limit)
    if args.json:
        for job in page.jobs:
            print(job.model_dump_json())
        return EXIT_OK
    rows = [("JOB", "STATUS", "PROVIDER", "CREATED", "TOOK", "PROMPT")]
    rows += [_row(job) for job in page.jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])
    return EXIT_OK


def _row(job: JobInfo) -> tuple[str, str, str, str, str, str]:
    took = ""
    if job.started_at and job.finished_at:
        took = fmt_duration((job.finished_at - job.started_at).total_seconds())
    prompt = " ".join(job.request.prompt.split())
    prompt = prompt[:57] + "…" if len(prompt) > 58 else prompt
    created = job.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return job.job_id, job.status.value, job.provider, created, took, prompt


async def _cancel(client: AgentdClient, args: argparse.Namespace) -> int:
    job = await client.cancel(_project_of(args), args.job_id)
    if job.status.is_final and job.status.value != "cancelled":
        print(f"agentd cancel: {job.job_id} already ended: {job.status.value}", file=sys.stderr)
        return EXIT_FAILED
    state = "cancelling" if job.status.value == "running" else job.status.value
    print(f"{job.job_id}\t{state}")
    return EXIT_OK
