"""Paths a request names inside a project's workspace: resolved after symlinks, or refused.

`workspace_path` is what the service checks at submission and what adapters call when they read a file a
request names (a symlink can change between the two: an earlier run of the project may have made it).
"""

from __future__ import annotations

import os
from pathlib import Path

from agentd.domain import errors


def workspace_path(workspace: Path, relative: str) -> Path:
    """The real path of `relative` inside `workspace`, every symlink followed; InvalidRequest (400) when it
    is absolute, climbs out with `..`, or resolves (through a symlink) outside the workspace."""
    if not isinstance(relative, str) or not relative.strip() or "\0" in relative:
        raise errors.InvalidRequest(
            f"files: {relative!r} must be a relative path inside the project workspace"
        )
    if os.path.isabs(relative) or ".." in relative.replace("\\", "/").split("/"):
        raise errors.InvalidRequest(
            f"files: {relative!r} must be a relative path inside the project workspace"
        )
    root = Path(os.path.realpath(workspace))
    target = Path(os.path.realpath(root / relative))
    if target != root and root not in target.parents:
        raise errors.InvalidRequest(
            f"files: {relative!r} resolves outside the project workspace (through a symlink); name a file "
            "inside it"
        )
    return target
