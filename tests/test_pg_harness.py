"""The test-suite's PostgreSQL harness (callcenter/db/pgcluster.py, tests/support/pg_fixtures.py)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support import pg_fixtures
from callcenter.db.pgcluster import PostgresCluster, find_pg_bindir


def _async_url(url: str) -> str:
    scheme, rest = url.split("://", 1)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}[scheme]
    return f"{driver}://{rest}"


# -- policy (no server needed) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "required"),
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "false"}, False),
        ({"CALLCENTER_TEST_POSTGRES": "require"}, True),
    ],
)
def test_missing_binaries_skip_locally_fail_in_ci(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], required: bool
) -> None:
    for name in ("CI", "CALLCENTER_TEST_POSTGRES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    expected = pytest.fail.Exception if required else pytest.skip.Exception
    with pytest.raises(expected):
        pg_fixtures._unavailable("no binaries")


def test_bindir_override_to_nowhere_means_not_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("CALLCENTER_TEST_PG_BINDIR", str(tmp_path))
    assert find_pg_bindir() is None


# -- the server ---------------------------------------------------------------------------


def test_cluster_is_up(pg_cluster, request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("postgres"), "pg_cluster users get the marker"
    assert pg_cluster.url.startswith("postgresql://")
    with psycopg.connect(pg_cluster.url) as conn:
        row = conn.execute("SHOW server_encoding").fetchone()
        assert row == ("UTF8",)
        if isinstance(pg_cluster, PostgresCluster):
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert int(conn.execute("SHOW max_connections").fetchone()[0]) >= 100
            assert pg_cluster.url.startswith("postgresql://postgres@127.0.0.1:")


def test_databases_are_independent(pg_cluster) -> None:
    a = pg_cluster.create_database()
    b = pg_cluster.create_database()
    try:
        assert a != b
        with psycopg.connect(a, autocommit=True) as conn:
            conn.execute("CREATE TABLE only_in_a (id int)")
            conn.execute("INSERT INTO only_in_a VALUES (1)")
        with psycopg.connect(b, autocommit=True) as conn:
            assert conn.execute("SELECT to_regclass('only_in_a')").fetchone() == (None,)
        with psycopg.connect(a) as conn:
            assert conn.execute("SELECT count(*) FROM only_in_a").fetchone() == (1,)
    finally:
        pg_cluster.drop_database(a)
        # dropping works even with a connection still open
        lingering = psycopg.connect(b)
        pg_cluster.drop_database(b)
        lingering.close()
    with psycopg.connect(pg_cluster.url) as conn:
        names = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
    assert a.rsplit("/", 1)[1] not in names
    assert b.rsplit("/", 1)[1] not in names


async def test_database_url_is_fresh_and_async_engine_works(database_url: str) -> None:
    engine = create_async_engine(_async_url(database_url))
    try:
        async with engine.begin() as conn:
            # a fresh database: this would fail if anything had created it before
            await conn.execute(text("CREATE TABLE harness_probe (id INTEGER PRIMARY KEY, v TEXT)"))
            await conn.execute(text("INSERT INTO harness_probe (id, v) VALUES (1, '电话')"))
        async with engine.connect() as conn:
            value = (await conn.execute(text("SELECT v FROM harness_probe"))).scalar_one()
        assert value == "电话"
    finally:
        await engine.dispose()


async def test_32_concurrent_connections(pg_database_url: str) -> None:
    n = 32
    engine = create_async_engine(_async_url(pg_database_url), pool_size=n, max_overflow=0)
    barrier = asyncio.Barrier(n)

    async def worker() -> tuple[int, int]:
        async with engine.connect() as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await barrier.wait()  # all n connections are open at the same time here
            seen = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND backend_type = 'client backend'"
                    )
                )
            ).scalar_one()
            await barrier.wait()
            return pid, seen

    try:
        results = await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(n))), 60)
    finally:
        await engine.dispose()
    assert len({pid for pid, _ in results}) == n
    assert all(seen >= n for _, seen in results)
