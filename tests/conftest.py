"""Shared fixtures: the database matrix, wired services, an HTTP client with tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient, TestServer

from callcenter.app import Services, build_services
from callcenter.db import migrate
from callcenter.service.tokens import Role
from callcenter.settings import Settings, load_settings

pytest_plugins = ["tests.support.pg_fixtures", "tests.support.asterisk_fixtures"]


@pytest.fixture
def settings(database_url: str) -> Settings:
    base = load_settings(environ={})
    return base.model_copy(update={"database": base.database.model_copy(update={"url": database_url})})


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    migrate.upgrade(settings.database.url)
    wired = build_services(settings)
    try:
        yield wired
    finally:
        await wired.close()


@dataclass
class ApiClient:
    """An aiohttp test client plus a bearer token per role."""

    http: TestClient
    tokens: dict[Role, str]

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


@pytest.fixture
async def api(services: Services) -> AsyncIterator[ApiClient]:
    from callcenter.web.app import make_app

    tokens = {role: await services.tokens.create(role, f"test-{role.value}") for role in Role}
    client = TestClient(TestServer(make_app(services), host="127.0.0.1"))
    await client.start_server()
    try:
        yield ApiClient(http=client, tokens=tokens)
    finally:
        await client.close()
