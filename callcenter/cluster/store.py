"""The cluster's statements: the store's clock, cluster events with their NOTIFY.

Times that several nodes compare (heartbeats, lease expiries) come from the store's clock on
PostgreSQL (`now()`), so the nodes' own clocks may drift; SQLite is one machine's file and
uses this process's clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, insert, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from callcenter.db.base import UtcDateTime
from callcenter.db.tables import ClusterEventRow

#: The one NOTIFY channel: its payload is empty; listeners read the new rows of `cluster_events`.
CHANNEL = "callcenter_events"

EVENTS = ClusterEventRow.__table__

#: A cluster notice, not a console event: a token revoked on some node (data: {"digests": [...]}).
TOKEN_REVOKED = "token_revoked"


def store_now(dialect: str, offset_seconds: float = 0.0) -> ColumnElement[dt.datetime]:
    """The store's time (plus an offset) as an SQL expression."""
    if dialect == "postgresql":
        now = func.now()
        if offset_seconds:
            return now + func.make_interval(0, 0, 0, 0, 0, 0, float(offset_seconds))  # type: ignore[no-any-return]
        return now  # type: ignore[return-value]
    return literal(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds), UtcDateTime())


async def record_events(conn: AsyncConnection | AsyncSession, origin: str,
                        events: Sequence[tuple[str, str | None, Mapping[str, Any]]]) -> None:
    """Insert (type, target, data) rows and NOTIFY, inside the caller's transaction: the
    listeners are woken when it commits, and never for a rolled-back event. PostgreSQL only."""
    if not events:
        return
    now = dt.datetime.now(dt.UTC)
    await conn.execute(insert(EVENTS), [
        {"at": now, "origin": origin, "type": kind, "target": target, "data": dict(data)}
        for kind, target, data in events])
    await conn.execute(select(func.pg_notify(CHANNEL, "")))
