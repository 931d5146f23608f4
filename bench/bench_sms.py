"""SMS channel: MO intake throughput and latency, MT send rate, against the SMSC simulator.

Everything runs against the node-smpp simulator (`tests/smsc/`, driven by `sms.simulator`)
on loopback, and every figure is printed beside a floor measured in the same run on the same
engine: for MO a bare `SmppClient` that commits each text in its own transaction before
answering (persist-then-ack) and submits the reply from memory, and one that stores nothing;
for MT the same client submitting the texts straight from memory. The ratio says how much
the service adds, not how fast this machine is. Runs from the project's own install (no
pytest, no test-suite imports; PostgreSQL needs the test harness's cluster helper).

    .venv/bin/python -m bench.bench_sms [--quick] [--backend sqlite|postgresql|both]

See bench/README.md for what each row measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text, func, select

from bench._table import print_markdown, print_table
from bench.bench_cases import (
    Backend,
    MissingServer,
    PostgresBackend,
    SqliteBackend,
    base_settings,
    load_average,
    machine,
    percentile,
    say,
)
from callcenter.app import Services, build_services
from callcenter.db.engine import create_engine
from callcenter.db.tables import OutboxRow
from callcenter.logs import configure_logging
from callcenter.runtime import install_reactor
from callcenter.service.sms_channel import SmsRuntime, make_gateway
from callcenter.settings import LoggingSettings, Settings
from sms.gateway import OutboundPart, SmppGateway, SubmitOutcome
from sms.simulator import SmscSimulator
from sms.smpp.client import SmppClient
from sms.smpp.session import DeliverSm, Status, SubmitRequest

OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]

SERVICE = "12319"  # the service number (特服号) the citizens text
SYSTEM_ID, PASSWORD = "callcenter", "secret"
#: The bench lifts the service's submit pacing (smpp.max_parts_per_second, 50 by default) so
#: the token bucket does not set the MT figures; every other SMPP and SMS setting is the
#: configured one (window 10, outbox_batch 50, outbox_poll_interval 1 s ...).
MAX_PARTS_PER_SECOND = 100_000.0
#: The simulator's automatic receipt for every accepted submit that asks for one.
AUTO_RECEIPT = {"stat": "DELIVRD", "err": "000", "form": "both"}
ACK_TEXT = "受理编号{number}：您反映的问题已受理，我们会尽快核实处理。查询进度请回复CX{number}。"


# ---------------------------------------------------------------------------------------
# run profiles and results


@dataclass(frozen=True)
class Profile:
    name: str
    mo_burst: int          # deliver_sm in the burst, sent through the SMSC's window
    window: int            # unanswered deliver_sm the simulator allows (issue 10: 10)
    paced_rate: float      # deliver_sm per second in the paced (unsaturated) phase
    paced_count: int
    mt_messages: int       # outbox rows queued at once
    timeout: float         # per phase, generous: a phase that needs it is a finding
    breakdown: bool        # also the MT row with a short outbox poll interval


# Issue 10's figures: a burst of 5,000 at window 10, paced at 100/s.
FULL = Profile("full", mo_burst=5000, window=10, paced_rate=100.0, paced_count=1000, mt_messages=400,
               timeout=600.0, breakdown=True)
QUICK = Profile("quick", mo_burst=1000, window=10, paced_rate=100.0, paced_count=300, mt_messages=150,
                timeout=300.0, breakdown=False)


@dataclass
class Row:
    backend: str
    test: str
    result: str
    floor: str
    ratio: str
    note: str = ""


HEADERS = ("backend", "test", "result", "floor", "ratio", "note")


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        say(f"[{row.backend}] {row.test.strip():<44} {row.result:<26} floor {row.floor:<24} "
            f"ratio {row.ratio:<12} {row.note}")

    def cells(self) -> list[tuple[str, ...]]:
        return [(r.backend, r.test.strip(), r.result, r.floor, r.ratio, r.note) for r in self.rows]

    def print_table(self) -> None:
        print_table(HEADERS, self.cells(),
                    "ratio: throughput / floor throughput (below 1: slower than the floor); latency / "
                    "floor latency, p50 / p99 (above 1: slower); latencies from the simulator's clock "
                    "(1 ms resolution; a floor under 1 ms counts as 1 ms in the ratio)", self.notes)

    def print_markdown(self) -> None:
        print_markdown(HEADERS, self.cells(), numeric=("result", "floor", "ratio"))


def per_s(value: float) -> str:
    return f"{value:,.0f}/s"


def msec(value: float) -> str:
    return f"{value:,.0f} ms"


def ratio(value: float) -> str:
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def secs(milliseconds: float) -> str:
    return f"{milliseconds:.0f} ms" if milliseconds < 1000 else f"{milliseconds / 1000:.1f} s"


def lat(p50: float, p99: float) -> str:
    return f"{msec(p50)} / {msec(p99)}"


def lat_ratio(p50: float, p99: float, f50: float, f99: float) -> str:
    return f"{p50 / max(f50, 1.0):.1f} / {p99 / max(f99, 1.0):.1f}"


# ---------------------------------------------------------------------------------------
# traffic


ROADS = ("龙岗大道", "布吉路", "坂田大道", "吉华路", "龙翔大道", "深惠路", "五和大道", "布澜路")
THINGS = ("井盖", "路灯", "垃圾桶", "人行道砖", "下水道", "交通护栏", "广告牌", "绿化带")
PROBLEMS = ("损坏了", "丢失了，很危险", "堵塞，积水严重", "有异味，已经好几天了", "影响通行，请尽快处理",
            "晚上不亮", "被人拆走了", "一直没人管")
#: Every sender number is used once per run: the per-number flood limit (sms.rate_limit, 5 in
#: 10 minutes) never folds a benchmark text, and no text is a redelivery of another.
_SENDERS = itertools.count(1)


def citizen_text(n: int) -> str:
    """A short report (at most 70 characters: one UCS-2 part), different for every n."""
    return (f"{ROADS[n % len(ROADS)]}{n % 900 + 1}号附近{THINGS[n // 8 % len(THINGS)]}"
            f"{PROBLEMS[n // 64 % len(PROBLEMS)]}。（第{n}条）")


def mo_requests(count: int) -> list[dict[str, Any]]:
    """`deliver` control requests: distinct national-format senders, UCS-2 Chinese texts."""
    out = []
    for _ in range(count):
        n = next(_SENDERS)
        out.append({"cmd": "deliver", "source_addr": f"135{n:08d}", "destination_addr": SERVICE,
                    "data_coding": 8, "short_message_hex": citizen_text(n).encode("utf-16-be").hex()})
    return out


def mo_specs(count: int) -> list[dict[str, Any]]:
    """The same texts as deliver_sm fields, for `deliver_window`."""
    return [{k: v for k, v in r.items() if k != "cmd"} for r in mo_requests(count)]


def ack_body(n: int) -> bytes:
    number = f"2611{n:08d}"
    return ACK_TEXT.format(number=number).encode("utf-16-be")


def ack_request(destination: str, n: int, registered_delivery: int) -> SubmitRequest:
    """The acknowledgement as SmppGateway would submit it (international, UCS-2, one part)."""
    return SubmitRequest(source_addr=SERVICE, destination_addr=destination, dest_addr_ton=1, dest_addr_npi=1,
                         short_message=ack_body(n), data_coding=8, registered_delivery=registered_delivery,
                         validity_period=dt.timedelta(hours=48))


# ---------------------------------------------------------------------------------------
# the simulator, driven over its control port


class Smsc:
    """The simulator process plus pipelined control requests (one connection, many lines)."""

    def __init__(self, log_path: Path) -> None:
        self.sim = SmscSimulator(system_id=SYSTEM_ID, password=PASSWORD, log_path=log_path)

    def start(self) -> None:
        self.sim.start()

    def stop(self) -> None:
        self.sim.stop()

    @property
    def pid(self) -> int | None:
        process = self.sim._process
        return process.pid if process is not None else None

    async def reset(self, **settings: Any) -> None:
        await self.sim.acall("reset")
        if settings:
            await self.sim.configure(**settings)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.sim.host, self.sim.control_port, limit=256 * 1024 * 1024)

    @staticmethod
    def _unwrap(line: bytes) -> Any:
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"simulator: {reply['error']}")
        return reply["result"]

    async def window_burst(self, specs: Sequence[dict[str, Any]], window: int, rate: float | None = None) -> None:
        """All at once (or at `rate` a second), never more than `window` deliver_sm unanswered,
        as an SMSC sends."""
        await self.sim.acall("deliver_window", timeout=120.0, specs=list(specs), window=window, rate=rate)

    async def burst(self, requests: Sequence[dict[str, Any]]) -> None:
        """Write every request at once; the simulator sends each deliver_sm as it reads the line."""
        reader, writer = await self._connect()
        try:
            writer.write(b"".join((json.dumps(r) + "\n").encode() for r in requests))
            await writer.drain()
            for _ in requests:
                self._unwrap(await reader.readline())
        finally:
            writer.close()

    async def paced(self, requests: Sequence[dict[str, Any]], rate: float) -> None:
        """One request every 1/rate seconds, answers read as they come."""
        reader, writer = await self._connect()

        async def answers() -> None:
            for _ in requests:
                self._unwrap(await reader.readline())

        reading = asyncio.create_task(answers())
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            for i, request in enumerate(requests):
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                writer.write((json.dumps(request) + "\n").encode())
            await writer.drain()
            await reading
        finally:
            reading.cancel()
            writer.close()

    async def events(self, kind: str, since: int = 0) -> list[dict[str, Any]]:
        found = await self.sim.events(kind)
        return [e for e in found if e["index"] >= since]

    async def mark(self) -> int:
        """An index past every event so far: a phase's events are those from here on.

        Phases end when every deliver_sm and submit_sm has its response, so the newest event
        is one of those responses (small events, cheap to list).
        """
        last = -1
        for kind in ("deliver_sm_resp", "submit_sm_resp"):
            found = await self.sim.events(kind)
            if found:
                last = max(last, found[-1]["index"])
        return last + 1

    async def wait_count(self, kind: str, count: int, timeout: float, since: int = 0,
                         **where: Any) -> None:
        """Until `count` events of `kind` (from index `since`) are in the log.

        Only for the end of a phase: the figures come from the events' own timestamps, so
        polling five times a second costs little and changes nothing measured.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = await self.sim.events(kind, **where)
            have = sum(1 for e in found if e["index"] >= since)
            if have >= count:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{have} of {count} {kind} events after {timeout:.0f} s")
            await asyncio.sleep(0.2)


def cpu_ticks(pid: int | None) -> int:
    """utime + stime of another process, in clock ticks (0 when unknown)."""
    if pid is None:
        return 0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class MoFigures:
    count: int
    span_ms: float            # first deliver_sm sent -> last deliver_sm_resp received (simulator clock)
    first_resp_ms: float      # first deliver_sm sent -> first deliver_sm_resp received
    resp: tuple[float, float]  # deliver_sm -> deliver_sm_resp p50, p99 (ms)
    ack: tuple[float, float]   # deliver_sm -> acknowledgement submit_sm p50, p99 (ms)
    ack_span_ms: float         # first deliver_sm sent -> last acknowledgement submit_sm
    ack_idle_ms: float         # sum of gaps of 0.5 s or more between consecutive ack submit_sm
    statuses: dict[int, int]
    cpu_ms_per_msg: float
    offered_rate: float

    @property
    def rate(self) -> float:
        return self.count / max(self.span_ms / 1000, 1e-3)


async def mo_figures(smsc: Smsc, since: int, *, cpu_s: float, replies: bool = True) -> MoFigures:
    """Latencies from the simulator's event log: deliver_sm sent, its resp, the ack's submit_sm."""
    delivers = await smsc.events("deliver_sm", since)
    resps = {(e["session"], e["sequence"]): e for e in await smsc.events("deliver_sm_resp", since)
             if e["of"] == "deliver_sm"}
    resp_lat: list[float] = []
    statuses: dict[int, int] = {}
    for d in delivers:
        r = resps[(d["session"], d["sequence"])]
        resp_lat.append(r["t"] - d["t"])
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    first = min(d["t"] for d in delivers)
    last_sent = max(d["t"] for d in delivers)
    span = max(r["t"] for r in resps.values()) - first
    first_resp = min(r["t"] for r in resps.values()) - first
    # The acknowledgement is the first submit_sm to the sender's number (international format).
    sent_at = {"86" + d["source_addr"]: d["t"] for d in delivers}
    ack_lat: list[float] = []
    stamps: list[float] = []
    for submit in await smsc.events("submit_sm", since):
        start = sent_at.pop(submit["destination_addr"], None)
        if start is not None:
            ack_lat.append(submit["t"] - start)
            stamps.append(submit["t"])
    stamps.sort()
    if not replies:
        ack_lat, stamps = [0.0], [first]
    idle = sum(b - a for a, b in itertools.pairwise(stamps) if b - a >= 500)
    offered = len(delivers) / max((last_sent - first) / 1000, 1e-3)
    return MoFigures(count=len(delivers), span_ms=span, first_resp_ms=first_resp,
                     resp=(percentile(resp_lat, 50), percentile(resp_lat, 99)),
                     ack=(percentile(ack_lat, 50), percentile(ack_lat, 99)), ack_span_ms=max(stamps) - first,
                     ack_idle_ms=idle, statuses=statuses,
                     cpu_ms_per_msg=cpu_s * 1000 / max(len(delivers), 1), offered_rate=offered)


# ---------------------------------------------------------------------------------------
# floors: a bare SmppClient, nothing stored


def bare_client(smsc: Smsc, reactor: Any, window: int) -> SmppClient:
    return SmppClient(host=smsc.sim.host, port=smsc.sim.port, system_id=SYSTEM_ID, password=PASSWORD,
                      window=window, max_parts_per_second=MAX_PARTS_PER_SECOND, reconnect_min=0.05,
                      reconnect_max=0.3, reactor=reactor)


@dataclass
class Floors:
    mt: dict[int, float]  # registered_delivery -> messages per second


FLOOR_METADATA = MetaData()
#: What the persist-then-ack floor commits per text: the text and who sent it, nothing else.
FLOOR_TEXTS = Table("bench_floor_texts", FLOOR_METADATA,
                    Column("id", Integer, primary_key=True, autoincrement=True),
                    Column("sender", String(32), nullable=False), Column("destination", String(32), nullable=False),
                    Column("data_coding", Integer, nullable=False), Column("payload_hex", Text, nullable=False),
                    Column("received_at", DateTime(timezone=True), nullable=False))


#: Paced texts sent before the paced phase and not counted (see run_mo_phases).
WARM_UP = 30


async def run_mo_phases(smsc: Smsc, profile: Profile, phases: Sequence[str],
                        replies: bool = True) -> list[MoFigures]:
    """Each phase: send, wait for every resp (and reply and receipt), read the figures from the log.

    The waits block in the simulator (one answer per wait), so the bench's own polling adds
    next to nothing to the CPU measured.
    """
    results = []
    if "paced" in phases:
        # A short paced warm-up, not counted: the first texts of a fresh process compile its
        # statements and fill its caches, which is start-up, not the steady state the row reads.
        waits = [("deliver_sm_resp", {"of": "deliver_sm"})]
        if replies:
            waits += [("submit_sm_resp", {}), ("deliver_sm_resp", {"of": "receipt"})]
        bases = [len(await smsc.sim.events(kind, **where)) for kind, where in waits]
        await smsc.window_burst(mo_specs(WARM_UP), profile.window, rate=profile.paced_rate)
        for (kind, where), base in zip(waits, bases, strict=True):
            await smsc.sim.wait_for(kind, count=base + WARM_UP, timeout=profile.timeout, **where)
    for phase in phases:
        count = profile.paced_count if phase == "paced" else profile.mo_burst
        since = await smsc.mark()
        waits = [("deliver_sm_resp", {"of": "deliver_sm"})]
        if replies:
            waits += [("submit_sm_resp", {}), ("deliver_sm_resp", {"of": "receipt"})]
        bases = [len(await smsc.sim.events(kind, **where)) for kind, where in waits]
        cpu = time.process_time()
        await smsc.window_burst(mo_specs(count), profile.window,
                                rate=profile.paced_rate if phase == "paced" else None)
        for (kind, where), base in zip(waits, bases, strict=True):
            await smsc.sim.wait_for(kind, count=base + count, timeout=profile.timeout, **where)
        cpu_s = time.process_time() - cpu
        results.append(await mo_figures(smsc, since, cpu_s=cpu_s, replies=replies))
    return results


async def floor_mo(smsc: Smsc, reactor: Any, profile: Profile, *, url: str | None,
                   phases: Sequence[str]) -> list[MoFigures]:
    """A bare ESME: with `url`, each text committed in its own transaction on the service's
    engine for that database before ESME_ROK (persist-then-ack); without, ROK at once. The
    reply is submitted from memory after the answer."""
    await smsc.reset(auto_receipt=AUTO_RECEIPT)
    engine = None
    if url is not None:
        engine = create_engine(base_settings().database.model_copy(update={"url": url}))
        async with engine.begin() as conn:
            await conn.run_sync(FLOOR_METADATA.create_all)
    client = bare_client(smsc, reactor, profile.window)
    counter = itertools.count()
    background: set[asyncio.Task[Any]] = set()

    async def acknowledge(destination: str) -> None:
        await client.submit(ack_request(destination, next(counter), registered_delivery=1))

    async def on_deliver(event: DeliverSm) -> int:
        if not event.is_receipt:
            number = event.source_addr.strip()
            if engine is not None:
                async with engine.begin() as conn:
                    await conn.execute(FLOOR_TEXTS.insert(), {
                        "sender": number, "destination": event.destination_addr, "data_coding": event.data_coding,
                        "payload_hex": event.payload.hex(), "received_at": dt.datetime.now(dt.UTC)})
            task = asyncio.create_task(acknowledge("86" + number))
            background.add(task)
            task.add_done_callback(background.discard)
        return Status.ROK

    client.on_deliver = on_deliver
    await client.start()
    try:
        await client.wait_bound(10)
        return await run_mo_phases(smsc, profile, phases)
    finally:
        await client.stop()
        if engine is not None:
            await engine.dispose()


async def floor_mt(smsc: Smsc, reactor: Any, window: int, count: int, registered_delivery: int,
                   timeout: float) -> float:
    """`count` acknowledgements submitted from memory through the client's window."""
    await smsc.reset(auto_receipt=AUTO_RECEIPT)
    client = bare_client(smsc, reactor, window)

    async def on_deliver(event: DeliverSm) -> int:
        return Status.ROK

    client.on_deliver = on_deliver
    await client.start()
    try:
        await client.wait_bound(10)
        destinations = [f"86136{next(_SENDERS):08d}" for _ in range(count)]
        start = time.perf_counter()
        results = await asyncio.gather(*(client.submit(ack_request(d, i, registered_delivery))
                                         for i, d in enumerate(destinations)))
        elapsed = time.perf_counter() - start
        assert all(r.ok for r in results), "the simulator refused a submit"
        if registered_delivery:
            await smsc.wait_count("deliver_sm_resp", count, timeout, 0, of="receipt")
        return count / elapsed
    finally:
        await client.stop()


# ---------------------------------------------------------------------------------------
# the service: SmsRuntime with the SMPP gateway, real database


def service_settings(url: str, smsc: Smsc, **smpp: Any) -> Settings:
    base = base_settings()
    values: dict[str, Any] = {"host": smsc.sim.host, "port": smsc.sim.port, "system_id": SYSTEM_ID,
                              "password": PASSWORD, "max_parts_per_second": MAX_PARTS_PER_SECOND}
    values.update(smpp)
    # The shipped roster and blocklist, read as the service reads them.
    return base.model_copy(update={
        "database": base.database.model_copy(update={"url": url}),
        "smpp": base.smpp.model_copy(update=values),
    })


@contextlib.asynccontextmanager
async def running_service(settings: Settings, reactor: Any) -> Any:
    services = build_services(settings)
    assert services.sms is not None
    gateway = make_gateway(settings.smpp, reactor=reactor)
    assert isinstance(gateway, SmppGateway)
    runtime = SmsRuntime(services.sms, settings, gateway)
    await runtime.start()
    try:
        await gateway.client.wait_bound(10)
        yield services, runtime
    finally:
        await runtime.stop()
        await services.close()


@contextlib.asynccontextmanager
async def intake_only(settings: Settings, reactor: Any) -> Any:
    """The service's intake on the SMPP gateway with no outbox sender: replies stay queued."""
    services = build_services(settings)
    assert services.sms is not None
    gateway = make_gateway(settings.smpp, reactor=reactor)
    assert isinstance(gateway, SmppGateway)
    await services.sms.intake.load()
    await gateway.start(services.sms.intake.receive_verdict, services.sms.outbox.handle_receipt)
    try:
        await gateway.client.wait_bound(10)
        yield services
    finally:
        await gateway.stop()
        await services.close()


async def outbox_counts(services: Services) -> dict[str, int]:
    async with services.engine.connect() as conn:
        rows = (await conn.execute(select(OUTBOX.c.status, func.count()).group_by(OUTBOX.c.status))).all()
    return {status: n for status, n in rows}


async def delivered_count(services: Services) -> int:
    async with services.engine.connect() as conn:
        return int(await conn.scalar(
            select(func.count()).select_from(OUTBOX).where(OUTBOX.c.delivery_state == "delivered")) or 0)


async def until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        await asyncio.sleep(0.05)


async def bench_mo(backend: Backend, smsc: Smsc, reactor: Any, profile: Profile, report: Report) -> None:
    """The MO rows on one backend: floors first, then the service, on fresh databases."""
    name = backend.name
    floor_paced, floor_burst = await floor_mo(smsc, reactor, profile, url=backend.new_url("floor-mo"),
                                              phases=("paced", "burst"))
    (bare_burst,) = await floor_mo(smsc, reactor, profile, url=None, phases=("burst",))
    settings = service_settings(backend.new_url("mo"), smsc, window=profile.window)
    await smsc.reset(auto_receipt=AUTO_RECEIPT)
    async with running_service(settings, reactor) as (services, _runtime):
        paced, burst = await run_mo_phases(smsc, profile, ("paced", "burst"))
        counts = await outbox_counts(services)
        total = WARM_UP + profile.paced_count + profile.mo_burst
        if counts.get("sent", 0) != total:
            report.notes.append(f"{name}: outbox after MO: {counts} (expected {total} sent)")
    settings = service_settings(backend.new_url("mo-intake"), smsc, window=profile.window)
    await smsc.reset(auto_receipt=AUTO_RECEIPT)
    async with intake_only(settings, reactor) as alone_services:
        (alone,) = await run_mo_phases(smsc, profile, ("burst",), replies=False)
        groups = alone_services.metrics.counter("sms_mo_groups_total").total()
    for got in (paced, burst, alone):
        bad = {k: v for k, v in got.statuses.items() if k != 0}
        if bad:
            report.notes.append(f"{name}: deliver_sm answered other than ESME_ROK: {bad}")

    label = f"MO burst {profile.mo_burst:,} at window {profile.window}"
    f = floor_burst
    report.add(Row(name, f"{label}: throughput", per_s(burst.rate), per_s(f.rate), ratio(burst.rate / f.rate),
                   f"target >= 1.0 x persist-then-ack; the no-store floor: {per_s(bare_burst.rate)}"))
    report.add(Row(name, f"  {label}: throughput, intake alone", per_s(alone.rate), per_s(f.rate),
                   ratio(alone.rate / f.rate), f"breakdown: no outbox sender running (replies stay queued); "
                   f"cpu {alone.cpu_ms_per_msg:.2f} ms/text; resp p50/p99 {lat(*alone.resp)}; "
                   f"{alone.count / max(groups, 1):.1f} texts per transaction"))
    report.add(Row(name, f"{label}: first deliver_sm_resp", secs(burst.first_resp_ms), secs(f.first_resp_ms),
                   f"{burst.first_resp_ms / max(f.first_resp_ms, 1.0):.1f}", "after the first deliver_sm; target <= 50 ms"))
    report.add(Row(name, f"{label}: deliver_sm -> resp p50/p99", lat(*burst.resp), lat(*f.resp),
                   lat_ratio(*burst.resp, *f.resp), f"last resp after {secs(burst.span_ms)}"))
    report.add(Row(name, f"{label}: every reply out", secs(burst.ack_span_ms), secs(f.ack_span_ms),
                   f"{burst.ack_span_ms / max(f.ack_span_ms, 1.0):.1f}",
                   f"first deliver_sm -> last reply submit_sm; target <= 10 s; {secs(burst.ack_idle_ms)} in gaps "
                   f">= 0.5 s; reply p50/p99 {lat(*burst.ack)}"))
    report.add(Row(name, f"{label}: cpu per text", f"{burst.cpu_ms_per_msg:.2f} ms", f"{f.cpu_ms_per_msg:.2f} ms",
                   f"{burst.cpu_ms_per_msg / max(f.cpu_ms_per_msg, 1e-3):.1f}",
                   "this process, all threads: text, reply and its receipt; target <= 2 ms; "
                   f"no-store floor {bare_burst.cpu_ms_per_msg:.2f} ms"))
    plabel = f"MO paced {profile.paced_rate:.0f}/s x {profile.paced_count:,}"
    f = floor_paced
    report.add(Row(name, f"{plabel}: deliver_sm -> reply submit_sm p50/p99", lat(*paced.ack), lat(*f.ack),
                   lat_ratio(*paced.ack, *f.ack), "target p99 <= 50 ms"))
    report.add(Row(name, f"{plabel}: deliver_sm -> resp p50/p99", lat(*paced.resp), lat(*f.resp),
                   lat_ratio(*paced.resp, *f.resp), f"cpu {paced.cpu_ms_per_msg:.2f} ms/text "
                   f"(floor {f.cpu_ms_per_msg:.2f})"))


async def bench_mt(backend: Backend, smsc: Smsc, reactor: Any, profile: Profile,
                   floors: Floors, report: Report, *, registered_delivery: int,
                   sms: dict[str, Any] | None = None, label: str | None = None) -> None:
    settings = service_settings(backend.new_url(f"mt-{next(_SENDERS)}"), smsc,
                                registered_delivery=registered_delivery)
    if sms:
        settings = settings.model_copy(update={"sms": settings.sms.model_copy(update=sms)})
    await smsc.reset(auto_receipt=AUTO_RECEIPT)
    count = profile.mt_messages
    async with running_service(settings, reactor) as (services, runtime):
        assert services.sms is not None
        await asyncio.sleep(0.2)  # let the first (unbound) pass of the sender loop go by
        now = dt.datetime.now(dt.UTC)
        rows = [{"idempotency_key": f"bench-mt-{i}", "case_id": None, "recipient": f"+86137{next(_SENDERS):08d}",
                 "template": "received", "body": ACK_TEXT.format(number=f"2611{i:08d}"), "status": "pending",
                 "attempts": 0, "not_before": now, "created_at": now} for i in range(count)]
        async with services.engine.begin() as conn:
            await conn.execute(OUTBOX.insert(), rows)
        # Count finished submits in the process: the clock stops at the last submit_sm_resp.
        gateway = runtime.gateway
        assert isinstance(gateway, SmppGateway)
        finished = asyncio.Event()
        done = 0
        submit = gateway.submit

        async def counting(part: OutboundPart) -> SubmitOutcome:
            nonlocal done
            outcome = await submit(part)
            done += 1
            if done >= count:
                finished.set()
            return outcome

        gateway.submit = counting  # type: ignore[method-assign]
        cpu = time.process_time()
        start = time.perf_counter()
        services.sms.outbox.wake()
        await asyncio.wait_for(finished.wait(), profile.timeout)
        submitted = time.perf_counter() - start
        submit_cpu = time.process_time() - cpu

        async def all_sent() -> bool:
            return (await outbox_counts(services)).get("sent", 0) >= count

        await until(all_sent, profile.timeout, "outbox sent")
        note = f"cpu {submit_cpu * 1000 / count:.1f} ms/msg"
        if registered_delivery:
            async def all_delivered() -> bool:
                return await delivered_count(services) >= count

            await until(all_delivered, profile.timeout, "receipts matched")
            note += f"; every receipt matched after {time.perf_counter() - start:.1f} s"
    value = count / submitted
    floor = floors.mt[registered_delivery]
    test = label or (f"MT outbox {count:,}, receipts requested + auto" if registered_delivery
                     else f"MT outbox {count:,}, registered_delivery=0")
    report.add(Row(backend.name, test, per_s(value), per_s(floor), ratio(value / floor), note))


# ---------------------------------------------------------------------------------------
# MT through the outbox at scale (issue 10 "Benchmark", MT row): self-contained, `--mt-outbox N`


def count_statements(services: Services) -> Callable[[], int]:
    """Statements (round trips; an executemany counts once) the service's engine runs from now on."""
    from sqlalchemy import event

    seen = [0]

    def before(*_args: Any) -> None:
        seen[0] += 1

    event.listen(services.engine.sync_engine, "before_cursor_execute", before)
    return lambda: seen[0]


async def mt_outbox_scenario(backend: Backend, smsc: Smsc, reactor: Any, count: int, timeout: float,
                             report: Report) -> None:
    """`count` messages put in the outbox at once, against a bare ESME sending the same texts from memory.

    Both ask for receipts and get one per part from the simulator. The service's clock runs from
    waking the sender to the last outbox row stored as sent; the floor's from its first submit to
    its last submit_sm_resp. Printed: the ratio, CPU per message, statements per message.
    """
    window = base_settings().smpp.window
    texts = [ACK_TEXT.format(number=f"2612{i:08d}") for i in range(count)]
    floor_cpu = time.process_time()
    floor = await floor_mt(smsc, reactor, window, count, 1, timeout)
    floor_cpu_ms = (time.process_time() - floor_cpu) * 1000 / count  # includes waiting for its receipts
    settings = service_settings(backend.new_url(f"mt-outbox-{next(_SENDERS)}"), smsc, registered_delivery=1)
    await smsc.reset(auto_receipt=AUTO_RECEIPT)
    async with running_service(settings, reactor) as (services, _runtime):
        assert services.sms is not None
        await asyncio.sleep(0.2)  # let the first (unbound) pass of the sender loop go by
        now = dt.datetime.now(dt.UTC)
        rows = [{"idempotency_key": f"bench-mto-{i}", "case_id": None, "recipient": f"+86135{next(_SENDERS):08d}",
                 "template": "received", "body": text, "status": "pending", "attempts": 0, "not_before": now,
                 "created_at": now} for i, text in enumerate(texts)]
        async with services.engine.begin() as conn:
            await conn.execute(OUTBOX.insert(), rows)
        statements = count_statements(services)
        cpu = time.process_time()
        start = time.perf_counter()
        services.sms.outbox.wake()

        async def all_sent() -> bool:
            return (await outbox_counts(services)).get("sent", 0) >= count

        try:
            await until(all_sent, timeout, "outbox sent")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; outbox: {await outbox_counts(services)}") from None
        elapsed = time.perf_counter() - start
        cpu_ms = (time.process_time() - cpu) * 1000 / count
        # Every receipt answered by the service, and every message's delivery state settled.
        await smsc.wait_count("deliver_sm_resp", count, timeout, 0, of="receipt")

        async def all_delivered() -> bool:
            return await delivered_count(services) >= count

        await until(all_delivered, timeout, "receipts matched")
        settled_s = time.perf_counter() - start
        per_message = statements() / count
    rate = count / elapsed
    report.add(Row(backend.name, f"MT through the outbox, {count:,} at once", per_s(rate), per_s(floor),
                   ratio(rate / floor),
                   f"target >= 0.5; cpu {cpu_ms:.2f} ms/msg (floor {floor_cpu_ms:.2f}); "
                   f"{per_message:.2f} statements/msg incl. receipts; "
                   f"all delivered after {settled_s:.1f} s"))


async def run_mt_outbox(count: int, names: Sequence[str], report: Report, tmp: Path) -> None:
    reactor = install_reactor(asyncio.get_running_loop())
    smsc = Smsc(tmp / "simulator.log")
    smsc.start()
    try:
        for name in names:
            try:
                backend: Backend = SqliteBackend(tmp) if name == "sqlite" else PostgresBackend(durable=False)
            except MissingServer as exc:
                report.notes.append(f"{name} skipped: {exc}")
                continue
            try:
                report.notes.append(f"{name}: {backend.describe()}")
                await mt_outbox_scenario(backend, smsc, reactor, count, max(120.0, count / 20), report)
            finally:
                backend.close()
    finally:
        smsc.stop()


# ---------------------------------------------------------------------------------------
# main


async def run(profile: Profile, names: Sequence[str], report: Report, tmp: Path, breakdown: bool,
              mo_only: bool = False) -> None:
    reactor = install_reactor(asyncio.get_running_loop())
    smsc = Smsc(tmp / "simulator.log")
    smsc.start()
    try:
        window = profile.window
        node_cpu = cpu_ticks(smsc.pid)
        mt = {} if mo_only else {
            rd: await floor_mt(smsc, reactor, window, profile.mt_messages, rd, profile.timeout) for rd in (1, 0)}
        floors = Floors(mt=mt)
        for test, value, note in () if mo_only else (
            (f"MT {profile.mt_messages:,}, receipts requested + auto", per_s(mt[1]),
             f"bare SmppClient, window {window}, receipts answered ROK at once"),
            (f"MT {profile.mt_messages:,}, registered_delivery=0", per_s(mt[0]), f"bare SmppClient, window {window}"),
        ):
            report.add(Row("floor", test, value, value, "1.00", note))
        for name in names:
            try:
                backend: Backend = SqliteBackend(tmp) if name == "sqlite" else PostgresBackend(durable=False)
            except MissingServer as exc:
                say(f"[{name}] skipped: {exc}")
                report.notes.append(f"{name} skipped: {exc}")
                continue
            try:
                say(f"[{name}] {backend.describe()}")
                report.notes.append(f"{name}: {backend.describe()}")
                await bench_mo(backend, smsc, reactor, profile, report)
                if mo_only:
                    continue
                # MT rows (the sending side's). 5,000 messages through the outbox against a bare
                # ESME submitting from memory: `--mt-outbox 5000` (mt_outbox_scenario).
                await bench_mt(backend, smsc, reactor, profile, floors, report, registered_delivery=1)
                await bench_mt(backend, smsc, reactor, profile, floors, report, registered_delivery=0)
                if profile.breakdown or breakdown:
                    await bench_mt(backend, smsc, reactor, profile, floors, report, registered_delivery=0,
                                   sms={"outbox_poll_interval": 0.02},
                                   label=f"  MT {profile.mt_messages:,}, rd=0, outbox_poll_interval 0.02 s")
            finally:
                backend.close()
        ticks = cpu_ticks(smsc.pid) - node_cpu
        if ticks:
            report.notes.append(f"the simulator (node) used {ticks / os.sysconf('SC_CLK_TCK'):.1f} s of CPU "
                                "in this run, on the same 2 cores")
    finally:
        smsc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sms",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a burst of 1,000 and 300 paced texts")
    parser.add_argument("--mo-only", action="store_true", help="only the MO rows (no MT)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--breakdown", action="store_true",
                        help="also run the MT row with a 0.02 s outbox poll interval (always in a full run)")
    parser.add_argument("--markdown", action="store_true", help="also print the final table as Markdown")
    parser.add_argument("--mt-outbox", type=int, metavar="N", default=0,
                        help="only the MT-through-the-outbox scenario with N messages (issue 10: 5000)")
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    configure_logging(LoggingSettings(level="WARNING"))
    base_settings()
    report = Report()
    report.notes.append(f"smpp.max_parts_per_second raised to {MAX_PARTS_PER_SECOND:,.0f} for the bench "
                        f"(configured: {base_settings().smpp.max_parts_per_second:g}); every other SMPP and "
                        "SMS setting as in config/callcenter.toml")
    started = time.perf_counter()
    say(f"bench_sms ({profile.name}) {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
        f"{machine()}; {load_average()}")
    names = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    with tempfile.TemporaryDirectory(prefix="callcenter-bench-sms-") as tmp:
        if args.mt_outbox:
            asyncio.run(run_mt_outbox(args.mt_outbox, names, report, Path(tmp)))
        else:
            asyncio.run(run(profile, names, report, Path(tmp), args.breakdown, args.mo_only))
    report.print_table()
    if args.markdown:
        report.print_markdown()
    print(f"elapsed {time.perf_counter() - started:.0f} s; {load_average()} (other work on this "
          "machine shows up as noise, mostly in p99)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
