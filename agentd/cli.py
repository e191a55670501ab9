"""Command line: `agentd serve` runs the service; the client commands (submit, follow, jobs, cancel) are in
agentd.cli_jobs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from agentd import __version__, cli_jobs
from agentd.config import ConfigError, Settings, load_settings
from agentd.domain.errors import InvalidMasterKey
from agentd.domain.secrets import new_master_key, parse_master_key

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

    cli_jobs.add_parsers(sub)  # submit, follow, jobs, cancel
    _add_secrets_parser(sub)
    _add_keys_parser(sub)
    _add_projects_parser(sub)

    args = parser.parse_args(argv)
    if args.command in ("serve", "api", "worker"):
        os.umask(0o077)  # everything agentd and its runs create: 0600 files, 0700 folders
    try:
        settings = load_settings(os.environ)
    except ConfigError as e:
        print(f"agentd: {e}", file=sys.stderr)
        return 2
    from agentd.logging import configure

    configure(settings.log_level, settings.log_format)
    try:
        return _run(settings, args)
    except ConfigError as e:  # found while building (an unknown provider, an unreadable key file)
        print(f"agentd: {e}", file=sys.stderr)
        return 2


def _use_uvloop() -> bool:
    """The long-running roles (serve, api, worker) run on uvloop when it is installed (a runtime dependency):
    the same asyncio API (subprocesses and process groups included), with a cheaper loop under every
    statement, event and request. The client commands keep the default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - installed with agentd
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command in ("serve", "worker", "api"):
        _use_uvloop()
    if args.command in ("serve", "worker"):
        from agentd.datadir import DataDirInUse, lock_data_dir

        try:
            lock = lock_data_dir(settings.data_dir)
        except DataDirInUse as e:
            print(f"agentd {args.command}: {e}", file=sys.stderr)
            return 1
        try:
            return (
                _serve(settings, args.host, args.port, workers=True)
                if args.command == "serve"
                else _worker(settings)
            )
        finally:
            lock.close()
    if args.command == "api":
        return _serve(settings, args.host, args.port, workers=False)
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "secrets":
        return asyncio.run(_secrets(settings, args))
    if args.command == "keys":
        return asyncio.run(_keys(settings, args))
    if args.command == "projects":
        return asyncio.run(_projects(settings, args))
    if args.command in cli_jobs.COMMANDS:
        return cli_jobs.run(args, default_server=f"http://{settings.host}:{settings.port}")
    raise AssertionError(f"unhandled command {args.command}")


def _add_secrets_parser(sub: Any) -> None:
    p = sub.add_parser("secrets", help="set, list and delete the secrets runs get; manage the master key")
    cmds = p.add_subparsers(dest="secrets_command", required=True)
    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument("--project", help="the project's own secrets (default: the global ones)")
    s = cmds.add_parser("set", parents=[scope], help="create or replace a secret")
    s.add_argument("name", help="an environment variable name, e.g. GITHUB_TOKEN")
    s.add_argument("--value", help="the value (default: read from stdin, so it stays out of shell history)")
    cmds.add_parser("list", parents=[scope], help="names and update times (never values)")
    d = cmds.add_parser("delete", parents=[scope], help="delete a secret")
    d.add_argument("name")
    cmds.add_parser("new-master-key", help="print a new master key for AGENTD_MASTER_KEY")
    r = cmds.add_parser("rotate", help="re-encrypt every secret under a new master key")
    r.add_argument("--new-key-file", help="file holding the new key (default: AGENTD_NEW_MASTER_KEY)")


def _add_keys_parser(sub: Any) -> None:
    p = sub.add_parser("keys", help="create, list and revoke API keys (README: Access)")
    cmds = p.add_subparsers(dest="keys_command", required=True)
    c = cmds.add_parser("create", help="create a key; prints it once, alone on the last line")
    c.add_argument("--name", help="what the key is for, e.g. ci-web (default: its id)")
    scope = c.add_mutually_exclusive_group(required=True)
    scope.add_argument("--admin", action="store_true", help="every project, keys and global secrets")
    scope.add_argument(
        "--project", action="append", dest="projects", metavar="P", help="a project it may use (repeat)"
    )
    c.add_argument("--read-only", action="store_true", help="read jobs and streams, never write")
    cmds.add_parser("list", help="every key: id, name, scope, access, times (never the key)")
    r = cmds.add_parser("revoke", help="revoke a key (it stops working at once)")
    r.add_argument("key_id", help="the key's id, e.g. key_0123456789abcdef")


def _add_projects_parser(sub: Any) -> None:
    p = sub.add_parser(
        "projects", help="create, list, show and delete projects (git repositories, templates)"
    )
    p.add_argument(
        "--server",
        default=os.environ.get("AGENTD_URL"),
        help="agentd URL (AGENTD_URL, default from settings)",
    )
    cmds = p.add_subparsers(dest="projects_command", required=True)
    c = cmds.add_parser("create", help="create or update a project")
    c.add_argument("project", help="project id, e.g. my-repo")
    c.add_argument("--git-url", help="the repository, e.g. https://github.com/org/repo.git")
    c.add_argument("--default-ref", help="the branch jobs start from without a ref (default: the remote's)")
    c.add_argument("--credentials", help="the secret holding a token for the repository, e.g. GITHUB_TOKEN")
    c.add_argument("--template", help="start from a template (`agentd projects templates` lists them)")
    c.add_argument("--var", action="append", default=[], metavar="NAME=VALUE", help="a template variable")
    c.add_argument("--description")
    c.add_argument("--max-running", type=int, help="jobs of this project that may run at once (default 1)")
    cmds.add_parser("list", help="every project")
    s = cmds.add_parser("show", help="one project")
    s.add_argument("project")
    d = cmds.add_parser("delete", help="delete a project (refused while it has queued or running jobs)")
    d.add_argument("project")
    cmds.add_parser("templates", help="the templates projects can start from")


async def _projects(settings: Settings, args: argparse.Namespace) -> int:
    from agentd.client import AgentdClient, ApiError

    server = args.server or f"http://{settings.host}:{settings.port}"
    key = settings.api_key.get_secret_value() if settings.api_key else None
    cmd = args.projects_command
    async with AgentdClient(server, api_key=key) as client:
        try:
            out: Any
            if cmd == "create":
                variables = {}
                for item in args.var:
                    name, sep, value = item.partition("=")
                    if not sep:
                        print(f"agentd projects: --var {item!r}: use NAME=VALUE", file=sys.stderr)
                        return 2
                    variables[name] = value
                git = None
                if args.git_url:
                    git = {
                        "url": args.git_url,
                        "default_ref": args.default_ref,
                        "credentials": args.credentials,
                    }
                    git = {k: v for k, v in git.items() if v is not None}
                out = await client.put_project(
                    args.project,
                    git=git,
                    template=args.template,
                    variables=variables or None,
                    description=args.description,
                    max_running=args.max_running,
                )
            elif cmd == "list":
                out = await client.projects()
            elif cmd == "show":
                out = await client.project(args.project)
            elif cmd == "delete":
                await client.delete_project(args.project)
                print(f"agentd projects: deleted {args.project}", file=sys.stderr)
                return 0
            else:
                out = await client.templates()
        except ApiError as e:
            print(f"agentd projects: {e.message} ({e.code}, HTTP {e.status})", file=sys.stderr)
            return 1 if e.status == 404 else 2
    print(json.dumps(out, indent=2))
    return 0


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    """Administrative commands: they talk to the key store directly, beside a running server."""
    from agentd.bootstrap import key_service, open_key_store
    from agentd.domain.errors import AgentdError

    service = key_service(settings, await open_key_store(settings))
    try:
        cmd = args.keys_command
        if cmd == "create":
            key, token = await service.create(
                name=args.name, admin=args.admin, projects=args.projects or [], read_only=args.read_only
            )
            scope = "admin" if key.admin else "projects " + ",".join(key.projects)
            print(f"created {key.id} ({key.name}): {scope}, {key.access.value}. The key is shown once:")
            print(token)
        elif cmd == "list":
            for k in await service.list():
                d = k.public()
                scope = "admin" if k.admin else ",".join(k.projects)
                state = f"revoked {d['revoked_at']}" if k.revoked_at else "active"
                print(
                    f"{k.id}\t{k.name}\t{scope}\t{k.access.value}\tcreated {d['created_at']}\t"
                    f"last used {d['last_used_at'] or 'never'}\t{state}"
                )
        else:
            key = await service.revoke(args.key_id)
            print(f"agentd keys: revoked {key.id} ({key.name})", file=sys.stderr)
    except AgentdError as e:
        print(f"agentd keys: {e.message}", file=sys.stderr)
        return 1 if e.code == "key_not_found" else 2
    finally:
        close = getattr(service.store, "close", None)
        if close is not None:
            await close()
    return 0


def _read_secret_value(name: str) -> str:
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"value for {name}: ")
    value = sys.stdin.read()
    return value.removesuffix("\n").removesuffix("\r")  # what `echo` or a file adds


def _read_new_master_key(args: argparse.Namespace) -> bytes:
    if args.new_key_file:
        where = args.new_key_file
        try:
            text = Path(args.new_key_file).read_text()
        except OSError as e:
            raise ConfigError(f"--new-key-file: cannot read {args.new_key_file}: {e.strerror}") from None
    else:
        where = "AGENTD_NEW_MASTER_KEY"
        text = os.environ.get("AGENTD_NEW_MASTER_KEY", "")
        if not text:
            raise ConfigError(
                "set AGENTD_NEW_MASTER_KEY (or pass --new-key-file) to the new key from "
                "`agentd secrets new-master-key`"
            )
    try:
        return parse_master_key(text, source=f"the new key ({where})")
    except InvalidMasterKey as e:
        raise ConfigError(e.message) from None


async def _secrets(settings: Settings, args: argparse.Namespace) -> int:
    """Administrative commands: they talk to the store directly, beside a running server."""
    from agentd.bootstrap import open_secret_store
    from agentd.services.secrets import SecretService

    cmd = args.secrets_command
    if cmd == "new-master-key":
        print(new_master_key())
        return 0
    new_key = _read_new_master_key(args) if cmd == "rotate" else None
    service = SecretService(await open_secret_store(settings))
    project = getattr(args, "project", None)
    try:
        return await _secrets_command(service, cmd, args, project, new_key)
    finally:
        close = getattr(service.store, "close", None)
        if close is not None:
            await close()


async def _secrets_command(
    service: Any, cmd: str, args: argparse.Namespace, project: str | None, new_key: bytes | None
) -> int:
    from agentd.domain.errors import AgentdError, SecretNotFound

    try:
        if cmd == "set":
            value = args.value if args.value is not None else _read_secret_value(args.name)
            await service.put(project, args.name, value)
            print(f"agentd secrets: set {args.name} for {_scope_text(project)}", file=sys.stderr)
        elif cmd == "list":
            for info in await service.list(project):
                print(f"{info.name}\t{info.updated_at.isoformat()}")
        elif cmd == "delete":
            await service.delete(project, args.name)
            print(f"agentd secrets: deleted {args.name} from {_scope_text(project)}", file=sys.stderr)
        elif new_key is not None:
            n = await service.store.rotate(new_key)
            print(
                f"agentd secrets: re-encrypted {n} secret(s) under the new key. Next: set AGENTD_MASTER_KEY "
                "(or AGENTD_MASTER_KEY_FILE) to the new key, unset AGENTD_NEW_MASTER_KEY, restart agentd."
            )
    except SecretNotFound as e:
        print(f"agentd secrets: {e.message}", file=sys.stderr)
        return 1
    except AgentdError as e:
        print(f"agentd secrets: {e.message}", file=sys.stderr)
        return 2
    return 0


def _scope_text(project: str | None) -> str:
    return f"project {project}" if project else "every project (global)"


async def _keys_exist(settings: Settings) -> bool:
    from agentd.bootstrap import open_key_store

    store = await open_key_store(settings)
    try:
        return await store.any_active()
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            await close()


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
        if host not in LOOPBACK and not asyncio.run(_keys_exist(settings)):
            log.error(
                "agentd.refusing_open_bind",
                host=host,
                hint="no API key: set AGENTD_API_KEY (or make keys with `agentd keys create`), or bind to "
                "127.0.0.1",
            )
            print(
                f"agentd: refusing to listen on {host} without AGENTD_API_KEY or a key made with "
                "`agentd keys create`; set AGENTD_API_KEY or use --host 127.0.0.1",
                file=sys.stderr,
            )
            return 2
        if host in LOOPBACK:
            log.warning(
                "agentd.no_api_key",
                message="AGENTD_API_KEY is not set: until a key is made with `agentd keys create`, anyone "
                f"on this machine can run agents; listening on {host} only",
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
        return container.app(host, port)

    try:
        web.run_app(
            make_app(),
            host=host,
            port=port,
            print=None,
            shutdown_timeout=settings.shutdown_grace_s + 5,
            access_log=None,  # one `http.request` line per request comes from agentd.observability
            handle_signals=True,
        )
    except AgentdError as e:
        print(f"agentd: {e.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
