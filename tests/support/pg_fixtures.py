"""pytest fixtures for the database matrix (SQLite / PostgreSQL).

Wire-up (tests/conftest.py)::

    pytest_plugins = ["tests.support.pg_fixtures"]

Fixtures
    ``pg_cluster``      session: a started ``PostgresCluster`` (or ``ExternalPostgres`` when
                        CALLCENTER_TEST_POSTGRES_URL is set); ``.url``, ``.create_database()``,
                        ``.drop_database()``.
    ``database_url``    function, parametrized ``[sqlite]`` / ``[postgresql]``: a plain URL of
                        a fresh, empty database (``sqlite:////tmp/.../callcenter.sqlite3`` or
                        ``postgresql://postgres@127.0.0.1:PORT/cc_test_...``).
    ``pg_database_url`` function: a fresh PostgreSQL database only (no SQLite variant).

Every test that (directly or indirectly) uses ``pg_cluster`` gets the ``postgres`` marker,
so ``-m "not postgres"`` deselects them.

Policy when no server binaries are found: fail (error at setup) when CI=true or
CALLCENTER_TEST_POSTGRES=require, otherwise skip with the reason. A server that is found
but does not start, or an unreachable CALLCENTER_TEST_POSTGRES_URL, always fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from callcenter.db.pgcluster import ENV_URL, ExternalPostgres, PostgresCluster, _redact, find_pg_bindir

ENV_MODE = "CALLCENTER_TEST_POSTGRES"

__all__ = ["database_url", "pg_cluster", "pg_database_url", "postgres_required"]


def postgres_required() -> bool:
    """True when PostgreSQL tests must run rather than skip (CI, or explicitly required)."""
    ci = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
    return ci or os.environ.get(ENV_MODE, "").strip().lower() == "require"


def _unavailable(reason: str) -> NoReturn:
    if postgres_required():
        pytest.fail(
            f"{reason}. PostgreSQL tests are required here "
            f"(CI=true or {ENV_MODE}=require), refusing to skip them.",
            pytrace=False,
        )
    pytest.skip(f"{reason} (set {ENV_MODE}=require to make this an error)")


_MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: install the server "
    "(Debian: apt-get install postgresql; or run scripts/test as root) or point "
    f"{ENV_URL} at a server"
)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster | ExternalPostgres]:
    external = os.environ.get(ENV_URL, "").strip()
    if external:
        server = ExternalPostgres(external)
        try:
            server.start()
        except Exception as exc:  # the user asked for this server: never skip
            pytest.fail(f"{ENV_URL}={_redact(external)}: {exc}", pytrace=False)
        try:
            yield server
        finally:
            server.stop()
        return

    bindir = find_pg_bindir()
    if bindir is None:
        _unavailable(_MISSING)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
    except Exception as exc:  # binaries exist but do not work: that is a bug, never a skip
        pytest.fail(f"could not start a throwaway PostgreSQL from {bindir}: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'callcenter.sqlite3'}"
        return
    server = request.getfixturevalue("pg_cluster")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


@pytest.fixture
def pg_database_url(pg_cluster: PostgresCluster | ExternalPostgres) -> Iterator[str]:
    url = pg_cluster.create_database()
    try:
        yield url
    finally:
        pg_cluster.drop_database(url)


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.split(":", 1)[0].strip() == "postgres" for line in config.getini("markers")):
        config.addinivalue_line("markers", "postgres: needs a real PostgreSQL server")


@pytest.hookimpl(tryfirst=True)  # before -m deselection runs
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    marker = pytest.mark.postgres
    for item in items:
        if "pg_cluster" in getattr(item, "fixturenames", ()) and not item.get_closest_marker(
            "postgres"
        ):
            item.add_marker(marker)


def pytest_report_header(config: pytest.Config) -> str:
    external = os.environ.get(ENV_URL, "").strip()
    if external:
        where = f"external {_redact(external)}"
    else:
        bindir = find_pg_bindir()
        where = f"throwaway cluster from {bindir}" if bindir else "server binaries NOT found"
    policy = "required" if postgres_required() else "skip if unavailable"
    return f"postgresql: {where} ({policy})"
