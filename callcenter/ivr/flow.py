"""An IVR flow as data: frozen states and transitions, loaded from `ivr_scripts/*.toml`.

Nothing here does I/O or decides anything; `loader` builds and validates these objects and
`engine.FlowRunner` interprets them. The closed sets below (state types, service actions
and their outcomes, digit validators, transfer targets) are the vocabulary the TOML files
may use, so the loader can reject a typo at start-up instead of in the middle of a call.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "ACTIONS",
    "CHANNEL_VARIABLES",
    "DTMF_KEYS",
    "TRANSFER_TARGETS",
    "VALIDATORS",
    "ActionSpec",
    "ActionState",
    "DigitsState",
    "Flow",
    "HangupState",
    "MenuState",
    "PlayState",
    "RecordState",
    "SayDigitsState",
    "SayStatusState",
    "State",
    "StateType",
    "Transition",
    "TransferState",
]

# Keys a caller can press; any of them interrupts an interruptible prompt.
DTMF_KEYS = "0123456789*#"

# Where a transfer hands the call back to the dialplan (extensions.conf CALLCENTER_NEXT).
TRANSFER_TARGETS = frozenset({"agent", "voicemail"})

# Context a flow may read from the channel before it starts (`[flow] from_channel`): the
# flow variable and the channel variable it comes from. The IVR itself sets them while it
# runs (config/asterisk/extensions.conf), so a script run later on the same channel, on
# another node, can see how far the first one got (`recover`).
CHANNEL_VARIABLES: Mapping[str, str] = MappingProxyType({
    "case_number": "CALLCENTER_CASE_NUMBER",
    "recording": "CALLCENTER_RECORDING",
    "report_keys": "CALLCENTER_REPORT_KEYS",
})

# Validators a `digits` state may name; the engine implements them.
VALIDATORS = frozenset({"case_number", "phone", "score_1_5"})


class StateType(enum.StrEnum):
    PLAY = "play"
    MENU = "menu"
    DIGITS = "digits"
    RECORD = "record"
    ACTION = "action"
    SAY_DIGITS = "say_digits"
    SAY_STATUS = "say_status"
    TRANSFER = "transfer"
    HANGUP = "hangup"


@dataclass(frozen=True)
class ActionSpec:
    """A service call the runtime performs for an `action` state.

    `outcomes` is the complete set the runtime may answer with, so the loader can insist
    that a flow says where each one goes; `values` are variables an `ok` result sets.
    """

    name: str
    outcomes: frozenset[str]
    values: tuple[str, ...] = ()
    summary: str = ""


def _spec(name: str, outcomes: set[str], values: tuple[str, ...], summary: str) -> ActionSpec:
    return ActionSpec(name, frozenset(outcomes), values, summary)


ACTIONS: Mapping[str, ActionSpec] = MappingProxyType({
    spec.name: spec for spec in (
        _spec("check_hours", {"ok", "after_hours"}, (),
              "are staff on duty now (BusinessHours, holidays and 调休 included)"),
        _spec("create_draft", {"ok", "error"}, ("case_number",),
              "commit a phone draft with its recording; ok sets case_number"),
        _spec("set_contact", {"ok", "error"}, (),
              "make the keyed number the draft's contact phone"),
        _spec("send_number_sms", {"ok", "no_number", "error"}, (),
              "queue the intake-number SMS; no_number when there is no mobile to text"),
        _spec("lookup_status", {"ok", "not_found", "error"}, ("status",),
              "a case's status; ok sets status (a CaseStatus value)"),
        _spec("check_rating", {"ok", "not_found", "not_closed", "not_reporter", "error"}, (),
              "may this caller rate this case now"),
        _spec("rate_case", {"ok", "not_found", "not_closed", "not_reporter", "error"}, (),
              "store the 1-5 rating"),
        _spec("request_callback", {"ok", "not_found", "not_reporter", "unavailable", "error"}, (),
              "the reporter asks to be called back for the rating once the case is closed (回访)"),
        _spec("voicemail_draft", {"ok", "error"}, ("case_number",),
              "commit a voicemail as a draft flagged for transcription; ok sets case_number"),
        _spec("recover_draft", {"ok", "nothing", "rejected", "error"}, ("case_number",),
              "file the draft of a recording whose IVR node died (idempotent by the recording); "
              "ok sets case_number, nothing: no recording to file or its draft is already named"),
    )
})


@dataclass(frozen=True)
class Transition:
    """Where to go next, with variables to set and prompts to play on the way.

    `counts_as_try`: arriving counts as one more failed try of the target input state
    (e.g. an unknown intake number sends the caller back to key it again, at most
    `tries` times in all, then to the target's on_fail).
    """

    target: str
    assign: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    prompts: tuple[str, ...] = ()
    counts_as_try: bool = False


@dataclass(frozen=True, kw_only=True)
class _StateBase:
    name: str
    # Entered in hung-up mode when the caller hangs up here: an `action` state that does
    # what is still owed (file the draft, send the number by SMS).
    on_hangup: str | None = None
    # The caller's business is concluded (number heard, rating stored, voicemail saved, or
    # nothing more can be done); only after such a state may the flow hang up.
    settled: bool = False
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class PlayState(_StateBase):
    prompts: tuple[str, ...]
    next: Transition
    interruptible: bool = True


@dataclass(frozen=True, kw_only=True)
class MenuState(_StateBase):
    prompts: tuple[str, ...]
    keys: Mapping[str, Transition]
    on_fail: Transition
    timeout_ms: int
    tries: int
    no_input: tuple[str, ...]
    invalid: tuple[str, ...]
    store: str | None = None


@dataclass(frozen=True, kw_only=True)
class DigitsState(_StateBase):
    prompts: tuple[str, ...]
    next: Transition
    on_fail: Transition
    store: str
    max_digits: int
    timeout_ms: int
    tries: int
    no_input: tuple[str, ...]
    invalid: tuple[str, ...]
    validator: str | None = None


@dataclass(frozen=True, kw_only=True)
class RecordState(_StateBase):
    prompts: tuple[str, ...]
    next: Transition
    on_fail: Transition
    store: str
    file_hint: str
    max_seconds: int
    silence_seconds: int
    min_ms: int
    beep: bool
    tries: int
    too_short: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ActionState(_StateBase):
    call: str
    args: tuple[str, ...]
    outcomes: Mapping[str, Transition]


@dataclass(frozen=True, kw_only=True)
class SayDigitsState(_StateBase):
    prompts: tuple[str, ...]
    var: str
    next: Transition
    interruptible: bool = False


@dataclass(frozen=True, kw_only=True)
class SayStatusState(_StateBase):
    prompts: tuple[str, ...]
    var: str
    next: Transition
    on_unknown: Transition


@dataclass(frozen=True, kw_only=True)
class TransferState(_StateBase):
    prompts: tuple[str, ...]
    to: str
    variables: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class HangupState(_StateBase):
    prompts: tuple[str, ...]


State = (PlayState | MenuState | DigitsState | RecordState | ActionState | SayDigitsState
         | SayStatusState | TransferState | HangupState)
InputState = MenuState | DigitsState | RecordState
INPUT_TYPES = (MenuState, DigitsState, RecordState)
TERMINAL_TYPES = (TransferState, HangupState)
# States the engine passes through without waiting for anything.
PASS_THROUGH_TYPES = (PlayState, SayDigitsState, SayStatusState)


def transitions(state: State) -> Iterator[tuple[str, Transition]]:
    """Every (label, transition) leaving a state, on_hangup excluded (it is not a path the
    caller takes, only where owed work starts once they are gone)."""
    match state:
        case PlayState() | SayDigitsState():
            yield "next", state.next
        case SayStatusState():
            yield "next", state.next
            yield "on_unknown", state.on_unknown
        case MenuState():
            for key, transition in state.keys.items():
                yield f"keys.{key}", transition
            yield "on_fail", state.on_fail
        case DigitsState() | RecordState():
            yield "next", state.next
            yield "on_fail", state.on_fail
        case ActionState():
            for outcome, transition in state.outcomes.items():
                yield f"outcomes.{outcome}", transition
        case TransferState() | HangupState():
            return


@dataclass(frozen=True)
class Flow:
    """One validated flow; `source` is the file it came from (for messages and logs)."""

    name: str
    start: str
    states: Mapping[str, State]
    source: str = "<memory>"
    description: str = ""
    # Context variables the runtime must supply to start() (e.g. callback: case_number).
    requires: tuple[str, ...] = ()
    # Context variables read from the channel first (CHANNEL_VARIABLES), e.g. recover.
    from_channel: tuple[str, ...] = ()

    def state(self, name: str) -> State:
        return self.states[name]
