"""case_log: mask reporter_phone changes written in full before docs/privacy.md

Revision ID: 0011_mask_case_log_phones
Revises: 0009_call_legs_callbacks

The case log now stores a changed reporter number masked (callcenter/privacy.py
`log_changes`); this rewrites the entries written before that. Data only, no schema change.
The full numbers cannot come back, so the downgrade leaves the entries as they are.
"""
import sqlalchemy as sa
from alembic import op

from sms.privacy import mask_number

revision = "0011_mask_case_log_phones"
down_revision = "0009_call_legs_callbacks"
branch_labels = None
depends_on = None

_LOG = sa.table("case_log", sa.column("id", sa.BigInteger), sa.column("changes", sa.JSON))


def _masked(value: object) -> object:
    if isinstance(value, str) and value and "****" not in value:
        return mask_number(value)
    return value


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(_LOG.c.id, _LOG.c.changes).where(
        sa.cast(_LOG.c.changes, sa.Text).like("%reporter_phone%"))).all()
    for row_id, changes in rows:
        change = (changes or {}).get("reporter_phone")
        if not isinstance(change, dict):
            continue
        masked = {**change, "from": _masked(change.get("from")), "to": _masked(change.get("to"))}
        if masked != change:
            bind.execute(_LOG.update().where(_LOG.c.id == row_id).values(changes={**changes, "reporter_phone": masked}))


def downgrade() -> None:
    pass
