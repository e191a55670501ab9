"""Git workspaces for jobs, with the git command line.

Layout (under `git_dir`, agentd's own, never shown to a run):
    <project>/mirror.git        a bare cache of the project's repository, fetched before every job
    <project>/origin.git        the local repository of a project made from a template without a git URL
    <project>/index/<job id>    agentd's private index for recording a job's changes
and under `work_dir` (what the run sees):
    <project>/<job id>/         the job's working tree: a clone of the mirror at the job's commit whose
                                objects are borrowed from the mirror (`git clone --shared`)

The run may do anything in its working tree, its `.git` included. So agentd never runs git with the run's
repository or configuration: it records the changes by pointing git at the mirror (`GIT_DIR`), the
working tree (`GIT_WORK_TREE`) and its private index (`GIT_INDEX_FILE`), so filters, hooks or fsmonitor
commands a run might configure are never executed by agentd. The patch is the index against the base
commit after `git add -A`: edits, new, deleted, renamed and binary files alike, and commits the run made
itself.

Credentials: the token goes to git in the environment of that one git process, read by an inline
credential helper; it is never part of a URL, a file, a command line or a log line. Other credential
helpers and the user's git configuration are switched off (`GIT_CONFIG_GLOBAL=/dev/null`), prompts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import structlog

from agentd.domain.errors import WorkspaceFailed
from agentd.domain.models import ChangedFile, PushResult
from agentd.domain.projects import Project, redact_url
from agentd.ports.workspace import Changes, Workspace, Workspaces

log = structlog.get_logger(__name__)

EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"
NETWORK_TIMEOUT_S = 600.0
LOCAL_TIMEOUT_S = 300.0
MAX_PATCH_BYTES = 32 * 1024 * 1024  # a job's patch kept at most (AGENTD_MAX_PATCH_BYTES)
AUTHOR = {
    "GIT_AUTHOR_NAME": "agentd",
    "GIT_AUTHOR_EMAIL": "agentd@localhost",
    "GIT_COMMITTER_NAME": "agentd",
    "GIT_COMMITTER_EMAIL": "agentd@localhost",
}
# An inline credential helper: answers `get` from this git process's environment only.
CREDENTIAL_HELPER = (
    '!f() { test "$1" = get || exit 0; '
    'test -n "$AGENTD_GIT_USERNAME" && echo "username=$AGENTD_GIT_USERNAME"; '
    'echo "password=$AGENTD_GIT_TOKEN"; }; f'
)
_NOT_RETRYABLE = re.compile(
    r"authentication failed|could not read (username|password)|terminal prompts disabled|"
    r"not found|does not exist|does not appear to be a git repository|couldn't find remote ref|"
    r"permission denied|403|401",
    re.IGNORECASE,
)


def job_tree_mounts(data_dir: Path, project_id: str) -> tuple[Path, Path]:
    """What a jailed run of the project needs beyond its workspace: the folder of its jobs' trees
    (read-write) and the mirror's objects, which those trees borrow (read-only)."""
    return data_dir / "worktrees" / project_id, data_dir / "git" / project_id / "mirror.git" / "objects"


class GitWorkspaces(Workspaces):
    @classmethod
    def in_data_dir(
        cls, data_dir: Path, *, git: str = "git", max_patch_bytes: int = MAX_PATCH_BYTES
    ) -> GitWorkspaces:
        """The layout the agent adapters mount (`job_tree_mounts`)."""
        return cls(data_dir / "git", data_dir / "worktrees", git=git, max_patch_bytes=max_patch_bytes)

    def __init__(
        self, git_dir: Path, work_dir: Path, *, git: str = "git", max_patch_bytes: int = MAX_PATCH_BYTES
    ) -> None:
        self.git_dir = git_dir
        self.work_dir = work_dir
        self.git_bin = git
        # A run may write gigabytes: its patch is read up to this size, never whole (memory, database).
        self.max_patch_bytes = max_patch_bytes
        self._locks: dict[str, asyncio.Lock] = {}

    # --- paths ----------------------------------------------------------------------------------------

    def _project_dir(self, project_id: str) -> Path:
        return self.git_dir / project_id

    def _mirror(self, project_id: str) -> Path:
        return self._project_dir(project_id) / "mirror.git"

    def _local_origin(self, project_id: str) -> Path:
        return self._project_dir(project_id) / "origin.git"

    def _index(self, project_id: str, job_id: str) -> Path:
        return self._project_dir(project_id) / "index" / job_id

    def origin_url(self, project: Project) -> str:
        """The project's git URL, or its local repository's (a template project without a URL)."""
        if project.git is not None:
            return project.git.url
        return self._local_origin(project.id).as_uri()

    # --- git ------------------------------------------------------------------------------------------

    def _env(self, *, token: str | None = None, url: str | None = None, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/nonexistent"),  # ssh keys and known_hosts
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
            "GIT_SSH_COMMAND": "ssh -o BatchMode=yes",
        }
        if token is not None:
            username = urlsplit(url).username if url and "://" in url else None
            env["AGENTD_GIT_TOKEN"] = token
            env["AGENTD_GIT_USERNAME"] = "" if username else "x-access-token"
        env.update(extra)
        return env

    def _credential_args(self, token: str | None) -> list[str]:
        # The empty value first drops every helper configured elsewhere.
        args = ["-c", "credential.helper="]
        if token is not None:
            args += ["-c", f"credential.helper={CREDENTIAL_HELPER}"]
        return args

    async def _git(
        self,
        *args: str,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        timeout: float = LOCAL_TIMEOUT_S,
        secret: str | None = None,
    ) -> bytes:
        proc = await self._spawn(args, cwd, env if env is not None else self._env(), stdin=stdin is not None)
        try:
            async with asyncio.timeout(timeout):
                out, err = await proc.communicate(stdin)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise _failed(args, proc.returncode or 0, err, secret)
        return out

    async def _spawn(
        self, args: tuple[str, ...], cwd: Path | None, env: Mapping[str, str], *, stdin: bool
    ) -> asyncio.subprocess.Process:
        """git in its own process group, hooks and fsmonitor off, output and errors piped."""
        return await asyncio.create_subprocess_exec(
            *[self.git_bin, "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", *args],
            cwd=cwd,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )

    async def _git_output_upto(
        self, *args: str, limit: int, cwd: Path, env: Mapping[str, str]
    ) -> bytes | None:
        """A local git command's output, or None as soon as it passes `limit` bytes (git is stopped then)."""
        proc = await self._spawn(args, cwd, env, stdin=False)
        assert proc.stdout is not None and proc.stderr is not None
        err_read = asyncio.ensure_future(proc.stderr.read())
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(LOCAL_TIMEOUT_S):
                while chunk := await proc.stdout.read(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise _TooLarge
                    chunks.append(chunk)
                err = await err_read
                await proc.wait()
        except BaseException as e:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            err_read.cancel()
            await asyncio.gather(err_read, return_exceptions=True)
            # Drain what git wrote before it died: the process is only waited for once its pipes close.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(10):
                    while await proc.stdout.read(1 << 16):
                        pass
                    await proc.wait()
            if isinstance(e, _TooLarge):
                return None
            if isinstance(e, TimeoutError):
                raise WorkspaceFailed(f"git {args[0]} took longer than {LOCAL_TIMEOUT_S:g} s") from None
            raise
        if proc.returncode != 0:
            raise _failed(args, proc.returncode or 0, err, None)
        return b"".join(chunks)

    @contextlib.asynccontextmanager
    async def _locked(self, project_id: str) -> AsyncIterator[None]:
        """One fetch or seed of a project at a time: in this process, and across processes (flock)."""
        lock = self._locks.setdefault(project_id, asyncio.Lock())
        async with lock:
            d = self._project_dir(project_id)
            d.mkdir(parents=True, exist_ok=True)
            fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                        await asyncio.sleep(0.05)
                yield
            finally:
                os.close(fd)  # releases the flock

    async def _ensure_mirror(self, project_id: str) -> Path:
        """Made in place (under the project's lock): its `objects` folder may exist already, made by an
        agent adapter that mounts it into a jail; `git init` on a half-made one simply finishes it."""
        mirror = self._mirror(project_id)
        if not (mirror / "HEAD").exists():
            await self._git("init", "-q", "--bare", str(mirror))
            await self._git("config", "core.logAllRefUpdates", "false", cwd=mirror)
        return mirror

    # --- the port -------------------------------------------------------------------------------------

    async def seed(self, project: Project, files: Mapping[str, bytes], *, token: str | None = None) -> bool:
        async with self._locked(project.id):
            branch = (project.git.default_ref if project.git else None) or "main"
            if project.git is None:
                origin = self._local_origin(project.id)
                if (origin / "HEAD").exists():
                    return False
                tmp = Path(tempfile.mkdtemp(prefix=".origin-", dir=self._project_dir(project.id)))
                await self._git("init", "-q", "--bare", str(tmp))
                commit = await self._commit_files(tmp, files, f"Create {project.id} from template")
                await self._git("update-ref", f"refs/heads/{branch}", commit, cwd=tmp)
                await self._git("symbolic-ref", "HEAD", f"refs/heads/{branch}", cwd=tmp)
                os.rename(tmp, origin)
                log.info("project.seeded", project_id=project.id, where="local", commit=commit)
                return True
            url = project.git.url
            refs = await self._git(
                *self._credential_args(token),
                "ls-remote",
                "--",
                url,
                env=self._env(token=token, url=url),
                timeout=NETWORK_TIMEOUT_S,
                secret=token,
            )
            if refs.strip():
                return False
            mirror = await self._ensure_mirror(project.id)
            commit = await self._commit_files(mirror, files, f"Create {project.id} from template")
            await self._git(
                *self._credential_args(token),
                "push",
                "-q",
                "--",
                url,
                f"{commit}:refs/heads/{branch}",
                cwd=mirror,
                env=self._env(token=token, url=url),
                timeout=NETWORK_TIMEOUT_S,
                secret=token,
            )
            log.info("project.seeded", project_id=project.id, where=redact_url(url), commit=commit)
            return True

    async def _commit_files(self, repo: Path, files: Mapping[str, bytes], message: str) -> str:
        index = Path(tempfile.mkdtemp(prefix=".seed-", dir=repo)) / "index"
        try:
            env = self._env(GIT_DIR=str(repo), GIT_INDEX_FILE=str(index), **AUTHOR)
            for path, content in sorted(files.items()):
                blob = (await self._git("hash-object", "-w", "--stdin", env=env, stdin=content)).decode()
                mode = "100755" if path.endswith(".sh") else "100644"
                await self._git(
                    "update-index", "--add", "--cacheinfo", f"{mode},{blob.strip()},{path}", env=env
                )
            tree = (await self._git("write-tree", env=env)).decode().strip() if files else EMPTY_TREE
            return (await self._git("commit-tree", tree, "-m", message, env=env)).decode().strip()
        finally:
            shutil.rmtree(index.parent, ignore_errors=True)

    async def prepare(
        self, project: Project, job_id: str, ref: str | None, *, token: str | None
    ) -> Workspace:
        url = self.origin_url(project)
        want = ref or (project.git.default_ref if project.git else None)
        async with self._locked(project.id):
            mirror = await self._ensure_mirror(project.id)
            refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]
            if want is None:
                refspecs.append("+HEAD:refs/agentd/remote-head")
            await self._git(
                *self._credential_args(token),
                "fetch",
                "-q",
                "--prune",
                "--no-tags",
                "--",
                url,
                *refspecs,
                cwd=mirror,
                env=self._env(token=token, url=url),
                timeout=NETWORK_TIMEOUT_S,
                secret=token,
            )
            base = await self._resolve(mirror, want or "refs/agentd/remote-head")
            if base is None and want is not None:
                # Not a branch or tag: a commit id or another ref the server lets us fetch directly.
                keep = f"refs/agentd/jobs/{job_id}"
                with contextlib.suppress(WorkspaceFailed):
                    await self._git(
                        *self._credential_args(token),
                        "fetch",
                        "-q",
                        "--no-tags",
                        "--",
                        url,
                        f"+{want}:{keep}",
                        cwd=mirror,
                        env=self._env(token=token, url=url),
                        timeout=NETWORK_TIMEOUT_S,
                        secret=token,
                    )
                    base = await self._resolve(mirror, keep)
            if base is None:
                raise WorkspaceFailed(
                    f"ref {want!r} is not a branch, tag or commit of {redact_url(url)}"
                    if want
                    else f"{redact_url(url)} has no default branch (an empty repository?): give a `ref`"
                )
        path = self.work_dir / project.id / job_id
        if path.exists():  # a retried attempt starts again from the base
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        await self._git("clone", "-q", "--shared", "--no-checkout", "--", str(mirror), str(path))
        await self._git("checkout", "-q", "--detach", base, cwd=path, env=self._env(**AUTHOR))
        await self._git("remote", "set-url", "origin", redact_url(url), cwd=path)
        for key, value in (("user.name", "agentd"), ("user.email", "agentd@localhost")):
            await self._git("config", key, value, cwd=path)  # so the agent can commit if it wants to
        log.info("workspace.prepared", project_id=project.id, ref=want, base=base)
        return Workspace(project.id, job_id, path, want or "HEAD", base)

    async def _resolve(self, mirror: Path, ref: str) -> str | None:
        candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}", ref]
        for name in candidates:
            with contextlib.suppress(WorkspaceFailed):
                out = await self._git("rev-parse", "--verify", "--quiet", f"{name}^{{commit}}", cwd=mirror)
                return out.decode().strip()
        return None

    def _tree_env(self, ws: Workspace) -> dict[str, str]:
        index = self._index(ws.project_id, ws.job_id)
        index.parent.mkdir(parents=True, exist_ok=True)
        return self._env(
            GIT_DIR=str(self._mirror(ws.project_id)),
            GIT_WORK_TREE=str(ws.path),
            GIT_INDEX_FILE=str(index),
            **AUTHOR,
        )

    async def _stage(self, ws: Workspace) -> dict[str, str]:
        env = self._tree_env(ws)
        await self._git("read-tree", ws.base, env=env)
        await self._git("add", "-A", "--", ".", env=env, cwd=ws.path)
        return env

    async def changes(self, ws: Workspace) -> Changes:
        env = await self._stage(ws)
        diff = ["diff", "--cached", "--no-ext-diff", "--no-textconv", "-M", ws.base]
        numstat = await self._git(*diff[:-1], "--numstat", "-z", ws.base, env=env, cwd=ws.path)
        status = await self._git(*diff[:-1], "--name-status", "-z", ws.base, env=env, cwd=ws.path)
        patch = await self._git_output_upto(
            *diff[:-1], "--binary", ws.base, limit=self.max_patch_bytes, env=env, cwd=ws.path
        )
        if patch is None:
            log.warning("workspace.patch_too_large", project_id=ws.project_id, limit=self.max_patch_bytes)
        return Changes(
            files=_changed_files(status, numstat),
            patch=patch,
            patch_limit=self.max_patch_bytes if patch is None else None,
        )

    async def push(
        self, project: Project, ws: Workspace, branch: str, message: str, *, token: str | None
    ) -> PushResult:
        env = await self._stage(ws)
        tree = (await self._git("write-tree", env=env)).decode().strip()
        commit = (
            (await self._git("commit-tree", tree, "-p", ws.base, "-m", message, env=env)).decode().strip()
        )
        url = self.origin_url(project)
        await self._git(
            *self._credential_args(token),
            "push",
            "-q",
            "--",
            url,
            f"{commit}:refs/heads/{branch}",
            cwd=self._mirror(project.id),
            env=self._env(token=token, url=url),
            timeout=NETWORK_TIMEOUT_S,
            secret=token,
        )
        log.info("workspace.pushed", project_id=project.id, branch=branch, commit=commit)
        return PushResult(branch=branch, commit=commit)

    async def remove(self, ws: Workspace) -> None:
        await self.remove_tree(ws.project_id, ws.job_id)

    async def trees(self) -> list[tuple[str, str]]:
        def walk() -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            try:
                projects = [p for p in self.work_dir.iterdir() if p.is_dir() and not p.is_symlink()]
            except OSError:  # no trees yet
                return []
            for project in projects:
                try:  # one unreadable folder (a run can chmod its project's) must not stop the others
                    found += [
                        (project.name, t.name) for t in project.iterdir() if t.is_dir() and not t.is_symlink()
                    ]
                except OSError as e:
                    log.warning("workspace.unreadable", path=str(project), error=str(e))
            return sorted(found)

        return await asyncio.to_thread(walk)

    async def remove_tree(self, project_id: str, job_id: str) -> None:
        if not all(_one_name(x) for x in (project_id, job_id)):
            log.warning("workspace.remove_refused", project_id=project_id, job_id=job_id)
            return
        for p in (self.work_dir / project_id / job_id, self._index(project_id, job_id)):
            try:
                await asyncio.to_thread(_rm, p)
            except OSError as e:  # never fail a job over its clean-up; the next attempt retries it
                log.warning("workspace.remove_failed", path=str(p), error=str(e))
        mirror = self._mirror(project_id)
        if (mirror / "HEAD").exists():
            with contextlib.suppress(WorkspaceFailed, OSError):  # OSError: the project was just forgotten
                await self._git("update-ref", "-d", f"refs/agentd/jobs/{job_id}", cwd=mirror)

    async def forget(self, project_id: str) -> None:
        async with self._locked(project_id):
            await asyncio.to_thread(_rm, self._mirror(project_id))


def _one_name(name: str) -> bool:
    """A single path component (a project or job id as a folder name)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name


class _TooLarge(Exception):
    """A command's output passed its limit."""


def _failed(args: tuple[str, ...], returncode: int, err: bytes, secret: str | None) -> WorkspaceFailed:
    text = err.decode(errors="replace").strip()
    if secret:
        text = text.replace(secret, "[redacted]")
    text = re.sub(r"://[^/@\s]+@", "://", text)  # never echo user information of a URL
    what = next((a for a in args if not a.startswith("-") and "=" not in a), "git")
    return WorkspaceFailed(
        f"git {what} failed: {text[-1500:] or f'exit code {returncode}'}",
        retryable=not _NOT_RETRYABLE.search(text) and what in {"fetch", "push", "ls-remote"},
    )


def _rm(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        # A run may leave read-only folders behind: make them writable so they can be deleted.
        for root, dirs, _ in os.walk(p):
            for d in dirs:
                # Never through a symlink (a run's link to a folder elsewhere, or one swapped in meanwhile):
                # the folder itself is opened without following links, then made writable.
                with contextlib.suppress(OSError):
                    fd = os.open(os.path.join(root, d), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                    try:
                        os.fchmod(fd, 0o700)
                    finally:
                        os.close(fd)
        shutil.rmtree(p, ignore_errors=False)
    elif p.exists() or p.is_symlink():
        p.unlink()


_STATUS: dict[str, Literal["added", "modified", "deleted", "renamed"]] = {
    "A": "added",
    "C": "added",
    "D": "deleted",
    "R": "renamed",
}


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")  # JSON-safe; the patch keeps the exact bytes


def _changed_files(name_status: bytes, numstat: bytes) -> list[ChangedFile]:
    """Join `--name-status -z` and `--numstat -z` (both with -M) into one entry per path."""
    counts: dict[str, tuple[int | None, int | None]] = {}
    items = numstat.split(b"\0")
    i = 0
    while i < len(items) and items[i]:
        plus, minus, path = _name(items[i]).split("\t", 2)
        if path == "":  # a rename: the old and the new path follow
            path = _name(items[i + 2])
            i += 3
        else:
            i += 1
        counts[path] = (None, None) if plus == "-" else (int(plus), int(minus))
    out: list[ChangedFile] = []
    parts = name_status.split(b"\0")
    i = 0
    while i < len(parts) and parts[i]:
        code = parts[i].decode()[0]
        old: str | None = None
        if code in "RC":
            old, new = _name(parts[i + 1]), _name(parts[i + 2])
            i += 3
        else:
            new = _name(parts[i + 1])
            i += 2
        added, removed = counts.get(new, (None, None))
        out.append(
            ChangedFile(
                path=new,
                status=_STATUS.get(code, "modified"),
                old_path=old if code == "R" else None,
                added=added,
                removed=removed,
                binary=added is None,
            )
        )
    return out
