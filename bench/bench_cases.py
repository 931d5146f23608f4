"""Case intake throughput and case search latency, on SQLite and PostgreSQL.

Every figure is printed as a ratio against a baseline measured in the same run on the same
engine (bare INSERTs for writes, a bare primary-key SELECT for reads), so the numbers say
how much the service adds, not how fast this particular machine is.

    .venv/bin/python -m bench.bench_cases [--quick] [--backend sqlite|postgresql|both]

See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import itertools
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web
from sqlalchemy import ColumnElement, Table, and_, bindparam, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine

from bench._table import print_markdown, print_table
from callcenter.app import Services, build_services
from callcenter.cases.catalogue import Category
from callcenter.cases.grids import Grid
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import Channel
from callcenter.cases.numbering import CaseNumber
from callcenter.db import migrate
from callcenter.db.tables import CaseLogRow, CaseRow, IntakeCounterRow, OutboxRow
from callcenter.logs import configure_logging
from callcenter.service.cases import CaseFilter, DraftInput
from callcenter.service.tokens import Role
from callcenter.settings import LoggingSettings, Settings, load_settings

CASES: Table = CaseRow.__table__  # type: ignore[assignment]
CASE_LOG: Table = CaseLogRow.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]
COUNTERS: Table = IntakeCounterRow.__table__  # type: ignore[assignment]

TZ = ZoneInfo("Asia/Shanghai")
SEED = 20_240_601
#: Intake numbers for bare-INSERT rows: no real day produces them, so they never meet the
#: counter's, and one process-wide sequence keeps them unique across writer instances.
BARE_NUMBERS = (f"9{n:011d}" for n in itertools.count(1))
#: PostgreSQL settings that turn the test harness's durability switches back on.
PG_DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


# ---------------------------------------------------------------------------------------
# run profiles and results


@dataclass(frozen=True)
class Profile:
    """How long each measurement runs; --quick trades precision for a run under a minute."""

    name: str
    write_seconds: float
    warmup_seconds: float
    cases: int
    search_max_iterations: int
    search_time_cap: float
    part_time_cap: float
    baseline_iterations: int
    concurrency: tuple[int, ...] = (1, 32)


FULL = Profile("full", write_seconds=3.0, warmup_seconds=0.5, cases=100_000,
               search_max_iterations=200, search_time_cap=3.0, part_time_cap=1.0,
               baseline_iterations=1000)
QUICK = Profile("quick", write_seconds=1.0, warmup_seconds=0.2, cases=10_000,
                search_max_iterations=40, search_time_cap=0.8, part_time_cap=0.3,
                baseline_iterations=200)


@dataclass
class Row:
    """One line of the final table."""

    backend: str
    test: str
    clients: int
    result: str
    baseline: str
    ratio: str
    note: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def cells(self) -> list[tuple[str, ...]]:
        return [(r.backend, r.test.strip(), str(r.clients), r.result, r.baseline, r.ratio, r.note)
                for r in self.rows]

    def print_table(self) -> None:
        print_table(("backend", "test", "c", "result", "baseline", "ratio", "note"), self.cells(),
                    "ratio: create = throughput / baseline throughput (below 1: slower than a bare "
                    "INSERT); search = latency / baseline latency, p50 / p99 (above 1: slower than a "
                    "primary-key SELECT)", self.notes)

    def print_markdown(self) -> None:
        """The same table as Markdown, for pasting into docs/benchmarks.md."""
        print_markdown(("backend", "test", "clients", "result", "baseline", "ratio", "note"), self.cells(),
                       numeric=("clients", "result", "baseline", "ratio"))


def say(message: str) -> None:
    print(message, flush=True)


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def ms(value: float) -> str:
    return f"{value * 1000:.2f} ms" if value < 0.1 else f"{value * 1000:.0f} ms"


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: with few samples p99 is the slowest one, not an interpolation."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# ---------------------------------------------------------------------------------------
# realistic reference data


ROADS = ("龙岗大道", "布吉路", "坂田大道", "吉华路", "龙翔大道", "深惠路", "五和大道", "布澜路",
         "爱南路", "清林路")
PROBLEMS = ("损坏了", "丢失了，很危险", "堵塞，积水严重", "有异味，已经好几天了",
            "影响通行，请尽快处理", "松动，晚上看不清", "被人拆走了", "一直没人管")
MOBILE_PREFIXES = ("130", "131", "132", "134", "135", "136", "137", "138", "139", "150", "151",
                   "152", "155", "156", "157", "158", "159", "176", "177", "180", "181", "182",
                   "183", "186", "187", "188", "189", "199")
TEXT_QUERIES = ("井盖", "垃圾", "路灯", "布吉", "占道", "积水")


@dataclass(frozen=True)
class World:
    """Categories, grids and reporters drawn from the shipped reference data, with skew.

    The weight lists are cumulative.
    """

    categories: list[Category]
    category_weights: list[float]
    grids: list[Grid]
    grid_weights: list[float]
    phones: list[str]
    phone_weights: list[float]

    @classmethod
    def build(cls, services: Services, rng: random.Random, reporters: int = 40_000) -> World:
        categories = services.catalogue.all()
        grids = list(services.grids)
        rng.shuffle(categories)
        rng.shuffle(grids)
        phones = [f"+86{rng.choice(MOBILE_PREFIXES)}{rng.randrange(10**8):08d}"
                  for _ in range(reporters)]
        # Zipf-like: a few categories (garbage, manholes) and frequent reporters dominate.
        return cls(
            categories=categories,
            category_weights=_cumulative(1 / (i + 1) for i in range(len(categories))),
            grids=grids, grid_weights=_cumulative(1 / (i + 1) ** 0.5 for i in range(len(grids))),
            phones=phones,
            phone_weights=_cumulative(1 / (i + 1) ** 0.8 for i in range(len(phones))),
        )

    def category(self, rng: random.Random) -> Category:
        return rng.choices(self.categories, cum_weights=self.category_weights)[0]

    def grid(self, rng: random.Random) -> Grid:
        return rng.choices(self.grids, cum_weights=self.grid_weights)[0]

    def phone(self, rng: random.Random) -> str:
        return rng.choices(self.phones, cum_weights=self.phone_weights)[0]

    def report(self, rng: random.Random) -> dict[str, Any]:
        """One citizen report, as staff would key it: text, phone, category, grid, address."""
        category = self.category(rng)
        grid = self.grid(rng)
        words = [*category.keywords, category.name] if category.keywords else [category.name]
        road = f"{rng.choice(ROADS)}{rng.randrange(1, 400)}号"
        address = f"{grid.street_name}{grid.community_name}{road}"
        description = f"{address}附近{rng.choice(words)}{rng.choice(PROBLEMS)}"
        return {
            "description": description,
            "reporter_phone": self.phone(rng)[3:],  # as keyed: national format, no +86
            "category": str(category.code) if rng.random() < 0.5 else None,  # else suggest() runs
            "grid": grid.code.value,
            "address": address,
            "_category": category,
        }


def _cumulative(weights: Iterable[float]) -> list[float]:
    """Cumulative weights, so each draw is a bisect rather than a pass over 40,000 weights."""
    return list(itertools.accumulate(weights))


def draft_input(report: dict[str, Any]) -> DraftInput:
    return DraftInput(channel=Channel.PHONE, description=report["description"],
                      reporter_phone=report["reporter_phone"], category=report["category"],
                      grid=report["grid"], address=report["address"])


def http_body(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if not k.startswith("_") and v is not None}


def case_row(report: dict[str, Any], number: str, now: dt.datetime) -> dict[str, Any]:
    """The row create_draft would write for `report`, for the bare-INSERT baseline."""
    category: Category = report["_category"]
    return {
        "number": number, "status": CaseStatus.DRAFT.value, "channel": Channel.PHONE.value,
        "source_ref": None, "reporter_phone": "+86" + report["reporter_phone"], "anonymous": False,
        "confidential": False, "description": report["description"], "recording_ref": None,
        "kind": category.code.kind.value, "category_code": str(category.code),
        "category_edition": category.edition, "suggested_category": None,
        "suggested_confidence": None,
        "grid_code": report["grid"], "address": report["address"], "lon": None, "lat": None,
        "platform_number": None, "rating": None, "master_id": None, "flags": [], "version": 1,
        "created_at": now, "updated_at": now,
    }


# ---------------------------------------------------------------------------------------
# backends


class MissingServer(LookupError):
    """No PostgreSQL binaries on this machine: that backend is skipped, not failed."""


class Backend:
    """Hands out fresh, migrated database URLs on one backend."""

    name: str

    def new_url(self, label: str) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SqliteBackend(Backend):
    name = "sqlite"

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_url(self, label: str) -> str:
        url = f"sqlite:///{self.root / label}.sqlite3"
        migrate.upgrade(url)
        return url

    def describe(self) -> str:
        return (f"SQLite {sqlite3.sqlite_version}, file in {self.root} (WAL, synchronous=NORMAL, "
                "one pooled connection: the service's own engine settings)")


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, durable: bool) -> None:
        from callcenter.db.pgcluster import PostgresCluster, find_pg_bindir

        bindir = find_pg_bindir()
        if bindir is None:
            raise MissingServer("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found; "
                                "Debian: apt-get install postgresql")
        self.durable = durable
        self.cluster = PostgresCluster(bindir, settings=PG_DURABLE if durable else None).start()
        self.version = self.cluster.execute("SHOW server_version")[0][0]

    def new_url(self, label: str) -> str:
        url = self.cluster.create_database()
        migrate.upgrade(url)
        return url

    def describe(self) -> str:
        durability = ("fsync=on, synchronous_commit=on" if self.durable
                      else "test harness settings: fsync=off, synchronous_commit=off")
        return (f"PostgreSQL {self.version}, throwaway cluster on 127.0.0.1 ({durability}), "
                "pool 10+10 with pre-ping: the service's engine settings")

    def close(self) -> None:
        self.cluster.stop()


@functools.cache
def base_settings() -> Settings:
    """config/callcenter.toml without environment overrides, read once per run."""
    return load_settings(environ={})


def settings_for(url: str) -> Settings:
    base = base_settings()
    return base.model_copy(update={"database": base.database.model_copy(update={"url": url})})


# ---------------------------------------------------------------------------------------
# write throughput


@dataclass(frozen=True)
class Throughput:
    per_second: float
    cpu_per_op: float  # seconds of this process's CPU (all threads) per operation


async def run_clients(op: Callable[[], Awaitable[None]], clients: int,
                      seconds: float) -> Throughput:
    """`clients` tasks repeat `op` until the deadline.

    Process CPU per operation is recorded too: it tells a Python-bound path (CPU per op close
    to wall time per op) from one that waits on the database.
    """
    deadline = time.perf_counter() + seconds
    done = 0

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op()
            done += 1

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return Throughput(done / elapsed, (time.process_time() - cpu) / max(done, 1))


async def measure(op: Callable[[], Awaitable[None]], clients: int, profile: Profile) -> Throughput:
    await run_clients(op, clients, profile.warmup_seconds)
    return await run_clients(op, clients, profile.write_seconds)


class Writers:
    """The operations timed in the write section, all on one services instance."""

    def __init__(self, services: Services, reports: list[dict[str, Any]],
                 http: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self.services = services
        self.engine: AsyncEngine = services.engine
        self.reports = reports
        self.http = http
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self._next = itertools.count()
        insert = pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert
        self._counter_stmt = (
            insert(COUNTERS).values(day="999999", last=1)
            .on_conflict_do_update(index_elements=["day"], set_={"last": COUNTERS.c.last + 1})
            .returning(COUNTERS.c.last)
        )

    def report(self) -> dict[str, Any]:
        return self.reports[next(self._next) % len(self.reports)]

    async def baseline_insert(self) -> None:
        """One bare INSERT of an equivalent case row, one transaction."""
        row = case_row(self.report(), next(BARE_NUMBERS), dt.datetime.now(dt.UTC))
        async with self.engine.begin() as conn:
            await conn.execute(CASES.insert(), row)

    async def counter_only(self) -> None:
        """The daily-serial UPSERT in its own transaction, as _allocate_number does it."""
        async with self.engine.begin() as conn:
            (await conn.execute(self._counter_stmt)).scalar_one()

    async def three_inserts(self) -> None:
        """Case, log entry and outbox row in one transaction, bare Core: the service's writes."""
        report = self.report()
        now = dt.datetime.now(dt.UTC)
        row = case_row(report, next(BARE_NUMBERS), now)
        async with self.engine.begin() as conn:
            inserted = await conn.execute(CASES.insert().returning(CASES.c.id), row)
            case_id = inserted.scalar_one()
            await conn.execute(CASE_LOG.insert(), {
                "case_id": case_id, "at": now, "actor": "bench", "action": "created",
                "from_status": None, "to_status": "draft", "changes": {"channel": "phone"},
                "reason": None, "event_id": None})
            await conn.execute(OUTBOX.insert(), {
                "idempotency_key": f"bench-{row['number']}", "case_id": case_id,
                "recipient": row["reporter_phone"], "template": "received",
                "body": "您的案件已受理", "status": "pending", "attempts": 0, "not_before": now,
                "created_at": now})

    async def service_create(self) -> None:
        await self.services.cases.create_draft(draft_input(self.report()), actor="staff:bench")

    async def http_create(self) -> None:
        async with self.http.post(f"{self.base_url}/api/v1/cases",
                                  json=http_body(self.report()), headers=self.headers) as response:
            body = await response.read()
            if response.status != 201:
                raise RuntimeError(f"POST /api/v1/cases: {response.status} {body[:300]!r}")


async def bench_writes(backend: Backend, profile: Profile, report: Report) -> None:
    services = build_services(settings_for(backend.new_url("writes")))
    runner = web.AppRunner(make_api(services), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        token = await services.tokens.create(Role.STAFF, "bench")
        rng = random.Random(SEED)
        world = World.build(services, rng)
        reports = [world.report(rng) for _ in range(2000)]
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as http:
            writers = Writers(services, reports, http, f"http://{host}:{port}", token)
            for clients in profile.concurrency:
                measured = await measure(writers.baseline_insert, clients, profile)
                base = measured.per_second
                cpu = f"cpu {ms(measured.cpu_per_op)}/op"
                say(f"[{backend.name}] create c={clients:<2}  {'bare INSERT (baseline)':<32} "
                    f"{rate(base)}  {cpu}")
                report.add(Row(backend.name, "create: bare INSERT (baseline)", clients, rate(base),
                               rate(base), "1.00", cpu))
                for label, op, note in (
                    ("create: service create_draft", writers.service_create, ""),
                    ("create: HTTP POST /api/v1/cases", writers.http_create,
                     "client in same process; "),
                    ("  part: counter UPSERT txn", writers.counter_only, "breakdown; "),
                    ("  part: case+log+outbox txn", writers.three_inserts, "breakdown; "),
                ):
                    measured = await measure(op, clients, profile)
                    value = measured.per_second
                    cpu = f"cpu {ms(measured.cpu_per_op)}/op"
                    say(f"[{backend.name}] create c={clients:<2}  {label.strip():<32} "
                        f"{rate(value)}  (ratio {value / base:.2f} of baseline {rate(base)})  "
                        f"{cpu}")
                    report.add(Row(backend.name, label, clients, rate(value), rate(base),
                                   f"{value / base:.2f}", f"{note}{cpu}"))
    finally:
        await runner.cleanup()
        await services.close()


def make_api(services: Services) -> web.Application:
    from callcenter.web.app import make_app

    return make_app(services)


# ---------------------------------------------------------------------------------------
# search latency


STATUS_BY_AGE: tuple[tuple[float, dict[str, float]], ...] = (
    (1, {"draft": 35, "submitted": 25, "registered": 15, "dispatched": 15, "rejected": 5,
         "merged": 5}),
    (7, {"draft": 3, "submitted": 5, "registered": 7, "dispatched": 15, "processing": 20,
         "feedback": 10, "verified": 5, "closed": 25, "rejected": 7, "merged": 3}),
    (91, {"draft": 2, "processing": 2, "verified": 2, "reopened": 1, "closed": 78, "rejected": 10,
          "merged": 5}),
)
CHANNELS = {"phone": 50, "sms": 25, "staff": 15, "open311": 10}


def stored_cases(world: World, rng: random.Random, count: int,
                 now: dt.datetime) -> list[dict[str, Any]]:
    """`count` cases spread over 90 days, oldest first with explicit ids and daily serials."""
    stamps = sorted(now - dt.timedelta(seconds=rng.uniform(0, 90 * 86400)) for _ in range(count))
    serials: dict[dt.date, int] = {}
    rows: list[dict[str, Any]] = []
    for index, created in enumerate(stamps, start=1):
        day = created.astimezone(TZ).date()
        serials[day] = serials.get(day, 0) + 1
        age = (now - created).total_seconds() / 86400
        statuses = next(weights for limit, weights in STATUS_BY_AGE if age < limit)
        status = rng.choices(list(statuses), list(statuses.values()))[0]
        channel = rng.choices(list(CHANNELS), list(CHANNELS.values()))[0]
        report = world.report(rng)
        category: Category = report["_category"]
        categorised = status not in ("draft",) or rng.random() < 0.5
        anonymous_walk_in = channel == "staff" and rng.random() < 0.5
        phone = None if anonymous_walk_in else "+86" + report["reporter_phone"]
        updated = min(now, created + dt.timedelta(hours=rng.uniform(0, 72)))
        rows.append({
            **case_row(report, CaseNumber.build(day, serials[day]).value, created),
            "id": index, "status": status, "channel": channel, "reporter_phone": phone,
            "anonymous": rng.random() < 0.05,
            "kind": category.code.kind.value if categorised else None,
            "category_code": str(category.code) if categorised else None,
            "category_edition": category.edition if categorised else None,
            "grid_code": report["grid"] if rng.random() < 0.9 else None,
            "master_id": rng.randrange(1, index) if status == "merged" and index > 1 else None,
            "platform_number": f"PN{index:09d}" if status not in ("draft", "submitted") else None,
            "rating": rng.randint(3, 5) if status == "closed" and rng.random() < 0.3 else None,
            "version": 1 if status == "draft" else rng.randint(2, 6), "updated_at": updated,
        })
    return rows


async def bulk_load(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    """executemany in large chunks straight through the engine; then the planner statistics
    autovacuum would gather on a live PostgreSQL (the test cluster runs without it)."""
    for start in range(0, len(rows), 10_000):
        async with engine.begin() as conn:
            await conn.execute(CASES.insert(), rows[start:start + 10_000])
    if engine.dialect.name == "postgresql":
        async with engine.connect() as conn:
            await conn.execute(text(
                "SELECT setval(pg_get_serial_sequence('cases', 'id'), max(id)) FROM cases"))
            await conn.commit()
            autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(text("VACUUM ANALYZE cases"))


FilterMaker = Callable[[int], CaseFilter]


def conditions(f: CaseFilter) -> list[ColumnElement[bool]]:
    """The WHERE clause CaseService.search builds, rebuilt on the bare table."""
    c = CASES.c
    where: list[ColumnElement[bool]] = []
    if f.status:
        where.append(c.status == f.status)
    if f.category:
        where.append(c.category_code == f.category)
    if f.grid:
        where.append(c.grid_code == f.grid)
    if f.reporter_phone:
        where.append(c.reporter_phone == f.reporter_phone)
    if f.created_from:
        where.append(c.created_at >= f.created_from)
    if f.created_to:
        where.append(c.created_at < f.created_to)
    if f.text:
        escaped = f.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        where.append(or_(c.description.like(pattern, escape="\\"),
                         c.address.like(pattern, escape="\\")))
    return where


async def timed(call: Callable[[int], Awaitable[Any]], max_iterations: int, time_cap: float,
                minimum: int = 10) -> list[float]:
    """Latencies of sequential calls: up to `max_iterations`, stopping after `time_cap`
    seconds once `minimum` samples are in. Three untimed calls first warm the caches."""
    for i in range(3):
        await call(i)
    samples: list[float] = []
    stop = time.perf_counter() + time_cap
    for i in range(max_iterations):
        start = time.perf_counter()
        await call(i)
        samples.append(time.perf_counter() - start)
        if len(samples) >= minimum and time.perf_counter() > stop:
            break
    return samples


async def bench_search(backend: Backend, profile: Profile, report: Report) -> None:
    services = build_services(settings_for(backend.new_url("search")))
    engine = services.engine
    try:
        rng = random.Random(SEED + 1)
        world = World.build(services, rng)
        now = dt.datetime.now(dt.UTC)
        start = time.perf_counter()
        rows = stored_cases(world, rng, profile.cases, now)
        generated = time.perf_counter() - start
        await bulk_load(engine, rows)
        say(f"[{backend.name}] search: {len(rows):,} cases generated in {generated:.1f} s, "
            f"loaded in {time.perf_counter() - start - generated:.1f} s")
        # Filter values drawn from stored rows, so popular categories and busy grids are asked
        # for as often as they occur: what a supervisor's console does all day.
        sample = rng.sample(rows, 500)
        phones = [r["reporter_phone"] for r in sample if r["reporter_phone"]]
        categories = [r["category_code"] for r in sample if r["category_code"]]
        grids = [r["grid_code"] for r in sample if r["grid_code"]]
        del rows, sample

        # Baseline: one row by primary key, bare Core, same engine.
        by_id = select(CASES).where(CASES.c.id == bindparam("id"))

        async def pk_lookup(i: int) -> None:
            async with engine.connect() as conn:
                (await conn.execute(by_id, {"id": (i * 7919) % profile.cases + 1})).one()

        base = await timed(pk_lookup, profile.baseline_iterations, profile.search_time_cap * 2,
                           minimum=profile.baseline_iterations)
        b50, b99 = percentile(base, 50), percentile(base, 99)
        say(f"[{backend.name}] search baseline: SELECT by primary key  p50 {ms(b50)}  "
            f"p99 {ms(b99)}")
        report.add(Row(backend.name, "search: SELECT by pk (baseline)", 1,
                       f"{ms(b50)} / {ms(b99)}", f"{ms(b50)} / {ms(b99)}", "1.0 / 1.0",
                       "p50 / p99"))

        day = dt.timedelta(days=1)
        windows = [now - day * rng.uniform(7, 90) for _ in range(50)]
        queries: list[tuple[str, FilterMaker]] = [
            ("first page, no filter", lambda i: CaseFilter()),
            ("status=draft", lambda i: CaseFilter(status="draft")),
            ("category", lambda i: CaseFilter(category=categories[i % len(categories)])),
            ("grid", lambda i: CaseFilter(grid=grids[i % len(grids)])),
            ("reporter phone", lambda i: CaseFilter(reporter_phone=phones[i % len(phones)])),
            ("date range, 7 days", lambda i: CaseFilter(created_from=windows[i % 50],
                                                        created_to=windows[i % 50] + 7 * day)),
            ("text q", lambda i: CaseFilter(text=TEXT_QUERIES[i % len(TEXT_QUERIES)])),
        ]
        order = (CASES.c.created_at.desc(), CASES.c.id.desc())
        for label, make_filter in queries:
            totals: list[int] = []

            async def via_service(i: int, make_filter: FilterMaker = make_filter,
                                  totals: list[int] = totals) -> None:
                page = await services.cases.search(make_filter(i), offset=0, limit=50)
                totals.append(page.total)

            async def bare_count(i: int, make_filter: FilterMaker = make_filter) -> None:
                where = and_(True, *conditions(make_filter(i)))
                async with engine.connect() as conn:
                    await conn.scalar(select(func.count()).select_from(CASES).where(where))

            async def bare_page(i: int, make_filter: FilterMaker = make_filter) -> None:
                where = and_(True, *conditions(make_filter(i)))
                async with engine.connect() as conn:
                    query = select(CASES).where(where).order_by(*order).limit(50)
                    (await conn.execute(query)).all()

            samples = await timed(via_service, profile.search_max_iterations,
                                  profile.search_time_cap)
            counts = await timed(bare_count, profile.search_max_iterations, profile.part_time_cap)
            pages = await timed(bare_page, profile.search_max_iterations, profile.part_time_cap)
            p50, p99 = percentile(samples, 50), percentile(samples, 99)
            c50, g50 = percentile(counts, 50), percentile(pages, 50)
            matched = statistics.median(totals)
            say(f"[{backend.name}] search {label:<22} p50 {ms(p50)}  p99 {ms(p99)}  "
                f"(ratio {p50 / b50:.1f} / {p99 / b99:.1f} of baseline p50 {ms(b50)} / "
                f"p99 {ms(b99)}); n={len(samples)}, median total {matched:,.0f}; "
                f"bare count(*) p50 {ms(c50)}, bare page p50 {ms(g50)}")
            report.add(Row(backend.name, f"search: {label}", 1, f"{ms(p50)} / {ms(p99)}",
                           f"{ms(b50)} / {ms(b99)}", f"{p50 / b50:.1f} / {p99 / b99:.1f}",
                           f"total~{matched:,.0f}; bare count {ms(c50)}, bare page {ms(g50)}"))
    finally:
        await services.close()


# ---------------------------------------------------------------------------------------
# main


async def run_backend(backend: Backend, profile: Profile, report: Report) -> None:
    await bench_writes(backend, profile, report)
    await bench_search(backend, profile, report)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}), "
            f"Python {platform.python_version()}")


def load_average() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_cases",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10,000 stored cases and short runs (under a minute)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--pg-durable", action="store_true",
                        help="PostgreSQL with fsync and synchronous_commit on "
                             "(the test harness turns them off)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the final table as Markdown")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    # The service logs every created case at INFO; the benchmark measures the work, not stderr.
    configure_logging(LoggingSettings(level="WARNING"))
    base_settings()  # a broken config file fails here, before any database is started

    report = Report()
    started = time.perf_counter()
    say(f"bench_cases ({profile.name}) {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
        f"{machine()}; {load_average()}")
    with tempfile.TemporaryDirectory(prefix="callcenter-bench-") as tmp:
        names = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
        for name in names:
            try:
                backend: Backend = (SqliteBackend(Path(tmp)) if name == "sqlite"
                                    else PostgresBackend(durable=args.pg_durable))
            except MissingServer as exc:  # no binaries is a note; a server that fails, an error
                say(f"[{name}] skipped: {exc}")
                report.notes.append(f"{name} skipped: {exc}")
                continue
            try:
                say(f"[{name}] {backend.describe()}")
                report.notes.append(f"{name}: {backend.describe()}")
                asyncio.run(run_backend(backend, profile, report))
            finally:
                backend.close()
    report.print_table()
    if args.markdown:
        report.print_markdown()
    print(f"elapsed {time.perf_counter() - started:.0f} s; {load_average()} (other work on this "
          "machine shows up as noise, mostly in p99)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
