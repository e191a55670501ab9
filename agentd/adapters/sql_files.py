"""Named SQL queries kept in `.sql` files (procrastinate style), for the adapters that speak SQL.

A block starts with `-- name: <name>`; everything up to the next such line is the query (the comment lines
right after the name say what it does).
"""

from __future__ import annotations

import re
from pathlib import Path

_NAME = re.compile(r"^-- name: *([a-z0-9_]+) *$", re.MULTILINE)


def parse_queries(text: str) -> dict[str, str]:
    """{name: sql} from a file of `-- name:` blocks; a name may appear once."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


def load_queries(path: Path) -> dict[str, str]:
    return parse_queries(path.read_text(encoding="utf-8"))
