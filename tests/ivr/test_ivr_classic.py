"""The classic AGI entry script as a real process: Asterisk's side of the stdin/stdout
dialogue is played line by line from this test, and the service's HTTP API is a small
aiohttp server on 127.0.0.1:0. Nothing in the script is patched."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from callcenter.cases.numbering import CaseNumber

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "ivr_scripts" / "agi_classic.py"
TOKEN = "cc_staff_classic-agi-test"
KEYS = "0123456789*#"
KEYED = CaseNumber.build(dt.date(2026, 1, 5), 42).value
SLIP = KEYED[:-2] + str((int(KEYED[-2]) + 1) % 10) + KEYED[-1]
DRAFT = CaseNumber.build(dt.date(2026, 3, 2), 7).value
UNIQUEID = "1767225600.42"
# A guard against a hung script, not a pause: every read returns as soon as a line arrives.
LINE_TIMEOUT = 30.0
IN_HOURS = "2026-03-02T10:00:00+08:00"       # a Monday morning
AFTER_HOURS = "2026-10-01T10:00:00+08:00"    # 国庆节


@dataclass
class FakeService:
    """The part of the service's HTTP API the script calls, recording every request."""

    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, Any] | None]] = field(default_factory=list)
    failing: bool = False

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/cases/{number}", self.get_case)
        app.router.add_post("/api/v1/cases", self.create_case)
        return app

    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {TOKEN}"

    async def get_case(self, request: web.Request) -> web.Response:
        self.requests.append(("GET", request.path, None))
        if not self._authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.failing:
            return web.json_response({"error": "internal"}, status=500)
        case = self.cases.get(request.match_info["number"])
        if case is None:
            return web.json_response({"error": "not_found", "message": "no such case"}, status=404)
        return web.json_response(case)

    async def create_case(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(("POST", request.path, body))
        if not self._authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"number": DRAFT, "status": "draft"}, status=201)


@pytest.fixture
async def service() -> AsyncIterator[tuple[FakeService, str]]:
    fake = FakeService(cases={KEYED: {"number": KEYED, "status": "processing",
                                      "reporter_phone": "+8613812345678"}})
    server = TestServer(fake.app(), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield fake, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


class Asterisk:
    """Asterisk's half of a classic AGI session: the env block, then one reply per command."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, flow: str, api_url: str, tmp_path: Path, now: str = IN_HOURS,
                    callerid: str = "13812345678") -> Asterisk:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
        env.update({"CALLCENTER_API_URL": api_url, "CALLCENTER_AGI_TOKEN": TOKEN,
                    "CALLCENTER_RECORDING_DIR": str(tmp_path), "CALLCENTER_IVR_NOW": now})
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), flow, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path)
        asterisk = cls(process)
        env_block = {
            "agi_request": str(SCRIPT), "agi_channel": "PJSIP/carrier-00000007",
            "agi_language": "zh", "agi_type": "PJSIP", "agi_uniqueid": UNIQUEID,
            "agi_version": "22.10.1", "agi_callerid": callerid, "agi_calleridname": "unknown",
            "agi_callingpres": "0", "agi_callingani2": "0", "agi_callington": "0",
            "agi_callingtns": "0", "agi_dnid": "12319", "agi_rdnis": "unknown",
            "agi_context": "hotline", "agi_extension": "s", "agi_priority": "3",
            "agi_enhanced": "0.0", "agi_accountcode": "", "agi_threadid": "140211",
            "agi_arg_1": flow,
        }
        await asterisk.write("".join(f"{k}: {v}\n" for k, v in env_block.items()) + "\n")
        return asterisk

    async def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text.encode("utf-8"))
        await self.process.stdin.drain()

    async def expect(self, command: str, reply: str) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), LINE_TIMEOUT)
        if not line:
            stderr = await self.stderr()
            raise AssertionError(f"script ended, expected {command!r}; stderr:\n{stderr}")
        assert line.decode("utf-8") == command + "\n"
        await self.write(reply + "\n")

    async def ends(self) -> None:
        """The script sends nothing more and exits 0 (AGISTATUS SUCCESS)."""
        assert self.process.stdout is not None
        rest = await asyncio.wait_for(self.process.stdout.read(), LINE_TIMEOUT)
        assert rest == b"", f"unexpected commands: {rest!r}"
        code = await asyncio.wait_for(self.process.wait(), LINE_TIMEOUT)
        assert code == 0, await self.stderr()

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode("utf-8", "replace")

    async def start_of_call(self, case_variable: str | None = None) -> None:
        """ANSWER; routes that continue a case (voicemail, callback) then read its number."""
        await self.expect("ANSWER", "200 result=0")
        if case_variable is not None:
            await self.expect('GET VARIABLE "CALLCENTER_CASE_NUMBER"', case_variable)

    async def play(self, prompt: str, reply: str = "200 result=0 endpos=8000",
                   escape: str = "") -> None:
        await self.expect(f'STREAM FILE "callcenter/zh/{prompt}" "{escape}"', reply)


def key(digit: str) -> str:
    """STREAM FILE interrupted by a key: the result is its ASCII code."""
    return f"200 result={ord(digit)} endpos=1200"


async def test_main_menu_to_status_with_a_wrong_check_digit(
        service: tuple[FakeService, str], tmp_path: Path) -> None:
    fake, url = service
    asterisk = await Asterisk.start("hotline", url, tmp_path)
    await asterisk.start_of_call()
    await asterisk.play("welcome", escape=KEYS)
    await asterisk.play("main_menu", key("2"), escape=KEYS)  # 2 during the menu prompt
    # one key more than the 12 digits: the # after a full number ends this entry (the same
    # executor as FastAGI; the two used to differ here)
    await asterisk.expect('GET DATA "callcenter/zh/status_enter_number" 10000 13',
                          f"200 result={SLIP}")
    await asterisk.play("status_wrong_check_digit", escape=KEYS)
    await asterisk.expect('GET DATA "callcenter/zh/status_enter_number" 10000 13',
                          f"200 result={KEYED}")
    await asterisk.play("status_is")
    await asterisk.play("status_processing")
    await asterisk.play("thanks_goodbye", escape=KEYS)
    await asterisk.expect('SET VARIABLE "CALLCENTER_NEXT" "hangup"', "200 result=1")
    await asterisk.ends()  # the dialplan hangs up on CALLCENTER_NEXT, as after FastAGI
    assert fake.requests == [("GET", f"/api/v1/cases/{KEYED}", None)]


@pytest.mark.parametrize(("now", "prompt", "target"), [
    (IN_HOURS, "transfer_to_agent", "agent"),
    (AFTER_HOURS, "after_hours", "voicemail"),
], ids=["in-hours", "holiday"])
async def test_zero_during_the_welcome_reaches_a_person_or_voicemail(
        service: tuple[FakeService, str], tmp_path: Path, now: str, prompt: str,
        target: str) -> None:
    fake, url = service
    asterisk = await Asterisk.start("hotline", url, tmp_path, now=now)
    await asterisk.start_of_call()
    await asterisk.play("welcome", key("0"), escape=KEYS)  # main_menu is skipped
    await asterisk.play(prompt, escape=KEYS)
    await asterisk.expect(f'SET VARIABLE "CALLCENTER_NEXT" "{target}"', "200 result=1")
    await asterisk.ends()  # the dialplan routes on CALLCENTER_NEXT; no HANGUP from us
    assert fake.requests == []


async def test_hangup_after_speaking_leaves_a_draft(
        service: tuple[FakeService, str], tmp_path: Path) -> None:
    fake, url = service
    asterisk = await Asterisk.start("hotline", url, tmp_path)
    await asterisk.start_of_call()
    await asterisk.play("welcome", key("1"), escape=KEYS)
    await asterisk.play("report_kind", key("1"), escape=KEYS)
    await asterisk.play("report_component_major", key("3"), escape=KEYS)
    await asterisk.play("cat_component_03", escape=KEYS)  # 市容环境: what was chosen
    await asterisk.play("record_instructions", escape=KEYS)  # a key skips to the beep
    await asterisk.play("beep")
    recording = f"{tmp_path}/report-{UNIQUEID}-1"
    await asterisk.expect(f'RECORD FILE "{recording}" "wav" "#" 120000 0 s=5',
                          "200 result=-1 (hangup) endpos=48000")
    await asterisk.ends()  # no channel command after the hangup, only the service call
    assert len(fake.requests) == 1
    method, path, body = fake.requests[0]
    assert (method, path) == ("POST", "/api/v1/cases")
    assert body is not None
    assert body["reporter_phone"] == "+8613812345678" and body["notify_reporter"] is True
    assert body["description"].startswith("电话录音")
    assert "部件 03 市容环境" in body["description"] and "6 秒" in body["description"]
    assert f"{recording}.wav" in body["description"]


async def test_service_errors_send_the_caller_to_a_person(
        service: tuple[FakeService, str], tmp_path: Path) -> None:
    fake, url = service
    fake.failing = True
    asterisk = await Asterisk.start("status", url, tmp_path)
    await asterisk.start_of_call()
    await asterisk.play("welcome", key("2"), escape=KEYS)  # the number typed during welcome
    for digit in KEYED[1:] + "#":  # up to the #, like GET DATA
        await asterisk.expect("WAIT FOR DIGIT 10000", f"200 result={ord(digit)}")
    await asterisk.play("transfer_to_agent", escape=KEYS)
    await asterisk.expect(f'SET VARIABLE "CALLCENTER_CASE_NUMBER" "{KEYED}"', "200 result=1")
    await asterisk.expect('SET VARIABLE "CALLCENTER_NEXT" "agent"', "200 result=1")
    await asterisk.ends()
    assert fake.requests == [("GET", f"/api/v1/cases/{KEYED}", None)]


async def test_caller_gone_during_a_prompt_ends_quietly(
        service: tuple[FakeService, str], tmp_path: Path) -> None:
    fake, url = service
    asterisk = await Asterisk.start("hotline", url, tmp_path)
    await asterisk.start_of_call()
    await asterisk.play("welcome", "200 result=-1 endpos=0", escape=KEYS)
    await asterisk.expect("CHANNEL STATUS",
                          "511 Command Not Permitted on a dead channel or intercept routine")
    await asterisk.ends()
    assert fake.requests == []


async def test_unknown_flow_still_reaches_a_person(
        service: tuple[FakeService, str], tmp_path: Path) -> None:
    _, url = service
    asterisk = await Asterisk.start("no_such_flow", url, tmp_path)
    await asterisk.expect('SET VARIABLE "CALLCENTER_NEXT" "agent"', "200 result=1")
    await asterisk.ends()
    assert "cannot start flow 'no_such_flow'" in await asterisk.stderr()


def test_the_routes_and_settings_the_script_needs_are_documented() -> None:
    readme = (ROOT / "ivr_scripts" / "README.md").read_text(encoding="utf-8")
    source = SCRIPT.read_text(encoding="utf-8")
    for route in ("/number-sms", "/rating"):
        assert f"/api/v1/ivr/cases/{{number}}{route}" in readme and route in source
    for variable in ("CALLCENTER_API_URL", "CALLCENTER_AGI_TOKEN", "CALLCENTER_HOURS_FILE"):
        assert variable in readme and variable in source
