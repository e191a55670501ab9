"""psycopg errors become domain errors here, once, at the adapter boundary."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agentd.domain.errors import QueueUnavailable

# A dead peer must not hang a query forever; the DSN can still set these.
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def with_keepalives(conninfo: str) -> str:
    params = conninfo_to_dict(conninfo)
    return make_conninfo("", **{**_KEEPALIVES, **params})


def describe(conninfo: str) -> str:
    """host:port/dbname, for messages and logs (never the password)."""
    p = conninfo_to_dict(conninfo)
    return f"{p.get('host', 'localhost')}:{p.get('port', 5432)}/{p.get('dbname', p.get('user', ''))}"


@contextlib.asynccontextmanager
async def translate_errors(where: str) -> AsyncIterator[None]:
    """Connection-level failures (server down, connection lost, pool timeout or closed) → QueueUnavailable.

    Anything else from psycopg is a bug (a constraint the code should have kept) and stays as it is.
    """
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError) as e:
        raise QueueUnavailable(f"PostgreSQL at {where} is unavailable: {str(e).strip()}") from e
