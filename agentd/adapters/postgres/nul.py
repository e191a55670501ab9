"""U+0000 in jsonb: PostgreSQL refuses it ("unsupported Unicode escape sequence"), agent output may hold it.

A JSON document holding U+0000 is stored wrapped, `{"agentd_nul": <document>}`, its strings escaped:
U+E000 → U+E000 U+E000 and U+0000 → U+E000 U+E001 (every U+E000 then starts a pair, so the escape is
exact both ways). Documents without U+0000 (nearly all) are stored as they are, for free: the check is one
substring search of the JSON text.
"""

from __future__ import annotations

import json
import re
from typing import Any

MARK = "agentd_nul"
_PAIR = re.compile("\ue000([\ue000\ue001])")


def _walk(data: Any, fn: Any) -> Any:
    if isinstance(data, str):
        return fn(data)
    if isinstance(data, dict):
        return {fn(k): _walk(v, fn) for k, v in data.items()}
    if isinstance(data, list):
        return [_walk(v, fn) for v in data]
    return data


def _escape(s: str) -> str:
    return s.replace("\ue000", "\ue000\ue000").replace("\0", "\ue000\ue001")


def _unescape(s: str) -> str:
    return _PAIR.sub(lambda m: "\ue000" if m.group(1) == "\ue000" else "\0", s) if "\ue000" in s else s


def to_jsonb(text: str) -> str:
    """JSON text as jsonb can store it."""
    if "\\u0000" not in text:
        return text
    return json.dumps({MARK: _walk(json.loads(text), _escape)}, ensure_ascii=False)


def from_jsonb(data: Any) -> Any:
    """What `to_jsonb` was given, as psycopg decoded it."""
    if isinstance(data, dict) and len(data) == 1 and MARK in data:
        return _walk(data[MARK], _unescape)
    return data


def text_safe(text: str | None) -> str | None:
    """For a text column (U+0000 cannot be stored there either): U+FFFD instead."""
    return text.replace("\0", "\ufffd") if text else text
