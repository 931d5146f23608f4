"""Engines from a plain database URL: the driver is our choice, not the operator's."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from callcenter.settings import PROJECT_ROOT, DatabaseSettings


def _base_url(url: str) -> URL:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgres":
        parsed = parsed.set(drivername="postgresql")
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = parsed.database
        if not path.startswith("/"):
            path = str(PROJECT_ROOT / path)
        parsed = parsed.set(database=path)
    return parsed


def async_url(url: str) -> URL:
    parsed = _base_url(url)
    driver = "sqlite+aiosqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+psycopg"
    return parsed.set(drivername=driver)


def sync_url(url: str) -> URL:
    parsed = _base_url(url)
    driver = "sqlite" if parsed.get_backend_name() == "sqlite" else "postgresql+psycopg"
    return parsed.set(drivername=driver)


def is_sqlite(url: str) -> bool:
    return _base_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> str | None:
    parsed = _base_url(url)
    return parsed.database if parsed.get_backend_name() == "sqlite" else None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_reset(dbapi_connection: Any, _record: Any, state: Any) -> None:
    """Roll back a connection coming back to the pool only if it is inside a transaction.

    The pool's own reset rolls back every time, and on aiosqlite each rollback is a trip to
    the driver's thread and back, on every checkout of the one connection; most come back
    with nothing open (the hot paths commit in `callcenter.db.unit`).
    """
    if not state.asyncio_safe:
        return
    raw = getattr(getattr(dbapi_connection, "_connection", None), "_conn", None)
    if raw is None or raw.in_transaction:
        dbapi_connection.rollback()


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    """An async engine for the service.

    SQLite gets one pooled connection: it has one writer anyway, and queueing in the pool
    is fairer than SQLITE_BUSY retries. PostgreSQL gets a real pool.
    """
    url = async_url(settings.url)
    if is_sqlite(settings.url):
        path = sqlite_path(settings.url)
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(
            url, echo=settings.echo, poolclass=AsyncAdaptedQueuePool, pool_size=1,
            max_overflow=0, pool_timeout=120, pool_reset_on_return=None,
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine.pool, "reset", _sqlite_reset)
        return engine
    connect_args = {}
    if settings.idle_in_transaction_timeout:
        timeout_ms = int(settings.idle_in_transaction_timeout * 1000)
        connect_args["options"] = f"-c idle_in_transaction_session_timeout={timeout_ms}"
    return create_async_engine(
        url, echo=settings.echo, pool_size=settings.pool_size, max_overflow=settings.pool_size,
        pool_pre_ping=True, connect_args=connect_args,
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker:  # type: ignore[type-arg]
    return async_sessionmaker(engine, expire_on_commit=False)
