"""Secrets every node must agree on, kept in the store (`shared_keys`).

The first node that asks for a key makes it; the insert does nothing if another node got
there first, and everyone reads back the one stored row. One round trip pair per key and
process, at first use.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from callcenter.db.tables import SharedKeyRow

KEYS = SharedKeyRow.__table__


async def shared_key(engine: AsyncEngine, name: str, make: Callable[[], bytes]) -> bytes:
    """The key stored under `name`, made with `make()` and stored if there is none yet."""
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    async with engine.begin() as conn:
        await conn.execute(insert(KEYS).values(name=name, secret=make(), created_at=dt.datetime.now(dt.UTC))
                           .on_conflict_do_nothing(index_elements=[KEYS.c.name]))
        # A new statement: under READ COMMITTED it sees the row another node committed first.
        secret = (await conn.execute(select(KEYS.c.secret).where(KEYS.c.name == name))).scalar_one()
    return bytes(secret)
