"""Identity and liveness: heartbeat rows, /healthz and the metrics name this node and the live ones."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import select

from callcenter.db.tables import ClusterNodeRow
from callcenter.service.tokens import Role
from tests.cluster.conftest import NodeFactory, eventually

ROOT = Path(__file__).resolve().parents[2]


async def test_healthz_lists_the_live_nodes_and_a_clean_stop_leaves_at_once(
        database_url: str, make_node: NodeFactory) -> None:
    a = await make_node(database_url, "node-a", heartbeat_seconds=0.2)
    b = await make_node(database_url, "node-b", heartbeat_seconds=0.2)
    client = await a.console()
    health = await (await client.http.get("/healthz")).json()
    assert health == {"status": "ok", "database": "ok", "node": "node-a", "nodes": ["node-a", "node-b"]}
    health_b = await (await (await b.console()).http.get("/healthz")).json()
    assert health_b["node"] == "node-b" and health_b["nodes"] == ["node-a", "node-b"]

    # Heartbeats keep coming: the row's time moves on.
    async with a.services.sessions() as session:
        first = await session.scalar(select(ClusterNodeRow.last_seen_at).where(ClusterNodeRow.node_id == "node-b"))

    async def moved() -> bool:
        async with a.services.sessions() as session:
            seen = await session.scalar(
                select(ClusterNodeRow.last_seen_at).where(ClusterNodeRow.node_id == "node-b"))
        return seen is not None and first is not None and seen > first
    await eventually(moved, timeout=5)

    await b.stop()
    health = await (await client.http.get("/healthz")).json()
    assert health["nodes"] == ["node-a"]


async def test_metrics_carry_the_node_and_the_live_nodes(database_url: str, make_node: NodeFactory) -> None:
    a = await make_node(database_url, "node-a")
    await make_node(database_url, "node-b")
    token = await a.services.tokens.create(Role.ADMIN, "metrics")
    client = await a.console()
    response = await client.http.get("/api/v1/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200
    metrics = {m["name"]: m for m in (await response.json())["metrics"]}
    live = metrics["cluster_nodes_live"]["samples"]
    assert live == [{"labels": {"node": "node-a"}, "value": 2.0}]
    ages = {s["labels"]["node"]: s["value"] for s in metrics["cluster_node_heartbeat_age_seconds"]["samples"]}
    assert set(ages) == {"node-a", "node-b"} and all(0 <= age < 10 for age in ages.values())


def _serve(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "callcenter", "serve", "--port", "0"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline, lines = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = re.search(r"address=(http://127\.0\.0\.1:\d+/)(?!console)", line)
        if match and "service=http" in line:
            return proc, match.group(1)
    proc.kill()
    raise AssertionError("no listening line in:\n" + "".join(lines))


def _health(address: str) -> dict[str, Any]:
    with urllib.request.urlopen(address + "healthz", timeout=10) as response:
        return json.load(response)  # type: ignore[no-any-return]


def test_two_serve_processes_see_each_other_and_a_killed_one_drops_out(pg_database_url: str) -> None:
    """Real `callcenter serve` processes on one store; `kill -9` gives no chance to say goodbye."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env.update(CALLCENTER_DATABASE__URL=pg_database_url, CALLCENTER_AGI__ENABLED="false",
               CALLCENTER_NODE__HEARTBEAT_SECONDS="0.3", CALLCENTER_NODE__DEAD_AFTER_SECONDS="2")
    subprocess.run([sys.executable, "-m", "callcenter", "db", "upgrade"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=120)
    procs = []
    try:
        first, first_address = _serve({**env, "CALLCENTER_NODE__ID": "serve-1"})
        procs.append(first)
        second, second_address = _serve({**env, "CALLCENTER_NODE__ID": "serve-2"})
        procs.append(second)
        assert _health(first_address)["nodes"] == ["serve-1", "serve-2"]
        assert _health(second_address) == {"status": "ok", "database": "ok", "node": "serve-2",
                                           "nodes": ["serve-1", "serve-2"]}
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _health(first_address)["nodes"] != ["serve-1"]:
            assert time.monotonic() < deadline, "the killed node is still listed"
            time.sleep(0.2)
        first.send_signal(signal.SIGTERM)
        rest, _ = first.communicate(timeout=30)
        assert first.returncode == 0, rest
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_the_embedded_store_keeps_its_events_in_process(tmp_path: Path, make_node: NodeFactory) -> None:
    """SQLite is one node: no bus, no event rows; the hub delivers in-process as before."""
    from sqlalchemy import func

    from callcenter.db.tables import ClusterEventRow

    node = await make_node(f"sqlite:///{tmp_path / 'one.sqlite3'}", "only")
    assert node.services.cluster is not None and node.services.cluster.bus is None
    assert node.services.events.relay is None
    with node.services.events.subscribe("wangfang") as sub:
        node.services.events.publish("case_updated", {"number": "261203000019", "status": "submitted"})
        event = await sub.next(1.0)
    assert event is not None and event.data["number"] == "261203000019"
    async with node.services.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(ClusterEventRow)) == 0
