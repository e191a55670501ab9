"""Command line: `agentd serve` runs the service; `agentd submit` sends a prompt and follows it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

import structlog
from aiohttp import web

from agentd import __version__
from agentd.config import Settings

log = structlog.get_logger("agentd.cli")
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="agentd", description="Run code agents on demand.")
    parser.add_argument("--version", action="version", version=f"agentd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    for role, text in (
        ("serve", "run the API and in-process workers (one process)"),
        ("api", "run only the API (needs AGENTD_DATABASE_URL; workers run elsewhere)"),
    ):
        p = sub.add_parser(role, help=text)
        p.add_argument("--host", help="bind address (AGENTD_HOST, default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (AGENTD_PORT, default 8080)")
    sub.add_parser("worker", help="run only workers (needs AGENTD_DATABASE_URL)")
    sub.add_parser("migrate", help="apply database migrations (AGENTD_DATABASE_URL)")

    submit = sub.add_parser("submit", help="submit a prompt; with --follow print its stream")
    submit.add_argument("--project", required=True, help="project id, e.g. my-repo")
    submit.add_argument("--provider", help="claude-code | opencode (default: the server's default)")
    submit.add_argument("--model")
    submit.add_argument("--session-id", help="continue this agent session")
    submit.add_argument("--timeout", type=float, dest="timeout_s", help="seconds before the job times out")
    submit.add_argument("--max-turns", type=int)
    submit.add_argument("--follow", action="store_true", help="print the events until the job ends")
    submit.add_argument("--json", action="store_true", help="with --follow: print raw events as JSON lines")
    submit.add_argument(
        "--server",
        default=os.environ.get("AGENTD_URL"),
        help="agentd URL (AGENTD_URL, default from settings)",
    )
    submit.add_argument("prompt", help="the prompt; '-' reads it from stdin")

    args = parser.parse_args(argv)
    if args.command in ("serve", "api", "worker"):
        os.umask(0o077)  # everything agentd and its runs create: 0600 files, 0700 folders
    settings = Settings.from_env()
    from agentd.logging import configure

    configure(settings.log_level, settings.log_format)
    if args.command in ("serve", "api"):
        return _serve(settings, args.host, args.port, workers=args.command == "serve")
    if args.command == "worker":
        return _worker(settings)
    if args.command == "migrate":
        return _migrate(settings)
    return asyncio.run(_submit(settings, args))


def _need_database(settings: Settings, role: str) -> bool:
    if not settings.database_url:
        print(
            f"agentd {role}: AGENTD_DATABASE_URL is not set. Separate API and worker processes share jobs "
            "through PostgreSQL; for one process on the embedded queue use `agentd serve`.",
            file=sys.stderr,
        )
        return False
    return True


def _migrate(settings: Settings) -> int:
    if not _need_database(settings, "migrate"):
        return 2
    from agentd.adapters.postgres.migrate import migrate
    from agentd.domain.errors import AgentdError

    try:
        applied = asyncio.run(migrate(settings.database_url or ""))
    except AgentdError as e:
        print(f"agentd migrate: {e.message}", file=sys.stderr)
        return 2
    print(f"agentd migrate: applied {applied}" if applied else "agentd migrate: schema is up to date")
    return 0


def _dump_tasks() -> None:
    """SIGUSR1: write every asyncio task's stack to stderr (what is this worker waiting for?)."""
    import io

    for task in asyncio.all_tasks():
        buf = io.StringIO()
        task.print_stack(file=buf)
        print(f"--- {task.get_name()}\n{buf.getvalue()}", file=sys.stderr, flush=True)


def _worker(settings: Settings) -> int:
    if not _need_database(settings, "worker"):
        return 2
    return asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> int:
    from agentd.bootstrap import build
    from agentd.domain.errors import AgentdError

    try:
        container = await build(settings)
    except AgentdError as e:
        print(f"agentd worker: {e.message}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    await container.start()
    log.info("agentd.worker_started", workers=settings.workers, providers=container.registry.names())
    await stop.wait()
    log.info("agentd.worker_stopping", grace_s=settings.shutdown_grace_s)
    await container.stop()
    return 0


def _serve(settings: Settings, host: str | None, port: int | None, *, workers: bool) -> int:
    from agentd.bootstrap import build
    from agentd.domain.errors import AgentdError

    if not workers and not _need_database(settings, "api"):
        return 2

    host = host or settings.host
    port = port if port is not None else settings.port
    if settings.api_key is None:
        if host not in LOOPBACK:
            log.error(
                "agentd.refusing_open_bind",
                host=host,
                hint="AGENTD_API_KEY is not set: set it, or bind to 127.0.0.1",
            )
            print(
                f"agentd: refusing to listen on {host} without AGENTD_API_KEY; set AGENTD_API_KEY or use "
                "--host 127.0.0.1",
                file=sys.stderr,
            )
            return 2
        log.warning(
            "agentd.no_api_key",
            message="AGENTD_API_KEY is not set: anyone on this machine can run agents; listening on "
            f"{host} only",
        )

    async def make_app() -> web.Application:
        container = await build(settings, with_workers=workers)
        log.info(
            "agentd.starting",
            role="serve" if workers else "api",
            host=host,
            port=port,
            data_dir=str(settings.data_dir),
            providers=container.registry.names(),
            queue=type(container.queue).__name__,
            streams=type(container.streams).__name__,
        )
        return container.app()

    try:
        web.run_app(
            make_app(),
            host=host,
            port=port,
            print=None,
            shutdown_timeout=settings.shutdown_grace_s + 5,
            handle_signals=True,
        )
    except AgentdError as e:
        print(f"agentd: {e.message}", file=sys.stderr)
        return 2
    return 0


async def _submit(settings: Settings, args: argparse.Namespace) -> int:
    from agentd.client import AgentdClient, ApiError

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    server = args.server or f"http://{settings.host}:{settings.port}"
    key = settings.api_key.get_secret_value() if settings.api_key else None
    async with AgentdClient(server, api_key=key) as client:
        try:
            job = await client.submit(
                args.project,
                prompt,
                provider=args.provider,
                model=args.model,
                session_id=args.session_id,
                timeout_s=args.timeout_s,
                max_turns=args.max_turns,
            )
        except ApiError as e:
            print(f"agentd: {e.message} ({e.code}, HTTP {e.status})", file=sys.stderr)
            return 2
        if not args.follow:
            print(json.dumps(job, indent=2))
            return 0
        print(f"job {job['job_id']} ({job['provider']}) → {job['stream_url']}", file=sys.stderr)
        loop = asyncio.get_running_loop()
        cancel_sent = False
        pending: set[asyncio.Task[Any]] = set()

        def on_sigint() -> None:
            nonlocal cancel_sent
            if not cancel_sent:
                cancel_sent = True
                print("\nagentd: cancelling the job (Ctrl-C again to quit)…", file=sys.stderr)
                task = loop.create_task(client.cancel(args.project, job["job_id"]))
                pending.add(task)
                task.add_done_callback(pending.discard)
            else:
                raise KeyboardInterrupt

        loop.add_signal_handler(signal.SIGINT, on_sigint)
        status = "failed"
        try:
            async for item in client.follow(job["stream_url"]):
                if args.json:
                    print(json.dumps({"id": item.seq, "event": item.event, "data": item.data}), flush=True)
                else:
                    _print_event(item.event, item.data)
                if item.event == "done":
                    status = item.data.get("status", "failed")
        except ApiError as e:
            print(f"agentd: {e.message}", file=sys.stderr)
            return 3
        finally:
            loop.remove_signal_handler(signal.SIGINT)
        return 0 if status == "succeeded" else 1


def _print_event(event: str, d: dict[str, Any]) -> None:
    err = sys.stderr
    if event in ("text",):
        if d.get("abandoned"):
            print("\n[previous message abandoned by the agent]", file=err)
        sys.stdout.write(d.get("chunk", ""))
        if d.get("is_complete"):
            sys.stdout.write("\n")
        sys.stdout.flush()
    elif event == "reasoning":
        err.write(d.get("chunk", ""))
    elif event == "tool_use":
        print(f"→ {d.get('name')} {json.dumps(d.get('input'), ensure_ascii=False)[:500]}", file=err)
    elif event == "tool_result":
        mark = "✗" if d.get("is_error") else "←"
        print(f"{mark} {str(d.get('output', ''))[:500]}", file=err)
    elif event == "status":
        print(f"[{d.get('status')}] {d.get('detail') or ''}".rstrip(), file=err)
    elif event == "session":
        print(f"[session {d.get('session_id')} model {d.get('model')}]", file=err)
    elif event == "error":
        print(f"[error {d.get('code')}] {d.get('message')}", file=err)
    elif event == "output":
        print(f"[{d.get('type')}] {d.get('content')}", file=err)
    elif event == "done":
        cost = d.get("cost_usd")
        extra = f", ${cost:.4f}" if isinstance(cost, int | float) else ""
        print(
            f"[done {d.get('status')} in {d.get('duration_ms')} ms, session {d.get('session_id')}{extra}]"
            + (f" {d['error']}" if d.get("error") else ""),
            file=err,
        )


if __name__ == "__main__":
    sys.exit(main())
