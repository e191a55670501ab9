"""Named SQL queries, kept in sql/queries.sql and loaded once at import (agentd.adapters.sql_files).

Migrations are plain scripts in sql/migrations/NNNN_<what>.sql.
"""

from __future__ import annotations

from pathlib import Path

from agentd.adapters.sql_files import load_queries, parse_queries

__all__ = ["QUERIES", "SCHEMA_VERSION", "SQL_DIR", "migrations", "parse_queries"]

SQL_DIR = Path(__file__).parent / "sql"
QUERIES = load_queries(SQL_DIR / "queries.sql")


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
