"""The flows' service calls (`Invoke`) against the case service, in-process.

Each action answers with one of the outcomes `callcenter.ivr.flow.ACTIONS` allows and never
raises: a failure is the `error` outcome, which every flow routes to a person. Actions run
after the caller hung up too (the engine asks for what is still owed), so nothing here
touches the channel.

What each writes:

- `create_draft`: a phone draft with its recording (`recording_ref`, a file name under
  `recordings.service_dir`), flags `needs_transcription` and, when the file has no audio,
  `recording_missing` / `recording_empty`. `notify_reporter=False`: the receipt SMS is
  queued by `send_number_sms`, exactly once per draft.
- `set_contact`: the keyed number becomes the draft's reporter phone.
- `send_number_sms`: the "received" template (the intake number) to the keyed number or
  the caller, in the outbox, keyed by the case number so a second attempt (a hang-up while
  the number was being read, a retried call) cannot queue it twice.
- `rate_case`: the rating, only by the reporter (caller ID must match) on the hotline.
- `voicemail_draft`: a draft flagged `needs_transcription` (+ `after_hours` outside staff hours).
- `recover_draft` (the `recover` script, run by the dialplan's `ivr-lost` on a live node when
  the caller's IVR node died): files the draft of the recording the dead node named on the
  channel (CALLCENTER_RECORDING, CALLCENTER_REPORT_KEYS) through `create_draft` /
  `voicemail_draft` as that node would have, so `source_ref = voice:<recording>` returns a
  draft it did commit instead of doubling it.

Category from the phone menu (decision, see docs/voice.md): a caller chooses only the kind
(部件/事件) and the major category (大类); the minor category (小类) needs a person. The draft
stores `kind` and `category_major` as data and its confirmed category stays empty. The
description names the choice for staff, and the suggester, restricted to that major, fills
`suggested_category` with the major's 其他 row (XX99) where the catalogue has one (事件 01,
05). `phone_report_text()` builds the text so that the suggester finds exactly that row.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import phonenumbers
import structlog
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callcenter.cases.catalogue import CaseKind, Catalogue, Category, MajorCategory
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.messages import MessageTemplates
from callcenter.cases.model import CaseFlag, CaseView, Channel
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.ivr import ActionResult, BusinessHours, Invoke
from callcenter.service.cases import CaseService, DraftInput
from callcenter.service.errors import CaseNotFound, InvalidInput, ServiceError, TransitionRefused
from callcenter.service.outbox import outbox_key
from callcenter.voice.callbacks import CallbackRefused, CallbackService
from callcenter.voice.metrics import VoiceMetrics
from callcenter.voice.recordings import RecordingCheck, RecordingStore
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

ACTOR = "ivr"
# A service call that takes longer than this is an `error`: the caller goes to a person.
ACTION_TIMEOUT_SECONDS = 30.0
# Transient database failures while filing a draft are retried (idempotent by source_ref).
DRAFT_RETRY_DELAYS: tuple[float, ...] = (0.2, 1.0)
RECORDING_WORD = "录音"
# What `recover_draft` may file, from CALLCENTER_REPORT_KEYS (callcenter.ivr.executor.report_keys).
RECOVERABLE = frozenset({"create_draft", "voicemail_draft"})
_KEY_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_KEY_VALUE = re.compile(r"[A-Za-z0-9_]{1,40}")
_MAX_KEYS_CHARS = 256
# Set by the recovering node itself, never taken from the channel.
_NOT_FROM_KEYS = frozenset({"draft", "min_ms", "recording", "recording_ms", "caller", "call_id"})


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CallInfo:
    """The call an action belongs to: for logs and the actor; `caller` is E.164 or None."""

    call_id: str
    route: str
    caller: str | None = None


Outcome = tuple[str, dict[str, str]]


def phone_report_text(catalogue: Catalogue, kind: str | None, major: str | None,
                      seconds: int) -> tuple[str, str | None]:
    """The description of a phone report, and the category the suggester should find in it.

    Only catalogue terms we mean are in the text: the 其他 row's alias for a major that has
    one, the major's name otherwise unless the name itself would suggest something (e.g.
    部件 06 其他设施类 contains 其他, the name of two event rows), then only the code.
    """
    parts = ["电话报告，待转写"]
    expected: str | None = None
    try:
        case_kind: CaseKind | None = CaseKind(kind or "")
    except ValueError:
        case_kind = None
    found: MajorCategory | None = None
    if case_kind is not None and major and major.isdigit():
        found = catalogue.major_by_digit(case_kind, int(major))
    if case_kind is not None and found is not None:
        code = f"{case_kind.prefix}{found.code}"
        other = _other_row(catalogue, case_kind, found.code)
        name = found.name if not catalogue.suggest(found.name) else ""
        choice = f"{case_kind.label_zh}{code}大类" + (f"（{name}）" if name else "")
        parts.append(f"来电人按键选择：{choice}")
        if other is not None and other.aliases:
            parts.append(f"小类待定（{other.aliases[0]}）")
            expected = str(other.code)
    elif case_kind is not None:
        parts.append(f"来电人按键选择：{case_kind.label_zh}")
    parts.append(f"{RECORDING_WORD}{seconds}秒")
    return "；".join(parts) + "。", expected


def _other_row(catalogue: Catalogue, kind: CaseKind, major: str) -> Category | None:
    for category in catalogue.minors(kind, major):
        if category.code.minor == "99":
            return category
    return None


def voicemail_text(seconds: int, related: str | None) -> str:
    text = f"电话留言，待转写；{RECORDING_WORD}{seconds}秒"
    if related:
        text += f"；关联受理编号{related}"
    return text + "。"


def parse_report_keys(text: str) -> dict[str, str] | None:
    """CALLCENTER_REPORT_KEYS (`draft=create_draft&kind=event&major=1&min_ms=1000`) as a
    dict, or None for anything the IVR would not have written (the channel is not ours
    alone: a dialplan edit or another script may have set it)."""
    if not text or len(text) > _MAX_KEYS_CHARS:
        return None
    keys: dict[str, str] = {}
    for part in text.split("&"):
        name, sep, value = part.partition("=")
        if not sep or name in keys or not _KEY_NAME.fullmatch(name) or not _KEY_VALUE.fullmatch(value):
            return None
        keys[name] = value
    if keys.get("draft") not in RECOVERABLE or not keys.get("min_ms", "0").isdigit():
        return None
    return keys


def is_mobile(phone: str) -> bool:
    """Whether an E.164 number can receive an SMS (a mobile, not a landline)."""
    try:
        parsed = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return False
    kind = phonenumbers.number_type(parsed)
    return kind in (phonenumbers.PhoneNumberType.MOBILE,
                    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)


def receipt_key(case_number: str) -> str:
    """Outbox idempotency key of a draft's number SMS: one per case, whoever gets it."""
    return outbox_key("receipt", case_number)


class VoiceActions:
    """Runs one `Invoke` for one call and answers with an `ActionResult`."""

    def __init__(
        self,
        *,
        cases: CaseService,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        templates: MessageTemplates,
        catalogue: Catalogue,
        recordings: RecordingStore,
        metrics: VoiceMetrics,
        hours: BusinessHours | None,
        region: str = "CN",
        now: Callable[[], dt.datetime] = utcnow,
        timeout: float = ACTION_TIMEOUT_SECONDS,
        callbacks: CallbackService | None = None,
    ) -> None:
        self.cases = cases
        self.engine = engine
        self.sessions = sessions
        self.templates = templates
        self.catalogue = catalogue
        self.recordings = recordings
        self.metrics = metrics
        self.hours = hours
        self.region = region
        self.now = now
        self.timeout = timeout
        self.callbacks = callbacks
        self._uncovered_years: set[int] = set()
        self._handlers: dict[str, Callable[[Mapping[str, str | None], CallInfo], Awaitable[Outcome]]] = {
            "check_hours": self._check_hours,
            "create_draft": self._create_draft,
            "set_contact": self._set_contact,
            "send_number_sms": self._send_number_sms,
            "lookup_status": self._lookup_status,
            "check_rating": self._check_rating,
            "rate_case": self._rate_case,
            "request_callback": self._request_callback,
            "voicemail_draft": self._voicemail_draft,
            "recover_draft": self._recover_draft,
        }

    async def invoke(self, action: Invoke, call: CallInfo) -> ActionResult:
        name = action.action_name
        handler = self._handlers.get(name)
        if handler is None:
            log.error("voice.action_unknown", call_id=call.call_id, action=name)
            return ActionResult(name, "error")
        try:
            async with asyncio.timeout(self.timeout):
                outcome, values = await handler(action.args, call)
        except TimeoutError:
            log.error("voice.action_timeout", call_id=call.call_id, action=name, seconds=self.timeout)
            outcome, values = "error", {}
        except Exception:  # noqa: BLE001 - the flow sends the caller to a person on `error`
            log.exception("voice.action_failed", call_id=call.call_id, action=name)
            outcome, values = "error", {}
        log.info("voice.action", call_id=call.call_id, action=name, outcome=outcome,
                 case_number=values.get("case_number") or action.args.get("case_number"))
        return ActionResult(name, outcome, values)

    # ---- helpers

    def _phone(self, raw: str | None) -> str | None:
        if not raw:
            return None
        try:
            return normalise_phone(raw, self.region)
        except InvalidPhoneNumber:
            return None

    def _after_hours(self) -> bool:
        if self.hours is None:
            return False
        now = self.now()
        if not self.hours.covers(now.date()) and now.year not in self._uncovered_years:
            self._uncovered_years.add(now.year)
            log.warning("voice.hours_year_not_listed", year=now.year, source=self.hours.source)
        return not self.hours.is_open(now)

    @staticmethod
    def _seconds(args: Mapping[str, str | None]) -> int:
        raw = args.get("recording_ms") or "0"
        return int(raw) // 1000 if raw.isdigit() else 0

    async def _file_draft(self, draft: DraftInput, call: CallInfo, action: str) -> CaseView:
        """create_draft with retries on transient database errors; source_ref makes a retry
        return the draft a lost-answer attempt already committed."""
        for attempt, delay in enumerate((*DRAFT_RETRY_DELAYS, None), start=1):
            try:
                view = await self.cases.create_draft(draft, actor=ACTOR)
            except DBAPIError as exc:
                transient = isinstance(exc, OperationalError) or exc.connection_invalidated
                if delay is None or not transient:
                    raise
                log.warning("voice.draft_retry", call_id=call.call_id, attempt=attempt, error=str(exc)[:200])
                await asyncio.sleep(delay)
                continue
            self.metrics.drafts.inc(action=action)
            return view
        raise AssertionError("unreachable")  # pragma: no cover

    def _recording(self, ref: str | None, kind: str, call: CallInfo) -> RecordingCheck:
        check = self.recordings.check(ref)
        self.metrics.recordings.inc(kind=kind, state=check.state.value)
        if check.flags:
            log.warning("voice.recording_unusable", call_id=call.call_id, recording=check.ref,
                        state=check.state.value, detail=check.detail)
        return check

    # ---- the actions

    async def _check_hours(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        return ("after_hours" if self._after_hours() else "ok"), {}

    async def _create_draft(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        ref = args.get("recording") or None
        check = self._recording(ref, "report", call)
        description, expected = phone_report_text(self.catalogue, args.get("kind"), args.get("major"),
                                                   self._seconds(args))
        caller = self._phone(args.get("caller")) or call.caller
        flags = [CaseFlag.NEEDS_TRANSCRIPTION.value, *check.flags]
        kind, major = self._menu_choice(args.get("kind"), args.get("major"))
        view = await self._file_draft(DraftInput(
            channel=Channel.PHONE, description=description, reporter_phone=caller, recording_ref=ref,
            kind=kind, category_major=major,
            flags=flags, source_ref=f"voice:{ref}" if ref else None, notify_reporter=False,
        ), call, "create_draft")
        if view.suggested_category != expected:
            log.warning("voice.suggestion_differs", case_number=view.number, expected=expected,
                        suggested=view.suggested_category)
        log.info("voice.draft_created", call_id=call.call_id, case_number=view.number,
                 kind=args.get("kind"), major=args.get("major"), recording=ref,
                 recording_state=check.state.value, reporter=mask_number(caller))
        return "ok", {"case_number": view.number}

    def _menu_choice(self, kind: str | None, digit: str | None) -> tuple[str | None, str | None]:
        """The caller's keys (部件/事件, the major's menu digit) as catalogue codes, or nothing."""
        try:
            case_kind = CaseKind(kind or "")
        except ValueError:
            return None, None
        found = self.catalogue.major_by_digit(case_kind, int(digit)) if digit and digit.isdigit() else None
        return (case_kind.value, found.code) if found is not None else (None, None)

    async def _voicemail_draft(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        ref = args.get("recording") or None
        check = self._recording(ref, "voicemail", call)
        related = args.get("case_number") or None
        caller = self._phone(args.get("caller")) or call.caller
        flags = [CaseFlag.NEEDS_TRANSCRIPTION.value, CaseFlag.VOICEMAIL.value, *check.flags]
        if self._after_hours():
            flags.append(CaseFlag.AFTER_HOURS.value)
        view = await self._file_draft(DraftInput(
            channel=Channel.PHONE, description=voicemail_text(self._seconds(args), related),
            reporter_phone=caller, recording_ref=ref, flags=flags,
            source_ref=f"voice:{ref}" if ref else f"voice:voicemail:{call.call_id}",
            notify_reporter=False,
        ), call, "voicemail_draft")
        log.info("voice.voicemail_created", call_id=call.call_id, case_number=view.number,
                 related=related, recording=ref, recording_state=check.state.value,
                 reporter=mask_number(caller), flags=flags)
        return "ok", {"case_number": view.number}

    async def _recover_draft(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        """The draft of a recording whose IVR node died mid-call, filed here as it would have
        been there. `nothing` when there is no recording to file or the channel already names
        its draft; `rejected` (logged) for a name or keys the IVR would not have written."""
        ref = args.get("recording") or ""
        raw_keys = args.get("report_keys") or ""
        named = args.get("case_number") or None
        if not ref:
            log.info("voice.recover_nothing", call_id=call.call_id, reason="no_recording", case_number=named)
            return "nothing", {}
        keys = parse_report_keys(raw_keys)
        if not self.recordings.is_own_ref(ref) or keys is None:
            log.warning("voice.recover_rejected", call_id=call.call_id, recording=repr(ref[:80]),
                        report_keys=repr(raw_keys[:80]),
                        reason="recording name" if not self.recordings.is_own_ref(ref) else "report keys")
            return "rejected", {}
        related = keys.get("case_number")
        if named and named != related:
            # Set after the recording started: the dead node committed this recording's draft.
            log.info("voice.recover_nothing", call_id=call.call_id, reason="already_filed",
                     case_number=named, recording=ref)
            return "nothing", {}
        check = self.recordings.check(ref)
        if check.flags:
            log.warning("voice.recover_nothing", call_id=call.call_id, reason=f"recording {check.state.value}",
                        recording=ref, detail=check.detail)
            return "nothing", {}
        speech = await asyncio.to_thread(self.recordings.speech, ref)
        heard_ms = speech.speech_ms if speech is not None else check.duration_ms
        if heard_ms < int(keys.get("min_ms", "0")):
            # The engine's rule for a take: too little speech is a silent try, not a report.
            log.info("voice.recover_nothing", call_id=call.call_id, reason="silent", recording=ref,
                     speech_ms=heard_ms)
            return "nothing", {}
        draft_args: dict[str, str | None] = {name: value for name, value in keys.items()
                                             if name not in _NOT_FROM_KEYS}
        draft_args.update(recording=ref, recording_ms=str(check.duration_ms),
                          caller=args.get("caller"), call_id=args.get("call_id"))
        handler = self._create_draft if keys["draft"] == "create_draft" else self._voicemail_draft
        outcome, values = await handler(draft_args, call)
        log.info("voice.recovered", call_id=call.call_id, draft=keys["draft"], recording=ref,
                 case_number=values.get("case_number"), outcome=outcome)
        return outcome, values

    async def _set_contact(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        number, contact = args.get("case_number"), self._phone(args.get("contact"))
        if not number or contact is None:
            return "error", {}
        await self.cases.update_transcription(number, {"reporter_phone": contact}, actor=ACTOR)
        log.info("voice.contact_set", call_id=call.call_id, case_number=number, reporter=mask_number(contact))
        return "ok", {}

    async def _send_number_sms(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        number = args.get("case_number")
        if not number:
            return "error", {}
        recipient = self._phone(args.get("contact")) or self._phone(args.get("caller")) or call.caller
        if recipient is None or not is_mobile(recipient):
            log.info("voice.sms_no_mobile", call_id=call.call_id, case_number=number,
                     recipient=mask_number(recipient))
            return "no_number", {}
        # The outbox owner queues it inside the transaction that reads the draft, keyed by the case.
        queued = await self.cases.send_receipt(number, recipient)
        log.info("voice.sms_queued" if queued else "voice.sms_already_queued", call_id=call.call_id,
                 case_number=number, recipient=mask_number(recipient))
        return "ok", {}

    async def _lookup_status(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        try:
            view = await self.cases.get(args.get("case_number") or "", with_log=False)
        except (CaseNotFound, InvalidInput):
            return "not_found", {}
        return "ok", {"status": view.status}

    async def _rating_check(self, args: Mapping[str, str | None]) -> tuple[str, CaseView | None]:
        try:
            view = await self.cases.get(args.get("case_number") or "", with_log=False)
        except (CaseNotFound, InvalidInput):
            return "not_found", None
        if view.status != CaseStatus.CLOSED:
            return "not_closed", view
        if "caller" in args:  # the hotline: only the reporter, recognised by caller ID
            caller = self._phone(args.get("caller"))
            if caller is None or caller != view.reporter_phone:
                return "not_reporter", view
        return "ok", view

    async def _check_rating(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        outcome, _ = await self._rating_check(args)
        return outcome, {}

    async def _rate_case(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        outcome, view = await self._rating_check(args)
        score = args.get("score") or ""
        if outcome != "ok" or view is None:
            return outcome, {}
        if not (len(score) == 1 and score in "12345"):
            return "error", {}
        phone = self._phone(args.get("caller")) if "caller" in args else None
        try:
            await self.cases.rate(view.number, int(score), actor=ACTOR, phone=phone)
        except TransitionRefused as exc:
            return ("not_reporter" if exc.field == "phone" else "not_closed"), {}
        except ServiceError:
            return "error", {}
        log.info("voice.rated", call_id=call.call_id, case_number=view.number, score=int(score))
        return "ok", {}

    async def _request_callback(self, args: Mapping[str, str | None], call: CallInfo) -> Outcome:
        """The reporter (recognised by caller ID) asks for a rating call-back (回访)."""
        if self.callbacks is None:
            return "unavailable", {}
        try:
            view = await self.cases.get(args.get("case_number") or "", with_log=False)
        except (CaseNotFound, InvalidInput):
            return "not_found", {}
        caller = self._phone(args.get("caller"))
        if caller is None or caller != view.reporter_phone:
            return "not_reporter", {}
        try:
            await self.callbacks.request(view.number, by=ACTOR, phone=caller)
        except CallbackRefused as exc:
            log.info("voice.callback_refused", call_id=call.call_id, case_number=view.number, reason=str(exc))
            return "unavailable", {}
        return "ok", {}
