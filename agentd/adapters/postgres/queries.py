"""Named SQL queries, kept in sql/queries.sql (procrastinate style) and loaded once at import.

A block starts with `-- name: <name>`; everything up to the next such line is the query. Migrations are
plain scripts in sql/migrations/NNNN_<what>.sql.
"""

from __future__ import annotations

import re
from pathlib import Path

SQL_DIR = Path(__file__).parent / "sql"
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


QUERIES = parse_queries((SQL_DIR / "queries.sql").read_text(encoding="utf-8"))


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, sql) of every migration shipped with this agentd, oldest first."""
    found = []
    for path in sorted((SQL_DIR / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found.append((int(path.name[:4]), path.name, path.read_text(encoding="utf-8")))
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migrations must be numbered 1, 2, 3… without gaps, found {versions}")
    return found


SCHEMA_VERSION = len(migrations())
