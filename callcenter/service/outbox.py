"""The outbox's one owner (待发短信): every outgoing SMS is queued through here.

Writers (case changes, SMS intake replies, supervisor tasks, the voice channel) call
`enqueue` / `enqueue_sync` *inside their own transaction*, so the message commits together
with the change it tells of, or not at all. The statement is one Core
`INSERT ... ON CONFLICT (idempotency_key) DO NOTHING` for any number of messages: no
read before it, no extra round trip, and a retried transaction cannot queue a message twice.

One key scheme for everything: `outbox_key(kind, *parts)` = `<kind>:<sha256 of the parts>`.
The kind says which event the message tells of; the parts name that event exactly:

| kind | parts | one message per |
|---|---|---|
| `receipt` | case number | case: the intake number (受理回执), whoever gets it and however the case came in |
| `case` | case number, template, case version, recipient | case change and recipient |
| `sms-reply` | inbound message key | citizen or supervisor text answered |
| `task-notice` | task code | supervisor task (核实/核查) |
| `task-escalation` | task code | unanswered task sent to the shift leader |

Sending, receipts and retries are `outbox_sender.py`'s; this module only writes rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Insert, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from callcenter.db.tables import OutboxRow

OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
KINDS = ("receipt", "case", "sms-reply", "task-notice", "task-escalation")


def outbox_key(kind: str, *parts: object) -> str:
    """The idempotency key of the message telling of one event (see the table above)."""
    if kind not in KINDS:
        raise ValueError(f"unknown outbox message kind {kind!r}")
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogatepass")).hexdigest()
    return f"{kind}:{digest[:64]}"


@dataclass(frozen=True, slots=True)
class OutgoingSms:
    """One message to queue; `key` from `outbox_key`."""

    key: str
    recipient: str
    template: str
    body: str
    case_id: int | None = None
    not_before: dt.datetime | None = None


def _values(messages: Sequence[OutgoingSms], now: dt.datetime) -> list[dict[str, Any]]:
    return [{"idempotency_key": m.key, "case_id": m.case_id, "recipient": m.recipient, "template": m.template,
             "body": m.body, "status": "pending", "attempts": 0, "not_before": m.not_before or now,
             "created_at": now} for m in messages]


_STATEMENTS: dict[str, Insert] = {}


def insert_statement(dialect: str) -> Insert:
    """The statement every writer uses (built once per dialect); parameters from `_values`."""
    statement = _STATEMENTS.get(dialect)
    if statement is None:
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = _STATEMENTS[dialect] = insert(OUTBOX).on_conflict_do_nothing(index_elements=["idempotency_key"])
    return statement


def enqueue_sync(conn: Connection, messages: Sequence[OutgoingSms], now: dt.datetime) -> None:
    """Queue messages inside the caller's (sync) transaction; a key already queued is skipped."""
    if messages:
        conn.execute(insert_statement(conn.dialect.name), _values(messages, now))


async def enqueue(conn: AsyncConnection | AsyncSession, messages: Sequence[OutgoingSms], now: dt.datetime) -> int:
    """Queue messages inside the caller's transaction; returns how many were new (single row: exact)."""
    if not messages:
        return 0
    dialect = conn.bind.dialect.name if isinstance(conn, AsyncSession) else conn.dialect.name
    values = _values(messages, now)
    if len(values) == 1:  # RETURNING: rowcount is not reliable for ON CONFLICT through the ORM session
        result = await conn.execute(insert_statement(dialect).values(**values[0]).returning(OUTBOX.c.id))
        return len(result.all())
    await conn.execute(insert_statement(dialect), values)
    return len(values)


__all__ = ["KINDS", "OUTBOX", "OutgoingSms", "enqueue", "enqueue_sync", "insert_statement", "outbox_key"]
