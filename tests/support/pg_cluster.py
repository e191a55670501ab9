"""A throwaway PostgreSQL cluster for fault tests: its own data directory and port, stopped and started at
will by the test, removed at the end. It never touches the machine's own cluster.

Binaries: AGENTD_TEST_PG_BIN, else the newest /usr/lib/postgresql/<version>/bin, else `initdb` on PATH; the
fixture skips (with the reason) when there are none. As root, the cluster runs as the `postgres` user
(initdb refuses root): its temporary directory is handed to that user and every command goes through
`runuser`.

Use: `from tests.support.pg_cluster import pg_cluster` in a test module or conftest, then
`cluster.dsn()`, `cluster.stop()`, `cluster.start()`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from tests.support.net import free_port

SERVICE_USER = "postgres"


def find_pg_bin() -> Path | None:
    explicit = os.environ.get("AGENTD_TEST_PG_BIN")
    if explicit:
        return Path(explicit) if (Path(explicit) / "initdb").exists() else None
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]), reverse=True
    )
    if versions:
        return versions[0].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PgCluster:
    """One cluster in `root` (data/, the server log, the socket), listening on 127.0.0.1:`port`."""

    def __init__(self, bin_dir: Path, root: Path, port: int, run_as: str | None) -> None:
        self.bin_dir, self.root, self.port, self.run_as = bin_dir, root, port, run_as
        self.data = root / "data"
        self.log = root / "server.log"
        self.running = False

    def dsn(self, dbname: str = "postgres") -> str:
        return make_conninfo(host="127.0.0.1", port=str(self.port), user="postgres", dbname=dbname)

    def _run(self, tool: str, *args: str, timeout: float = 60) -> None:
        cmd = [str(self.bin_dir / tool), *args]
        if self.run_as is not None:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}\n{log}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A started throwaway cluster (trust auth, user postgres); stopped and deleted after the test."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("initdb not found (install PostgreSQL's server binaries or set AGENTD_TEST_PG_BIN)")
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            pytest.skip(f"running as root and there is no {SERVICE_USER!r} user to run initdb as")
        if shutil.which("runuser") is None:
            pytest.skip("running as root and runuser is missing: cannot run initdb as another user")
        run_as = SERVICE_USER
    root = Path(tempfile.mkdtemp(prefix="agentd-pg-"))
    try:
        if run_as is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
        cluster = PgCluster(bin_dir, root, free_port(), run_as)
        cluster.init()
        cluster.start()
        try:
            yield cluster
        finally:
            if cluster.running:
                cluster.stop("immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
