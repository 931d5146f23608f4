"""Token revocation on one node (or by the CLI) holds on every node at once, cache or not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from callcenter.service.tokens import Role, hash_token
from tests.cluster.conftest import Node, NodeFactory, eventually
from tests.cluster.test_events import kill_listener
from callcenter.db.pgcluster import PostgresCluster

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


async def status(node: Node, token: str) -> int:
    client = node.clients[0] if node.clients else (await node.console()).http
    response = await client.get("/api/v1/cases", headers={"Authorization": f"Bearer {token}"})
    return response.status


async def test_a_token_revoked_on_one_node_is_refused_by_the_other_at_once(
        pg_database_url: str, make_node: NodeFactory) -> None:
    a = await make_node(pg_database_url, "node-a")
    b = await make_node(pg_database_url, "node-b")
    await eventually(lambda: b.services.cluster.bus.listening and b.services.tokens.cache_enabled)  # type: ignore[union-attr]
    token = await a.services.tokens.create(Role.STAFF, "接线员07")
    assert await status(b, token) == 200  # now in node B's cache for 30 s
    assert await status(b, token) == 200

    started = time.monotonic()
    assert await a.services.tokens.revoke("接线员07") == 1
    took = await eventually(lambda: hash_token(token) not in b.services.tokens._cache, timeout=5)  # noqa: SLF001
    assert await status(b, token) == 401
    assert await status(a, token) == 401
    print(f"revocation reached node B in {took * 1000:.0f} ms ({(time.monotonic() - started) * 1000:.0f} ms "
          "to the refused request)")


async def test_a_revocation_by_the_cli_reaches_a_running_node(
        pg_database_url: str, make_node: NodeFactory) -> None:
    a = await make_node(pg_database_url, "node-a")
    await eventually(lambda: a.services.cluster.bus.listening and a.services.tokens.cache_enabled)  # type: ignore[union-attr]
    token = await a.services.tokens.create(Role.PLATFORM, "platform-test")
    assert await status(a, token) == 200
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env["CALLCENTER_DATABASE__URL"] = pg_database_url
    done = subprocess.run([sys.executable, "-m", "callcenter", "token", "revoke", "--name", "platform-test"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    async def refused() -> bool:
        return await status(a, token) == 401
    took = await eventually(refused, timeout=2)  # the NOTIFY, not the 30 s cache expiry
    assert took < 2


async def test_while_its_listener_is_down_a_node_checks_every_token_in_the_store(
        pg_database_url: str, pg_cluster: PostgresCluster, make_node: NodeFactory) -> None:
    """A node that may be missing revocations must not answer from its cache."""
    a = await make_node(pg_database_url, "node-a")
    b = await make_node(pg_database_url, "node-b")
    bus_b = b.services.cluster.bus  # type: ignore[union-attr]
    assert bus_b is not None
    bus_b.reconnect_min = 2.0
    await eventually(lambda: bus_b.listening and b.services.tokens.cache_enabled)  # noqa: SLF001
    token = await a.services.tokens.create(Role.STAFF, "接线员08")
    assert await status(b, token) == 200  # cached on B

    assert kill_listener(pg_cluster, "node-b") == 1
    await eventually(lambda: not bus_b.listening, timeout=10)
    assert await a.services.tokens.revoke("接线员08") == 1
    assert not bus_b.listening
    assert await status(b, token) == 401, "node B answered from a cache it could not keep true"

    # Back to normal: listening again, the cache in use again.
    await eventually(lambda: bus_b.listening and b.services.tokens.cache_enabled, timeout=15)  # noqa: SLF001
    fresh = await a.services.tokens.create(Role.STAFF, "接线员09")
    assert await status(b, fresh) == 200
    assert b.services.tokens._cache  # noqa: SLF001
