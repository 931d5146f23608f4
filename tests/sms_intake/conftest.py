"""SMS channel test wiring.

Pipeline tests use the shared `services` fixture (SQLite and PostgreSQL) with the settings
below: a roster in tmp, short windows. Tests against the SMSC simulator run on the session
event loop (Twisted's asyncio reactor is bound to one loop) with their own SQLite store.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from callcenter.runtime import install_reactor
from callcenter.settings import Settings
from tests.support.smsc import smsc, smsc_simulator

__all__ = ["Clock", "ROSTER", "reactor", "smsc", "smsc_simulator"]

SUPERVISOR_1 = "+8613900000001"   # 布吉街道
SUPERVISOR_2 = "+8613900000002"   # 大芬社区
SHIFT_LEADER = "+8613800000000"
ROSTER = """
[shift_leader]
name = "值班长"
phone = "13800000000"

[[supervisor]]
name = "张伟"
phone = "139 0000 0001"
grids = ["440307001"]

[[supervisor]]
name = "李娜"
phone = "13900000002"
grids = ["440307001002"]
"""
GRID_BUJI = "44030700100101"      # 布吉圩社区第01网格 -> 张伟
GRID_DAFEN = "44030700100201"     # 大芬社区第01网格 -> 李娜 (more specific)


class Clock:
    """A settable UTC clock for the services' `now` hooks."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.value = start or dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.value

    def advance(self, **delta: float) -> None:
        self.value += dt.timedelta(**delta)


def sms_overrides(base: Settings, tmp_path: Path, **sms: Any) -> Settings:
    roster = tmp_path / "roster.toml"
    roster.write_text(ROSTER, encoding="utf-8")
    blocklist = tmp_path / "blocklist.txt"
    blocklist.write_text("# test blocklist\n13666666666\n", encoding="utf-8")
    values: dict[str, Any] = {"roster_file": str(roster), "blocklist_file": str(blocklist),
                              "reassembly_timeout": 60.0, "in_doubt_wait": 30.0, "outbox_poll_interval": 0.05}
    values.update(sms)
    return base.model_copy(update={"sms": base.sms.model_copy(update=values)})


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The shared settings (database matrix) with this directory's SMS settings."""
    return sms_overrides(settings, tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def use_clock(services: Any, clock: Callable[[], dt.datetime]) -> None:
    """Point every SMS service and the case service at one clock."""
    services.cases.now = clock
    services.sms.intake.now = clock
    services.sms.outbox.now = clock
    services.sms.tasks.now = clock


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def reactor() -> Any:
    """Twisted's asyncio reactor, installed on the session loop."""
    return install_reactor(asyncio.get_running_loop())


async def fail_inserts(engine: Any, table: str) -> None:
    """Make the real store refuse inserts into `table` (a trigger), as a full disk would."""
    name = f"fail_{table}"
    if engine.dialect.name == "sqlite":
        statements = [f"CREATE TRIGGER {name} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'disk full'); END"]
    else:
        statements = [
            f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$",
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()",
        ]
    async with engine.begin() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)


async def heal_inserts(engine: Any, table: str) -> None:
    name = f"fail_{table}"
    statement = f"DROP TRIGGER {name}" + (f" ON {table}" if engine.dialect.name == "postgresql" else "")
    async with engine.begin() as conn:
        await conn.exec_driver_sql(statement)
