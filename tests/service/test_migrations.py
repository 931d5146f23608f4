"""The migrations build exactly the schema the models describe, on both backends."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

import callcenter.db.tables  # noqa: F401
from callcenter.db import migrate
from callcenter.db.base import Base
from callcenter.db.engine import sync_url


def test_models_and_migrations_agree(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models differ from migrations: {diff}"
    assert migrate.current_revision(database_url) == migrate.head_revision()


def test_downgrade_to_base_and_up_again(database_url: str) -> None:
    from alembic import command

    migrate.upgrade(database_url)
    command.downgrade(migrate.alembic_config(database_url), "base")
    assert migrate.current_revision(database_url) is None
    migrate.upgrade(database_url)
    assert migrate.current_revision(database_url) == migrate.head_revision()


def test_0011_masks_numbers_the_case_log_held_in_full(database_url: str) -> None:
    """docs/privacy.md: entries written before the policy are rewritten masked."""
    import datetime as dt

    from sqlalchemy import insert, select

    from callcenter.db.tables import CaseLogRow, CaseRow

    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrate.alembic_config(database_url))
    before = script.get_revision("0011_mask_case_log_phones").down_revision  # wherever the lead chains it
    migrate.upgrade(database_url, str(before))
    engine = create_engine(sync_url(database_url))
    now = dt.datetime.now(dt.UTC)
    try:
        with engine.begin() as conn:
            case_id = conn.execute(insert(CaseRow.__table__).values(
                number="261203000019", status="draft", channel="staff", anonymous=False, confidential=True,
                description="x", flags=[], version=2, created_at=now, updated_at=now)).inserted_primary_key[0]
            conn.execute(insert(CaseLogRow.__table__), [
                {"case_id": case_id, "at": now, "actor": "staff:王芳", "action": "updated",
                 "changes": {"reporter_phone": {"from": "+8613912345678", "to": "+8613812345678"},
                             "address": {"from": None, "to": "人民路"}}},
                {"case_id": case_id, "at": now, "actor": "staff:王芳", "action": "created",
                 "changes": {"channel": "staff"}}])
        migrate.upgrade(database_url)
        with engine.connect() as conn:
            changes = [row[0] for row in conn.execute(select(CaseLogRow.changes).order_by(CaseLogRow.id))]
    finally:
        engine.dispose()
    assert changes[0] == {"reporter_phone": {"from": "+86139****5678", "to": "+86138****5678"},
                          "address": {"from": None, "to": "人民路"}}
    assert changes[1] == {"channel": "staff"}
