"""The one IVR executor: engine actions in, AGI command lines out, no I/O.

`FlowRunner` decides what the caller hears and what the service must do; `CallExecutor`
turns that into AGI commands one at a time and the answers back into engine events. It
owns no socket and no pipe: a driver asks it for the next request, performs it and hands
back the answer. Two drivers exist, both thin:

- the asyncio FastAGI one (`callcenter.voice.runner.CallRunner`, one socket per call);
- the classic stdin/stdout one on pyst2 (`ivr_scripts/agi_classic.py`).

Requests (what `start()` / `send()` / `throw()` return; None when the call is done):

    Command(line)       send one AGI command; answer with its AgiResult, or throw the
                        AgiError it raised (AgiHangup on HANGUP / 511 / a closed link);
                        `live_only`: throw AgiHangup without sending it when the driver
                        already saw the hang-up
    Service(invoke)     perform the flow's service call; answer with an ActionResult
    NewRecording(name)  pick where RECORD FILE writes; answer with a RecordingTarget
    CheckSpeech(ref)    what the recording holds; answer with Audio(duration_ms, speech_ms),
                        each None when the file cannot be read

What one command does (the contract both drivers used to carry twice):

    Play          STREAM FILE <sound> "<escape digits>" per prompt; a key pressed during a
                  prompt skips the rest of the batch and is the caller's input
    SayDigits     STREAM FILE <sound of digit_N> per digit
    WaitDigit     WAIT FOR DIGIT <ms>
    CollectDigits GET DATA (or WAIT FOR DIGIT after an early key) until # / max / timeout;
                  one key more than max_digits so the `#` after a full-length number ends
                  this entry instead of cutting the next prompt short
    Record        prompts (a key skips them), our beep, RECORD FILE <path> wav "#" <ms> 0
                  s=<n>; whether the
                  caller said anything is decided from the audio (CheckSpeech), not from
                  the length: a take of pure silence is ~1 s long on a real Asterisk
    Invoke        the service call (also after the caller hung up)
    Transfer      SET VARIABLE CALLCENTER_CASE_NUMBER, CALLCENTER_NEXT=agent|voicemail
    HangUp        SET VARIABLE CALLCENTER_NEXT=hangup (the dialplan hangs up)

With a `node` (the FastAGI driver), the call starts with SET VARIABLE CALLCENTER_NODE <node>
and a committed draft's number goes on the channel at once (CALLCENTER_CASE_NUMBER), so the
dialplan can hand a caller whose node died to a person, with the draft, never to a second IVR.
Before a take whose recording the flow files as a draft (before its prompts), it also sets
CALLCENTER_RECORDING (the file name RECORD FILE will write) and CALLCENTER_REPORT_KEYS (what
that draft needs besides the file: `report_keys()`), so the dialplan's `recover` script on
a live node can file the draft if this node dies while the caller speaks.

A hang-up anywhere is fed to the engine as `Hangup()` (during RECORD FILE as a recording
ended by hangup, so what the caller said is filed); the engine then asks only for the
service calls still owed. Any other failure ends the IVR's part with the owed work done
and the caller handed to a person; so does `draining()` (service shutdown).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from callcenter.agi import commands
from callcenter.agi.errors import AgiArgumentError, AgiError, AgiHangup, AgiProtocolError
from callcenter.agi.protocol import AgiResult
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.ivr.engine import (
    Action,
    ActionResult,
    CollectDigits,
    Digits,
    Event,
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
from callcenter.ivr.flow import CHANNEL_VARIABLES, DTMF_KEYS, ActionState, Flow, RecordState

log = structlog.get_logger(__name__)

# Asterisk records `wav` at 8 kHz: RECORD FILE's endpos counts samples.
SAMPLES_PER_MS = 8
NEXT_VARIABLE = "CALLCENTER_NEXT"
CASE_VARIABLE = "CALLCENTER_CASE_NUMBER"
# Set first thing (before ANSWER) when the driver names its node: the dialplan then knows this
# node took the call and never starts it again on another node when this one is lost
# (config/asterisk/extensions.conf, [callcenter-agi] and ivr-lost).
NODE_VARIABLE = "CALLCENTER_NODE"
# Set before RECORD FILE (FastAGI driver): the recording's file name and what its draft needs.
RECORDING_VARIABLE = CHANNEL_VARIABLES["recording"]
REPORT_KEYS_VARIABLE = CHANNEL_VARIABLES["report_keys"]
# The draft action's args the recovering node knows by itself (the file, the channel).
_KNOWN_ON_RECOVERY = frozenset({"recording", "recording_ms", "caller", "call_id"})
# Context read from the channel is bounded: it is only ever a file name or a few keys.
_MAX_CHANNEL_VALUE = 256
BEEP_PROMPT = "beep"
# A recording that stopped on its own this close to max_seconds hit the limit.
_MAX_LENGTH_SLACK_MS = 500
# Routes that continue an earlier conversation about a case (the case number comes with them).
CASE_ROUTES = frozenset({"voicemail", "callback"})
# Service calls that file a new draft: their `case_number` is the call's draft.
DRAFT_ACTIONS = frozenset({"create_draft", "voicemail_draft", "recover_draft"})


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Command:
    line: str
    # Only worth sending while the caller is there: a driver that already knows of a hang-up
    # throws AgiHangup instead (SET VARIABLE alone would not tell, it works on a dead channel).
    live_only: bool = False


@dataclass(frozen=True)
class Service:
    invoke: Invoke


@dataclass(frozen=True)
class NewRecording:
    name: str


@dataclass(frozen=True)
class CheckSpeech:
    ref: str


Request = Command | Service | NewRecording | CheckSpeech


@dataclass(frozen=True)
class Audio:
    """The answer to CheckSpeech: the file's length and the speech in it, in ms."""

    duration_ms: int | None = None
    speech_ms: int | None = None


@dataclass(frozen=True)
class RecordingTarget:
    """Where one recording goes: `asterisk_path` for RECORD FILE (no extension, Asterisk
    adds it), `ref` for the draft and for CheckSpeech."""

    asterisk_path: str
    ref: str


class ExecutorHooks:
    """What a driver may want to count or publish; every method is a no-op here."""

    def answered(self) -> None: ...

    def abandoned(self, state: str) -> None: ...

    def transferred(self, target: str, case_number: str | None) -> None: ...

    def failed(self, kind: str) -> None: ...


@dataclass(frozen=True)
class CallEnv:
    """What the executor needs from the AGI env block."""

    call_id: str
    callerid: str | None = None
    args: Sequence[str] = ()


def caller_from(raw: str | None, region: str = "CN") -> str | None:
    """The caller's number in E.164, or None (withheld, `unknown`, garbage)."""
    if not raw or len(raw) > 32:
        return None
    try:
        return normalise_phone(raw, region)
    except InvalidPhoneNumber:
        return None


def report_keys(flow: Flow, state_name: str, variables: Mapping[str, str]) -> str | None:
    """CALLCENTER_REPORT_KEYS for a recording made in `state_name`: the draft action its
    `next` leads to and that action's other args as the caller chose them so far, e.g.
    `draft=create_draft&kind=event&major=1&min_ms=1000` (`case_number` is the related case
    of a voicemail). None when the recording does not lead straight to a draft action.

    Names and values are `[A-Za-z0-9_]` only (a flow variable that is anything else is left
    out), so the value needs no escaping on the channel and cannot carry a separator.
    """
    state = flow.states.get(state_name)
    if not isinstance(state, RecordState):
        return None
    target = flow.states.get(state.next.target)
    if not isinstance(target, ActionState) or target.call not in DRAFT_ACTIONS:
        return None
    values = {**variables, **state.next.assign}
    pairs = [("draft", target.call)]
    for name in target.args:
        value = values.get(name)
        if name in _KNOWN_ON_RECOVERY or not value or not _KEY_VALUE.fullmatch(value):
            continue
        pairs.append((name, value))
    pairs.append(("min_ms", str(state.min_ms)))
    return "&".join(f"{name}={value}" for name, value in pairs)


_KEY_VALUE = re.compile(r"[A-Za-z0-9_]{1,40}")


def _needs_channel(actions: Sequence[Action]) -> bool:
    return any(not isinstance(action, Invoke) for action in actions)


Script = Generator[Request, Any, None]


class CallExecutor:
    """One call through one flow. Drive it: `start()`, then `send(answer)` or
    `throw(error)` until it returns None."""

    def __init__(self, flow: Flow, env: CallEnv, *, route: str,
                 sound: Callable[[str], str], region: str = "CN",
                 draining: Callable[[], bool] = lambda: False,
                 hooks: ExecutorHooks | None = None, node: str | None = None) -> None:
        self.flow = flow
        self.node = node
        self.env = env
        self.route = route
        self.sound = sound
        self.draining = draining
        self.hooks = hooks or ExecutorHooks()
        self.engine = FlowRunner(flow)
        self.caller = caller_from(env.callerid, region)
        self.log = log.bind(call_id=env.call_id, flow=flow.name)
        self.gone = False
        self.answered = False
        self.failed = False
        self.transferred_to: str | None = None
        self.draft_number: str | None = None
        self._case_set: str | None = None  # CALLCENTER_CASE_NUMBER already on the channel
        self._keys_set: str | None = None  # CALLCENTER_REPORT_KEYS already on the channel
        self._current: list[Action] = []
        self._script: Script | None = None

    # ---- driving

    def start(self) -> Request | None:
        if self._script is not None:
            raise RuntimeError("start() called twice")
        self._script = self._call()
        return self._step(lambda: next(self._script))  # type: ignore[arg-type]

    def send(self, answer: Any) -> Request | None:
        script = self._running()
        return self._step(lambda: script.send(answer))

    def throw(self, error: BaseException) -> Request | None:
        script = self._running()
        return self._step(lambda: script.throw(error))

    def _running(self) -> Script:
        if self._script is None:
            raise RuntimeError("start() first")
        return self._script

    @staticmethod
    def _step(advance: Callable[[], Request]) -> Request | None:
        try:
            return advance()
        except StopIteration:
            return None

    # ---- the call

    def _call(self) -> Script:
        try:
            if self.node:
                yield from self._command(commands.set_variable(NODE_VARIABLE, self.node))
            answered: AgiResult = yield Command(commands.answer())
            if answered.failed:
                self.log.info("voice.gone_before_answer")
                self.hooks.abandoned("answer")
                return
            self.answered = True
            self.hooks.answered()
            context = yield from self._context()
            yield from self._drive(self.engine.start(context))
        except AgiHangup:
            if not self.engine.hung_up:  # before the flow started (answer, context)
                self.hooks.abandoned("answer")
        except Exception as exc:  # noqa: BLE001 - one call's failure ends only that call
            self.failed = True
            yield from self._failed(exc)

    def _context(self) -> Generator[Request, Any, dict[str, str]]:
        context = {"call_id": self.env.call_id}
        if self.caller:
            context["caller"] = self.caller
        if self.route in CASE_ROUTES or "case_number" in self.flow.requires \
                or "case_number" in self.flow.from_channel:
            number = yield from self._case_number_from_channel()
            if number:
                context["case_number"] = number
        for name in self.flow.from_channel:
            if name == "case_number":
                continue
            result: AgiResult = yield Command(commands.get_variable(CHANNEL_VARIABLES[name]))
            if result.result == "1" and result.data:
                # Bounded here, judged by the service action that uses it (a hostile value is
                # a logged rejection there, never a path or a command).
                context[name] = result.data[:_MAX_CHANNEL_VALUE]
        return context

    def _case_number_from_channel(self) -> Generator[Request, Any, str | None]:
        """agi_arg_1 (AGI(...,<number>)) or the channel variable the IVR or Originate set."""
        candidates = list(self.env.args[:1])
        if not candidates:
            result: AgiResult = yield Command(commands.get_variable(CASE_VARIABLE))
            if result.result == "1" and result.data:
                candidates.append(result.data)
        for raw in candidates:
            try:
                return CaseNumber.parse(raw).value
            except InvalidCaseNumber:
                self.log.warning("voice.bad_case_number_on_channel", length=len(raw))
        return None

    def _drive(self, actions: list[Action]) -> Script:
        while actions:
            self._current = actions
            if self.draining() and not self.gone and _needs_channel(actions):
                ending = actions[-1]
                if self.engine.finished and isinstance(ending, (Transfer, HangUp)):
                    actions = [ending]  # the flow is ending anyway: skip its last prompts
                else:
                    yield from self._hand_over("draining")
                    return
            try:
                event = yield from self._perform(actions)
            except AgiHangup:
                event = self._hung_up()
            if event is None:
                return
            actions = self.engine.feed(event)

    def _hung_up(self) -> Hangup:
        if not self.gone and not self.engine.settled:
            self.hooks.abandoned(self.engine.state)
        if not self.gone:
            self.log.info("voice.caller_hung_up", state=self.engine.state, settled=self.engine.settled)
        self.gone = True
        return Hangup()

    def _perform(self, actions: list[Action]) -> Generator[Request, Any, Event | None]:
        """Run one batch; the event answering its last action, or None when the flow ended."""
        pressed: str | None = None
        for action in actions:
            if self.gone and not isinstance(action, Invoke):
                raise AgiHangup("the caller hung up")  # the engine never asks; belt and braces
            match action:
                case Play():
                    if pressed is None:
                        pressed = yield from self._play(action.prompt_ids, action.escape_digits)
                case SayDigits():
                    if pressed is None:
                        yield from self._play(action.prompt_ids, "")
                case WaitDigit():
                    if pressed is not None:
                        return Digits(pressed)
                    return (yield from self._wait(action.timeout_ms))
                case CollectDigits():
                    return (yield from self._collect(action, pressed))
                case Record():
                    return (yield from self._record(action, skip_prompts=pressed is not None))
                case Invoke():
                    return (yield from self._invoke(action))
                case Transfer():
                    yield from self._transfer(action.queue, action.variables)
                    return None
                case HangUp():
                    yield from self._set_next("hangup")
                    return None
        if not self.engine.finished:
            self.log.warning("voice.batch_without_answer", state=self.engine.state)
        return None

    def _invoke(self, action: Invoke) -> Generator[Request, Any, ActionResult]:
        result: ActionResult = yield Service(action)
        if result.name in DRAFT_ACTIONS and result.outcome == "ok" and result.values.get("case_number"):
            self.draft_number = result.values["case_number"]
            if self.node and not self.gone:
                # On the channel at once: if this node dies now, the dialplan hands the caller
                # to a person together with the draft's number.
                try:
                    yield from self._command(commands.set_variable(CASE_VARIABLE, self.draft_number))
                    self._case_set = self.draft_number
                except AgiHangup:
                    pass  # the next channel action meets the hang-up and handles it
        return result

    # ---- channel actions

    def _command(self, line: str) -> Generator[Request, Any, AgiResult]:
        result: AgiResult = yield Command(line)
        return result

    def _alive_after_failure(self) -> Generator[Request, Any, None]:
        """After a `result=-1`: raises AgiHangup if the channel is gone (511), else returns
        (the command failed for another reason, such as a missing prompt file)."""
        yield from self._command(commands.channel_status())

    def _play(self, prompt_ids: tuple[str, ...], escape: str) -> Generator[Request, Any, str | None]:
        for prompt_id in prompt_ids:
            result = yield from self._command(commands.stream_file(self.sound(prompt_id), escape))
            if result.failed:
                yield from self._alive_after_failure()
                self.log.warning("voice.prompt_missing", prompt=prompt_id)
                continue
            if escape and result.digit is not None:
                return result.digit
        return None

    def _wait(self, timeout_ms: int) -> Generator[Request, Any, Event]:
        result = yield from self._command(commands.wait_for_digit(timeout_ms))
        if result.failed:
            raise AgiHangup("hangup while waiting for a key")
        return Digits(result.digit) if result.digit else Timeout()

    def _collect(self, action: CollectDigits, first: str | None) -> Generator[Request, Any, Event]:
        prompts = action.prompt_ids
        limit = action.max_digits + 1 if action.terminator else action.max_digits
        if first is None and len(prompts) > 1:
            first = yield from self._play(prompts[:-1], DTMF_KEYS)
        if first is None and prompts:
            result = yield from self._command(
                commands.get_data(self.sound(prompts[-1]), action.timeout_ms, limit))
            if result.failed or result.digits is None:
                raise AgiHangup("hangup while collecting digits")
            keyed = result.digits
            return Timeout() if keyed == "" and result.timed_out else Digits(keyed)
        keyed = ""
        key = first if first is not None else (yield from self._one_key(action.timeout_ms))
        while key is not None and key != action.terminator:
            keyed += key
            if len(keyed) >= limit:
                break
            key = yield from self._one_key(action.timeout_ms)
        return Digits(keyed) if keyed or key == action.terminator else Timeout()

    def _one_key(self, timeout_ms: int) -> Generator[Request, Any, str | None]:
        result = yield from self._command(commands.wait_for_digit(timeout_ms))
        if result.failed:
            raise AgiHangup("hangup while collecting digits")
        return result.digit

    def _record(self, action: Record, skip_prompts: bool = False) -> Generator[Request, Any, Event]:
        target: RecordingTarget = yield NewRecording(action.name)
        # For `recover` (docstring above), before this take's prompts: RECORD FILE runs on to
        # its end in Asterisk even when this node dies, and with the take named on the
        # channel a live node files it. Both name this take (never one the last of an earlier
        # one); neither is sent once the driver knows the caller hung up (live_only).
        keys = report_keys(self.flow, self.engine.state, self.engine.variables) if self.node else None
        if keys is not None:
            yield Command(commands.set_variable(RECORDING_VARIABLE, target.ref), live_only=True)
            if keys != self._keys_set:
                yield Command(commands.set_variable(REPORT_KEYS_VARIABLE, keys), live_only=True)
                self._keys_set = keys
        # Barge-in: a key during the instructions (or the prompts before them) goes
        # straight to the beep; the key itself is not part of the report.
        if not skip_prompts:
            yield from self._play(action.prompt_ids, DTMF_KEYS)
        if action.beep:  # ours, not RECORD FILE's BEEP: slim Asterisk images have no core sounds
            yield from self._play((BEEP_PROMPT,), "")
        max_ms = action.max_seconds * 1000
        self.log.info("voice.recording", recording=target.ref, max_seconds=action.max_seconds)
        try:
            result = yield from self._command(commands.record_file(
                target.asterisk_path, "wav", action.escape, max_ms, silence_s=action.silence_seconds))
        except AgiHangup:
            # No answer to RECORD FILE (AGIEXITONHANGUP, a dropped socket): what reached the
            # disk decides whether the caller said something.
            return (yield from self._recorded(target.ref, None, "hangup"))
        duration_ms = (result.endpos or 0) // SAMPLES_PER_MS
        if result.data == "hangup":
            return (yield from self._recorded(target.ref, duration_ms, "hangup"))
        if result.failed:
            try:
                yield from self._alive_after_failure()
            except AgiHangup:
                return (yield from self._recorded(target.ref, duration_ms, "hangup"))
            self.log.warning("voice.record_failed", recording=target.ref, reason=result.data)
            return RecordingDone(target.ref, 0, "silence", speech_ms=0)
        if result.data == "dtmf":
            return (yield from self._recorded(target.ref, duration_ms, "dtmf"))
        ended = "max_length" if duration_ms >= max_ms - _MAX_LENGTH_SLACK_MS else "silence"
        return (yield from self._recorded(target.ref, duration_ms, ended))

    def _recorded(self, ref: str, duration_ms: int | None,
                  ended_by: str) -> Generator[Request, Any, RecordingDone]:
        """The recording as the engine needs it: its length, and how much of it is speech
        (from the file; None when the service cannot read it, e.g. an unshared volume)."""
        if ended_by == "hangup":
            self._hung_up()
        audio: Audio = yield CheckSpeech(ref)
        speech = audio.speech_ms
        if duration_ms is None:
            duration_ms = audio.duration_ms or 0
        self.log.info("voice.recorded", recording=ref, ended_by=ended_by, duration_ms=duration_ms,
                      speech_ms=speech)
        return RecordingDone(ref, duration_ms, ended_by, speech_ms=speech)

    def _set_next(self, target: str) -> Script:
        yield from self._command(commands.set_variable(NEXT_VARIABLE, target))
        self.log.info("voice.next", next=target)

    def _transfer(self, target: str, variables: Mapping[str, str]) -> Script:
        case_number = variables.get("case_number")
        if case_number and case_number != self._case_set:
            yield from self._command(commands.set_variable(CASE_VARIABLE, case_number))
        yield from self._set_next(target)
        self.transferred_to = target
        self.hooks.transferred(target, case_number)
        self.log.info("voice.transfer", target=target, case_number=case_number)

    # ---- when the IVR itself has to let go of the caller

    def _owed(self) -> Script:
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
            actions = self.engine.feed((yield from self._invoke(invokes[-1])))

    def _hand_over(self, reason: str) -> Script:
        """Owed work first, then the caller goes to a person (never just dropped)."""
        self.log.warning("voice.hand_over", reason=reason, state=self.engine.state)
        yield from self._owed()
        if self.gone:
            return
        case_number = self.engine.variables.get("case_number")
        try:
            yield from self._transfer("agent", {"case_number": case_number} if case_number else {})
        except AgiError as exc:
            self.log.info("voice.hand_over_failed", error=str(exc))

    def _failed(self, exc: Exception) -> Script:
        kind = type(exc).__name__
        self.hooks.failed(kind)
        if isinstance(exc, AgiProtocolError):
            self.log.warning("voice.peer_not_agi", error=str(exc)[:200])
            self.gone = True  # the transport is gone; only owed service work can still run
            try:
                yield from self._owed()
            except Exception:  # noqa: BLE001
                self.log.exception("voice.owed_work_failed")
            return
        if isinstance(exc, (AgiError, AgiArgumentError)):
            self.log.warning("voice.agi_error", error=kind, detail=str(exc)[:200], state=self.engine.state)
        else:
            self.log.exception("voice.ivr_failed", state=self.engine.state)
        try:
            yield from self._hand_over(kind)
        except Exception:  # noqa: BLE001 - the dialplan's AGISTATUS fallback still reaches a person
            self.log.exception("voice.hand_over_failed")
