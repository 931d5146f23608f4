"""Voice channel: calls per second, command turnaround and memory per call, against a floor.

The server under test runs in this process, as `callcenter serve` runs it: the FastAGI
listener on Twisted's asyncio reactor, the IVR routes of `callcenter.voice`, the real case
service on a fresh database. The callers are the test suite's scripted Asterisk
(`tests/agi/asterisk_peer.py`) in a **separate process**, so their CPU and memory are not
counted against the server.

Every figure stands beside a **floor** measured in the same run: a bare FastAGI responder
on the same AGI core that does no work. It replays the exact command lines of a report call
(taken from a real IVR call at start-up) without engine, service or database, and for the
idle test sends ANSWER and one WAIT FOR DIGIT. `ratio` = IVR / floor; what it shows is the
cost of the IVR engine, the case service and the database on top of the AGI core.

    .venv/bin/python -m bench.bench_voice [--quick] [--backend sqlite|postgresql] [--markdown]

    .venv/bin/python -m bench.bench_voice --asterisk-only    # just the real-Asterisk rows

Rows (see docs/benchmarks.md for a reading):
- throughput: report calls ("121#1": event 01, recording, SMS) completed per second with
  C calls in flight, and server CPU per call (this process, all threads);
- turnaround: with 1,000 report calls in flight (each answer paced 0.1-0.3 s like a prompt
  playing, calls starting over 2 s), time from the peer's answer to the server's next
  command, p50 / p99, all commands and those after a channel command only (the others
  include a service call: the draft's commit, the SMS);
- memory: tracemalloc growth of this process per connected call idling in a menu
  (1,000 calls held on WAIT FOR DIGIT), and RSS growth per call for reference;
- via real Asterisk (when one is found, tests/support/asterisk.py): 100 report calls at
  once through the project's dialplan, Local-channel citizens pressing keys and speaking
  in real time; calls completed and wall time, and AGI command turnaround p50 / p99 (from
  Asterisk's answer to our next command), beside a bare FastAGI responder replaying the
  same command lines through the same Asterisk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPORT_DTMF = "121.#1"  # "." waits for the beep (tests/agi/asterisk_peer.py)
# Turnaround test: the peer answers each command after 0.4-1.2 s (a prompt playing, a
# caller deciding: real prompts take seconds), and 1,000 calls start over 20 s (50 a
# second, below what one SQLite writer files), so about all of them are in flight together
# the way live calls are: mostly waiting, a few commands due at any moment.
PACE_SECONDS = 0.8
RAMP_SECONDS = 20.0
ROUTE = "hotline"
IDLE_ROUTE = "idle"


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ------------------------------------------------------------------------ the peer process


def peer_main(job: dict[str, Any]) -> int:
    """Run scripted calls against job["port"]; one JSON line of results on stdout."""
    raise_fd_limit()
    return asyncio.run(_peer(job))


async def _peer(job: dict[str, Any]) -> int:
    from tests.agi.asterisk_peer import CallTranscript, ScriptedAsterisk

    run_id = f"{int(time.time())}{os.getpid():07d}"  # Asterisk's uniqueid: <epoch>.<sequence>

    hold = asyncio.Event()
    held = 0
    all_held = asyncio.Event()
    samples: list[tuple[str, float]] = []
    asterisk_dir, service_dir = job.get("asterisk_dir", ""), job.get("service_dir", "")
    hold_after: int | None = job.get("hold_after")

    class Peer(ScriptedAsterisk):
        async def _read_line(self, reader: asyncio.StreamReader, buffer: bytearray,
                             transcript: CallTranscript) -> bytes | None:
            nonlocal held
            if hold_after is not None and len(transcript.commands) == hold_after and not hold.is_set():
                held += 1
                if held == job["calls"]:
                    all_held.set()
                await hold.wait()
            start = time.perf_counter()
            line = await super()._read_line(reader, buffer, transcript)
            if line is not None and job.get("turnaround"):
                # The two answers after RECORD FILE are followed by service calls in the
                # report flow (create_draft; the contact key, then the SMS): tagged apart.
                recent = [c.split(" ", 2)[:2] for c in transcript.commands[-2:]]
                service = ["RECORD", "FILE"] in recent
                samples.append(("service" if service else "channel", time.perf_counter() - start))
            if line is not None and pace:
                # the prompt plays, the caller thinks: a live call is mostly waiting
                await asyncio.sleep(pace * random.uniform(0.5, 1.5))
            return line

        def _alive(self, command: Any, transcript: CallTranscript) -> str:
            reply = super()._alive(command, transcript)
            if command.name == "record file" and service_dir and command.argv[2].startswith(asterisk_dir):
                _write_wav(Path(service_dir) / (command.argv[2][len(asterisk_dir):].lstrip("/") + ".wav"))
            return reply

    pace: float = job.get("pace", 0.0)
    ramp: float = job.get("ramp", 0.0)
    semaphore = asyncio.Semaphore(job["concurrency"])
    failures = 0
    commands = 0
    first_lines: list[str] = []

    active = peak = 0

    async def one(i: int) -> None:
        nonlocal failures, commands, active, peak
        if ramp:
            await asyncio.sleep(ramp * i / job["calls"])
        async with semaphore:
            active += 1
            peak = max(peak, active)
            try:
                await call(i)
            finally:
                active -= 1

    async def call(i: int) -> None:
        nonlocal failures, commands
        # Each peer process numbers its calls from 1: without its own prefix every row after
        # the first repeated the call ids of the one before (one warning per call record).
        caller = job.get("first_caller", 0) + i  # several peer processes at once: distinct callers
        peer = Peer(script=job["script"], dtmf=job["dtmf"], read_timeout=120.0,
                    env={"callerid": f"139{caller % 100_000_000:08d}", "uniqueid": f"{run_id}.{i + 1}"})
        try:
            transcript = await peer.run("127.0.0.1", job["port"])
        except OSError:
            failures += 1
            return
        commands += len(transcript.commands)
        if not first_lines:
            first_lines.extend(transcript.commands)
        if transcript.timed_out or not transcript.server_closed:
            failures += 1

    started, started_at = time.perf_counter(), time.time()
    calls = [asyncio.create_task(one(i)) for i in range(job["calls"])]
    if hold_after is not None:
        await all_held.wait()
        print(json.dumps({"event": "held", "calls": held}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        hold.set()
    await asyncio.gather(*calls)
    seconds = time.perf_counter() - started
    result = {"event": "done", "calls": job["calls"], "failed": failures, "seconds": seconds, "peak": peak,
              "started_at": started_at, "ended_at": time.time(),
              "commands": commands, "after_prev": [[name, d] for name, d in samples],
              "first_call": first_lines if job.get("want_lines") else []}
    print(json.dumps(result), flush=True)
    return 0


def _write_wav(path: Path, frames: int = 9760) -> None:
    """A loud square wave: the IVR decides speech from the audio, and near-silence would
    make every report a silent try."""
    import wave

    with contextlib.suppress(OSError), wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(b"\x40\x1f\xc0\xe0" * (frames // 2))


# ---------------------------------------------------------------------- the server process


@dataclass
class Row:
    test: str
    calls: int
    concurrency: int
    result: str
    floor: str
    ratio: str
    note: str = ""


class PeerJob:
    """The peer process for one measurement."""

    def __init__(self, **job: Any) -> None:
        self.job = job
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bench_voice", "--peer-job", json.dumps(self.job),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=256 * 1024 * 1024,
            cwd=str(Path(__file__).resolve().parents[1]))

    async def line(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        raw = await self.proc.stdout.readline()
        if not raw:
            await self.proc.wait()
            raise RuntimeError(f"peer process ended (exit {self.proc.returncode})")
        return json.loads(raw)  # type: ignore[no-any-return]

    async def release(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()

    async def run(self) -> dict[str, Any]:
        await self.start()
        result = await self.line()
        assert self.proc is not None
        await self.proc.wait()
        return result


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Bench:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.rows: list[Row] = []
        self.cluster: Any = None

    async def setup(self) -> None:
        from callcenter.agi.server import AgiCall, start_agi_server
        from callcenter.app import build_services
        from callcenter.db import migrate
        from callcenter.logs import configure_logging
        from callcenter.runtime import install_reactor
        from callcenter.settings import LoggingSettings, load_settings
        from callcenter.voice import VoiceChannel

        configure_logging(LoggingSettings(level="WARNING"))
        if self.args.backend == "postgresql":
            from callcenter.db.pgcluster import PostgresCluster, find_pg_bindir

            bindir = find_pg_bindir()
            if bindir is None:
                raise SystemExit("no PostgreSQL server binaries found")
            self.cluster = PostgresCluster(bindir).start()
            url = self.cluster.create_database()
        else:
            url = f"sqlite:///{self.root / 'voice.sqlite3'}"
        migrate.upgrade(url)
        recordings = self.root / "recordings"
        recordings.mkdir()
        base = load_settings(environ={})
        settings = base.model_copy(update={
            "database": base.database.model_copy(update={"url": url}),
            "recordings": base.recordings.model_copy(update={"asterisk_dir": str(recordings),
                                                            "service_dir": str(recordings)}),
            "console": base.console.model_copy(update={"recordings_dir": str(recordings)})})
        self.recordings = recordings
        self.services = build_services(settings)
        monday = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
        self.channel = VoiceChannel(self.services, now=lambda: monday)
        reactor = install_reactor(asyncio.get_running_loop())
        self.ivr_port = self.channel.listen(reactor, "127.0.0.1", 0).getHost().port
        self.report_lines: list[str] = []

        async def floor_report(call: AgiCall) -> None:
            for line in self.report_lines:
                await call.command(line)

        async def floor_idle(call: AgiCall) -> None:
            await call.command("ANSWER")
            await call.command("WAIT FOR DIGIT 6000")

        floor = start_agi_server(reactor, "127.0.0.1", 0, {ROUTE: floor_report, IDLE_ROUTE: floor_idle})
        self.floor_port = floor.getHost().port
        # One real report call: its command lines are what the floor replays.
        first = await PeerJob(port=self.ivr_port, script=ROUTE, dtmf=REPORT_DTMF, calls=1, concurrency=1,
                              want_lines=True, **self._dirs()).run()
        self.report_lines = first["first_call"]
        assert any(line.startswith("RECORD FILE") for line in self.report_lines), self.report_lines

    def _dirs(self) -> dict[str, str]:
        return {"asterisk_dir": str(self.recordings), "service_dir": str(self.recordings)}

    async def calls(self, port: int, calls: int, concurrency: int, **extra: Any) -> tuple[dict[str, Any], float]:
        gc.collect()
        cpu = cpu_seconds()
        result = await PeerJob(port=port, script=ROUTE, dtmf=REPORT_DTMF, calls=calls,
                               concurrency=concurrency, **self._dirs(), **extra).run()
        return result, cpu_seconds() - cpu

    async def throughput(self) -> None:
        levels = [(1, 100), (50, 600), (300, 900)] if self.args.quick else [(1, 150), (100, 1500), (1000, 2000)]
        for concurrency, calls in levels:
            floor, floor_cpu = await self.calls(self.floor_port, calls, concurrency)
            ivr, ivr_cpu = await self.calls(self.ivr_port, calls, concurrency)
            floor_rate, ivr_rate = calls / floor["seconds"], calls / ivr["seconds"]
            self.rows.append(Row(
                "report calls completed", calls, concurrency, f"{ivr_rate:,.0f}/s", f"{floor_rate:,.0f}/s",
                f"{ivr_rate / floor_rate:.2f}",
                f"cpu {1000 * ivr_cpu / calls:.1f} ms/call vs {1000 * floor_cpu / calls:.2f}; "
                f"failed {ivr['failed']}+{floor['failed']}; {ivr['commands'] // calls} commands/call"))

    async def turnaround(self) -> None:
        calls, pace, ramp = (300, 0.4, 6.0) if self.args.quick else (1000, PACE_SECONDS, RAMP_SECONDS)
        paced = {"turnaround": True, "pace": pace, "ramp": ramp}
        floor, _ = await self.calls(self.floor_port, calls, calls, **paced)
        ivr, _ = await self.calls(self.ivr_port, calls, calls, **paced)

        def split(result: dict[str, Any]) -> tuple[list[float], list[float]]:
            everything = [d for _, d in result["after_prev"]]
            channel_only = [d for kind, d in result["after_prev"] if kind == "channel"]
            return everything, channel_only

        for label, index in (("all commands", 0), ("no service call between", 1)):
            f, i = split(floor)[index], split(ivr)[index]
            f50, f99, i50, i99 = (percentile(f, 50), percentile(f, 99), percentile(i, 50), percentile(i, 99))
            self.rows.append(Row(
                f"command turnaround, {label}", calls, calls,
                f"{1000 * i50:.2f} ms / {1000 * i99:.2f} ms", f"{1000 * f50:.2f} ms / {1000 * f99:.2f} ms",
                f"{i50 / f50:.1f} / {i99 / f99:.1f}",
                f"p50 / p99 of {len(i):,} commands; peak {ivr['peak']:,} calls in flight "
                f"(floor {floor['peak']:,}); {ivr['seconds']:.0f} s"))

    async def memory(self) -> None:
        calls = 300 if self.args.quick else 1000
        results = {}
        for name, port, route in (("floor", self.floor_port, IDLE_ROUTE), ("ivr", self.ivr_port, ROUTE)):
            hold_after = 1 if route == IDLE_ROUTE else 3  # ANSWER | ANSWER, welcome, main_menu
            job = PeerJob(port=port, script=route, dtmf="", calls=calls, concurrency=calls, hold_after=hold_after)
            gc.collect()
            tracemalloc.start()
            before, rss_before = tracemalloc.get_traced_memory()[0], rss_bytes()
            await job.start()
            held = await job.line()
            assert held["event"] == "held", held
            await asyncio.sleep(0.2)  # the last WAIT FOR DIGIT reaches the peer's buffer
            gc.collect()
            after, rss_after = tracemalloc.get_traced_memory()[0], rss_bytes()
            tracemalloc.stop()
            await job.release()
            done = await job.line()
            assert job.proc is not None
            await job.proc.wait()
            results[name] = ((after - before) / calls, (rss_after - rss_before) / calls, done["failed"])
        (f_heap, f_rss, _), (i_heap, i_rss, _) = results["floor"], results["ivr"]
        self.rows.append(Row("memory per idle call (tracemalloc)", calls, calls, f"{i_heap / 1024:.1f} KiB",
                             f"{f_heap / 1024:.1f} KiB", f"{i_heap / f_heap:.1f}",
                             f"RSS growth {i_rss / 1024:.1f} KiB vs {f_rss / 1024:.1f} KiB per call"))

    async def real_asterisk(self) -> None:
        """Report calls through a real Asterisk 22 with the project's dialplan, the citizen a
        Local channel (keys with SendDTMF, synthesised speech with Playback). The floor is a
        bare FastAGI responder replaying the IVR's own command lines through the same
        Asterisk and the same caller script, so both sides wait for the same prompts."""
        from callcenter.agi.server import AgiCall, start_agi_server
        from callcenter.runtime import install_reactor
        from tests.support.asterisk import AsteriskPeer, AsteriskUnavailable, find_asterisk
        from tests.support.asterisk_fixtures import build_caller_speech, build_ivr_sounds

        calls = 30 if self.args.quick else 100
        try:
            prefix = find_asterisk()
        except AsteriskUnavailable as exc:
            print(f"# real-Asterisk rows skipped: {exc}", flush=True)
            return
        sounds, speech = build_ivr_sounds(), build_caller_speech(self.root)
        asterisk = AsteriskPeer(prefix=prefix, root=self.root / "asterisk",
                                sounds={"callcenter/zh": sounds.directory})
        asterisk.start()
        reactor = install_reactor(asyncio.get_running_loop())
        samples: dict[str, list[float]] = {"ivr": [], "floor": []}
        finished: dict[str, int] = {"ivr": 0, "floor": 0}
        lines: list[str] = []

        def timed(kind: str, handler: Any) -> Any:
            async def run(call: AgiCall) -> None:
                send, answered = call.command, [0.0]

                async def command(line: str | bytes) -> Any:
                    now = time.perf_counter()
                    if answered[0]:
                        samples[kind].append(now - answered[0])
                    if kind == "ivr" and not lines_done:
                        captured.append(line if isinstance(line, str) else line.decode())
                    result = await send(line)
                    answered[0] = time.perf_counter()
                    return result

                call.command = command  # type: ignore[method-assign]
                await handler(call)
                finished[kind] += 1
            return run

        captured: list[str] = []
        lines_done = False

        async def floor(call: AgiCall) -> None:
            stem = f"floor-{call.call_id}"
            for line in lines:
                await call.command(line.replace(record_stem, stem) if record_stem else line)

        ivr_port = start_agi_server(reactor, "127.0.0.1", 0, {
            name: timed("ivr", handler) for name, handler in self.channel.routes.items()}).getHost().port
        floor_port = start_agi_server(reactor, "127.0.0.1", 0, {"hotline": timed("floor", floor)}).getHost().port
        say = "p" + speech.path("report_streetlight")
        script = "|".join(["w2", "d1", "w1.5", "d2", "w1.5", "d1", "w1", "d*", "w1.5", say, "w0.5", "d#",
                           "w2.5", "d1"])

        async def batch(port: int, n: int, first: int) -> float:
            await asterisk.set_agi_nodes([port])
            started = time.perf_counter()
            for i in range(n):
                asterisk.call(script, callerid=f"137{first + i:08d}")
            await asterisk.wait_idle(900)
            return time.perf_counter() - started

        try:
            await batch(ivr_port, 1, 0)  # one call: its command lines are what the floor replays
            lines, lines_done = list(captured), True
            record = next((line for line in lines if line.startswith("RECORD FILE")), "")
            record_stem = record.split('"')[1].rsplit("/", 1)[-1] if '"' in record else ""
            samples["ivr"].clear()
            finished["ivr"] = 0
            ivr_seconds = await batch(ivr_port, calls, 1)
            floor_seconds = await batch(floor_port, calls, 1 + calls)
        finally:
            asterisk.stop()
        ivr, flo = samples["ivr"], samples["floor"]
        self.rows.append(Row(
            "report calls via real Asterisk", calls, calls,
            f"{finished['ivr']} in {ivr_seconds:.0f} s", f"{finished['floor']} in {floor_seconds:.0f} s",
            f"{ivr_seconds / floor_seconds:.2f}",
            f"Local-channel citizens, prompts and speech played in real time; {len(lines)} commands/call"))
        i50, i99, f50, f99 = (percentile(ivr, 50), percentile(ivr, 99), percentile(flo, 50), percentile(flo, 99))
        self.rows.append(Row(
            "command turnaround via real Asterisk", calls, calls,
            f"{1000 * i50:.2f} ms / {1000 * i99:.2f} ms", f"{1000 * f50:.2f} ms / {1000 * f99:.2f} ms",
            f"{i50 / f50:.1f} / {i99 / f99:.1f}",
            f"p50 / p99 of {len(ivr):,} commands: Asterisk's answer to our next command "
            "(service calls included)"))

    async def close(self) -> None:
        await self.channel.drain(5)
        await self.services.close()
        if self.cluster is not None:
            self.cluster.stop()

    def print(self, markdown: bool) -> None:
        header = ("test", "calls", "in flight", "IVR", "floor", "ratio", "note")
        table = [header] + [(r.test, f"{r.calls:,}", f"{r.concurrency:,}", r.result, r.floor, r.ratio, r.note)
                            for r in self.rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        for row in table:
            print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))
        if markdown:
            print()
            print("| " + " | ".join(header) + " |")
            print("|---|---:|---:|---:|---:|---:|---|")
            for row in table[1:]:
                print("| " + " | ".join(str(cell) for cell in row) + " |")


async def server_main(args: argparse.Namespace) -> int:
    raise_fd_limit()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-voice-") as tmp:
        bench = Bench(args, Path(tmp))
        await bench.setup()
        try:
            print(f"# bench_voice {'--quick ' if args.quick else ''}backend={args.backend} "
                  f"python {platform.python_version()} on {platform.machine()} ({os.cpu_count()} CPUs), "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            if not args.asterisk_only:
                await bench.throughput()
                await bench.turnaround()
                await bench.memory()
            if not args.no_asterisk:
                await bench.real_asterisk()
        finally:
            await bench.close()
        bench.print(args.markdown)
    print(f"# {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.2f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_voice", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller runs (about 40 s)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--no-asterisk", action="store_true", help="leave out the real-Asterisk rows")
    parser.add_argument("--asterisk-only", action="store_true", help="only the real-Asterisk rows")
    parser.add_argument("--peer-job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_job:
        return peer_main(json.loads(args.peer_job))
    return asyncio.run(server_main(args))


if __name__ == "__main__":
    sys.exit(main())
