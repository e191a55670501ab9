"""The throwaway cluster of tests/support/pg_cluster.py: its own port, stop and start keep the data."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.pg_cluster import PgCluster, pg_cluster  # noqa: F401 - fixture

pytestmark = pytest.mark.postgres


def test_a_throwaway_cluster_stops_and_starts_with_its_data(pg_cluster: PgCluster) -> None:  # noqa: F811
    assert pg_cluster.port != 5432
    with psycopg.connect(pg_cluster.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")
    pg_cluster.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_cluster.dsn(), connect_timeout=2).close()
    pg_cluster.start()
    with psycopg.connect(pg_cluster.dsn()) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("still here",)]
