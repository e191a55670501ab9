"""What we send to OpenCode: ids in its format, the prompt body with its parts, the model reference."""

from __future__ import annotations

import base64
import mimetypes
import secrets
import string
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentd.domain.models import PromptFile
from agentd.domain.workspace import workspace_path

_ALPHABET = string.ascii_letters + string.digits
_lock = threading.Lock()
_last = [0, 0]  # last timestamp (ms), counter within it


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """An ascending id like OpenCode's own ("msg_" + 12 hex digits of ms*4096+counter + 14 random chars).

    OpenCode sorts messages by id, so a message id we choose must sort after the existing ones.
    """
    with _lock:
        ts = int(time.time() * 1000) if now_ms is None else now_ms
        if ts != _last[0]:
            _last[0], _last[1] = ts, 0
        _last[1] += 1
        n = (ts * 0x1000 + _last[1]) % (1 << 48)
    return f"{prefix}_{n:012x}" + "".join(secrets.choice(_ALPHABET) for _ in range(14))


def split_model(model: str) -> dict[str, str]:
    """ "<providerID>/<modelID>" (the model id may contain more slashes) -> the body's model object."""
    provider, sep, model_id = model.partition("/")
    if not sep or not provider or not model_id:
        raise ValueError(f"model {model!r} must be written as OpenCode writes it: '<providerID>/<modelID>'")
    return {"providerID": provider, "modelID": model_id}


def file_part(f: PromptFile, directory: Path) -> dict[str, Any]:
    """A prompt file as a part: a file:// URL for a path (relative to the project), else a data: URL."""
    name = f.filename or (Path(f.path).name if f.path else "attachment.txt")
    mime = f.mime or mimetypes.guess_type(name)[0] or "text/plain"
    if f.path is not None:
        # inside the workspace after symlinks (checked at submission, and again here: a link can change)
        p = workspace_path(directory, f.path)
        return {"type": "file", "mime": mime, "filename": name, "url": p.as_uri()}
    url = f"data:{mime};base64,{base64.b64encode((f.content or '').encode()).decode()}"
    return {"type": "file", "mime": mime, "filename": name, "url": url}


def prompt_body(
    prompt: str,
    *,
    directory: Path,
    message_id: str,
    model: str | None = None,
    agent: str | None = None,
    files: Sequence[PromptFile] = (),
    mentions: Sequence[str] = (),
) -> dict[str, Any]:
    """The JSON body of POST /session/{id}/prompt_async (and /message)."""
    parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
    parts += [file_part(f, directory) for f in files]
    parts += [{"type": "agent", "name": name} for name in mentions]
    body: dict[str, Any] = {"messageID": message_id, "parts": parts}
    if model:
        body["model"] = split_model(model)
    if agent:
        body["agent"] = agent
    return body


def session_title(prompt: str, limit: int = 60) -> str:
    """A title for a new session (without one, OpenCode spends a model call on generating it)."""
    first = " ".join(prompt.strip().split())
    return first if len(first) <= limit else first[: limit - 1] + "…"
