"""Flood and loop windows held in the store, so they hold across nodes (issue 11).

Counters live in `rate_windows`, one row per key and time bucket (`sms.window_bucket_seconds`
wide). An intake group counts its texts with one UPSERT run over its keys (`count = count +
n`, executemany) and reads its window sums with one SELECT, both inside the group's own transaction, so a text
costs no round trip of its own:

- `mo:<number>`: one row per number (bucket 0), whatever the time: the number's lock. The
  UPSERT holds it until the group commits, so two nodes' groups holding texts from one
  number take turns: the second reads the first one's stored texts (the per-number flood
  count, `sms.rate_limit` in `sms.rate_window`, is a count of stored `sms_inbound` rows read
  after this lock). Its count is the number's texts since the prune last removed the row.
- `loop:<number>:<text hash>`: the same text again (`sms.loop_threshold` in `sms.loop_window`),
  redeliveries included, as the in-process deque counted before.

Rows are written in sorted order, so two groups take the rows they share (the numbers'
locks) in the same order and never deadlock. A window's sum takes whole buckets: an
arrival up to one bucket older than the window may still count.

Old buckets are deleted by a leased job (`[jobs] rate_windows_prune_seconds`).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Connection, Table, delete, func, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.db.tables_sms import RateWindowRow

log = structlog.get_logger(__name__)

WINDOWS: Table = RateWindowRow.__table__  # type: ignore[assignment]
#: The bucket of the numbers' lock rows (`mo:<number>`): one row per number, not per time.
LOCK_BUCKET = 0


def _upsert(insert: Any) -> Any:
    statement = insert(WINDOWS)
    return statement.on_conflict_do_update(index_elements=[WINDOWS.c.key, WINDOWS.c.bucket],
                                           set_={"count": WINDOWS.c.count + statement.excluded.count})


# One single-row statement run with the group's rows (executemany: psycopg pipelines it, the
# rows keep their sorted order). A multi-row VALUES would be compiled anew for every group:
# SQLAlchemy does not cache those, and the compile cost 3 ms of CPU per group in a profile.
_UPSERT = {"postgresql": _upsert(pg_insert), "sqlite": _upsert(sqlite_insert)}


@dataclass
class SharedWindows:
    sessions: async_sessionmaker[AsyncSession]
    bucket_seconds: float
    loop_window: float
    horizon: float  # the longest window counted here: older buckets can go
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    def bucket(self, at: dt.datetime) -> int:
        return int(at.timestamp() // self.bucket_seconds)

    def arrive(self, conn: Connection, texts: Sequence[tuple[str, str]], now: dt.datetime) -> list[int]:
        """Count a group's texts, (number, text hash) each, in its transaction; for each, how
        many times that text came from that number within the loop window, itself included.

        Two statements for the whole group: the UPSERT (which also serialises groups for the
        same number across nodes) and the SELECT of the loop sums."""
        if not texts:
            return []
        loop_keys = [f"loop:{sender[:40]}:{text_hash[:32]}" for sender, text_hash in texts]
        bucket = self.bucket(now)
        increments = Counter((key, bucket) for key in loop_keys)
        increments.update((f"mo:{sender[:40]}", LOCK_BUCKET) for sender, _ in texts)
        conn.execute(_UPSERT[conn.dialect.name],
                     [{"key": key, "bucket": at, "count": n} for (key, at), n in sorted(increments.items())])
        since = self.bucket(now - dt.timedelta(seconds=self.loop_window))
        distinct = sorted(set(loop_keys))
        totals: dict[str, int] = dict(conn.execute(  # type: ignore[arg-type]
            select(WINDOWS.c.key, func.sum(WINDOWS.c.count))
            .where(WINDOWS.c.key.in_(distinct), WINDOWS.c.bucket >= since).group_by(WINDOWS.c.key)).all())
        # The group's own arrivals are in the totals: the k-th of n copies in the group saw
        # total - n + k arrivals.
        left = Counter(loop_keys)
        out = []
        for key in loop_keys:
            out.append(int(totals.get(key, 0)) - left[key] + 1)
            left[key] -= 1
        return out

    async def prune(self) -> int:
        """Delete buckets older than the longest window; returns how many rows went.

        On PostgreSQL rows an intake group holds (numbers' lock rows) are skipped, not waited
        for: a DELETE taking rows in its own order while a group takes several in key order
        could deadlock with it. They go at a later prune."""
        cutoff = self.bucket(self.now() - dt.timedelta(seconds=self.horizon)) - 1
        async with self.sessions() as session, session.begin():
            old = WINDOWS.c.bucket < cutoff
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                free = select(WINDOWS.c.key, WINDOWS.c.bucket).where(old).with_for_update(skip_locked=True)
                statement = delete(WINDOWS).where(tuple_(WINDOWS.c.key, WINDOWS.c.bucket).in_(free))
            else:
                statement = delete(WINDOWS).where(old)
            gone = (await session.execute(statement)).rowcount  # type: ignore[attr-defined]
        if gone:
            log.info("sms.rate_windows.pruned", rows=gone)
        return int(gone or 0)


__all__ = ["SharedWindows"]
