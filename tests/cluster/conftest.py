"""Nodes for the cluster tests: several wired services (each its own engine, node id and
app) on one store, each served on a real socket, with consoles signed in on any of them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from callcenter.app import Services, build_services
from callcenter.db import migrate
from callcenter.settings import Settings, load_settings
from tests.console.conftest import Console, create_staff, with_console_settings


def node_settings(database_url: str, tmp_path: Path, node_id: str, **node: Any) -> Settings:
    base = load_settings(environ={})
    settings = base.model_copy(update={
        "database": base.database.model_copy(update={"url": database_url}),
        "node": base.node.model_copy(update={"id": node_id, **node})})
    (tmp_path / node_id).mkdir(exist_ok=True)
    return with_console_settings(settings, tmp_path / node_id)


@dataclass
class Node:
    """One service node: its services and its app on a real socket."""

    services: Services
    server: TestServer
    clients: list[TestClient] = field(default_factory=list)
    stopped: bool = False

    @property
    def id(self) -> str:
        assert self.services.cluster is not None
        return self.services.cluster.node_id

    async def console(self, username: str | None = None) -> Console:
        client = TestClient(self.server)
        await client.start_server()
        self.clients.append(client)
        console = Console(http=client)
        return await console.signed_in(username) if username else console

    async def stop(self) -> None:
        """A clean shutdown (the app's cleanup stops the cluster: leave, hand back leases)."""
        if self.stopped:
            return
        self.stopped = True
        for client in self.clients:
            await client.close()
        self.clients.clear()
        await self.server.close()
        await self.services.close()


NodeFactory = Callable[..., Awaitable[Node]]


@pytest.fixture
async def make_node(tmp_path: Path) -> AsyncIterator[NodeFactory]:
    """make_node(database_url, "node-a", **node_settings) -> a started node."""
    from callcenter.web.app import make_app

    nodes: list[Node] = []
    migrated: set[str] = set()

    async def make(database_url: str, node_id: str, **node: Any) -> Node:
        settings = node_settings(database_url, tmp_path, node_id, **node)
        if database_url not in migrated:
            migrate.upgrade(database_url)
            migrated.add(database_url)
        services = build_services(settings)
        if not nodes:
            await create_staff(services)
        server = TestServer(make_app(services), host="127.0.0.1")
        await server.start_server()
        made = Node(services, server)
        nodes.append(made)
        return made

    try:
        yield make
    finally:
        for made in reversed(nodes):
            await made.stop()


async def eventually(check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0,
                     step: float = 0.02) -> float:
    """Wait until `check()` holds; returns the seconds it took. Fails after `timeout`."""
    started = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
