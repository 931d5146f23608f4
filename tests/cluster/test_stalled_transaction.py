"""A node stopped mid-transaction must not hold other nodes' writes for long: PostgreSQL ends
its session after `[database] idle_in_transaction_timeout` and its row locks go with it."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import DBAPIError

from callcenter.db import migrate
from callcenter.db.engine import create_engine
from callcenter.db.tables import OutboxRow
from callcenter.settings import DatabaseSettings

pytestmark = pytest.mark.postgres


async def test_a_transaction_left_idle_loses_its_locks_and_its_session(pg_database_url: str) -> None:
    migrate.upgrade(pg_database_url)
    stalled = create_engine(DatabaseSettings(url=pg_database_url, idle_in_transaction_timeout=1.0))
    other = create_engine(DatabaseSettings(url=pg_database_url))
    now = dt.datetime.now(dt.UTC)
    try:
        async with other.begin() as conn:
            await conn.execute(insert(OutboxRow.__table__).values(
                idempotency_key="stall-1", case_id=None, recipient="+8613800000001", template="sms_reply",
                body="受理编号261203000011：已受理。", status="sending", attempts=1, not_before=now, created_at=now))
        async with stalled.connect() as held:
            transaction = await held.begin()
            await held.execute(update(OutboxRow.__table__).values(lease_owner="node-stalled"))  # row locked
            # Another node renews the same row: it waits on the lock, then goes through once
            # PostgreSQL has ended the idle session (not when the stalled node wakes).
            started = asyncio.get_running_loop().time()
            async with other.begin() as conn:
                await asyncio.wait_for(conn.execute(
                    update(OutboxRow.__table__).values(lease_owner="node-live")), timeout=20)
            waited = asyncio.get_running_loop().time() - started
            assert 0.5 < waited < 20
            with pytest.raises(DBAPIError):  # the stalled node learns its transaction is gone
                await held.execute(select(OutboxRow.__table__.c.id))
            await transaction.rollback()
        async with other.connect() as conn:
            assert (await conn.execute(select(OutboxRow.__table__.c.lease_owner))).scalar_one() == "node-live"
        # The service's default holds too (30 s), and 0 turns it off.
        assert DatabaseSettings(url=pg_database_url).idle_in_transaction_timeout == 30.0
        async with other.connect() as conn:
            assert (await conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout")).scalar_one() == "30s"
        off = create_engine(DatabaseSettings(url=pg_database_url, idle_in_transaction_timeout=0))
        async with off.connect() as conn:
            assert (await conn.exec_driver_sql("SHOW idle_in_transaction_session_timeout")).scalar_one() == "0"
        await off.dispose()
    finally:
        await stalled.dispose()
        await other.dispose()
