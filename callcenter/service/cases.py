"""The case service: every way a case is created or changed goes through here.

Each public method is one database transaction: the case change, its log entry and any
outbox message for the reporter commit together or not at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Connection, Integer, Select, Table, bindparam, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from callcenter.cases.catalogue import CaseKind, Catalogue, CategoryCode, InvalidCategoryCode
from callcenter.cases.grids import GridCode, GridIndex, InvalidGridCode
from callcenter.cases.lifecycle import (
    EDITABLE_STATES,
    CaseStatus,
    IllegalTransition,
    RejectionReason,
    check_transition,
)
from callcenter.cases.messages import MessageTemplates
from callcenter.cases.model import CaseView, Channel, LogEntry
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.cases.phones import InvalidPhoneNumber, is_mobile, normalise_phone
from callcenter.db.tables import CaseLogRow, CaseRow, IntakeCounterRow
from callcenter.db.unit import insert_ids, run_in_transaction
from callcenter.privacy import is_number_search, log_changes, mask_number
from callcenter.service.errors import CaseNotFound, Conflict, InvalidInput, TransitionRefused
from callcenter.service.outbox import OutgoingSms, enqueue, enqueue_sync, outbox_key

log = structlog.get_logger(__name__)

MAX_DESCRIPTION = 4000
MAX_ADDRESS = 256
# Concurrent create_draft calls committed in one transaction at most.
DRAFT_GROUP_MAX = 64
CASES: Table = CaseRow.__table__  # type: ignore[assignment]
CASE_LOG: Table = CaseLogRow.__table__  # type: ignore[assignment]
# Statements built once: building and keying them per call was a tenth of a draft's CPU.
_SERIALS_UPSERT: dict[str, Any] = {}  # per dialect
_INSERT_LOG = CASE_LOG.insert()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class DraftInput:
    channel: Channel
    description: str = ""
    reporter_phone: str | None = None
    anonymous: bool = False
    confidential: bool = False
    category: str | None = None
    # A caller who knows only the kind and major category (phone menu): staff pick the minor.
    kind: str | None = None
    category_major: str | None = None
    grid: str | None = None
    address: str | None = None
    lon: float | None = None
    lat: float | None = None
    recording_ref: str | None = None
    flags: Sequence[str] = ()
    source_ref: str | None = None
    notify_reporter: bool = True


@dataclass(frozen=True, slots=True)
class PreparedDraft:
    """A checked draft: the case row's values (no number yet), who files it, whether to send the receipt."""

    values: dict[str, Any]
    actor: str
    notify: bool


@dataclass(frozen=True)
class CaseFilter:
    status: str | None = None
    channel: str | None = None
    category: str | None = None
    grid: str | None = None
    reporter_phone: str | None = None
    created_from: dt.datetime | None = None
    created_to: dt.datetime | None = None
    text: str | None = None
    # Set-valued forms, OR-ed with the single ones (Open311 asks for "open" = several statuses).
    statuses: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Only cases with a category (Open311: a public request always has a service_code).
    categorised: bool = False


# Counting every match of a broad search scans the table; past this many the total is
# reported as a lower bound ("10000+"), which is all a person paging through needs.
COUNT_CAP = 10_000


@dataclass(frozen=True)
class Page:
    items: list[CaseView]
    total: int
    offset: int
    limit: int
    total_is_exact: bool = True


@dataclass(frozen=True)
class PlatformEvent:
    """A status change told to us by the urban-management platform."""

    event_id: str
    status: CaseStatus
    platform_number: str | None = None
    reason: RejectionReason | None = None
    note: str | None = None


@dataclass
class CaseService:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    catalogue: Catalogue
    grids: GridIndex
    templates: MessageTemplates
    timezone: str = "Asia/Shanghai"
    region: str = "CN"
    serial_digits: int = 5
    now: Callable[[], dt.datetime] = utcnow
    # Told of every new draft after its commit (not of a replayed source_ref): the console's
    # live queue and screen-pop listen here. Must not raise or block.
    on_draft_created: Callable[[CaseView], None] | None = None
    # Told that an SMS was queued (the sender looks now instead of at its next poll). Called
    # after the commit for drafts, and possibly just before it for notices: the sender looks
    # once more shortly after a wake that found nothing. Must not raise or block.
    on_outbox: Callable[[], None] = lambda: None
    _tz: ZoneInfo = field(init=False)
    _draft_queue: list[tuple[PreparedDraft, asyncio.Future[CaseView | str]]] = field(init=False, default_factory=list)
    _draft_writer: asyncio.Task[None] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._tz = ZoneInfo(self.timezone)

    # ---- validation helpers (pure) -------------------------------------------------

    def parse_number(self, text: str) -> CaseNumber:
        try:
            return CaseNumber.parse(text)
        except InvalidCaseNumber as exc:
            raise InvalidInput(str(exc), field="number") from exc

    def _phone(self, raw: str | None, field_name: str = "reporter_phone") -> str | None:
        if raw is None or raw == "":
            return None
        try:
            return normalise_phone(raw, self.region)
        except InvalidPhoneNumber as exc:
            raise InvalidInput(str(exc), field=field_name) from exc

    def _category(self, raw: str | None) -> tuple[str, str, str] | None:
        """(code, kind, edition) for a known category, or None when not given."""
        if raw is None or raw == "":
            return None
        try:
            code = CategoryCode.parse(raw)
        except InvalidCategoryCode as exc:
            raise InvalidInput(str(exc), field="category") from exc
        category = self.catalogue.get(code)
        if category is None:
            raise InvalidInput(f"unknown category code {code}", field="category")
        return str(category.code), category.code.kind.value, category.edition

    def _major(self, kind: str | None, major: str | None) -> tuple[str, str] | None:
        """(kind, major) checked against the catalogue; both or neither."""
        if not kind and not major:
            return None
        if not kind or not major:
            raise InvalidInput("give the kind with the major category", field="kind" if not kind else "category_major")
        try:
            case_kind = CaseKind(kind)
        except ValueError as exc:
            raise InvalidInput("kind must be component or event", field="kind") from exc
        if not any(m.code == major for m in self.catalogue.majors(case_kind)):
            raise InvalidInput(f"unknown {case_kind.value} major category {major!r}", field="category_major")
        return case_kind.value, major

    def _grid(self, raw: str | None) -> str | None:
        if raw is None or raw == "":
            return None
        try:
            code = GridCode.parse(raw)
        except InvalidGridCode as exc:
            raise InvalidInput(str(exc), field="grid") from exc
        if self.grids.get(code) is None:
            raise InvalidInput(f"unknown grid code {code.value}", field="grid")
        return code.value

    @staticmethod
    def _text(value: str | None, field_name: str, limit: int) -> str | None:
        if value is None:
            return None
        if "\x00" in value:
            raise InvalidInput("text contains a NUL character", field=field_name)
        value = value.strip()
        if len(value) > limit:
            raise InvalidInput(f"at most {limit} characters", field=field_name)
        return value

    @staticmethod
    def _coordinates(lon: float | None, lat: float | None) -> None:
        if (lon is None) != (lat is None):
            raise InvalidInput("give both lon and lat, or neither", field="lon" if lon is None else "lat")
        if lon is not None and not -180 <= lon <= 180:
            raise InvalidInput("longitude out of range", field="lon")
        if lat is not None and not -90 <= lat <= 90:
            raise InvalidInput("latitude out of range", field="lat")

    # ---- numbering -----------------------------------------------------------------

    def _take_serials(self, conn: Connection, day: dt.date, count: int) -> list[CaseNumber]:
        """Take `count` consecutive daily serials inside the caller's transaction.

        One `UPSERT ... RETURNING` for the whole block. The counter row stays locked until
        the caller commits, so concurrent writers queue behind it; a rolled-back transaction
        gives its serials back, so the numbers have neither duplicates nor gaps.
        """
        stmt = _SERIALS_UPSERT.get(conn.dialect.name)
        if stmt is None:
            table = IntakeCounterRow.__table__
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = _SERIALS_UPSERT[conn.dialect.name] = (
                insert(table)
                .values(day=bindparam("day"), last=bindparam("count"))
                .on_conflict_do_update(index_elements=["day"],
                                       set_={"last": table.c.last + bindparam("count", type_=Integer)})
                .returning(table.c.last)
            )
        last = conn.execute(stmt, {"day": f"{day:%y%m%d}", "count": count}).scalar_one()
        return [CaseNumber.build(day, serial, self.serial_digits) for serial in range(last - count + 1, last + 1)]

    # ---- reads -----------------------------------------------------------------------

    async def get(self, number: str, *, with_log: bool = True) -> CaseView:
        parsed = self.parse_number(number)
        async with self.sessions() as session:
            row = await self._load(session, parsed.value, with_log=with_log)
            return await self._view(session, row, with_log=with_log)

    async def find_by_source(self, channel: Channel, source_ref: str) -> CaseView | None:
        async with self.sessions() as session:
            row = await session.scalar(
                select(CaseRow).where(CaseRow.channel == channel.value, CaseRow.source_ref == source_ref)
            )
            return None if row is None else await self._view(session, row, with_log=False)

    async def search(self, filters: CaseFilter, *, offset: int = 0, limit: int = 50) -> Page:
        query: Select[Any] = select(CaseRow)
        statuses = {*filters.statuses, *([filters.status] if filters.status else [])}
        if statuses:
            query = query.where(CaseRow.status.in_(sorted(statuses)))
        if filters.channel:
            query = query.where(CaseRow.channel == filters.channel)
        raw_categories = [*filters.categories, *([filters.category] if filters.category else [])]
        if raw_categories:
            codes = {parsed[0] for raw in raw_categories if (parsed := self._category(raw))}
            query = query.where(CaseRow.category_code.in_(sorted(codes)))
        if filters.categorised:
            query = query.where(CaseRow.category_code.is_not(None))
        if filters.grid:
            try:
                grid = GridCode.parse(filters.grid).value
            except InvalidGridCode as exc:
                raise InvalidInput(str(exc), field="grid") from exc
            query = query.where(CaseRow.grid_code == grid)
        if filters.reporter_phone:
            query = query.where(CaseRow.reporter_phone == self._phone(filters.reporter_phone))
        if filters.created_from:
            query = query.where(CaseRow.created_at >= filters.created_from)
        if filters.created_to:
            query = query.where(CaseRow.created_at < filters.created_to)
        if filters.reporter_phone or is_number_search(filters.text):
            # No reader may see an anonymous or confidential reporter's number, so no search by
            # a number may find their cases either (docs/privacy.md).
            query = query.where(CaseRow.anonymous.is_(False), CaseRow.confidential.is_(False))
        if filters.text:
            pattern = "%" + filters.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            query = query.where(
                or_(CaseRow.description.like(pattern, escape="\\"), CaseRow.address.like(pattern, escape="\\"))
            )
        async with self.sessions() as session:
            capped = query.with_only_columns(CaseRow.id).limit(COUNT_CAP + 1).subquery()
            total = await session.scalar(select(func.count()).select_from(capped)) or 0
            rows = (
                await session.scalars(
                    query.order_by(CaseRow.created_at.desc(), CaseRow.id.desc()).offset(offset).limit(limit)
                )
            ).all()
            masters = await self._master_numbers(session, rows)
            items = [self._to_view(row, masters.get(row.master_id)) for row in rows]
        return Page(items=items, total=min(total, COUNT_CAP), offset=offset, limit=limit,
                    total_is_exact=total <= COUNT_CAP)

    # ---- writes ------------------------------------------------------------------------

    def prepare_draft(self, draft: DraftInput, *, actor: str) -> PreparedDraft:
        """Check a draft and work out its stored values (no I/O): the part every path shares."""
        description = self._text(draft.description, "description", MAX_DESCRIPTION) or ""
        address = self._text(draft.address, "address", MAX_ADDRESS)
        recording_ref = self._text(draft.recording_ref, "recording_ref", 512)
        phone = self._phone(draft.reporter_phone)
        category = self._category(draft.category)
        grid = self._grid(draft.grid)
        self._coordinates(draft.lon, draft.lat)
        if not description and not recording_ref:
            raise InvalidInput("a report needs a description or a recording", field="description")
        major = self._major(draft.kind, draft.category_major) if category is None else None
        suggestion = None
        if category is None and description:
            ranked = self.catalogue.suggest(description, limit=20)
            if major is not None:
                ranked = [(c, score) for c, score in ranked
                          if c.code.kind.value == major[0] and c.major_code == major[1]]
            if ranked:
                suggestion = (str(ranked[0][0].code), round(ranked[0][1], 3))
        values: dict[str, Any] = {
            "status": CaseStatus.DRAFT.value, "channel": draft.channel.value,
            "source_ref": draft.source_ref, "reporter_phone": phone, "anonymous": draft.anonymous,
            "confidential": draft.confidential, "description": description, "recording_ref": recording_ref,
            "kind": category[1] if category else (major[0] if major else None),
            "category_code": category[0] if category else None,
            "category_edition": category[2] if category else None,
            "category_major": category[0][1:3] if category else (major[1] if major else None),
            "suggested_category": suggestion[0] if suggestion else None,
            "suggested_confidence": suggestion[1] if suggestion else None,
            "grid_code": grid, "address": address, "lon": draft.lon, "lat": draft.lat,
            "flags": sorted(set(draft.flags)), "version": 1, "master_id": None, "platform_number": None,
            "rating": None,
        }
        return PreparedDraft(values=values, actor=actor[:128], notify=bool(draft.notify_reporter and phone))

    def insert_drafts(self, conn: Connection, drafts: Sequence[PreparedDraft], now: dt.datetime) -> list[CaseView]:
        """Write prepared drafts inside the caller's (sync) transaction: Core statements only.

        One serial block, one multi-row INSERT of the cases (ids returned in order), one of
        their log entries, one of the receipts through the outbox owner. The views are built
        from what was written; nothing is read back.
        """
        if not drafts:
            return []
        day = now.astimezone(self._tz).date()
        numbers = self._take_serials(conn, day, len(drafts))
        rows = [{**d.values, "number": n.value, "created_at": now, "updated_at": now}
                for d, n in zip(drafts, numbers, strict=True)]
        ids = insert_ids(conn, CASES, rows, ("number",))
        logs = [{"case_id": case_id, "at": now, "actor": d.actor, "action": "created", "from_status": None,
                 "to_status": CaseStatus.DRAFT.value, "changes": {"channel": d.values["channel"]}, "reason": None,
                 "event_id": None} for case_id, d in zip(ids, drafts, strict=True)]
        conn.execute(_INSERT_LOG, logs)
        receipts = [self._receipt_sms(row["number"], row["reporter_phone"], case_id, now)
                    for case_id, row, d in zip(ids, rows, drafts, strict=True) if d.notify]
        enqueue_sync(conn, receipts, now)
        views = []
        for case_id, row, entry in zip(ids, rows, logs, strict=True):
            views.append(CaseView(
                id=case_id, number=row["number"], status=row["status"], channel=row["channel"],
                reporter_phone=row["reporter_phone"], anonymous=row["anonymous"], confidential=row["confidential"],
                description=row["description"], recording_ref=row["recording_ref"], kind=row["kind"],
                category=row["category_code"], category_edition=row["category_edition"],
                suggested_category=row["suggested_category"], suggested_confidence=row["suggested_confidence"],
                grid=row["grid_code"], address=row["address"], lon=row["lon"], lat=row["lat"],
                platform_number=None, rating=None, master_number=None, flags=tuple(row["flags"]), version=1,
                created_at=now, updated_at=now, source_ref=row["source_ref"],
                category_major=row["category_major"],
                log=(LogEntry(at=now, actor=entry["actor"], action="created", from_status=None,
                              to_status=CaseStatus.DRAFT.value, changes=entry["changes"], reason=None,
                              event_id=None),)))
        return views

    def _receipt_sms(self, number: str, phone: str, case_id: int, now: dt.datetime) -> OutgoingSms:
        body = self.templates.render("received", number=number, platform_number="",
                                     status=CaseStatus.DRAFT.label_zh)
        return OutgoingSms(key=outbox_key("receipt", number), recipient=phone, template="received", body=body,
                           case_id=case_id)

    def drafts_created(self, views: Sequence[CaseView]) -> None:
        """After the commit: log each new draft and tell the listeners (console queue)."""
        for view in views:
            log.info("case.created", case_number=view.number, channel=view.channel,
                     reporter=mask_number(view.reporter_phone))
            if self.on_draft_created is not None:
                try:
                    self.on_draft_created(view)
                except Exception:  # a listener's fault must not undo a committed report
                    log.exception("case.created.listener_failed", case_number=view.number)

    async def create_draft(self, draft: DraftInput, *, actor: str) -> CaseView:
        """Open a draft case and commit it, with its log entry and the reporter's receipt SMS.

        With a `source_ref` the call is idempotent per channel: a redelivered SMS or a retried
        Open311 POST returns the case made the first time. Concurrent callers are committed
        together in groups (one transaction, one serial block); each waits for its own commit.
        """
        return await self.create_prepared(self.prepare_draft(draft, actor=actor))

    async def create_prepared(self, prepared: PreparedDraft) -> CaseView:
        """`create_draft` for a draft already checked by `prepare_draft`."""
        future: asyncio.Future[CaseView | str] = asyncio.get_running_loop().create_future()
        self._draft_queue.append((prepared, future))
        if self._draft_writer is None or self._draft_writer.done():
            self._draft_writer = asyncio.get_running_loop().create_task(self._write_drafts())
        result = await future
        if isinstance(result, str):  # the source was filed before: that case
            found = await self.find_by_source(Channel(prepared.values["channel"]), result)
            if found is None:  # pragma: no cover - rows are never deleted
                raise Conflict("the earlier case of this source vanished", field="source_ref")
            return found
        return result

    async def _write_drafts(self) -> None:
        """Drain the queue of prepared drafts, a group per transaction."""
        while self._draft_queue:
            group = self._draft_queue[:DRAFT_GROUP_MAX]
            del self._draft_queue[:DRAFT_GROUP_MAX]
            try:
                outcomes = await run_in_transaction(self.engine, partial(self._write_group, [p for p, _ in group]))
            except Exception as exc:  # noqa: BLE001 - every caller gets the failure, or its own retry
                if len(group) == 1:
                    self._fail(group[0], exc)
                    continue
                # One bad draft must not fail the others: each alone, in order.
                for item in group:
                    try:
                        alone = await run_in_transaction(self.engine, partial(self._write_group, [item[0]]))
                    except Exception as single:  # noqa: BLE001
                        self._fail(item, single)
                        continue
                    self._settle([item], alone)
                continue
            self._settle(group, outcomes)

    @staticmethod
    def _fail(item: tuple[PreparedDraft, asyncio.Future[CaseView | str]], exc: Exception) -> None:
        prepared, future = item
        if future.done():
            return
        source = prepared.values["source_ref"]
        if isinstance(exc, IntegrityError) and source:  # lost a race with the same source elsewhere
            future.set_result(source)
        else:
            future.set_exception(exc)

    def _settle(self, group: Sequence[tuple[PreparedDraft, asyncio.Future[CaseView | str]]],
                outcomes: Sequence[CaseView | str]) -> None:
        self.drafts_created([o for o in outcomes if isinstance(o, CaseView)])
        if any(p.notify and isinstance(o, CaseView) for (p, _), o in zip(group, outcomes, strict=True)):
            self.on_outbox()
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    def _write_group(self, drafts: Sequence[PreparedDraft], conn: Connection) -> list[CaseView | str]:
        """In one transaction: drafts whose source is already filed are answered by that source."""
        sources = {(d.values["channel"], d.values["source_ref"]) for d in drafts if d.values["source_ref"]}
        filed: set[tuple[str, str]] = set()
        if sources:
            refs = sorted({ref for _, ref in sources})
            filed = {(c, r) for c, r in conn.execute(
                select(CASES.c.channel, CASES.c.source_ref).where(CASES.c.source_ref.in_(refs))).all()}
        fresh: list[PreparedDraft] = []
        outcome: list[CaseView | str | None] = []
        for d in drafts:
            key = (d.values["channel"], d.values["source_ref"])
            if d.values["source_ref"] and key in filed:
                outcome.append(d.values["source_ref"])
            else:
                if d.values["source_ref"]:
                    filed.add(key)
                fresh.append(d)
                outcome.append(None)
        views = iter(self.insert_drafts(conn, fresh, self.now()))
        return [o if o is not None else next(views) for o in outcome]

    async def send_receipt(self, number: str, recipient: str) -> bool:
        """Queue the intake number for `recipient` (a phone report's "send me the number").

        The case is read and the receipt queued in one transaction through the outbox owner;
        it is keyed by the case, so a second attempt (a retried call) queues nothing.
        """
        parsed = self.parse_number(number)
        async with self.sessions() as session, session.begin():
            row = await self._load(session, parsed.value)
            body = self.templates.render("received", number=row.number, platform_number=row.platform_number or "",
                                         status=CaseStatus(row.status).label_zh)
            queued = await enqueue(session, [OutgoingSms(key=outbox_key("receipt", row.number), recipient=recipient,
                                                         template="received", body=body, case_id=row.id)],
                                   self.now())
        if queued:
            self.on_outbox()
        return queued > 0

    async def update_transcription(
        self, number: str, changes: dict[str, Any], *, actor: str, expected_version: int | None = None
    ) -> CaseView:
        """Staff transcription: category, grid, address, text. Only while the case is editable."""
        allowed = {"category", "grid", "address", "description", "lon", "lat", "anonymous", "confidential",
                   "reporter_phone"}
        unknown = set(changes) - allowed
        if unknown:
            raise InvalidInput(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
        values: dict[str, Any] = {}
        if "category" in changes:
            category = self._category(changes["category"])
            values.update(category_code=category[0] if category else None,
                          kind=category[1] if category else None,
                          category_edition=category[2] if category else None,
                          category_major=category[0][1:3] if category else None)
        if "grid" in changes:
            values["grid_code"] = self._grid(changes["grid"])
        if "address" in changes:
            values["address"] = self._text(changes["address"], "address", MAX_ADDRESS)
        if "description" in changes:
            values["description"] = self._text(changes["description"], "description", MAX_DESCRIPTION) or ""
        if "reporter_phone" in changes:
            values["reporter_phone"] = self._phone(changes["reporter_phone"])
        for flag in ("anonymous", "confidential"):
            if flag in changes:
                values[flag] = bool(changes[flag])
        if "lon" in changes or "lat" in changes:
            self._coordinates(changes.get("lon"), changes.get("lat"))
            values["lon"], values["lat"] = changes.get("lon"), changes.get("lat")
        parsed = self.parse_number(number)
        async with self.sessions() as session:
            async with session.begin():
                row = await self._load(session, parsed.value, for_update=True)
                if expected_version is not None and row.version != expected_version:
                    raise Conflict(
                        f"case {row.number} was changed by someone else (version {row.version}, "
                        f"you had {expected_version}); reload it", field="version")
                if CaseStatus(row.status) not in EDITABLE_STATES:
                    raise TransitionRefused(
                        f"case {row.number} is {row.status}; only draft or submitted cases can be edited")
                diff = {}
                for key, value in values.items():
                    old = getattr(row, key)
                    if old != value:
                        diff[key] = log_changes(key, _jsonable(old), _jsonable(value))
                        setattr(row, key, value)
                if diff:
                    row.version += 1
                    row.updated_at = self.now()
                    self._log(session, row, actor, "updated", None, None, diff)
            return await self._view(session, row, with_log=True)

    async def submit(self, number: str, *, actor: str, expected_version: int | None = None) -> CaseView:
        """Draft → submitted. A reporter who never got the intake number (a voicemail, a draft
        filed without notifying) gets it now, once: they must be able to follow their case."""
        return await self._transition(number, CaseStatus.SUBMITTED, actor=actor, action="submitted",
                                      expected_version=expected_version, require_category=True,
                                      ensure_receipt=True)

    async def reject(self, number: str, reason: RejectionReason, *, actor: str, note: str | None = None,
                     event_id: str | None = None) -> CaseView:
        return await self._transition(number, CaseStatus.REJECTED, actor=actor, action="rejected",
                                      reason=note or reason.value, notify="rejected",
                                      fields={"reason": reason.label_zh}, event_id=event_id,
                                      changes={"reason": reason.value})

    async def merge(self, number: str, into: str, *, actor: str, note: str | None = None) -> CaseView:
        """Fold a duplicate into its master case; every reporter of both hears the master's number."""
        child_number = self.parse_number(number)
        master_number = self.parse_number(into)
        if child_number == master_number:
            raise InvalidInput("a case cannot be merged into itself", field="into")
        async with self.sessions() as session:
            async with session.begin():
                child = await self._load(session, child_number.value, for_update=True)
                master = await self._load(session, master_number.value, for_update=True)
                if master.master_id is not None or master.status == CaseStatus.MERGED:
                    raise TransitionRefused(f"case {master.number} is itself merged; merge into its master")
                if master.status in (CaseStatus.REJECTED, CaseStatus.CLOSED):
                    raise TransitionRefused(f"case {master.number} is {master.status}; cannot merge into it")
                try:
                    check_transition(CaseStatus(child.status), CaseStatus.MERGED)
                except IllegalTransition as exc:
                    raise TransitionRefused(str(exc)) from exc
                # Cases already merged into the child follow it to the new master.
                grandchildren = (await session.scalars(
                    select(CaseRow).where(CaseRow.master_id == child.id))).all()
                for grandchild in grandchildren:
                    grandchild.master_id = master.id
                old = child.status
                child.status = CaseStatus.MERGED.value
                child.master_id = master.id
                child.version += 1
                child.updated_at = self.now()
                self._log(session, child, actor, "merged", CaseStatus(old), CaseStatus.MERGED,
                          {"into": master.number}, reason=note)
                self._log(session, master, actor, "merged_in", None, None, {"from": child.number}, reason=note)
                # The duplicate's reporters (and those of cases merged into it before) learn the
                # master's number; from now on they hear every change of the master.
                recipients = [p for p in [child.reporter_phone, *(g.reporter_phone for g in grandchildren)] if p]
                await self._notify(session, child, "merged", fields={"master": master.number},
                             recipients=list(dict.fromkeys(recipients)))
            return await self._view(session, child, with_log=True)

    async def apply_platform_event(self, number: str, event: PlatformEvent, *, actor: str = "platform") -> CaseView:
        """A status change from the platform. Idempotent on `event_id`: `_transition` looks for
        the event under the case's row lock, so concurrent copies all get the same answer."""
        self.parse_number(number)
        if event.status == CaseStatus.REJECTED:
            return await self.reject(number, event.reason or RejectionReason.INVALID, actor=actor,
                                     note=event.note, event_id=event.event_id)
        notify = {
            CaseStatus.REGISTERED: "registered", CaseStatus.DISPATCHED: "dispatched",
            CaseStatus.CLOSED: "closed", CaseStatus.REOPENED: "reopened",
        }.get(event.status)
        extra = {"platform_number": event.platform_number} if event.platform_number else {}
        return await self._transition(number, event.status, actor=actor, action="platform_event",
                                      reason=event.note, notify=notify, event_id=event.event_id,
                                      set_values=extra, changes=dict(extra))

    async def rate(self, number: str, score: int, *, actor: str, phone: str | None = None) -> CaseView:
        """The reporter's rating (1-5) of a closed case; only the reporter may rate by phone or SMS."""
        if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 5:
            raise InvalidInput("rating must be a whole number from 1 to 5", field="rating")
        parsed = self.parse_number(number)
        caller = self._phone(phone, "phone") if phone else None
        async with self.sessions() as session:
            async with session.begin():
                row = await self._load(session, parsed.value, for_update=True)
                if row.status != CaseStatus.CLOSED:
                    raise TransitionRefused(f"case {row.number} is not closed yet; only closed cases can be rated")
                if caller is not None and caller != row.reporter_phone:
                    raise TransitionRefused("only the reporter can rate this case", field="phone")
                old = row.rating
                row.rating = score
                row.version += 1
                row.updated_at = self.now()
                self._log(session, row, actor, "rated", None, None, {"rating": {"from": old, "to": score}})
            return await self._view(session, row, with_log=True)

    # ---- internals ---------------------------------------------------------------------

    async def _transition(
        self, number: str, target: CaseStatus, *, actor: str, action: str, reason: str | None = None,
        notify: str | None = None, fields: dict[str, str] | None = None, event_id: str | None = None,
        expected_version: int | None = None, require_category: bool = False,
        set_values: dict[str, Any] | None = None, changes: dict[str, Any] | None = None,
        ensure_receipt: bool = False,
    ) -> CaseView:
        parsed = self.parse_number(number)
        async with self.sessions() as session:
            try:
                async with session.begin():
                    row = await self._load(session, parsed.value, for_update=True)
                    if event_id is not None and await session.scalar(select(CaseLogRow.id).where(
                            CaseLogRow.case_id == row.id, CaseLogRow.event_id == event_id)) is not None:
                        raise _AlreadyApplied  # a copy of an applied event: answer as the first time
                    if expected_version is not None and row.version != expected_version:
                        raise Conflict(f"case {row.number} was changed by someone else; reload it",
                                       field="version")
                    current = CaseStatus(row.status)
                    try:
                        check_transition(current, target)
                    except IllegalTransition as exc:
                        raise TransitionRefused(str(exc)) from exc
                    if require_category and not row.category_code:
                        # The case's state, not the request, is wrong: 409 like any refused step.
                        raise TransitionRefused("choose a category before submitting", field="category")
                    for key, value in (set_values or {}).items():
                        setattr(row, key, value)
                    row.status = target.value
                    row.version += 1
                    row.updated_at = self.now()
                    self._log(session, row, actor, action, current, target, changes or {},
                              reason=reason, event_id=event_id)
                    if notify:
                        recipients = await self._recipients(session, row)
                        await self._notify(session, row, notify, fields=fields or {}, recipients=recipients)
                    if ensure_receipt and row.reporter_phone and is_mobile(row.reporter_phone):
                        # Keyed by the case: queued only if no receipt ever was.
                        await self._notify(session, row, "received", recipients=[row.reporter_phone])
            except (IntegrityError, _AlreadyApplied):
                if event_id is None:
                    raise
                # The same platform event came twice (or raced in twice); the first one won.
                session.expunge_all()
                row = await self._load(session, parsed.value, with_log=True)
                return await self._view(session, row, with_log=True)
            log.info("case.status", case_number=row.number, from_status=current.value, to_status=target.value,
                     actor=actor)
            return await self._view(session, row, with_log=True)

    async def _load(self, session: AsyncSession, number: str, *, for_update: bool = False,
                    with_log: bool = False) -> CaseRow:
        query = select(CaseRow).where(CaseRow.number == number)
        if with_log:
            query = query.options(selectinload(CaseRow.log))
        if for_update and session.bind is not None and self.engine.dialect.name == "postgresql":
            query = query.with_for_update()
        row = await session.scalar(query)
        if row is None:
            raise CaseNotFound(f"no case with intake number {number}", field="number")
        return row

    async def _recipients(self, session: AsyncSession, row: CaseRow) -> list[str]:
        """The reporter and the reporters of every case merged into this one, once each."""
        phones = [row.reporter_phone] if row.reporter_phone else []
        merged = await session.scalars(
            select(CaseRow.reporter_phone).where(CaseRow.master_id == row.id, CaseRow.reporter_phone.is_not(None))
            .order_by(CaseRow.id))
        phones.extend(p for p in merged if p)
        return list(dict.fromkeys(phones))

    def _log(self, session: AsyncSession, row: CaseRow, actor: str, action: str,
             from_status: CaseStatus | None, to_status: CaseStatus | None, changes: dict[str, Any],
             *, reason: str | None = None, event_id: str | None = None) -> CaseLogRow:
        entry = CaseLogRow(
            case_id=row.id, at=self.now(), actor=actor[:128], action=action,
            from_status=from_status.value if from_status else None,
            to_status=to_status.value if to_status else None, changes=changes, reason=reason,
            event_id=event_id)
        session.add(entry)
        return entry

    async def _notify(self, session: AsyncSession, row: CaseRow, template: str, *, recipients: Sequence[str],
                      fields: dict[str, str] | None = None) -> None:
        """Queue the reporter notices of a change through the outbox owner, in this transaction."""
        if not recipients:
            return
        body = self.templates.render(
            template, number=row.number, platform_number=row.platform_number or "",
            status=CaseStatus(row.status).label_zh, **(fields or {}))
        # One message per (case, change, recipient): a retried transaction cannot queue it twice;
        # the intake number (received) once per case, whatever asks for it again.
        messages = [OutgoingSms(key=outbox_key("receipt", row.number) if template == "received"
                                else outbox_key("case", row.number, template, row.version, phone),
                                recipient=phone, template=template, body=body, case_id=row.id)
                    for phone in recipients]
        if await enqueue(session, messages, self.now()):
            self.on_outbox()

    async def _master_numbers(self, session: AsyncSession, rows: Sequence[CaseRow]) -> dict[int, str]:
        ids = {row.master_id for row in rows if row.master_id is not None}
        if not ids:
            return {}
        result = await session.execute(select(CaseRow.id, CaseRow.number).where(CaseRow.id.in_(ids)))
        return {case_id: case_number for case_id, case_number in result.all()}

    async def _view(self, session: AsyncSession, row: CaseRow, *, with_log: bool) -> CaseView:
        masters = await self._master_numbers(session, [row])
        entries: tuple[LogEntry, ...] = ()
        if with_log:
            log_rows = (await session.scalars(
                select(CaseLogRow).where(CaseLogRow.case_id == row.id).order_by(CaseLogRow.id))).all()
            entries = tuple(_entry(e) for e in log_rows)
        return self._to_view(row, masters.get(row.master_id) if row.master_id else None, entries)

    @staticmethod
    def _to_view(row: CaseRow, master_number: str | None, entries: tuple[LogEntry, ...] = ()) -> CaseView:
        return CaseView(
            id=row.id, number=row.number, status=row.status, channel=row.channel,
            reporter_phone=row.reporter_phone, anonymous=row.anonymous, confidential=row.confidential,
            description=row.description, recording_ref=row.recording_ref, kind=row.kind,
            category=row.category_code, category_edition=row.category_edition,
            suggested_category=row.suggested_category, suggested_confidence=row.suggested_confidence,
            grid=row.grid_code, address=row.address, lon=row.lon, lat=row.lat,
            platform_number=row.platform_number, rating=row.rating, master_number=master_number,
            flags=tuple(row.flags or ()), version=row.version, created_at=row.created_at,
            updated_at=row.updated_at, source_ref=row.source_ref, category_major=row.category_major,
            log=entries)


class _AlreadyApplied(Exception):
    """A platform event already in the case log: roll back and answer with the case as it is."""


def _entry(row: CaseLogRow) -> LogEntry:
    return LogEntry(at=row.at, actor=row.actor, action=row.action, from_status=row.from_status,
                    to_status=row.to_status, changes=row.changes or {}, reason=row.reason,
                    event_id=row.event_id)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value
