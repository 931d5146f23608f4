"""AMI framing: how fast the sans-I/O core reads what a real Asterisk sends.

    .venv/bin/python -m bench.bench_ami [--rounds N] [--markdown]

Input: tests/voice_calls/transcripts/ami_queue_asterisk22.raw (every byte of one real AMI
connection: queue calls, channel events, a list action), fed in 4 KiB reads as the socket
delivers them. Floor, measured in the same run: splitting the same bytes into lines and
each line at its colon, the least any AMI reader must do. The ratio is the cost of framing,
repeated headers, ActionID matching and limits over that floor.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench._table import print_markdown, print_table
from callcenter.voice.ami_protocol import AmiProtocol
from callcenter.voice.queue_events import QueueTracker

TRANSCRIPT = Path(__file__).resolve().parents[1] / "tests" / "voice_calls" / "transcripts" / "ami_queue_asterisk22.raw"
READ = 4096


def _protocol(data: bytes, rounds: int) -> tuple[float, int]:
    started, messages = time.perf_counter(), 0
    for _ in range(rounds):
        proto = AmiProtocol()
        for start in range(0, len(data), READ):
            messages += len(proto.feed(data[start:start + READ]))
    return time.perf_counter() - started, messages


def _tracked(data: bytes, rounds: int) -> float:
    import datetime as dt

    from callcenter.voice.ami_protocol import Event

    now = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    for _ in range(rounds):
        proto, tracker = AmiProtocol(), QueueTracker({"hotline-agents"})
        for start in range(0, len(data), READ):
            for item in proto.feed(data[start:start + READ]):
                if isinstance(item, Event):
                    tracker.feed(item, now)
    return time.perf_counter() - started


def _floor(data: bytes, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        for line in data.split(b"\r\n"):
            line.decode("utf-8", "replace").partition(":")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    data = TRANSCRIPT.read_bytes()
    floor = _floor(data, args.rounds)
    framed, messages = _protocol(data, args.rounds)
    tracked = _tracked(data, args.rounds)
    megabytes = len(data) * args.rounds / 1e6
    headers = ("test", "MB/s", "messages/s", "floor MB/s", "time / floor")
    rows = [
        ("AMI framing (AmiProtocol.feed)", f"{megabytes / framed:.1f}", f"{messages / framed:,.0f}",
         f"{megabytes / floor:.1f}", f"{framed / floor:.1f}x"),
        ("framing + queue tracker", f"{megabytes / tracked:.1f}", f"{messages / tracked:,.0f}",
         f"{megabytes / floor:.1f}", f"{tracked / floor:.1f}x"),
    ]
    print_table(headers, rows, f"{args.rounds} rounds of {len(data):,} bytes ({messages // args.rounds} messages)"
                " in 4 KiB reads; floor: split lines + partition")
    if args.markdown:
        print_markdown(headers, rows, numeric=headers[1:])


if __name__ == "__main__":
    main()
