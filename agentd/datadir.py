"""One serving process per data dir: `agentd serve` and `agentd worker` hold an exclusive lock on
<data dir>/agentd.lock for their whole life (flock: the kernel drops it when the process ends, also on
kill -9). A second one on the same data dir would recover the first one's running jobs and kill its agents'
processes; it exits instead. Administrative commands (`agentd secrets`, `agentd migrate`, …) take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_NAME = "agentd.lock"


class DataDirInUse(Exception):
    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"data dir {data_dir} in use by {who}")


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data dir's lock (keep the returned file open for as long as the process serves), or raise
    DataDirInUse naming the holder's pid."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / LOCK_NAME
    f = open(path, "a+", encoding="utf-8")  # held open for the life of the process
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        text = f.read().strip()
        f.close()
        raise DataDirInUse(data_dir, int(text) if text.isdigit() else None) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)
    return f
