"""Console events between two nodes on one PostgreSQL, against a bare NOTIFY floor.

    .venv/bin/python -m bench.bench_cluster            # about 30 s
    .venv/bin/python -m bench.bench_cluster --events 2000

Two nodes in one process, each with its own engine and cluster bus (the service's code,
`callcenter/cluster/bus.py`), on a throwaway PostgreSQL (callcenter/db/pgcluster.py). Rows:

- `bare NOTIFY (floor)`: one psycopg connection sends each event's JSON as the payload of its
  own `pg_notify` (autocommit), another LISTENs: the least PostgreSQL can do per event.
- `cluster bus`: events published on node A's hub arrive in node B's hub (table row, NOTIFY
  wake-up, read by id).

Burst: N events published at once, events/s until the last one arrived. Paced: 100 events/s,
publish-to-arrival latency p50/p99. Figures are ratios to the floor of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

from bench._table import print_markdown, print_table


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def floor(url: str, events: int, paced: int) -> tuple[float, list[float]]:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=5000, help="events in the burst")
    parser.add_argument("--paced", type=int, default=500, help="events at 100/s for the latency rows")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from callcenter.db.pgcluster import PostgresCluster, find_pg_bindir

    bindir = find_pg_bindir()
    if bindir is None:
        print("no PostgreSQL server binaries: nothing to measure (apt-get install postgresql)")
        return 0
    with PostgresCluster(bindir) as pg:
        floor_burst, floor_lat = asyncio.run(floor(pg.create_database(), args.events, args.paced))
        bus_burst, bus_lat = asyncio.run(cluster_bus(pg.create_database(), args.events, args.paced))
    headers = ["row", "burst events/s", "ratio", "paced p50 ms", "paced p99 ms"]
    rows = []
    for name, burst, lat in (("bare NOTIFY (floor)", floor_burst, floor_lat),
                             ("cluster bus A -> B", bus_burst, bus_lat)):
        rows.append([name, f"{burst:,.0f}", f"{burst / floor_burst:.2f}",
                     f"{statistics.median(lat) * 1000:.2f}", f"{_percentile(lat, 0.99) * 1000:.2f}"])
    print_table(headers, rows, f"burst of {args.events:,} events; {args.paced} events paced at 100/s; "
                "ratio = events/s / floor events/s")
    if args.markdown:
        print_markdown(headers, rows, numeric=headers[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
