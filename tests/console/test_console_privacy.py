"""docs/privacy.md in the console: generated spellings of Chinese numbers, typed into
descriptions and addresses and given as the reporter's number, read back through the queue,
the case page and its log by a 接线员 (may not see numbers) and a 值班长 (may, unless the
reporter is anonymous or confidential); and 回拨市民's answer, which carries none for anyone. A real server on 127.0.0.1, SQLite and PostgreSQL."""

from __future__ import annotations

import http.cookiejar
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from callcenter.db import migrate
from callcenter.service.tokens import Role
from callcenter.settings import Settings
from tests.console.conftest import PASSWORD, create_staff
from tests.support.phone_spellings import Spelled, leaks, spellings, texts_with
from tests.support.threaded_app import ThreadedApp

E2E = settings(max_examples=8, derandomize=True, deadline=None,
               phases=[Phase.explicit, Phase.generate],  # a real server: report, do not shrink for minutes
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_HIDDEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """A signed-in console user over urllib, cookies and CSRF token included."""

    def __init__(self, app: ThreadedApp, username: str) -> None:
        self.app = app
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect())
        page = self._open("GET", "/console/login")[1]
        token = _HIDDEN.search(page)
        assert token, page[:500]
        form = urllib.parse.urlencode({"csrf_token": token.group(1), "username": username,
                                       "password": PASSWORD}).encode()
        status, text = self._open("POST", "/console/login", form,
                                  {"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 303, text[:500]
        self.csrf = json.loads(self._open("GET", "/console/api/me")[1])["csrf_token"]

    def _open(self, method: str, path: str, data: bytes | None = None,
              headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.app.base + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=60) as response:
                return response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8")

    def get(self, path: str) -> str:
        status, text = self._open("GET", path, headers={"Accept": "application/json"})
        assert status == 200, text[:500]
        return text

    def send(self, method: str, path: str, body: Any) -> tuple[int, str]:
        return self._open(method, path, json.dumps(body, ensure_ascii=False).encode(),
                          {"Content-Type": "application/json", "X-CSRF-Token": self.csrf})


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@pytest.fixture
def served(settings: Settings) -> Iterator[ThreadedApp]:
    migrate.upgrade(settings.database.url)
    with ThreadedApp(settings) as app:
        assert app.services is not None
        app.run(create_staff(app.services))
        yield app


@E2E
@given(reporter=spellings(), typed=spellings(), privacy=st.sampled_from(["public", "anonymous", "confidential"]),
       data=st.data())
def test_console_shows_numbers_only_to_roles_that_may_see_them(
        served: ThreadedApp, reporter: Spelled, typed: Spelled, privacy: str, data: st.DataObject) -> None:
    description = data.draw(texts_with(typed))
    status, text = served.request("POST", "/api/v1/cases", role=Role.STAFF, json_body={
        "description": description, "reporter_phone": reporter.api_form, "address": f"人民路1号，电话{typed.text}",
        "anonymous": privacy == "anonymous", "confidential": privacy == "confidential"})
    assert status == 201, text
    number = json.loads(text)["number"]
    private = privacy != "public"

    operator, leader = Browser(served, "wangfang"), Browser(served, "zhaomin")
    for browser, may_see in ((operator, False), (leader, not private)):
        queue = browser.get("/console/api/queue")
        case = browser.get(f"/console/api/cases/{number}")
        assert number in queue and number in case
        for national in (reporter.national, typed.national):
            assert leaks(queue, national) is may_see and leaks(case, national) is may_see, \
                (browser is leader, privacy, national, queue, case)

    # A 接线员 saves the description they saw masked: the citizen's numbers are kept.
    seen = json.loads(operator.get(f"/console/api/cases/{number}"))
    status, text = operator.send("PATCH", f"/console/api/cases/{number}",
                                 {"description": seen["description"] + "（已核实）", "version": seen["version"]})
    assert status == 200, text
    stored = served.run(served.services.cases.get(number, with_log=False))  # type: ignore[union-attr]
    assert stored.description == description.strip() + "（已核实）"


@pytest.fixture
def served_with_ami(served: ThreadedApp) -> Iterator[ThreadedApp]:
    """`served` with 回拨市民 able to place calls: the scripted AMI peer on a real socket, and
    both staff members with a phone."""
    from callcenter.voice.ami import AmiClient
    from callcenter.voice.queue_follow import set_queue_interface
    from tests.support.staff_dial import start_staff_dialer
    from tests.voice_calls.ami_peer import ScriptedAmi

    services = served.services
    assert services is not None

    async def start() -> tuple[ScriptedAmi, AmiClient]:
        peer, client, _ = await start_staff_dialer(services)
        for username, phone in (("wangfang", "PJSIP/1001"), ("zhaomin", "PJSIP/1003")):
            await set_queue_interface(services.sessions, username, phone)
        return peer, client

    peer, client = served.run(start())
    try:
        yield served
    finally:
        served.run(client.stop())
        served.run(peer.stop())


@E2E
@given(reporter=spellings(), privacy=st.sampled_from(["public", "anonymous", "confidential"]))
def test_calling_a_reporter_back_never_hands_the_number_to_the_browser(
        served_with_ami: ThreadedApp, reporter: Spelled, privacy: str) -> None:
    """回拨市民: the answer carries no number for any role (the call goes through Asterisk),
    and the case page afterwards (with the staff_call log entries) masks as before."""
    served = served_with_ami
    status, text = served.request("POST", "/api/v1/cases", role=Role.STAFF, json_body={
        "description": "井盖缺失", "reporter_phone": reporter.api_form,
        "anonymous": privacy == "anonymous", "confidential": privacy == "confidential"})
    assert status == 201, text
    number = json.loads(text)["number"]
    private = privacy != "public"
    operator, leader = Browser(served, "wangfang"), Browser(served, "zhaomin")
    # Public: the operator's call goes out, the leader's is then a repeat (409 busy). Private:
    # only the leader, whose role may see numbers, may call.
    expected = {"wangfang": 403 if private else 202, "zhaomin": 202 if private else 409}
    for browser, name, may_see in ((operator, "wangfang", False), (leader, "zhaomin", not private)):
        status, answer = browser.send("POST", f"/console/api/cases/{number}/call-reporter", {})
        assert status == expected[name], answer
        assert not leaks(answer, reporter.national), answer
        assert leaks(browser.get(f"/console/api/cases/{number}"), reporter.national) is may_see
