"""Executes the IVR engine's actions over one FastAGI call.

The engine (`callcenter.ivr.FlowRunner`) decides; this module speaks AGI, one command at a
time, with the builders of `callcenter.agi.commands`:

    Play          STREAM FILE callcenter/zh/<id> "<escape digits>" per prompt; a key pressed
                  during a prompt skips the rest of the batch and is the caller's input
    SayDigits     STREAM FILE callcenter/zh/digit_N per digit (our Mandarin digits, 幺 for 1)
    WaitDigit     WAIT FOR DIGIT <ms>
    CollectDigits GET DATA (or WAIT FOR DIGIT after an early key) until # / max / timeout
    Record        prompts, our beep, RECORD FILE <asterisk dir>/<name> wav "#" <ms> 0 s=<n>
    Invoke        `VoiceActions` (the case service); works after the caller hung up too
    Transfer      SET VARIABLE CALLCENTER_CASE_NUMBER, CALLCENTER_NEXT=agent|voicemail,
                  and a screen_pop event for the staff console
    HangUp        SET VARIABLE CALLCENTER_NEXT=hangup (the dialplan hangs up)

A hang-up at any point (AgiHangup: HANGUP line, 511, closed socket) is fed to the engine as
`Hangup()` (or, during RECORD FILE, as a recording ended by hangup, so what the caller said
is filed); the engine then asks only for the service calls still owed: the draft, the SMS.

Failures never strand a caller: any other error ends the IVR's part with the owed work done
and CALLCENTER_NEXT=agent. On shutdown (`draining`) a caller at the next prompt is handed to
a person the same way.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from callcenter.agi import commands
from callcenter.agi.errors import AgiArgumentError, AgiError, AgiHangup, AgiProtocolError
from callcenter.agi.protocol import AgiResult
from callcenter.agi.server import AgiCall
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.ivr import (
    Action,
    ActionResult,
    CollectDigits,
    Digits,
    Event,
    Flow,
    FlowRunner,
    HangUp,
    Hangup,
    Invoke,
    Play,
    Record,
    RecordingDone,
    SayDigits,
    Timeout,
    Transfer,
    WaitDigit,
)
from callcenter.ivr.flow import DTMF_KEYS
from callcenter.prompts import sound_name
from callcenter.voice.actions import CallInfo, VoiceActions
from callcenter.voice import records
from callcenter.voice.metrics import VoiceMetrics
from callcenter.voice.recordings import RecordingStore
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

# Asterisk records `wav` at 8 kHz: RECORD FILE's endpos counts samples.
SAMPLES_PER_MS = 8
NEXT_VARIABLE = "CALLCENTER_NEXT"
CASE_VARIABLE = "CALLCENTER_CASE_NUMBER"
BEEP_PROMPT = "beep"
# A recording that stopped on its own this close to max_seconds hit the limit.
_MAX_LENGTH_SLACK_MS = 500
# Routes that continue an earlier conversation about a case (the case number comes with them).
_CASE_ROUTES = frozenset({"voicemail", "callback"})
# Service calls that file a new draft: their `case_number` is the call record's.
_DRAFT_ACTIONS = frozenset({"create_draft", "voicemail_draft"})


class EventSink(Protocol):
    def publish(self, event_type: str, data: Mapping[str, Any]) -> object: ...


@dataclass(frozen=True)
class RunnerDeps:
    """What every call shares: the service actions, where recordings go, prompts, metrics."""

    actions: VoiceActions
    recordings: RecordingStore
    metrics: VoiceMetrics
    events: EventSink | None
    sounds_dir: str
    region: str = "CN"
    draining: Callable[[], bool] = lambda: False
    call_records: records.CallRecords | None = None


def _needs_channel(actions: Sequence[Action]) -> bool:
    return any(not isinstance(action, Invoke) for action in actions)


class CallRunner:
    """One call through one flow. Create per call; `await run()` once."""

    def __init__(self, call: AgiCall, flow: Flow, deps: RunnerDeps, route: str) -> None:
        self.call = call
        self.flow = flow
        self.deps = deps
        self.route = route
        self.engine = FlowRunner(flow)
        self.gone = False
        self.info = CallInfo(call_id=call.call_id, route=route, caller=self._caller())
        self.log = log.bind(call_id=call.call_id, flow=flow.name)
        self._current: list[Action] = []
        # For the call record (see `_record_call`).
        self.answered_at: dt.datetime | None = None
        self.transferred_to: str | None = None
        self.failed = False
        self.draft_number: str | None = None

    # ---- entry

    async def run(self) -> None:
        metrics = self.deps.metrics
        started = time.monotonic()
        started_at = self.deps.actions.now()
        metrics.calls.inc(route=self.route)
        self.log.info("voice.call", route=self.route, caller=mask_number(self.info.caller))
        try:
            answered = await self.call.command(commands.answer())
            if answered.failed:
                self.log.info("voice.gone_before_answer")
                metrics.abandoned.inc(flow=self.flow.name, state="answer")
                return
            self.answered_at = self.deps.actions.now()
            metrics.answered.inc(route=self.route)
            context = await self._context()
            await self._drive(self.engine.start(context))
        except AgiHangup:
            if not self.engine.hung_up:  # before the flow started (answer, context)
                metrics.abandoned.inc(flow=self.flow.name, state="answer")
        except Exception as exc:  # noqa: BLE001 - one call's failure ends only that call
            self.failed = True
            await self._failed(exc)
        finally:
            metrics.call_seconds.observe(time.monotonic() - started)
            self.log.info("voice.call_ended", state=self.engine.state, settled=self.engine.settled,
                          hung_up=self.gone or self.engine.hung_up,
                          case_number=self.engine.variables.get("case_number"),
                          ending=type(self.engine.ending).__name__ if self.engine.ending else None)
            await self._record_call(started_at)

    def outcome(self) -> str:
        """How the call ended, for its call record (docs/voice.md, Call records)."""
        if self.failed:
            return records.ERROR
        if self.transferred_to is not None:
            return records.TRANSFERRED
        if self.engine.settled:
            return records.SETTLED
        if self.gone or self.engine.hung_up or self.answered_at is None:
            return records.ABANDONED
        return records.ERROR  # cut off (shutdown) with the caller still in the flow

    async def _record_call(self, started_at: dt.datetime) -> None:
        """The one place a call finishes: one call_records row, whatever happened."""
        store = self.deps.call_records
        if store is None:
            return
        try:
            record = records.CallRecord(
                call_id=self.call.call_id, route=self.route, caller=self.info.caller, started_at=started_at,
                answered_at=self.answered_at, ended_at=self.deps.actions.now(),
                last_state=self.engine.state if self.answered_at is not None else None, outcome=self.outcome(),
                case_number=self.draft_number)
        except Exception:  # noqa: BLE001 - a lost record must not break the call
            self.log.exception("voice.call_record_failed")
            return
        await store.write(record)

    def _caller(self) -> str | None:
        raw = self.call.request.callerid
        if not raw or len(raw) > 32:
            return None
        try:
            return normalise_phone(raw, self.deps.region)
        except InvalidPhoneNumber:
            return None

    async def _context(self) -> dict[str, str]:
        context = {"call_id": self.call.call_id}
        if self.info.caller:
            context["caller"] = self.info.caller
        if self.route in _CASE_ROUTES or "case_number" in self.flow.requires:
            number = await self._case_number_from_channel()
            if number:
                context["case_number"] = number
        return context

    async def _case_number_from_channel(self) -> str | None:
        """agi_arg_1 (AGI(...,<number>)) or the channel variable the IVR or Originate set."""
        candidates = list(self.call.request.args[:1])
        if not candidates:
            result = await self.call.command(commands.get_variable(CASE_VARIABLE))
            if result.result == "1" and result.data:
                candidates.append(result.data)
        for raw in candidates:
            try:
                return CaseNumber.parse(raw).value
            except InvalidCaseNumber:
                self.log.warning("voice.bad_case_number_on_channel", length=len(raw))
        return None

    # ---- the loop

    async def _drive(self, actions: list[Action]) -> None:
        while actions:
            self._current = actions
            if self.deps.draining() and not self.gone and _needs_channel(actions):
                ending = actions[-1]
                if self.engine.finished and isinstance(ending, (Transfer, HangUp)):
                    actions = [ending]  # the flow is ending anyway: skip its last prompts
                else:
                    await self._hand_over("draining")
                    return
            try:
                event = await self._perform(actions)
            except AgiHangup:
                event = self._hung_up()
            if event is None:
                return
            actions = self.engine.feed(event)

    def _hung_up(self) -> Hangup:
        if not self.gone and not self.engine.settled:
            self.deps.metrics.abandoned.inc(flow=self.flow.name, state=self.engine.state)
        if not self.gone:
            self.log.info("voice.caller_hung_up", state=self.engine.state, settled=self.engine.settled)
        self.gone = True
        return Hangup()

    async def _perform(self, actions: list[Action]) -> Event | None:
        """Run one batch; the event answering its last action, or None when the flow ended."""
        pressed: str | None = None
        for action in actions:
            if self.gone and not isinstance(action, Invoke):
                raise AgiHangup("the caller hung up")  # the engine never asks; belt and braces
            match action:
                case Play():
                    if pressed is None:
                        pressed = await self._play(action.prompt_ids, action.escape_digits)
                case SayDigits():
                    if pressed is None:
                        await self._play(action.prompt_ids, "")
                case WaitDigit():
                    return Digits(pressed) if pressed is not None else await self._wait(action.timeout_ms)
                case CollectDigits():
                    return await self._collect(action, pressed)
                case Record():
                    return await self._record(action)
                case Invoke():
                    return await self._invoke(action)
                case Transfer():
                    await self._transfer(action.queue, action.variables)
                    return None
                case HangUp():
                    await self._set_next("hangup")
                    return None
        if not self.engine.finished:
            self.log.warning("voice.batch_without_answer", state=self.engine.state)
        return None

    async def _invoke(self, action: Invoke) -> ActionResult:
        result = await self.deps.actions.invoke(action, self.info)
        if result.name in _DRAFT_ACTIONS and result.outcome == "ok" and result.values.get("case_number"):
            self.draft_number = result.values["case_number"]
        return result

    # ---- channel actions

    def _sound(self, prompt_id: str) -> str:
        return sound_name(prompt_id, self.deps.sounds_dir)

    async def _alive_after_failure(self) -> None:
        """After a `result=-1`: raises AgiHangup if the channel is gone (511), else returns
        (the command failed for another reason, such as a missing prompt file)."""
        await self.call.command(commands.channel_status())

    async def _play(self, prompt_ids: tuple[str, ...], escape: str) -> str | None:
        for prompt_id in prompt_ids:
            result = await self.call.command(commands.stream_file(self._sound(prompt_id), escape))
            if result.failed:
                await self._alive_after_failure()
                self.log.warning("voice.prompt_missing", prompt=prompt_id)
                continue
            if escape and result.digit is not None:
                return result.digit
        return None

    async def _wait(self, timeout_ms: int) -> Event:
        result = await self.call.command(commands.wait_for_digit(timeout_ms))
        if result.failed:
            raise AgiHangup("hangup while waiting for a key")
        return Digits(result.digit) if result.digit else Timeout()

    async def _collect(self, action: CollectDigits, first: str | None) -> Event:
        """Keys up to the terminator. One key more than max_digits is allowed so that the
        `#` after a full-length number ends *this* entry: stopping at max_digits would
        leave it to cut the next prompt short and count as an empty entry. A longer
        entry is then refused by the flow's validator instead of being silently cut."""
        prompts = action.prompt_ids
        limit = action.max_digits + 1 if action.terminator else action.max_digits
        if first is None and len(prompts) > 1:
            first = await self._play(prompts[:-1], DTMF_KEYS)
        if first is None and prompts:
            result = await self.call.command(
                commands.get_data(self._sound(prompts[-1]), action.timeout_ms, limit))
            if result.failed or result.digits is None:
                raise AgiHangup("hangup while collecting digits")
            keyed = result.digits
            return Timeout() if keyed == "" and result.timed_out else Digits(keyed)
        keyed = ""
        key = first if first is not None else await self._one_key(action.timeout_ms)
        while key is not None and key != action.terminator:
            keyed += key
            if len(keyed) >= limit:
                break
            key = await self._one_key(action.timeout_ms)
        return Digits(keyed) if keyed or key == action.terminator else Timeout()

    async def _one_key(self, timeout_ms: int) -> str | None:
        result = await self.call.command(commands.wait_for_digit(timeout_ms))
        if result.failed:
            raise AgiHangup("hangup while collecting digits")
        return result.digit

    async def _record(self, action: Record) -> Event:
        await self._play(action.prompt_ids, "")
        if action.beep:  # ours, not RECORD FILE's BEEP: slim Asterisk images have no core sounds
            await self._play((BEEP_PROMPT,), "")
        target = self.deps.recordings.new_target(action.name, self.call.call_id)
        max_ms = action.max_seconds * 1000
        self.log.info("voice.recording", recording=target.ref, max_seconds=action.max_seconds)
        try:
            result = await self.call.command(commands.record_file(
                target.asterisk_path, "wav", action.escape, max_ms, silence_s=action.silence_seconds))
        except AgiHangup:
            # No answer to RECORD FILE (AGIEXITONHANGUP, a dropped socket): what reached the
            # disk decides whether the caller said something.
            check = self.deps.recordings.check(target.ref)
            return self._recorded(target.ref, check.duration_ms, "hangup")
        duration_ms = (result.endpos or 0) // SAMPLES_PER_MS
        if result.data == "hangup":
            return self._recorded(target.ref, duration_ms, "hangup")
        if result.failed:
            try:
                await self._alive_after_failure()
            except AgiHangup:
                return self._recorded(target.ref, duration_ms, "hangup")
            self.log.warning("voice.record_failed", recording=target.ref, reason=result.data)
            return RecordingDone(target.ref, 0, "silence")
        if result.data == "dtmf":
            return RecordingDone(target.ref, duration_ms, "dtmf")
        ended = "max_length" if duration_ms >= max_ms - _MAX_LENGTH_SLACK_MS else "silence"
        return RecordingDone(target.ref, duration_ms, ended)

    def _recorded(self, ref: str, duration_ms: int, ended_by: str) -> RecordingDone:
        if ended_by == "hangup":
            self._hung_up()
        return RecordingDone(ref, duration_ms, ended_by)

    async def _set(self, name: str, value: str) -> AgiResult:
        return await self.call.command(commands.set_variable(name, value))

    async def _set_next(self, target: str) -> None:
        await self._set(NEXT_VARIABLE, target)
        self.log.info("voice.next", next=target)

    async def _transfer(self, target: str, variables: Mapping[str, str]) -> None:
        case_number = variables.get("case_number")
        if case_number:
            await self._set(CASE_VARIABLE, case_number)
        await self._set_next(target)
        self.transferred_to = target
        self.deps.metrics.transfers.inc(flow=self.flow.name, target=target)
        if target == "agent" and self.deps.events is not None:
            self.deps.events.publish("screen_pop", {
                "agent": None, "phone": self.info.caller or "", "call_id": self.call.call_id,
                "case_number": case_number})
        self.log.info("voice.transfer", target=target, case_number=case_number)

    # ---- when the IVR itself has to let go of the caller

    async def _owed(self) -> None:
        """Tell the engine the IVR is done with the channel and run the service calls still
        owed (file the draft the caller spoke, queue the number SMS)."""
        if self.engine.finished:
            return
        # The engine answers Hangup() with the owed calls, or with nothing when it is waiting
        # for an Invoke of the current batch: that one is then still to run.
        actions = self.engine.feed(Hangup()) or [a for a in self._current[-1:] if isinstance(a, Invoke)]
        while actions:
            invokes = [a for a in actions if isinstance(a, Invoke)]
            if not invokes:
                return
            actions = self.engine.feed(await self._invoke(invokes[-1]))

    async def _hand_over(self, reason: str) -> None:
        """Owed work first, then the caller goes to a person (never just dropped)."""
        self.log.warning("voice.hand_over", reason=reason, state=self.engine.state)
        await self._owed()
        if self.gone:
            return
        case_number = self.engine.variables.get("case_number")
        try:
            await self._transfer("agent", {"case_number": case_number} if case_number else {})
        except AgiError as exc:
            self.log.info("voice.hand_over_failed", error=str(exc))

    async def _failed(self, exc: Exception) -> None:
        kind = type(exc).__name__
        self.deps.metrics.agi_errors.inc(route=self.route, error=kind)
        if isinstance(exc, AgiProtocolError):
            self.log.warning("voice.peer_not_agi", error=str(exc)[:200])
            self.gone = True  # the transport is gone; only owed service work can still run
            await self._owed_quietly()
            return
        if isinstance(exc, (AgiError, AgiArgumentError)):
            self.log.warning("voice.agi_error", error=kind, detail=str(exc)[:200], state=self.engine.state)
        else:
            self.log.exception("voice.ivr_failed", state=self.engine.state)
        try:
            await self._hand_over(kind)
        except Exception:  # noqa: BLE001 - the dialplan's AGISTATUS fallback still reaches a person
            self.log.exception("voice.hand_over_failed")

    async def _owed_quietly(self) -> None:
        try:
            await self._owed()
        except Exception:  # noqa: BLE001
            self.log.exception("voice.owed_work_failed")
