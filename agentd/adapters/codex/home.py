"""The private CODEX_HOME a project's Codex runs use: its config.toml comes from agentd's settings.

Codex keeps its state (config.toml, `sessions/YYYY/MM/DD/rollout-<ts>-<thread id>.jsonl`, sqlite logs)
in CODEX_HOME. agentd gives every project its own, under the data dir, and writes config.toml before each
run from the AGENTD_CODEX_* settings, so a run never reads the user's ~/.codex and never sees another
project's threads. No I/O here besides writing that file and reading a thread's rollout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.toml"


def toml_str(value: str) -> str:
    """A TOML basic string (json.dumps escapes are valid TOML escapes for these characters)."""
    return json.dumps(value, ensure_ascii=False)


def render_config(
    *,
    base_url: str | None = None,
    provider: str = "agentd",
    model: str | None = None,
    env_key: str = "OPENAI_API_KEY",
    request_max_retries: int = 4,
    stream_max_retries: int = 0,
) -> str:
    """config.toml text. With a base URL: a custom Responses API provider `provider` reading its key from
    the `env_key` variable, or for `openai` (built in, its key in OPENAI_API_KEY) its `openai_base_url`.
    Without one: Codex's provider named `provider` as Codex knows it."""
    lines = [
        "# Written by agentd before every run (AGENTD_CODEX_*); edits are overwritten.",
        "check_for_update_on_startup = false",
    ]
    if model:
        lines.append(f"model = {toml_str(model)}")
    lines.append(f"model_provider = {toml_str(provider)}")
    if base_url and provider == "openai":
        lines.append(f"openai_base_url = {toml_str(base_url)}")
    elif base_url:
        lines += [
            "",
            f"[model_providers.{toml_str(provider)}]",
            f"name = {toml_str(provider)}",
            f"base_url = {toml_str(base_url)}",
            'wire_api = "responses"',
            f"env_key = {toml_str(env_key)}",
            f"request_max_retries = {int(request_max_retries)}",
            f"stream_max_retries = {int(stream_max_retries)}",
        ]
    return "\n".join(lines) + "\n"


def write_config(home: Path, **options: Any) -> Path:
    """Create `home` (mode 0700) and (re)write its config.toml atomically."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = home / CONFIG_NAME
    tmp = home / f".{CONFIG_NAME}.{os.getpid()}.tmp"
    tmp.write_text(render_config(**options))
    os.replace(tmp, path)
    return path


def rollout_file(home: Path, thread_id: str) -> Path | None:
    """The rollout file Codex keeps for `thread_id` in this home, if any."""
    sessions = home / "sessions"
    if not sessions.is_dir() or "/" in thread_id:
        return None
    found = sorted(sessions.glob(f"*/*/*/rollout-*-{thread_id}.jsonl"))
    return found[-1] if found else None


def thread_usage_total(home: Path, thread_id: str | None) -> dict[str, int]:
    """The token usage a thread has accumulated so far (Codex reports usage cumulative per thread, so a
    turn's own usage is its final total minus this). Empty for a new or unknown thread."""
    if not thread_id:
        return {}
    path = rollout_file(home, thread_id)
    if path is None:
        return {}
    total: dict[str, int] = {}
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if '"token_count"' not in line:
                    continue
                try:
                    payload = json.loads(line).get("payload") or {}
                except (json.JSONDecodeError, AttributeError):
                    continue
                info = payload.get("info") if isinstance(payload, dict) else None
                usage = info.get("total_token_usage") if isinstance(info, dict) else None
                if isinstance(usage, dict):
                    total = {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}
    except OSError:
        return {}
    return total
