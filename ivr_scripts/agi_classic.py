#!/usr/bin/env python3
"""Classic (stdin/stdout) AGI entry: the same IVR flows, engine and executor
(callcenter.ivr.executor.CallExecutor) as the FastAGI server; this script is only the
driver that performs the executor's requests with pyst2 and the service's HTTP API.

For sites that run AGI scripts locally instead of FastAGI:

    exten => s,n,AGI(/opt/callcenter/ivr_scripts/agi_classic.py,hotline)
    exten => s,n,AGI(/opt/callcenter/ivr_scripts/agi_classic.py,callback,${CASE})

argv[1] names the flow (`ivr_scripts/<name>.toml`, default hotline); argv[2], or else the
channel variable CALLCENTER_CASE_NUMBER, gives the case number. The script ends like the
FastAGI IVR: it sets CALLCENTER_NEXT (agent | voicemail | hangup) and, for a person,
CALLCENTER_CASE_NUMBER, then returns to the dialplan (config/asterisk/extensions.conf).

Service calls go over HTTP to the running service (urllib, JSON, bearer token):
    CALLCENTER_API_URL       e.g. http://127.0.0.1:8080 (required for any service call)
    CALLCENTER_AGI_TOKEN     a staff-role API token (`callcenter token create staff ivr`)
    CALLCENTER_HOURS_FILE    staff hours calendar (default config/hours.toml)
    CALLCENTER_SOUNDS        sound-name prefix of the prompts (default callcenter/zh)
    CALLCENTER_RECORDING_DIR where recordings go (default: the dialplan global, else
                             /var/spool/asterisk/recording/callcenter)
    CALLCENTER_IVR_NOW       ISO time to use as "now" for check_hours (tests and drills)
    CALLCENTER_AGI_DEBUG=1   let pyst2 log the env block and commands to stderr (has PII)

If anything goes wrong inside the script, a caller still on the line is sent to a person
(CALLCENTER_NEXT=agent): the IVR never strands or hangs up on a caller by accident.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

try:
    import callcenter  # noqa: F401
except ImportError:  # run from a checkout where the package is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asterisk.agi import AGI, AGIHangup, AGIInvalidCommand, AGIUsageError

from callcenter.agi import commands
from callcenter.agi.errors import AgiError, AgiHangup, AgiInvalidCommand, AgiUsageError
from callcenter.agi.protocol import AgiResult, parse_result_line
from callcenter.cases.catalogue import CaseKind, Catalogue
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.ivr import ActionResult, BusinessHours, Flow, HoursError, Invoke, load_flow
from callcenter.ivr.executor import (
    Audio,
    CallEnv,
    CallExecutor,
    CheckSpeech,
    Command,
    NewRecording,
    RecordingTarget,
    Request,
    Service,
)
from callcenter.ivr.hours import DEFAULT_HOURS_FILE
from callcenter.ivr.loader import FLOWS_DIR, PROMPTS_DIR
from callcenter.logs import configure_logging
from callcenter.settings import LoggingSettings
from callcenter.voice.recordings import DEFAULT_SPEECH_DBFS, measure_speech

DEFAULT_SOUNDS = "callcenter/zh"
DEFAULT_RECORDING_DIR = "/var/spool/asterisk/recording/callcenter"
HTTP_TIMEOUT_SECONDS = 5.0
_FLOW_NAME = re.compile(r"[a-z][a-z0-9_]*")
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


def log(message: str) -> None:
    """One line to Asterisk's console (stderr of a classic AGI); never caller data."""
    sys.stderr.write(f"callcenter-agi: {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- AGI


class ClassicAgi(AGI):  # type: ignore[misc]
    """pyst2's AGI (env block, SIGHUP handling, command writing) with a result reader that
    keeps what the IVR needs and pyst2's helpers drop: RECORD FILE's endpos on hangup,
    `(timeout)` versus `#` in GET DATA, and the multi-line 520 block."""

    def get_result(self, stdin: Any = None) -> AgiResult:  # type: ignore[override]
        while True:
            line = self.stdin.readline()
            if isinstance(line, bytes):
                line = line.decode("utf-8", "replace")
            if line == "":
                raise AGIHangup("Asterisk closed the AGI pipe")
            line = line.rstrip("\r\n")
            if line == "HANGUP":  # AGISIGHUP as a line rather than a signal
                self._got_sighup = True
                continue
            result = parse_result_line(line)
            if result is None:  # 100 Trying...
                continue
            if result.code == 511:
                raise AGIHangup(result.data or "dead channel")
            if result.code == 510:
                raise AGIInvalidCommand(result.data or line)
            if result.code == 520:
                usage = [line]
                while not line.startswith("520 "):
                    line = self.stdin.readline()
                    if line == "":
                        break
                    line = line.rstrip("\r\n")
                    usage.append(line)
                raise AGIUsageError("\n".join(usage))
            return result

    def run(self, command: str) -> AgiResult:
        result: AgiResult = self.execute(command)
        return result


# -------------------------------------------------------------------------- service


class ApiUnavailable(RuntimeError):
    """The service did not answer usably; the flow takes the action's `error` outcome."""


class ApiClient:
    """A tiny JSON client for the service's HTTP API (urllib: no dependency to install)."""

    def __init__(self, base_url: str, token: str, timeout: float = HTTP_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None
             ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json; charset=utf-8")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, _json(exc.read())
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ApiUnavailable(f"{method} {path}: {exc}") from exc


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _phone(raw: str | None) -> str | None:
    if not raw:
        return None
    try:
        return normalise_phone(raw)
    except InvalidPhoneNumber:
        return None


def _major_label(kind: str | None, major: str | None) -> str:
    """部件 01 公用设施 -- what staff read in the draft's description."""
    try:
        case_kind = CaseKind(kind or "")
    except ValueError:
        return ""
    label = case_kind.label_zh
    if not major or not major.isdigit():
        return label
    try:
        found = Catalogue.default().major_by_digit(case_kind, int(major))
    except Exception:  # noqa: BLE001 - a description without the name beats no draft
        found = None
    return f"{label} {found.code} {found.name}" if found else f"{label} 第{major}类"


class ServiceCalls:
    """The `Invoke` actions of the flows, against the service's existing /api/v1 routes
    where they exist. Routes still missing are marked PROPOSED (see ivr_scripts/README.md)."""

    def __init__(self, api: ApiClient | None, hours: BusinessHours | None,
                 now: Callable[[], dt.datetime]) -> None:
        self.api = api
        self.hours = hours
        self.now = now

    def invoke(self, action: Invoke) -> ActionResult:
        handler = getattr(self, f"_do_{action.action_name}", None)
        if handler is None:
            log(f"no client for service action {action.action_name}")
            return ActionResult(action.action_name, "error")
        try:
            outcome, values = handler(dict(action.args))
        except ApiUnavailable as exc:
            log(f"service call {action.action_name} failed: {exc}")
            outcome, values = "error", {}
        return ActionResult(action.action_name, outcome, values)

    def _api(self) -> ApiClient:
        if self.api is None:
            raise ApiUnavailable("CALLCENTER_API_URL is not set")
        return self.api

    def _do_check_hours(self, args: dict[str, str | None]) -> tuple[str, dict[str, str]]:
        if self.hours is None:  # no calendar: try a person; the queue sends on to voicemail
            return "ok", {}
        now = self.now()
        if not self.hours.covers(now.date()):
            log(f"{self.hours.source} lists no holidays for {now.year}: weekly hours only")
        return ("ok" if self.hours.is_open(now) else "after_hours"), {}

    def _create(self, description: str, caller: str | None) -> tuple[str, dict[str, str]]:
        # Interim: POST /api/v1/cases files the draft as channel "staff", keeps the recording
        # path only in the description and cannot flag it; PROPOSED POST /api/v1/ivr/drafts.
        body: dict[str, Any] = {"description": description, "notify_reporter": True}
        if caller:
            body["reporter_phone"] = caller
        status, data = self._api().call("POST", "/api/v1/cases", body)
        number = data.get("number")
        if status == 201 and isinstance(number, str):
            return "ok", {"case_number": number}
        log(f"POST /api/v1/cases answered {status} {data.get('error', '')}")
        return "error", {}

    def _do_create_draft(self, args: dict[str, str | None]) -> tuple[str, dict[str, str]]:
        label = _major_label(args.get("kind"), args.get("major"))
        seconds = int(args.get("recording_ms") or 0) // 1000
        description = f"电话录音（{label}，{seconds} 秒）录音文件 {args.get('recording') or '无'}"
        return self._create(description, _phone(args.get("caller")))

    def _do_voicemail_draft(self, args: dict[str, str | None]) -> tuple[str, dict[str, str]]:
        seconds = int(args.get("recording_ms") or 0) // 1000
        related = f"，关联受理编号 {args['case_number']}" if args.get("case_number") else ""
        description = (f"电话留言，待转写（{seconds} 秒{related}）录音文件 "
                       f"{args.get('recording') or '无'}")
        return self._create(description, _phone(args.get("caller")))

    def _do_set_contact(self, args: dict[str, str | None]) -> tuple[str, dict[str, str]]:
        number = urllib.parse.quote(args.get("case_number") or "", safe="")
        status, _ = self._api().call("PATCH", f"/api/v1/cases/{number}",
                                     {"reporter_phone": args.get("contact")})
        return ("ok" if status == 200 else "error"), {}

    def _do_send_number_sms(self, args: dict[str, str | None]) -> tuple[str, dict[str, str]]:
        caller = _phone(args.get("caller"))
        contact = _phone(args.get("contact")) or caller
        if contact is None:
            return "no_number", {}
        if contact == caller:
            # create_draft asked the service to notify the reporter (the caller): the
            # receipt SMS with the number is already queued with the draft.
            return "ok", {}
        number = urllib.parse.quote(args.get("case_number") or "", safe="")
        status, _ = self._api().call("POST", f"/api/v1/ivr/cases/{number}/number-sms",
                                     {"phone": contact})  # PROPOSED route
        if status in (200, 202):
            return "ok", {}
        return ("no_number" if status == 422 else "error"), {}

    def _case(self, case_number: str | None) -> tuple[int, dict[str, Any]]:
        number = urllib.parse.quote(case_number or "", safe="")
        return self._api().call("GET", f"/api/v1/cases/{number}")

    def _do_lookup_status(self, args: dict[str, str | None]) -> tuple[str, dict[str, str]]:
        status, data = self._case(args.get("case_number"))
        if status in (404, 422):
            return "not_found", {}
        if status == 200 and isinstance(data.get("status"), str):
            return "ok", {"status": data["status"]}
        return "error", {}

    def _rating_check(self, args: dict[str, str | None]) -> str:
        status, data = self._case(args.get("case_number"))
        if status in (404, 422):
            return "not_found"
        if status != 200:
            return "error"
        if data.get("status") != "closed":
            return "not_closed"
        caller = _phone(args.get("caller"))
        if "caller" in args and (caller is None or caller != data.get("reporter_phone")):
            return "not_reporter"
        return "ok"

    def _do_check_rating(self, args: dict[str, str | None]) -> tuple[str, dict[str, str]]:
        return self._rating_check(args), {}

    def _do_rate_case(self, args: dict[str, str | None]) -> tuple[str, dict[str, str]]:
        checked = self._rating_check(args)
        if checked != "ok":
            return checked, {}
        number = urllib.parse.quote(args.get("case_number") or "", safe="")
        body: dict[str, Any] = {"score": int(args.get("score") or 0)}
        if args.get("caller"):
            body["phone"] = _phone(args.get("caller"))
        status, _ = self._api().call("POST", f"/api/v1/ivr/cases/{number}/rating", body)  # PROPOSED
        return ("ok" if status in (200, 201) else "error"), {}


# -------------------------------------------------------------------------- runtime


class ClassicRuntime:
    """The classic stdin/stdout driver of the one IVR executor (callcenter.ivr.executor):
    performs its requests with pyst2, one command at a time (never pipelined)."""

    def __init__(self, agi: ClassicAgi, flow: Flow, services: ServiceCalls, *, route: str,
                 case_number: str | None = None, sounds: str = DEFAULT_SOUNDS,
                 recording_dir: str | None = None, speech_dbfs: float = DEFAULT_SPEECH_DBFS) -> None:
        self.agi = agi
        self.services = services
        self.sounds = sounds.rstrip("/")
        self.recording_dir = recording_dir
        self.speech_dbfs = speech_dbfs
        self.call_id = _SAFE_ID.sub("_", agi.env.get("agi_uniqueid", "call")) or "call"
        self.recordings = 0
        self.executor = CallExecutor(
            flow, CallEnv(agi.env.get("agi_uniqueid", ""), agi.env.get("agi_callerid"),
                          (case_number,) if case_number else ()),
            route=route, sound=lambda prompt_id: f"{self.sounds}/{prompt_id}")

    def run(self) -> None:
        executor = self.executor
        step = executor.start()
        while step is not None:
            try:
                answer = self.perform(step)
            except Exception as exc:  # noqa: BLE001 - the executor decides (a person, owed work)
                step = executor.throw(_agi_error(exc))
            else:
                step = executor.send(answer)

    def perform(self, step: Request) -> Any:
        match step:
            case Command():
                return self.agi.run(step.line)
            case Service():
                return self.services.invoke(step.invoke)
            case NewRecording():
                self.recordings += 1
                path = f"{self._recording_dir()}/{step.name}-{self.call_id}-{self.recordings}"
                return RecordingTarget(path, f"{path}.wav")
            case CheckSpeech():
                # The script runs beside Asterisk: the file is where RECORD FILE put it.
                try:
                    speech = measure_speech(step.ref, self.speech_dbfs)
                except FileNotFoundError:
                    return Audio()
                except (OSError, EOFError, ValueError, wave.Error) as exc:
                    log(f"cannot measure {step.ref}: {exc}")
                    return Audio()
                return Audio(speech.duration_ms, speech.speech_ms)
        raise TypeError(f"unknown executor request {step!r}")

    def _recording_dir(self) -> str:
        if self.recording_dir is None:
            result = self.agi.run(commands.get_variable("CALLCENTER_RECORDING_DIR"))
            value = result.data if result.result == "1" else None
            self.recording_dir = (value or DEFAULT_RECORDING_DIR).rstrip("/")
        return self.recording_dir


def _agi_error(exc: Exception) -> Exception:
    """pyst2's exceptions as the executor knows them (callcenter.agi.errors)."""
    if isinstance(exc, AGIHangup):
        return AgiHangup(str(exc))
    if isinstance(exc, AGIInvalidCommand):
        return AgiInvalidCommand(str(exc))
    if isinstance(exc, AGIUsageError):
        return AgiUsageError(str(exc))
    return exc


# ----------------------------------------------------------------------------- main


def _now_from_env(environ: Mapping[str, str]) -> Callable[[], dt.datetime]:
    fixed = environ.get("CALLCENTER_IVR_NOW")
    if fixed:
        moment = dt.datetime.fromisoformat(fixed)
        if moment.tzinfo is None:
            raise ValueError("CALLCENTER_IVR_NOW needs a UTC offset, e.g. 2026-03-02T10:00+08:00")
        return lambda: moment
    return lambda: dt.datetime.now(dt.UTC)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None,
         stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    environ = os.environ if environ is None else environ
    debug = environ.get("CALLCENTER_AGI_DEBUG") == "1"
    # stdout is the AGI channel: the executor's structured logs go to stderr (Asterisk's log).
    configure_logging(LoggingSettings(level="DEBUG" if debug else "WARNING"))
    # pyst2 logs the env block (the caller's number) and every command to stderr.
    quiet = sys.stderr if debug else open(os.devnull, "w")  # noqa: SIM115 - for the whole call
    agi = ClassicAgi(stdin=stdin or sys.stdin, stdout=stdout or sys.stdout, stderr=quiet)
    flow_name = argv[1] if len(argv) > 1 and argv[1] else "hotline"
    try:
        if not _FLOW_NAME.fullmatch(flow_name):
            raise ValueError(f"bad flow name {flow_name!r}")
        flow = load_flow(FLOWS_DIR / f"{flow_name}.toml", PROMPTS_DIR)
        hours: BusinessHours | None
        try:
            hours = BusinessHours.load(environ.get("CALLCENTER_HOURS_FILE") or DEFAULT_HOURS_FILE)
        except HoursError as exc:
            log(f"no staff hours ({exc}); check_hours will try a person")
            hours = None
        base_url = environ.get("CALLCENTER_API_URL", "")
        api = ApiClient(base_url, environ.get("CALLCENTER_AGI_TOKEN", "")) if base_url else None
        services = ServiceCalls(api, hours, _now_from_env(environ))
    except Exception as exc:  # noqa: BLE001 - no flow: the dialplan's fallback is a person
        log(f"cannot start flow {flow_name!r}: {exc}")
        try:
            agi.run(commands.set_variable("CALLCENTER_NEXT", "agent"))
        except (AGIHangup, AgiError):
            pass
        return 0

    case_number = argv[2] if len(argv) > 2 and argv[2] else None
    runtime = ClassicRuntime(agi, flow, services, route=flow_name, case_number=case_number,
                             sounds=environ.get("CALLCENTER_SOUNDS", DEFAULT_SOUNDS),
                             recording_dir=environ.get("CALLCENTER_RECORDING_DIR") or None,
                             speech_dbfs=float(environ.get("CALLCENTER_SPEECH_DBFS") or DEFAULT_SPEECH_DBFS))
    runtime.run()
    return 0

if __name__ == "__main__":
    sys.exit(main())
