"""The pure IVR interpreter: events in, actions out, no I/O.

A runtime (FastAGI handler, classic AGI script, a test) owns the channel and the service;
`FlowRunner` owns the flow's state. The runtime executes the actions of one `feed()` in
order and answers the last one with one event:

- `Play` / `SayDigits` need no answer. When a `Play` with escape digits is interrupted by a
  key, the runtime skips the remaining `Play`/`SayDigits` of the batch and hands the key to
  the batch's input action: for `WaitDigit` it is the answer (`Digits(key)`), for
  `CollectDigits` it is the first key of the number (collect the rest without a prompt).
- `WaitDigit` / `CollectDigits` -> `Digits(...)` (`""` when only `#` was pressed; partial
  input before a timeout is sent as Digits) or `Timeout()` when nothing was pressed.
- `Record` -> `RecordingDone(path, duration_ms, ended_by, speech_ms)`; a caller who hangs up
  while recording is `ended_by="hangup"`, not a separate `Hangup()`. Less speech than the
  state's min_seconds (or, without speech_ms, a shorter take) is a silent try.
- `Invoke` -> `ActionResult(name, outcome, values)` (also after the caller hung up: the
  service call does not need the channel).
- `Transfer` / `HangUp` end the flow (`finished`).
- Whenever a channel command reports that the caller is gone, feed `Hangup()`; the runner
  answers with the service calls still owed (`Invoke`s) and keeps doing so, one result at a
  time, until `finished`. It never emits channel actions after a hangup.

The runner never emits `HangUp` unless the flow passed a state marked `settled`; the
loader proves statically that every hangup state is behind one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.ivr.flow import (
    DTMF_KEYS,
    ActionState,
    DigitsState,
    Flow,
    HangupState,
    MenuState,
    PlayState,
    RecordState,
    SayDigitsState,
    SayStatusState,
    State,
    TransferState,
    Transition,
)

__all__ = [
    "Action",
    "ActionResult",
    "CollectDigits",
    "Digits",
    "Event",
    "FlowRunner",
    "HangUp",
    "Hangup",
    "Invoke",
    "Play",
    "Record",
    "RecordingDone",
    "RunnerError",
    "SayDigits",
    "Timeout",
    "Transfer",
    "UnexpectedEvent",
    "WaitDigit",
    "validate_digits",
]

# A flow that passes more states than this without waiting for the caller is broken (the
# loader rejects loops of pass-through states; this guards flows built in code).
_MAX_CHAIN = 200


def _frozen(values: Mapping[str, str | None] | None = None) -> Mapping[str, str | None]:
    return MappingProxyType(dict(values or {}))


# ------------------------------------------------------------------------------ actions


@dataclass(frozen=True)
class Play:
    """Play prompts in order; a key in escape_digits stops them (see module docstring)."""

    prompt_ids: tuple[str, ...]
    escape_digits: str = ""


@dataclass(frozen=True)
class CollectDigits:
    """Play the prompts and collect up to max_digits keys, ended early by the terminator."""

    prompt_ids: tuple[str, ...]
    max_digits: int
    timeout_ms: int
    terminator: str = "#"


@dataclass(frozen=True)
class WaitDigit:
    """Wait for one key (the menu's prompts were played by the Play before it)."""

    timeout_ms: int


@dataclass(frozen=True)
class Record:
    """Play the prompts, then our `beep` prompt if beep, then record until `#` (escape),
    max_seconds, silence_seconds of silence or hangup. `name` is a file-name hint
    (report, voicemail); the runtime picks the path and reports it back."""

    prompt_ids: tuple[str, ...]
    max_seconds: int
    silence_seconds: int
    beep: bool = True
    escape: str = "#"
    name: str = "recording"


@dataclass(frozen=True)
class Invoke:
    """Perform a named service call (flow.ACTIONS) and answer with ActionResult."""

    action_name: str
    args: Mapping[str, str | None] = field(default_factory=_frozen)


@dataclass(frozen=True)
class SayDigits:
    """Speak digits one by one with our own digit_N prompts (幺 for 1), not Asterisk's."""

    digits: str

    @property
    def prompt_ids(self) -> tuple[str, ...]:
        return tuple(f"digit_{d}" for d in self.digits)


@dataclass(frozen=True)
class Transfer:
    """Hand the call back to the dialplan: queue `agent` or `voicemail` (CALLCENTER_NEXT),
    with flow variables such as case_number for the agent's screen pop."""

    queue: str
    variables: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class HangUp:
    """End the call: only ever emitted after a settled state."""


Action = Play | CollectDigits | WaitDigit | Record | Invoke | SayDigits | Transfer | HangUp

# ------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Digits:
    digits: str


@dataclass(frozen=True)
class Timeout:
    pass


@dataclass(frozen=True)
class RecordingDone:
    path: str
    duration_ms: int
    ended_by: str = "dtmf"  # dtmf (the # key), silence, max_length or hangup
    # Speech found in the audio (energy over its frames); None: judge by duration alone.
    # A real Asterisk leaves ~1 s of pure silence in a silent take, so length says little.
    speech_ms: int | None = None


@dataclass(frozen=True)
class ActionResult:
    name: str
    outcome: str
    values: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Hangup:
    pass


Event = Digits | Timeout | RecordingDone | ActionResult | Hangup


class RunnerError(RuntimeError):
    """The runtime drove the runner wrongly, or a flow built in code is broken."""


class UnexpectedEvent(RunnerError):
    """An event that does not answer the pending action (e.g. Digits while an Invoke runs)."""


# ---------------------------------------------------------------------------- validators


def validate_digits(validator: str | None, text: str) -> str | None:
    """The normalised value of keyed input, or None when it is not acceptable."""
    if validator is None:
        return text if text and text.isdigit() else None
    if validator == "case_number":
        if len(text) < 8:  # too short to be a number at all: "invalid", not "wrong check digit"
            return None
        try:
            return CaseNumber.parse(text).value
        except InvalidCaseNumber:
            return None
    if validator == "phone":
        if not text.isdigit():
            return None
        try:
            return normalise_phone(text)
        except InvalidPhoneNumber:
            return None
    if validator == "score_1_5":
        return text if len(text) == 1 and text in "12345" else None
    raise RunnerError(f"unknown validator {validator!r}")


_STATUS_VALUES = frozenset(status.value for status in CaseStatus)

# ------------------------------------------------------------------------------- runner


@dataclass
class _Batch:
    """Actions of one step, with per-Play interruptibility resolved into escape digits."""

    items: list[tuple[Action, bool]] = field(default_factory=list)

    def play(self, prompts: tuple[str, ...], interruptible: bool) -> None:
        if prompts:
            self.items.append((Play(prompts), interruptible))

    def add(self, action: Action) -> None:
        self.items.append((action, False))

    def finish(self) -> list[Action]:
        """Escape digits go to the trailing run of interruptible prompts before what ends
        the step: for a menu or a number the key is the caller's answer; before a recording
        it skips to the beep; before a transfer or goodbye it skips the rest. Nothing a
        caller must hear (e.g. their intake number) is skipped: barge-in stops there."""
        takes_input = bool(self.items) and isinstance(
            self.items[-1][0], (WaitDigit, CollectDigits, Record, Transfer, HangUp))
        barge_in = takes_input
        resolved: list[Action] = []
        for action, interruptible in reversed(self.items):
            if isinstance(action, Play):
                barge_in = barge_in and interruptible
                resolved.append(Play(action.prompt_ids, DTMF_KEYS if barge_in else ""))
            else:
                if isinstance(action, SayDigits):
                    barge_in = False
                resolved.append(action)
        resolved.reverse()
        merged: list[Action] = []
        for action in resolved:
            last = merged[-1] if merged else None
            if isinstance(action, Play) and isinstance(last, Play) and \
                    last.escape_digits == action.escape_digits:
                merged[-1] = Play(last.prompt_ids + action.prompt_ids, last.escape_digits)
            else:
                merged.append(action)
        return merged


_Awaiting = Literal["menu", "digits", "record", "action"]


class FlowRunner:
    """Runs one call through one flow. Not thread-safe; one instance per call."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self._vars: dict[str, str] = {}
        self._state: str = flow.start
        self._tries: dict[str, int] = {}
        self._awaiting: _Awaiting | None = None
        self._started = False
        self._finished = False
        self._hung_up = False
        self._settled = False
        self._ran_after_hangup: set[str] = set()
        self._chain = 0
        self.ending: Transfer | HangUp | None = None

    # ---- what the runtime may look at

    @property
    def variables(self) -> Mapping[str, str]:
        """A snapshot of the flow variables (context, keyed input, action values)."""
        return MappingProxyType(dict(self._vars))

    @property
    def state(self) -> str:
        return self._state

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def hung_up(self) -> bool:
        return self._hung_up

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def awaiting(self) -> str | None:
        """What the last batch waits for: menu, digits, record, action; None when finished."""
        return None if self._finished else self._awaiting

    def tries(self, state: str) -> int:
        return self._tries.get(state, 0)

    # ---- driving

    def start(self, context: Mapping[str, str] | None = None) -> list[Action]:
        """Begin the call with the runtime's context (caller, call_id, case_number...)."""
        if self._started:
            raise RunnerError("start() called twice")
        self._started = True
        for key, value in (context or {}).items():
            if value is not None:
                self._vars[key] = str(value)
        missing = [name for name in self.flow.requires if not self._vars.get(name)]
        if missing:
            raise RunnerError(f"flow {self.flow.name!r} needs context variable(s) {missing}")
        self._chain = 0
        return self._run(self.flow.start, _Batch(), fresh=True)

    def feed(self, event: Event) -> list[Action]:
        """Answer the pending action; returns the next actions (empty once finished)."""
        if not self._started:
            raise RunnerError("feed() before start()")
        if self._finished:
            return []
        self._chain = 0
        if isinstance(event, Hangup):
            return self._caller_gone()
        state = self.flow.states[self._state]
        match event:
            case Digits() | Timeout() if self._awaiting == "menu" and isinstance(state, MenuState):
                return self._menu_input(state, event)
            case Digits() | Timeout() if (self._awaiting == "digits"
                                          and isinstance(state, DigitsState)):
                return self._digits_input(state, event)
            case RecordingDone() if self._awaiting == "record" and isinstance(state, RecordState):
                return self._recording(state, event)
            case ActionResult() if self._awaiting == "action" and isinstance(state, ActionState):
                return self._action_result(state, event)
        raise UnexpectedEvent(
            f"{type(event).__name__} does not answer what state {self._state!r} of flow "
            f"{self.flow.name!r} waits for ({self._awaiting})")

    # ---- input handling

    def _menu_input(self, state: MenuState, event: Digits | Timeout) -> list[Action]:
        if isinstance(event, Timeout) or event.digits == "":
            return self._failed_try(state, state.no_input, _Batch())
        transition = state.keys.get(event.digits)
        if transition is None:
            return self._failed_try(state, state.invalid, _Batch())
        if state.store:
            self._vars[state.store] = event.digits
        return self._goto(transition, _Batch())

    def _digits_input(self, state: DigitsState, event: Digits | Timeout) -> list[Action]:
        if isinstance(event, Timeout):
            return self._failed_try(state, state.no_input, _Batch())
        value = validate_digits(state.validator, event.digits)
        if value is None:
            return self._failed_try(state, state.invalid, _Batch())
        self._vars[state.store] = value
        return self._goto(state.next, _Batch())

    def _recording(self, state: RecordState, event: RecordingDone) -> list[Action]:
        self._vars[state.store] = event.path
        self._vars[f"{state.store}_ms"] = str(max(0, int(event.duration_ms)))
        heard_ms = event.speech_ms if event.speech_ms is not None else event.duration_ms
        long_enough = heard_ms >= state.min_ms
        if event.ended_by == "hangup":
            self._hung_up = True
            if long_enough:  # they spoke, then hung up: what they said is filed
                self._assign(state.next)
                return self._owed_from(state.next.target)
            return self._owed_from(state.name)
        if not long_enough:
            return self._failed_try(state, state.too_short, _Batch())
        return self._goto(state.next, _Batch())

    def _action_result(self, state: ActionState, event: ActionResult) -> list[Action]:
        if event.name != state.call:
            raise UnexpectedEvent(f"result of {event.name!r} while {state.call!r} is pending")
        outcome = event.outcome if event.outcome in state.outcomes else "error"
        if outcome not in state.outcomes:
            raise UnexpectedEvent(f"{state.call!r} answered {event.outcome!r}; state "
                                  f"{state.name!r} has no such outcome and no 'error'")
        for key, value in event.values.items():
            if value is not None:
                self._vars[key] = str(value)
        transition = state.outcomes[outcome]
        if self._hung_up:
            self._assign(transition)
            return self._owed_from(transition.target)
        return self._goto(transition, _Batch())

    # ---- movement

    def _assign(self, transition: Transition) -> None:
        self._vars.update(transition.assign)

    def _goto(self, transition: Transition, batch: _Batch) -> list[Action]:
        self._assign(transition)
        batch.play(transition.prompts, True)
        if transition.counts_as_try:
            target = self.flow.states[transition.target]
            if not isinstance(target, (MenuState, DigitsState, RecordState)):
                raise RunnerError(f"transition counts as a try of {target.name!r}, "
                                  "which is not an input state")
            return self._failed_try(target, (), batch)
        return self._run(transition.target, batch, fresh=True)

    def _failed_try(self, state: MenuState | DigitsState | RecordState,
                    prompts: tuple[str, ...], batch: _Batch) -> list[Action]:
        """One more invalid or silent try; the last one goes to on_fail (a person)."""
        self._tries[state.name] = self._tries.get(state.name, 0) + 1
        if self._tries[state.name] >= state.tries:
            return self._goto(state.on_fail, batch)
        batch.play(prompts, True)
        return self._run(state.name, batch, fresh=False)

    def _run(self, name: str, batch: _Batch, *, fresh: bool) -> list[Action]:
        self._chain += 1
        if self._chain > _MAX_CHAIN:
            raise RunnerError(f"flow {self.flow.name!r} loops through {name!r} without waiting")
        state: State = self.flow.states[name]
        self._state = name
        if state.settled:
            self._settled = True
        match state:
            case PlayState():
                batch.play(state.prompts, state.interruptible)
                return self._goto(state.next, batch)
            case SayDigitsState():
                batch.play(state.prompts, state.interruptible)
                digits = self._vars.get(state.var, "")
                if digits and all(ch in DTMF_KEYS for ch in digits):
                    batch.add(SayDigits(digits))
                return self._goto(state.next, batch)
            case SayStatusState():
                status = self._vars.get(state.var, "")
                if status not in _STATUS_VALUES:
                    return self._goto(state.on_unknown, batch)
                batch.play((*state.prompts, f"status_{status}"), False)
                return self._goto(state.next, batch)
            case MenuState():
                self._enter_input(name, fresh, "menu")
                batch.play(state.prompts, True)
                batch.add(WaitDigit(state.timeout_ms))
                return batch.finish()
            case DigitsState():
                self._enter_input(name, fresh, "digits")
                batch.add(CollectDigits(state.prompts, state.max_digits, state.timeout_ms))
                return batch.finish()
            case RecordState():
                self._enter_input(name, fresh, "record")
                batch.add(Record(state.prompts, state.max_seconds, state.silence_seconds,
                                 beep=state.beep, name=state.file_hint))
                return batch.finish()
            case ActionState():
                self._awaiting = "action"
                batch.add(self._invoke(state))
                return batch.finish()
            case TransferState():
                batch.play(state.prompts, True)
                variables = {key: self._vars[key] for key in state.variables if self._vars.get(key)}
                ending: Transfer | HangUp = Transfer(state.to, MappingProxyType(variables))
                return self._end(batch, ending)
            case HangupState():
                if not self._settled:  # the loader proves this cannot happen for loaded flows
                    raise RunnerError(f"hangup state {name!r} reached before any settled state")
                batch.play(state.prompts, True)
                return self._end(batch, HangUp())
        raise RunnerError(f"state {name!r} has an unknown type")  # pragma: no cover

    def _enter_input(self, name: str, fresh: bool, awaiting: _Awaiting) -> None:
        if fresh:
            self._tries[name] = 0
        self._awaiting = awaiting

    def _invoke(self, state: ActionState) -> Invoke:
        args = {name: self._vars.get(name) for name in state.args}
        return Invoke(state.call, MappingProxyType(args))

    def _end(self, batch: _Batch, ending: Transfer | HangUp) -> list[Action]:
        batch.add(ending)
        self.ending = ending
        self._finished = True
        self._awaiting = None
        return batch.finish()

    # ---- after the caller hung up

    def _caller_gone(self) -> list[Action]:
        self._hung_up = True
        if self._awaiting == "action":
            return []  # the pending Invoke's result continues the owed work
        return self._owed_from(self._state)

    def _owed_from(self, name: str) -> list[Action]:
        """Run only service calls: action states reached from here, else on_hangup links."""
        while True:
            state = self.flow.states[name]
            if isinstance(state, ActionState) and name not in self._ran_after_hangup:
                self._ran_after_hangup.add(name)
                self._state = name
                self._awaiting = "action"
                return [self._invoke(state)]
            follow = state.on_hangup
            if follow is None or follow in self._ran_after_hangup:
                self._finished = True
                self._awaiting = None
                return []
            name = follow
