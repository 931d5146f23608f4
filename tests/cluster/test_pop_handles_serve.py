"""Screen-pop handles between two whole `callcenter serve` processes on one PostgreSQL, one
browser (one cookie jar) whose requests land on either, as behind a load balancer without
sticky sessions. Both processes make their first handle at the same moment, so both ask the
store for the shared key at once: they must agree."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from callcenter.app import build_services
from callcenter.cases.model import Channel
from callcenter.db import migrate
from callcenter.service.cases import DraftInput
from callcenter.settings import load_settings
from tests.console.conftest import PASSWORD, create_staff
from tests.sms_intake.test_sms_kill import query
from tests.support.serve_nodes import ServeNode, serve_environment

pytestmark = pytest.mark.postgres

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def prepare(url: str) -> str:
    """Schema, console accounts and one open case of the caller's; its number."""
    migrate.upgrade(url)
    base = load_settings(environ={})
    services = build_services(base.model_copy(update={"database": base.database.model_copy(update={"url": url})}))
    try:
        await create_staff(services)
        view = await services.cases.create_draft(DraftInput(
            channel=Channel.SMS, description="布吉街道井盖丢失", reporter_phone="13812345678"), actor="sms:gateway")
        return view.number
    finally:
        await services.close()


class Browser:
    def __init__(self) -> None:
        # unsafe: the jar keeps cookies set by an IP address (127.0.0.1).
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def sign_in(self, node: ServeNode, username: str) -> None:
        async with self.http.get(node.http + "console/login") as response:
            match = _CSRF.search(await response.text())
            assert match, "no CSRF field on the sign-in page"
        form = {"csrf_token": match.group(1), "username": username, "password": PASSWORD}
        async with self.http.post(node.http + "console/login", data=form, allow_redirects=False) as response:
            assert response.status == 303, await response.text()

    async def get(self, node: ServeNode, path: str, status: int = 200) -> Any:
        async with self.http.get(node.http + path, headers={"Accept": "application/json"}) as response:
            assert response.status == status, await response.text()
            return await response.json()

    async def post(self, node: ServeNode, path: str, body: Any, status: int) -> Any:
        csrf = (await self.get(node, "console/api/me"))["csrf_token"]
        async with self.http.post(node.http + path, json=body, headers={"X-CSRF-Token": csrf}) as response:
            assert response.status == status, await response.text()
            return await response.json()


async def test_two_serve_processes_open_each_others_screen_pop_handles(
        pg_database_url: str, tmp_path: Path) -> None:
    url = pg_database_url
    mine = await prepare(url)
    env = serve_environment(CALLCENTER_DATABASE__URL=url, CALLCENTER_AGI__PORT="0")
    nodes = [ServeNode(f"node-{n}", {**env, "CALLCENTER_NODE__ID": f"node-{n}"}, tmp_path / f"node-{n}.log")
             for n in (1, 2)]
    browser = Browser()
    try:
        await asyncio.gather(*(node.listening() for node in nodes))
        await browser.sign_in(nodes[0], "wangfang")  # staff: numbers masked
        first = await asyncio.gather(*(browser.get(node, "console/screen-pop?phone=13812345678") for node in nodes))
        for made, opened_on in ((first[0], nodes[1]), (first[1], nodes[0])):
            assert made["phone"] is None and "13812345678" not in made["pop"]
            answer = await browser.get(opened_on, f"console/screen-pop?pop={made['pop']}")
            assert [c["number"] for c in answer["open_cases"]] == [mine]
            assert answer["phone_display"] == "+86138****5678"

        created = await browser.post(nodes[1], "console/api/cases",
                                     {"pop": first[0]["pop"], "description": "来电反映：路灯不亮"}, status=201)
        altered = first[0]["pop"][:-1] + ("A" if first[0]["pop"][-1] != "A" else "B")
        refused = await browser.get(nodes[1], f"console/screen-pop?pop={altered}", status=400)
        assert refused["error"] == "pop_invalid"
    finally:
        await browser.http.close()
        codes = [node.stop() for node in nodes]
    assert codes == [0, 0], [node.tail() for node in nodes]
    rows = query(url, f"SELECT reporter_phone, channel FROM cases WHERE number = '{created['number']}'")
    assert [tuple(r) for r in rows] == [("+8613812345678", "phone")]
    assert query(url, "SELECT count(*) FROM shared_keys")[0][0] == 1
    assert "console.pop_refused" in nodes[1].log_text()
    for node in nodes:  # masked in every log line
        assert "13812345678" not in node.log_text()
