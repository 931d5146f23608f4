"""Console fixtures: settings with a recordings directory, staff accounts, a signed-in HTTP client."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from callcenter.app import Services
from callcenter.console.auth import StaffStore
from callcenter.settings import Settings

PASSWORD = "正确的密码-2026"
STAFF = {"wangfang": ("王芳", "staff"), "lijun": ("李军", "staff"), "zhaomin": ("赵敏", "shift_leader")}


# Supervisors for the sample grids, so supervisor tasks (督办通知) can be sent in tests.
SUPERVISOR_BUJI = "+8613900000001"     # 张伟: all of 布吉街道
SUPERVISOR_BANTIAN = "+8613900000002"  # 李娜: 坂田街道
ROSTER = """
[shift_leader]
name = "值班长"
phone = "13800000000"

[[supervisor]]
name = "张伟"
phone = "13900000001"
grids = ["440307001"]

[[supervisor]]
name = "李娜"
phone = "13900000002"
grids = ["440307002"]
"""


def with_console_settings(settings: Settings, tmp_path: Path) -> Settings:
    """A recordings directory, a fast watcher and a supervisor roster."""
    recordings = tmp_path / "recordings"
    recordings.mkdir(exist_ok=True)
    roster = tmp_path / "roster.toml"
    roster.write_text(ROSTER, encoding="utf-8")
    console = settings.console.model_copy(update={"recordings_dir": str(recordings), "poll_seconds": 0.2})
    sms = settings.sms.model_copy(update={"roster_file": str(roster)})
    return settings.model_copy(update={"console": console, "sms": sms})


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The suite's settings plus a recordings directory, a fast draft watcher and a roster."""
    return with_console_settings(settings, tmp_path)


async def create_staff(services: Services) -> None:
    store = StaffStore(services.sessions, services.settings.console)
    for username, (name, role) in STAFF.items():
        await store.create_account(username, name, role, PASSWORD)


_HIDDEN = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Console:
    """One browser's worth of HTTP: its own cookie jar, signed in as one staff member."""

    http: TestClient
    csrf: str = ""

    async def login_form(self) -> str:
        response = await self.http.get("/console/login")
        assert response.status == 200
        match = _HIDDEN.search(await response.text())
        assert match, "no CSRF field on the sign-in page"
        return match.group(1)

    async def sign_in(self, username: str, password: str = PASSWORD, **extra: str) -> ClientResponse:
        token = await self.login_form()
        return await self.http.post("/console/login", data={"csrf_token": token, "username": username,
                                                             "password": password, **extra},
                                    allow_redirects=False)

    async def signed_in(self, username: str) -> Console:
        response = await self.sign_in(username)
        assert response.status == 303, await response.text()
        me = await (await self.http.get("/console/api/me")).json()
        self.csrf = me["csrf_token"]
        return self

    def headers(self) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf}

    async def get_json(self, path: str, status: int = 200) -> Any:
        response = await self.http.get(path, headers={"Accept": "application/json"})
        assert response.status == status, await response.text()
        return await response.json()

    async def send(self, method: str, path: str, body: Any, status: int = 200) -> Any:
        response = await self.http.request(method, path, json=body, headers=self.headers())
        assert response.status == status, await response.text()
        return await response.json()


@pytest.fixture
async def console_factory(services: Services) -> AsyncIterator[Any]:
    """make() → a fresh Console (own cookies) against one running app."""
    from callcenter.web.app import make_app

    await create_staff(services)
    server = TestServer(make_app(services), host="127.0.0.1")
    clients: list[TestClient] = []

    async def make() -> Console:
        client = TestClient(server)
        await client.start_server()
        clients.append(client)
        return Console(http=client)

    try:
        yield make
    finally:
        for client in clients:
            await client.close()
        await server.close()


async def read_sse_event(response: Any, wanted: str, timeout: float = 10.0) -> dict[str, Any]:
    """Read SSE frames until one of type `wanted` arrives."""
    async def read() -> dict[str, Any]:
        event, data = "", ""
        while True:
            line = (await response.content.readline()).decode("utf-8").rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and event:
                if event == wanted:
                    return json.loads(data)
                event, data = "", ""
    return await asyncio.wait_for(read(), timeout)
