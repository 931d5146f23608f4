"""One transaction, one trip to the driver: run a plain function of a sync `Connection`.

The hot write paths (case creation, SMS intake groups) build their statements with Core and
run them all inside one function. How that function reaches the database depends on the
driver:

- **SQLite (aiosqlite)**: the function runs on aiosqlite's own worker thread, on the very
  connection the pool handed out, through a sync SQLAlchemy engine bound to that raw
  `sqlite3` connection. The whole transaction is **one hop** between the event loop and the
  driver thread, where `AsyncConnection.execute` pays one hop (and one loop wake-up) per
  statement; a profile of an SMS burst spent 35 % of its time in those wake-ups.
- **PostgreSQL (psycopg async)**: the function runs in SQLAlchemy's greenlet on the loop
  (`AsyncConnection.run_sync`); each statement is a network round trip, which is why the
  callers use multi-row statements.

The function must not touch asyncio objects: on SQLite it runs on another thread.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, Table, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

T = TypeVar("T")

# One sync engine per raw sqlite3 connection, made on first use (on the driver's thread).
_SHADOWS: weakref.WeakKeyDictionary[Any, Engine] = weakref.WeakKeyDictionary()


def _shadow(driver_connection: Any) -> Engine:
    engine = _SHADOWS.get(driver_connection)
    if engine is None:
        raw = driver_connection._conn  # the sqlite3.Connection aiosqlite owns
        engine = create_engine("sqlite://", creator=lambda: raw, poolclass=StaticPool,
                               pool_reset_on_return=None)
        _SHADOWS[driver_connection] = engine
    return engine


def _run_sqlite(driver_connection: Any, fn: Callable[[Connection], T], immediate: bool) -> T:
    """On aiosqlite's thread: BEGIN, the function, COMMIT (ROLLBACK on any error)."""
    with _shadow(driver_connection).connect() as conn:
        raw = driver_connection._conn
        if raw.in_transaction:  # left open by an earlier user of the pooled connection
            raw.rollback()
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            result = fn(conn)
        except BaseException:
            raw.rollback()
            conn.rollback()
            raise
        raw.commit()
        conn.commit()
        return result


async def run_in_transaction(engine: AsyncEngine, fn: Callable[[Connection], T], *, write: bool = True) -> T:
    """Run `fn(conn)` in one transaction and return its result; any exception rolls back."""
    if engine.dialect.name == "sqlite":
        async with engine.connect() as aconn:
            raw = await aconn.get_raw_connection()
            driver = raw.driver_connection
            if driver is not None and hasattr(driver, "_execute") and hasattr(driver, "_conn"):
                result: T = await driver._execute(_run_sqlite, driver, fn, write)
                return result
            return await aconn.run_sync(_in_transaction(fn))  # pragma: no cover - another driver
    async with engine.begin() as aconn:
        return await aconn.run_sync(fn)


def _in_transaction(fn: Callable[[Connection], T]) -> Callable[[Connection], T]:
    def call(conn: Connection) -> T:
        with conn.begin():
            return fn(conn)
    return call


def insert_ids(conn: Connection, table: Table, rows: list[dict[str, Any]], key: tuple[str, ...]) -> list[int]:
    """INSERT many rows in one statement; their ids in the order of `rows`.

    `key` names columns unique among the rows. Asking for the ids in parameter order
    (`sort_by_parameter_order`) makes SQLAlchemy run one INSERT per row on SQLite, which
    cannot promise the order of RETURNING; reading the key back with the id needs no order.
    """
    statement = _insert_returning(table, key)
    if len(rows) == 1:
        return [conn.execute(statement, rows[0]).scalar_one()]
    found = {tuple(r[1:]): r[0] for r in conn.execute(statement, rows)}
    return [found[tuple(row[name] for name in key)] for row in rows]


@functools.cache
def _insert_returning(table: Table, key: tuple[str, ...]) -> Any:
    return table.insert().returning(table.c.id, *(table.c[name] for name in key))
