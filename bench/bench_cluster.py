"""Reports per second, SMS and voice, with 1, 2 and 3 `callcenter serve` nodes on one PostgreSQL.

    .venv/bin/python -m bench.bench_cluster                  # 1, 2, 3 nodes: 5-10 minutes
    .venv/bin/python -m bench.bench_cluster --quick          # smaller bursts: about 2 minutes
    .venv/bin/python -m bench.bench_cluster --nodes 1,3 --markdown
    .venv/bin/python -m bench.bench_cluster --bus            # console events node A -> node B

Every node is a real `callcenter serve` process (its own interpreter, engine, SMPP bind and
FastAGI listener) on one throwaway PostgreSQL (callcenter/db/pgcluster.py), against the
node-smpp SMSC simulator (sms/simulator.py, one transceiver bind per node) and the scripted
Asterisk of the voice benchmark (bench_voice's peer, one peer process per node, over real
sockets). CPU is read from /proc for each node, for PostgreSQL (postmaster, its live
backends and the ones it has reaped), the simulator and the callers, so the per-node cost
and the store's share are visible. Nothing here is pytest.

Floors, measured in the same run on the same PostgreSQL:
- bare INSERT: one row per transaction from 16 concurrent clients on the service's engine;
- bare nodes: N processes started and driven exactly like the service nodes, each with an
  SmppClient that commits each text in its own transaction before ESME_ROK and submits the
  reply from memory (persist-then-ack), and a FastAGI responder that replays the command lines
  of one real report call without doing any work.

See bench/README.md for the rows and docs/benchmarks.md for a reading.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bench._table import print_markdown, print_table

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
REPORT_DTMF = "121.#1"  # bench_voice's report call: event 01, recording, SMS


# ---------------------------------------------------------------------------------------
# run profiles


@dataclass(frozen=True)
class Profile:
    name: str
    texts: int            # MO texts per configuration, spread over the binds
    calls: int            # report calls per configuration, spread over the FastAGI listeners
    in_flight: int        # calls in flight per node
    insert_seconds: float  # bare INSERT floor
    timeout: float
    idle_seconds: float    # nodes left idle after the phases: their fixed cost


FULL = Profile("full", texts=1200, calls=600, in_flight=50, insert_seconds=3.0, timeout=600.0, idle_seconds=10.0)
QUICK = Profile("quick", texts=300, calls=150, in_flight=30, insert_seconds=1.0, timeout=300.0, idle_seconds=4.0)


# ---------------------------------------------------------------------------------------
# CPU from /proc


def proc_ticks(pid: int | None) -> tuple[int, int, int] | None:
    """(utime + stime, cutime + cstime, ppid) of a process in clock ticks, None when gone."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3 of stat): ppid 4, utime 14, stime 15, cutime 16, cstime 17
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), int(fields[1])


def cpu_seconds(pid: int | None) -> float:
    ticks = proc_ticks(pid)
    return ticks[0] / CLK_TCK if ticks else 0.0


def postgres_seconds(postmaster: int | None) -> float:
    """The postmaster, every live child (backends, walwriter, ...) and the children it reaped."""
    own = proc_ticks(postmaster)
    if own is None:
        return 0.0
    total = own[0] + own[1]
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            ticks = proc_ticks(int(entry.name))
            if ticks is not None and ticks[2] == postmaster:
                total += ticks[0]
    return total / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (0 when gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def children_seconds() -> float:
    """CPU of this process's children that have been waited for (the caller processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------------------
# nodes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Node:
    """One node process: `callcenter serve`, or the bare floor node of this module."""

    def __init__(self, kind: str, index: int, env: dict[str, str], log_path: Path,
                 floor_job: dict[str, Any] | None = None) -> None:
        self.kind, self.index, self.log_path = kind, index, log_path
        self.http_port, self.agi_port = int(env["CALLCENTER_HTTP__PORT"]), int(env["CALLCENTER_AGI__PORT"])
        self._log: IO[bytes] = log_path.open("ab")
        if floor_job is None:
            argv = [sys.executable, "-m", "callcenter", "serve", "--port", str(self.http_port)]
        else:
            argv = [sys.executable, "-m", "bench.bench_cluster", "--floor-node", json.dumps(floor_job)]
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.index + 1}"

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def tail(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]


def node_env(index: int, url: str, smsc: Any, recordings: Path, hours: Path) -> dict[str, str]:
    """The service's settings as an operator sets them, through the environment."""
    from bench.bench_sms import MAX_PARTS_PER_SECOND, PASSWORD, SYSTEM_ID

    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env.update({
        "CALLCENTER_DATABASE__URL": url,
        "CALLCENTER_NODE__ID": f"bench-node-{index + 1}",
        "CALLCENTER_HTTP__PORT": str(free_port()),
        "CALLCENTER_AGI__PORT": str(free_port()),
        "CALLCENTER_LOGGING__LEVEL": "WARNING",  # the per-report INFO line would measure stderr
        "CALLCENTER_SMPP__HOST": smsc.host,
        "CALLCENTER_SMPP__PORT": str(smsc.port),
        "CALLCENTER_SMPP__SYSTEM_ID": SYSTEM_ID,
        "CALLCENTER_SMPP__PASSWORD": PASSWORD,
        "CALLCENTER_SMPP__RECONNECT_MIN": "0.05",
        "CALLCENTER_SMPP__RECONNECT_MAX": "0.5",
        "CALLCENTER_SMPP__MAX_PARTS_PER_SECOND": str(MAX_PARTS_PER_SECOND),
        "CALLCENTER_RECORDINGS__ASTERISK_DIR": str(recordings),
        "CALLCENTER_RECORDINGS__SERVICE_DIR": str(recordings),
        "CALLCENTER_CONSOLE__RECORDINGS_DIR": str(recordings),
        "CALLCENTER_VOICE__HOURS_FILE": str(hours),
    })
    return env


def write_open_hours(path: Path) -> None:
    """Staff hours around the clock, so the IVR takes the same path whatever the time of the run."""
    week = "".join(f'{day} = ["00:00-24:00"]\n' for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
    path.write_text(f'timezone = "Asia/Shanghai"\nyears = []\n[weekly]\n{week}', encoding="utf-8")


async def wait_ready(nodes: Sequence[Node], smsc: Any, timeout: float = 90.0) -> None:
    """Every node bound at the SMSC, its FastAGI port open (and /healthz 200 for a service node)."""
    loop = asyncio.get_running_loop()

    def healthy(port: int) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    async def agi_open(port: int) -> bool:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    async with asyncio.timeout(timeout):
        while True:
            for node in nodes:
                node.alive()
            bound = [s for s in await smsc.sessions() if s["mode"] == "transceiver"]
            ports = [await agi_open(n.agi_port) for n in nodes]
            http = [n.kind != "serve" or await loop.run_in_executor(None, healthy, n.http_port) for n in nodes]
            if len(bound) >= len(nodes) and all(ports) and all(http):
                return
            await asyncio.sleep(0.2)


# ---------------------------------------------------------------------------------------
# the bare floor node (its own process, `--floor-node JOB`)


def floor_node_main(job: dict[str, Any]) -> int:
    return asyncio.run(_floor_node(job))


async def _floor_node(job: dict[str, Any]) -> int:
    from callcenter.agi.server import AgiCall, start_agi_server
    from callcenter.db.engine import create_engine
    from callcenter.runtime import install_reactor
    from callcenter.settings import load_settings
    from sms.smpp.client import SmppClient
    from sms.smpp.session import DeliverSm, Status
    from bench.bench_sms import FLOOR_TEXTS, MAX_PARTS_PER_SECOND, PASSWORD, SYSTEM_ID, ack_request

    loop = asyncio.get_running_loop()
    reactor = install_reactor(loop)
    base = load_settings(environ={})
    engine = create_engine(base.database.model_copy(update={"url": job["url"]}))
    client = SmppClient(host=job["smpp_host"], port=job["smpp_port"], system_id=SYSTEM_ID, password=PASSWORD,
                        window=base.smpp.window, max_parts_per_second=MAX_PARTS_PER_SECOND, reconnect_min=0.05,
                        reconnect_max=0.5, reactor=reactor)
    background: set[asyncio.Task[Any]] = set()
    replies = iter(range(10**9))

    async def acknowledge(destination: str) -> None:
        await client.submit(ack_request(destination, next(replies), registered_delivery=1))

    async def on_deliver(event: DeliverSm) -> int:
        if not event.is_receipt:
            number = event.source_addr.strip()
            async with engine.begin() as conn:
                await conn.execute(FLOOR_TEXTS.insert(), {
                    "sender": number, "destination": event.destination_addr, "data_coding": event.data_coding,
                    "payload_hex": event.payload.hex(), "received_at": dt.datetime.now(dt.UTC)})
            task = asyncio.create_task(acknowledge("86" + number))
            background.add(task)
            task.add_done_callback(background.discard)
        return Status.ROK

    lines: list[str] = job["lines"]

    async def replay(call: AgiCall) -> None:
        for line in lines:
            await call.command(line)

    client.on_deliver = on_deliver
    await client.start()
    listening = start_agi_server(reactor, "127.0.0.1", job["agi_port"], {"hotline": replay})
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    listening.stopListening()
    await client.stop()
    await engine.dispose()
    return 0


# ---------------------------------------------------------------------------------------
# measurements


@dataclass
class Cpu:
    """CPU seconds used during one phase."""

    nodes: list[float]
    postgres: float
    smsc: float
    callers: float = 0.0
    wall: float = 0.0  # the window's wall time

    @property
    def busy_cores(self) -> float:
        return (sum(self.nodes) + self.postgres + self.smsc + self.callers) / max(self.wall, 1e-6)


class CpuMeter:
    def __init__(self, nodes: Sequence[Node], postmaster: int | None, smsc_pid: int | None) -> None:
        self.nodes, self.postmaster, self.smsc_pid = nodes, postmaster, smsc_pid

    def read(self) -> tuple[list[float], float, float, float, float]:
        return ([n.cpu() for n in self.nodes], postgres_seconds(self.postmaster), cpu_seconds(self.smsc_pid),
                children_seconds(), time.perf_counter())

    @staticmethod
    def since(before: tuple[list[float], float, float, float, float],
              after: tuple[list[float], float, float, float, float]) -> Cpu:
        return Cpu([b - a for a, b in zip(before[0], after[0], strict=True)], after[1] - before[1],
                   after[2] - before[2], after[3] - before[3], after[4] - before[4])


@dataclass
class Phase:
    channel: str          # "SMS" or "voice"
    kind: str             # "serve" or "floor"
    nodes: int
    count: int            # reports completed
    seconds: float        # first report offered -> last one answered
    cpu: Cpu
    failed: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / max(self.seconds, 1e-6)


async def sms_phase(smsc: Any, nodes: Sequence[Node], meter: CpuMeter, texts: int, sender_base: int,
                    timeout: float) -> Phase:
    """`texts` MO reports spread over the binds, each bind getting its share through its own
    window of 10 (as an SMSC sends); done when every reply is submitted and its receipt answered.
    Rate: texts / (first deliver_sm -> last reply's submit_sm_resp), on the simulator's clock."""
    from bench.bench_sms import SERVICE, citizen_text

    sessions = [int(s["id"]) for s in await smsc.sessions() if s["mode"] == "transceiver"]
    assert len(sessions) == len(nodes), (sessions, len(nodes))
    specs = [{"source_addr": f"135{sender_base + i:08d}", "destination_addr": SERVICE, "data_coding": 8,
              "short_message_hex": citizen_text(sender_base + i).encode("utf-16-be").hex()} for i in range(texts)]
    waits = [("deliver_sm_resp", {"of": "deliver_sm"}), ("submit_sm_resp", {}), ("deliver_sm_resp", {"of": "receipt"})]
    bases = [len(await smsc.events(kind, **where)) for kind, where in waits]
    since = max([-1] + [e["index"] for kind, where in waits for e in (await smsc.events(kind, **where))[-1:]]) + 1
    before = meter.read()
    await asyncio.gather(*(smsc.acall("deliver_window", timeout=120.0, specs=specs[k::len(sessions)], window=10,
                                      session=session) for k, session in enumerate(sessions)))
    for (kind, where), base in zip(waits, bases, strict=True):
        await smsc.wait_for(kind, count=base + texts, timeout=timeout, **where)
    cpu = CpuMeter.since(before, meter.read())
    delivers = [e for e in await smsc.events("deliver_sm") if e["index"] >= since]
    replies = [e for e in await smsc.events("submit_sm_resp") if e["index"] >= since]
    refused = [e for e in await smsc.events("deliver_sm_resp", of="deliver_sm")
               if e["index"] >= since and e["status"] != 0]
    first = min(e["t"] for e in delivers)
    last = max(e["t"] for e in replies)
    phase = Phase("SMS", nodes[0].kind, len(nodes), texts, (last - first) / 1000, cpu, failed=len(refused))
    per_bind: dict[int, int] = {}
    for e in delivers:
        per_bind[e["session"]] = per_bind.get(e["session"], 0) + 1
    phase.notes.append(f"texts per bind {sorted(per_bind.values())}")
    return phase


async def voice_phase(nodes: Sequence[Node], meter: CpuMeter, calls: int, in_flight: int, caller_base: int,
                      recordings: Path, url: str | None, timeout: float) -> Phase:
    """`calls` report calls, one caller process per node each placing its share on that node's
    FastAGI port with `in_flight` at a time. Rate: calls / (first call started -> last call ended);
    the CPU window also holds the acknowledgement SMS of each call (service nodes)."""
    from bench.bench_voice import PeerJob

    n = len(nodes)
    shares = [calls // n + (1 if k < calls % n else 0) for k in range(n)]
    jobs = [PeerJob(port=node.agi_port, script="hotline", dtmf=REPORT_DTMF, calls=share, concurrency=in_flight,
                    first_caller=caller_base + k * 1_000_000, asterisk_dir=str(recordings),
                    service_dir=str(recordings)) for k, (node, share) in enumerate(zip(nodes, shares, strict=True))]
    before = meter.read()
    results = await asyncio.gather(*(job.run() for job in jobs))
    if url is not None:
        await outbox_settled(url, timeout)
    cpu = CpuMeter.since(before, meter.read())
    span = max(r["ended_at"] for r in results) - min(r["started_at"] for r in results)
    failed = sum(r["failed"] for r in results)
    phase = Phase("voice", nodes[0].kind, n, calls - failed, span, cpu, failed=failed)
    phase.notes.append(f"{results[0]['commands'] // max(shares[0], 1)} AGI commands per call")
    return phase


def query(url: str, sql: str) -> list[Any]:
    from sqlalchemy import create_engine, text

    from callcenter.db.engine import sync_url

    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


async def outbox_settled(url: str, timeout: float) -> None:
    """Every acknowledgement SMS submitted (nothing pending or sending)."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        rows = await loop.run_in_executor(None, query, url, "SELECT count(*) FROM outbox WHERE status "
                                                            "IN ('pending', 'sending', 'in_doubt')")
        if rows[0][0] == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{rows[0][0]} acknowledgements still unsent after {timeout:.0f} s")
        await asyncio.sleep(0.2)


async def bare_inserts(url: str, seconds: float, postmaster: int | None, clients: int = 16) -> Phase:
    """One row per transaction, `clients` at once, on the service's engine: what the store does
    with the least work per row."""
    from callcenter.db.engine import create_engine
    from callcenter.settings import load_settings
    from bench.bench_sms import FLOOR_METADATA, FLOOR_TEXTS

    base = load_settings(environ={})
    engine = create_engine(base.database.model_copy(update={"url": url}))
    async with engine.begin() as conn:
        await conn.run_sync(FLOOR_METADATA.create_all)
    done = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds

    async def client(k: int) -> None:
        nonlocal done
        while loop.time() < deadline:
            async with engine.begin() as conn:
                await conn.execute(FLOOR_TEXTS.insert(), {
                    "sender": f"135{k:04d}{done:04d}", "destination": "12319", "data_coding": 8,
                    "payload_hex": "4e95", "received_at": dt.datetime.now(dt.UTC)})
            done += 1

    pg, own = postgres_seconds(postmaster), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    cpu = Cpu([time.process_time() - own], postgres_seconds(postmaster) - pg, 0.0, wall=elapsed)
    await engine.dispose()
    return Phase("INSERT", "floor", 0, done, elapsed, cpu, notes=[f"{clients} clients"])


# ---------------------------------------------------------------------------------------
# one configuration: N nodes of one kind


@dataclass
class Context:
    pg: Any
    smsc: Any
    tmp: Path
    recordings: Path
    hours: Path
    profile: Profile
    lines: list[str] = field(default_factory=list)
    senders: int = 1
    callers: int = 1


async def configuration(ctx: Context, kind: str, n: int) -> list[Phase]:
    from callcenter.db import migrate
    from bench.bench_sms import AUTO_RECEIPT, FLOOR_METADATA

    url = ctx.pg.create_database()
    if kind == "serve":
        await asyncio.get_running_loop().run_in_executor(None, migrate.upgrade, url)
    else:
        from sqlalchemy import create_engine

        from callcenter.db.engine import sync_url

        engine = create_engine(sync_url(url))
        FLOOR_METADATA.create_all(engine)
        engine.dispose()
    await ctx.smsc.acall("reset")
    # Each receipt goes back on the bind that sent its message, so every node does the same work.
    await ctx.smsc.configure(auto_receipt={**AUTO_RECEIPT, "route": "submitter"})
    nodes: list[Node] = []
    try:
        for i in range(n):
            env = node_env(i, url, ctx.smsc, ctx.recordings, ctx.hours)
            log = ctx.tmp / f"{kind}-{n}-{i + 1}.log"
            job = None if kind == "serve" else {
                "url": url, "smpp_host": ctx.smsc.host, "smpp_port": ctx.smsc.port,
                "agi_port": int(env["CALLCENTER_AGI__PORT"]), "lines": ctx.lines}
            nodes.append(Node(kind, i, env, log, job))
        await wait_ready(nodes, ctx.smsc)
        if kind == "serve" and not ctx.lines:
            await capture_report_lines(ctx, nodes[0])
        meter = CpuMeter(nodes, ctx.pg._postmaster_pid(), ctx.smsc._process.pid if ctx.smsc._process else None)
        # Warm-up, not counted: each node's first texts and calls load the catalogue, compile
        # statements and fill pools; a real node has done that long before its busy hour.
        await sms_phase(ctx.smsc, nodes, meter, 20 * n, ctx.senders, ctx.profile.timeout)
        ctx.senders += 20 * n
        await voice_phase(nodes, meter, 4 * n, 2, ctx.callers + 5_000_000, ctx.recordings,
                          url if kind == "serve" else None, ctx.profile.timeout)
        sms = await sms_phase(ctx.smsc, nodes, meter, ctx.profile.texts, ctx.senders, ctx.profile.timeout)
        ctx.senders += ctx.profile.texts
        voice = await voice_phase(nodes, meter, ctx.profile.calls, ctx.profile.in_flight, ctx.callers,
                                  ctx.recordings, url if kind == "serve" else None, ctx.profile.timeout)
        ctx.callers += 10_000_000
        # What a node costs with nothing to do (heartbeats, the bus's backstop read, outbox and
        # housekeeping polls, leases): the floor under every node of a deployment.
        before = meter.read()
        await asyncio.sleep(ctx.profile.idle_seconds)
        idle = CpuMeter.since(before, meter.read())
        idle_phase = Phase("idle", kind, n, 0, idle.wall, idle)
        idle_phase.notes.append("rss MB " + str([round(rss_bytes(node.proc.pid) / 2**20) for node in nodes]))
        if kind == "serve":
            counts = dict(query(url, "SELECT channel, count(*) FROM cases GROUP BY channel"))  # warm-up included
            sms.notes.append(f"cases from SMS {counts.get('sms', 0)}")
            voice.notes.append(f"cases by channel {counts}")
            live = query(url, "SELECT count(*) FROM cluster_nodes WHERE stopped_at IS NULL")[0][0]
            sms.notes.append(f"{live} live nodes in cluster_nodes")
        return [sms, voice, idle_phase]
    except BaseException:
        for node in nodes:
            print(f"--- {node.name} ({node.log_path})\n{node.tail()}", file=sys.stderr)
        raise
    finally:
        for node in nodes:
            node.stop()


async def capture_report_lines(ctx: Context, node: Node) -> None:
    """One real report call on a service node: its command lines are what the floor replays."""
    from bench.bench_voice import PeerJob

    first = await PeerJob(port=node.agi_port, script="hotline", dtmf=REPORT_DTMF, calls=1, concurrency=1,
                          want_lines=True, first_caller=99_000_000, asterisk_dir=str(ctx.recordings),
                          service_dir=str(ctx.recordings)).run()
    ctx.lines = first["first_call"]
    if not any(line.startswith("RECORD FILE") for line in ctx.lines):
        raise RuntimeError(f"the captured call made no recording: {ctx.lines}")


# ---------------------------------------------------------------------------------------
# output


def ms_per(seconds: float, count: int) -> float:
    return 1000 * seconds / max(count, 1)


def table(phases: list[Phase], insert: Phase) -> tuple[list[str], list[list[str]]]:
    headers = ["channel", "nodes", "reports/s", "bare nodes/s", "ratio", "node cpu ms/report (each)",
               "postgres cpu ms/report", "store share", "smsc+callers ms/report", "busy cores"]
    floors = {(p.channel, p.nodes): p for p in phases if p.kind == "floor"}
    rows = []
    for p in (p for p in phases if p.kind == "serve" and p.channel != "idle"):
        f = floors.get((p.channel, p.nodes))
        nodes_cpu = sum(p.cpu.nodes)
        per_node = " / ".join(f"{ms_per(c, p.count):.2f}" for c in p.cpu.nodes)
        share = p.cpu.postgres / max(nodes_cpu + p.cpu.postgres, 1e-9)
        busy = p.cpu.busy_cores
        rows.append([p.channel, str(p.nodes), f"{p.rate:,.1f}", f"{f.rate:,.1f}" if f else "-",
                     f"{p.rate / f.rate:.2f}" if f else "-", f"{per_node} (sum {ms_per(nodes_cpu, p.count):.2f})",
                     f"{ms_per(p.cpu.postgres, p.count):.2f}", f"{share:.0%}",
                     f"{ms_per(p.cpu.smsc + p.cpu.callers, p.count):.2f}", f"{busy:.2f}"])
    for f in (p for p in phases if p.kind == "floor" and p.channel != "idle"):
        nodes_cpu = sum(f.cpu.nodes)
        per_node = " / ".join(f"{ms_per(c, f.count):.2f}" for c in f.cpu.nodes)
        share = f.cpu.postgres / max(nodes_cpu + f.cpu.postgres, 1e-9)
        busy = f.cpu.busy_cores
        rows.append([f"{f.channel} (bare nodes)", str(f.nodes), f"{f.rate:,.1f}", f"{f.rate:,.1f}", "1.00",
                     f"{per_node} (sum {ms_per(nodes_cpu, f.count):.2f})", f"{ms_per(f.cpu.postgres, f.count):.2f}",
                     f"{share:.0%}", f"{ms_per(f.cpu.smsc + f.cpu.callers, f.count):.2f}", f"{busy:.2f}"])
    for i in (p for p in phases if p.kind == "serve" and p.channel == "idle"):
        each = " / ".join(f"{100 * c / i.cpu.wall:.1f}%" for c in i.cpu.nodes)
        rows.append(["idle (cpu % of a core)", str(i.nodes), "-", "-", "-", each,
                     f"{100 * i.cpu.postgres / i.cpu.wall:.1f}%", "-", "-", f"{i.cpu.busy_cores:.2f}"])
    rows.append(["bare INSERT (16 clients, floor)", "-", f"{insert.rate:,.0f}", "-", "-",
                 f"bench {ms_per(insert.cpu.nodes[0], insert.count):.2f}",
                 f"{ms_per(insert.cpu.postgres, insert.count):.2f}", "-", "-",
                 f"{insert.cpu.busy_cores:.2f}"])
    return headers, rows


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


# ---------------------------------------------------------------------------------------
# main


async def run_nodes(profile: Profile, counts: Sequence[int], markdown: bool) -> int:
    from callcenter.db.pgcluster import PostgresCluster, find_pg_bindir
    from sms.simulator import SmscSimulator
    from bench.bench_sms import PASSWORD, SYSTEM_ID
    from bench.bench_voice import raise_fd_limit

    raise_fd_limit()
    bindir = find_pg_bindir()
    if bindir is None:
        print("no PostgreSQL server binaries: nothing to measure (apt-get install postgresql)")
        return 0
    cores = os.cpu_count() or 1
    print(f"# bench_cluster ({profile.name}) {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
          f"{cores} cores on this machine, shared by every node, PostgreSQL, the SMSC simulator and the "
          f"callers; {load_average()}", flush=True)
    started = time.perf_counter()
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="callcenter-bench-cluster-") as tmp_name:
        tmp = Path(tmp_name)
        recordings, hours = tmp / "recordings", tmp / "hours.toml"
        recordings.mkdir()
        write_open_hours(hours)
        smsc = SmscSimulator(system_id=SYSTEM_ID, password=PASSWORD, log_path=tmp / "simulator.log")
        with PostgresCluster(bindir) as pg:
            smsc.start()
            try:
                version = pg.execute("SHOW server_version")[0][0]
                print(f"# PostgreSQL {version} (throwaway cluster, fsync off), SMSC simulator pid "
                      f"{smsc._process.pid if smsc._process else '?'}", flush=True)
                insert = await bare_inserts(pg.create_database(), profile.insert_seconds, pg._postmaster_pid())
                print(f"bare INSERT: {insert.rate:,.0f}/s, postgres {ms_per(insert.cpu.postgres, insert.count):.2f} "
                      "ms cpu each", flush=True)
                ctx = Context(pg, smsc, tmp, recordings, hours, profile)
                for n in counts:
                    for kind in ("serve", "floor"):
                        got = await configuration(ctx, kind, n)
                        for p in got:
                            if p.channel == "idle":
                                print(f"{kind:>5} x{n} idle  {p.cpu.wall:.0f} s: cpu s nodes "
                                      f"{[round(c, 3) for c in p.cpu.nodes]} postgres {p.cpu.postgres:.3f}; "
                                      f"{'; '.join(p.notes)}", flush=True)
                                continue
                            print(f"{kind:>5} x{n} {p.channel:<5} {p.rate:8.1f}/s  {p.count} in {p.seconds:.1f} s; "
                                  f"cpu s nodes {[round(c, 2) for c in p.cpu.nodes]} postgres {p.cpu.postgres:.2f} "
                                  f"smsc {p.cpu.smsc:.2f} callers {p.cpu.callers:.2f}; failed {p.failed}; "
                                  f"{'; '.join(p.notes)}; {load_average()}", flush=True)
                        phases += got
            finally:
                smsc.stop()
    headers, rows = table(phases, insert)
    print_table(headers, rows,
                f"{profile.texts:,} MO texts (each: a draft, its reply SMS and the reply's receipt) and "
                f"{profile.calls:,} IVR report calls ({profile.in_flight} in flight per node; each: a draft, "
                "a recording, an acknowledgement SMS) per row; ratio = reports/s / the bare nodes' reports/s; "
                f"node cpu = CPU-ms per report of each node process; {cores} cores in all, so 'busy cores' "
                f"(all CPU in the window / its wall time) near {cores} means the machine, not the design, "
                "set the rate", [])
    if markdown:
        print_markdown(headers, rows, numeric=headers[2:5] + headers[6:7])
    print(f"# elapsed {time.perf_counter() - started:.0f} s; {load_average()}")
    return 0


# ---------------------------------------------------------------------------------------
# console events between two nodes (--bus)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bus_floor(url: str, events: int, paced: int) -> tuple[float, list[float]]:
    import psycopg

    sender = await psycopg.AsyncConnection.connect(url, autocommit=True)
    listener = await psycopg.AsyncConnection.connect(url, autocommit=True)
    await listener.execute("LISTEN bench_floor")
    arrived: dict[int, float] = {}

    async def listen() -> None:
        async for notify in listener.notifies():
            arrived[json.loads(notify.payload)["i"]] = time.perf_counter()

    task = asyncio.create_task(listen())
    payload = {"number": "261203000019", "status": "submitted"}
    started = time.perf_counter()
    for i in range(events):
        await sender.execute("SELECT pg_notify('bench_floor', %s)", (json.dumps({**payload, "i": i}),))
    while len(arrived) < events:
        await asyncio.sleep(0.001)
    burst = events / (time.perf_counter() - started)
    latencies = []
    for i in range(events, events + paced):
        sent = time.perf_counter()
        await sender.execute("SELECT pg_notify('bench_floor', %s)", (json.dumps({**payload, "i": i}),))
        while i not in arrived:
            await asyncio.sleep(0.0005)
        latencies.append(arrived[i] - sent)
        await asyncio.sleep(max(0.0, 0.01 - (time.perf_counter() - sent)))
    task.cancel()
    await sender.close()
    await listener.close()
    return burst, latencies


async def cluster_bus(url: str, events: int, paced: int) -> tuple[float, list[float]]:
    from callcenter.app import build_services
    from callcenter.db import migrate
    from callcenter.logs import configure_logging
    from callcenter.settings import LoggingSettings, load_settings

    configure_logging(LoggingSettings(level="WARNING"))
    migrate.upgrade(url)
    base = load_settings(environ={})
    nodes = []
    for node_id in ("bench-a", "bench-b"):
        settings = base.model_copy(update={
            "database": base.database.model_copy(update={"url": url}),
            "node": base.node.model_copy(update={"id": node_id})})
        services = build_services(settings)
        assert services.cluster is not None and services.cluster.bus is not None
        await services.cluster.start()
        nodes.append(services)
    a, b = nodes
    while not b.cluster.bus.listening:  # type: ignore[union-attr]
        await asyncio.sleep(0.01)
    b.events.queue_size = events + paced + 10
    arrived: dict[int, float] = {}
    with b.events.subscribe("bench") as sub:
        async def drain() -> None:
            while True:
                event = await sub.queue.get()
                if event is not None:
                    arrived[int(event.data["i"])] = time.perf_counter()
        task = asyncio.create_task(drain())
        payload = {"number": "261203000019", "status": "submitted"}
        started = time.perf_counter()
        for i in range(events):
            a.events.publish("case_updated", {**payload, "i": i})
            if i % 100 == 99:
                await asyncio.sleep(0)
        while len(arrived) < events:
            await asyncio.sleep(0.001)
        burst = events / (time.perf_counter() - started)
        latencies = []
        for i in range(events, events + paced):
            sent = time.perf_counter()
            a.events.publish("case_updated", {**payload, "i": i})
            while i not in arrived:
                await asyncio.sleep(0.0005)
            latencies.append(arrived[i] - sent)
            await asyncio.sleep(max(0.0, 0.01 - (time.perf_counter() - sent)))
        task.cancel()
    for services in nodes:
        await services.cluster.stop()  # type: ignore[union-attr]
        await services.close()
    return burst, latencies


def run_bus(events: int, paced: int, markdown: bool) -> int:
    from callcenter.db.pgcluster import PostgresCluster, find_pg_bindir

    bindir = find_pg_bindir()
    if bindir is None:
        print("no PostgreSQL server binaries: nothing to measure (apt-get install postgresql)")
        return 0
    with PostgresCluster(bindir) as pg:
        floor_burst, floor_lat = asyncio.run(bus_floor(pg.create_database(), events, paced))
        bus_burst, bus_lat = asyncio.run(cluster_bus(pg.create_database(), events, paced))
    headers = ["row", "burst events/s", "ratio", "paced p50 ms", "paced p99 ms"]
    rows = []
    for name, burst, lat in (("bare NOTIFY (floor)", floor_burst, floor_lat),
                             ("cluster bus A -> B", bus_burst, bus_lat)):
        rows.append([name, f"{burst:,.0f}", f"{burst / floor_burst:.2f}",
                     f"{statistics.median(lat) * 1000:.2f}", f"{_percentile(lat, 0.99) * 1000:.2f}"])
    print_table(headers, rows, f"burst of {events:,} events; {paced} events paced at 100/s; "
                "ratio = events/s / floor events/s")
    if markdown:
        print_markdown(headers, rows, numeric=headers[1:])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_cluster", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.texts} texts and {QUICK.calls} calls per row")
    parser.add_argument("--nodes", default="1,2,3", help="node counts to measure, comma-separated (default 1,2,3)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--bus", action="store_true", help="console events from node A to node B instead")
    parser.add_argument("--events", type=int, default=5000, help="--bus: events in the burst")
    parser.add_argument("--paced", type=int, default=500, help="--bus: events at 100/s for the latency rows")
    parser.add_argument("--floor-node", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_node:
        return floor_node_main(json.loads(args.floor_node))
    if args.bus:
        return run_bus(args.events, args.paced, args.markdown)
    from callcenter.logs import configure_logging
    from callcenter.settings import LoggingSettings

    configure_logging(LoggingSettings(level="WARNING"))
    counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    return asyncio.run(run_nodes(QUICK if args.quick else FULL, counts, args.markdown))


if __name__ == "__main__":
    sys.exit(main())
