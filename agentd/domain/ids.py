"""Identifiers. Job and stream ids share one random token so a stream URL names exactly one job."""

from __future__ import annotations

import re
import secrets
import time

from agentd.domain.errors import StreamNotFound

JOB_PREFIX = "job_"
STREAM_PREFIX = "stm_"
_TOKEN = re.compile(r"[0-9A-Za-z]{1,64}")  # ASCII only ("²".isalnum() is true)
JOB_ID_RE = re.compile(r"job_[0-9A-Za-z]{1,64}")


def new_job_ids() -> tuple[str, str]:
    """A (job id, stream id) pair: time-ordered for humans, 96 random bits so nobody can guess one."""
    token = f"{int(time.time() * 1000):012x}{secrets.token_hex(12)}"
    return JOB_PREFIX + token, STREAM_PREFIX + token


def job_id_for_stream(stream_id: str) -> str:
    token = stream_id.removeprefix(STREAM_PREFIX)
    if token == stream_id or not _TOKEN.fullmatch(token):
        raise StreamNotFound(f"no event stream {stream_id!r}")
    return JOB_PREFIX + token
