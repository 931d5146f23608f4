"""The IVR engine against the shipped flows: every contract path, hang-ups, silence.

`Call` drives a real FlowRunner over the real flow files the way a runtime does (it plays
the caller and the service, nothing of ours is faked) and asserts the runtime contract of
callcenter.ivr.engine on every batch: the shape of a batch, no channel actions after a
hangup, HangUp only after a settled state, every prompt id has a prompt file.
"""

from __future__ import annotations

import datetime as dt
import random
import tomllib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.numbering import CaseNumber
from callcenter.ivr import (
    ACTIONS,
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
    RunnerError,
    SayDigits,
    Timeout,
    Transfer,
    UnexpectedEvent,
    WaitDigit,
    load_flows,
)
from callcenter.ivr.engine import validate_digits

from callcenter.ivr.flow import (
    DTMF_KEYS,
    ActionState,
    DigitsState,
    MenuState,
    RecordState,
    TransferState,
)
from callcenter.ivr.loader import PROMPTS_DIR, parse_flow
from callcenter.ivr.prompt_ids import prompt_ids

FLOWS = load_flows()
# Flows a caller answers (recover asks nothing: it is one service call, then the queue).
CALLER_FLOWS = sorted(name for name, flow in FLOWS.items()
                      if any(isinstance(s, (MenuState, DigitsState, RecordState)) for s in flow.states.values()))
PROMPT_IDS = frozenset(prompt_ids(PROMPTS_DIR))

CALLER = "+8613812345678"
# What the caller keys (a valid number) and a one-digit slip of it (wrong check digit).
KEYED = CaseNumber.build(dt.date(2026, 1, 5), 42).value
SLIP = KEYED[:-2] + str((int(KEYED[-2]) + 1) % 10) + KEYED[-1]
# The number the service gives a new draft.
DRAFT = CaseNumber.build(dt.date(2026, 3, 2), 7).value
OTHER_MOBILE = "13912345678"

INPUT_ACTIONS = (WaitDigit, CollectDigits, Record, Invoke)


def context_for(flow: Flow) -> dict[str, str]:
    context = {"caller": CALLER, "call_id": "1767225600.42"}
    if "case_number" in flow.requires:
        context["case_number"] = KEYED
    return context


def ok_values(name: str) -> dict[str, str]:
    values = {"case_number": DRAFT, "status": "processing"}
    return {key: values[key] for key in ACTIONS[name].values}


class Call:
    """One call through a flow; `actions` is the last batch."""

    def __init__(self, flow: Flow | str, context: Mapping[str, str] | None = None) -> None:
        self.flow = FLOWS[flow] if isinstance(flow, str) else flow
        self.runner = FlowRunner(self.flow)
        self.events: list[Event] = []
        self.emitted: list[Action] = []
        self.actions = self._check(self.runner.start(context if context is not None
                                                     else context_for(self.flow)))

    # ---- the caller and the service

    def feed(self, event: Event) -> list[Action]:
        self.events.append(event)
        self.actions = self._check(self.runner.feed(event))
        return self.actions

    def press(self, keys: str) -> list[Action]:
        return self.feed(Digits(keys))

    def silence(self) -> list[Action]:
        pending = self.pending
        if isinstance(pending, Record):
            return self.feed(RecordingDone("/rec/short.wav", 0, "silence"))
        return self.feed(Timeout())

    def speak(self, ms: int = 8000, ended_by: str = "dtmf") -> list[Action]:
        return self.feed(RecordingDone("/rec/report-1.wav", ms, ended_by))

    def result(self, outcome: str = "ok", **values: str) -> list[Action]:
        """Answer the pending service call (also one still running when the caller hung up)."""
        assert self.runner.awaiting == "action", f"no service call pending: {self.actions}"
        name = _pending_name(self)
        if outcome == "ok" and not values:
            values = ok_values(name)
        return self.feed(ActionResult(name, outcome, values))

    def hang_up(self) -> list[Action]:
        return self.feed(Hangup())

    # ---- what happened

    @property
    def pending(self) -> Action | None:
        return self.actions[-1] if self.actions else None

    @property
    def invoked(self) -> list[str]:
        return [a.action_name for a in self.emitted if isinstance(a, Invoke)]

    @property
    def heard(self) -> list[str]:
        """Prompt ids of the last batch, digits included, in order."""
        return prompts_of(self.actions)

    # ---- the runtime contract, asserted on every batch

    def _check(self, actions: list[Action]) -> list[Action]:
        runner = self.runner
        self.emitted.extend(actions)
        if not actions:
            assert runner.finished or (runner.hung_up and runner.awaiting == "action"), \
                f"empty batch while waiting in {runner.state}"
            return actions
        *leading, last = actions
        for action in leading:
            assert isinstance(action, (Play, SayDigits)), f"{action} before the end of a batch"
        if runner.hung_up:
            assert actions == [last] and isinstance(last, Invoke), \
                f"channel actions after the caller hung up: {actions}"
        if isinstance(last, (Transfer, HangUp)):
            assert runner.finished
        else:
            assert isinstance(last, INPUT_ACTIONS) and not runner.finished, actions
        if isinstance(last, HangUp):
            assert runner.settled, f"HangUp before the business was concluded: {self.events}"
        for action in actions:
            if isinstance(action, Play):
                assert action.escape_digits in ("", DTMF_KEYS)
            if isinstance(action, SayDigits):
                assert action.digits.isdigit()
        for prompt in prompts_of(actions):
            assert prompt in PROMPT_IDS, f"the flow plays {prompt!r}, which has no prompt file"
        if isinstance(last, Transfer):
            assert last.queue in ("agent", "voicemail")
        return actions


def prompts_of(actions: list[Action]) -> list[str]:
    heard: list[str] = []
    for action in actions:
        if isinstance(action, (Play, CollectDigits, Record)):
            heard.extend(action.prompt_ids)
        elif isinstance(action, SayDigits):
            heard.extend(action.prompt_ids)
    return heard


def answers(call: Call) -> list[Event]:
    """Every kind of answer the pending action can get (one sample each), hangup included."""
    runner = call.runner
    state = call.flow.states[runner.state]
    events: list[Event] = [Hangup()]
    if runner.awaiting == "menu":
        assert isinstance(state, MenuState)
        events += [Digits(key) for key in sorted(state.keys)]
        events += [Digits(next(k for k in DTMF_KEYS if k not in state.keys)), Timeout()]
    elif runner.awaiting == "digits":
        assert isinstance(state, DigitsState)
        valid = {"case_number": KEYED, "phone": OTHER_MOBILE, "score_1_5": "4", None: "123"}
        events += [Digits(valid[state.validator]), Digits(""), Digits(SLIP), Timeout()]
    elif runner.awaiting == "record":
        assert isinstance(state, RecordState)
        events += [RecordingDone("/rec/a.wav", state.min_ms + 4000, "dtmf"),
                   RecordingDone("/rec/b.wav", 0, "silence"),
                   RecordingDone("/rec/c.wav", state.min_ms + 4000, "hangup"),
                   RecordingDone("/rec/d.wav", 0, "hangup")]
    elif runner.awaiting == "action":
        name = _pending_name(call)
        for outcome in sorted(ACTIONS[name].outcomes):
            events.append(ActionResult(name, outcome, ok_values(name) if outcome == "ok" else {}))
    return events


def _pending_name(call: Call) -> str:
    for action in reversed(call.emitted):
        if isinstance(action, Invoke):
            return action.action_name
    raise AssertionError("awaiting an action result, but none was invoked")


def replay(flow: Flow, events: list[Event]) -> Call:
    call = Call(flow)
    for event in events:
        call.feed(event)
    return call


@dataclass
class Explored:
    """A shortest event path to each (state, hung_up) the runner can wait in."""

    paths: dict[tuple[str, bool], list[Event]] = field(default_factory=dict)


def explore(flow: Flow) -> Explored:
    found = Explored()
    start = Call(flow)
    queue: deque[list[Event]] = deque([[]])
    found.paths[(start.runner.state, False)] = []
    while queue:
        path = queue.popleft()
        call = replay(flow, path)
        if call.runner.finished:
            continue
        for event in answers(call):
            step = replay(flow, path)
            step.feed(event)
            key = (step.runner.state, step.runner.hung_up)
            if not step.runner.finished and key not in found.paths:
                found.paths[key] = [*path, event]
                queue.append([*path, event])
    return found


# =============================================================================== tests
# ------------------------------------------------------------------------ main menu


def test_welcome_and_main_menu_can_be_answered_during_the_prompts() -> None:
    """The welcome and the menu are one interruptible prompt run before waiting for a key."""
    call = Call("hotline")
    assert call.actions == [Play(("welcome", "main_menu"), DTMF_KEYS), WaitDigit(6000)]
    call.press("2")  # pressed while the welcome was still playing
    assert call.actions == [CollectDigits(("status_enter_number",), 12, 10000)]


def test_nine_repeats_the_menu_and_resets_the_tries() -> None:
    call = Call("hotline")
    call.silence()
    call.press("7")
    assert call.runner.tries("main_menu") == 2
    call.press("9")
    assert call.actions == [Play(("main_menu",), DTMF_KEYS), WaitDigit(6000)]
    assert call.runner.tries("main_menu") == 0
    call.silence()
    call.silence()
    assert call.runner.state == "main_menu" and not call.runner.finished


def test_silence_and_wrong_keys_are_explained_before_the_menu_again() -> None:
    call = Call("hotline")
    call.silence()
    assert call.heard == ["no_input", "main_menu"]
    call.press("7")
    assert call.heard == ["invalid_input", "main_menu"]
    assert call.actions[0].escape_digits == DTMF_KEYS  # the caller may answer at once


# ---------------------------------------------------------------------- 1: report

COMPONENT_MAJORS = [str(d) for d in range(1, 7)]
EVENT_MAJORS = [str(d) for d in range(1, 6)]


@pytest.mark.parametrize(("kind_key", "kind", "major"),
                         [("1", "component", m) for m in COMPONENT_MAJORS]
                         + [("2", "event", m) for m in EVENT_MAJORS])
def test_report_each_major_category(kind_key: str, kind: str, major: str) -> None:
    """Kind, major digit, recording: the draft is filed, the number sent and then spoken."""
    call = Call("hotline")
    call.press("1")
    assert call.heard == ["report_kind"]
    call.press(kind_key)
    assert call.heard == [f"report_{kind}_major"]
    call.press(major)
    assert call.actions == [Play((f"cat_{kind}_0{major}",), DTMF_KEYS),  # the category chosen; a key skips to the beep
                            Record(("record_instructions",), 120, 5, beep=True, escape="#",
                                   name="report")]
    call.speak(9000)
    assert call.actions == [Invoke("create_draft", {
        "kind": kind, "major": major, "recording": "/rec/report-1.wav", "recording_ms": "9000",
        "caller": CALLER, "call_id": "1767225600.42"})]
    call.result("ok", case_number=DRAFT)
    assert call.heard == ["record_saved", "contact_choice"]
    call.press("1")
    assert call.actions == [Invoke("send_number_sms",
                                   {"case_number": DRAFT, "contact": None, "caller": CALLER})]
    call.result()
    assert call.actions == [
        Play(("your_number_is",), ""),  # the number itself cannot be skipped by a key
        SayDigits(DRAFT),
        Play(("number_also_by_sms", "repeat_number_hint"), DTMF_KEYS),
        WaitDigit(6000),
    ]
    assert call.actions[1].prompt_ids == tuple(f"digit_{d}" for d in DRAFT)
    # committed before spoken: the draft and the SMS were both done before the digits
    spoken_at = call.emitted.index(SayDigits(DRAFT))
    assert [a.action_name for a in call.emitted[:spoken_at] if isinstance(a, Invoke)] == \
        ["create_draft", "send_number_sms"]
    call.silence()
    assert call.actions == [Play(("thanks_goodbye",), DTMF_KEYS), HangUp()]
    assert call.runner.finished and call.runner.ending == HangUp()


def test_nine_repeats_the_intake_number() -> None:
    call = _at_contact_choice()
    call.press("1")
    call.result()
    call.press("9")
    assert call.actions[:2] == [Play(("your_number_is",), ""), SayDigits(DRAFT)]


def test_other_contact_number_bad_then_good() -> None:
    call = _at_contact_choice()
    call.press("2")
    assert call.actions == [CollectDigits(("enter_callback_number",), 12, 10000)]
    call.press("123")
    assert call.heard == ["invalid_input", "enter_callback_number"]
    call.press(OTHER_MOBILE)
    assert call.actions == [Invoke("set_contact", {"case_number": DRAFT,
                                                    "contact": "+86" + OTHER_MOBILE})]
    call.result()
    assert call.actions == [Invoke("send_number_sms", {
        "case_number": DRAFT, "contact": "+86" + OTHER_MOBILE, "caller": CALLER})]
    call.result()
    assert SayDigits(DRAFT) in call.actions


def test_no_mobile_to_text_means_no_sms_promise() -> None:
    call = _at_contact_choice()
    call.press("1")
    call.result("no_number")
    assert "number_also_by_sms" not in call.heard
    assert SayDigits(DRAFT) in call.actions
    call.press("9")
    assert SayDigits(DRAFT) in call.actions and "number_also_by_sms" not in call.heard


def test_too_short_recordings_are_asked_again_then_a_person() -> None:
    call = _at_recording()
    call.speak(300, "dtmf")
    assert call.heard == ["record_too_short", "record_instructions"]
    call.speak(0, "silence")
    call.speak(200, "silence")
    assert call.actions == [Invoke("check_hours", {})]
    assert "create_draft" not in call.invoked


def test_draft_failure_reaches_a_person_with_nothing_lost() -> None:
    call = _at_recording()
    call.speak()
    call.result("error")
    call.result("ok")  # check_hours
    assert call.actions == [Play(("transfer_to_agent",), DTMF_KEYS), Transfer("agent", {})]


def test_silence_at_the_contact_choice_still_gives_the_number_then_0_a_person() -> None:
    # once the draft is committed the caller always hears its number, and the caller ID
    # gets it by SMS (no other number was chosen)
    call = _at_contact_choice()
    for _ in range(3):
        call.silence()
    assert call.pending == Invoke("send_number_sms", {"case_number": DRAFT, "contact": None,
                                                      "caller": "+8613812345678"})
    call.result("ok")
    assert call.actions[:2] == [Play(("your_number_is",), ""), SayDigits(DRAFT)]
    call.press("0")  # after the number: a person, who sees the draft
    call.result("ok")  # check_hours
    assert call.pending == Transfer("agent", {"case_number": DRAFT})


# ----------------------------------------------------------------------- 2: status


def test_status_with_a_wrong_check_digit_then_right() -> None:
    call = Call("hotline")
    call.press("2")
    call.press(SLIP)
    assert call.heard == ["status_wrong_check_digit", "status_enter_number"]
    assert call.actions[0].escape_digits == DTMF_KEYS  # typing may start during the apology
    call.press(KEYED)
    assert call.actions == [Invoke("lookup_status", {"case_number": KEYED})]
    call.result("ok", status="processing")
    assert call.actions == [Play(("status_is", "status_processing"), ""), Play(("thanks_goodbye",), DTMF_KEYS),
                            HangUp()]


@pytest.mark.parametrize("status", [s.value for s in CaseStatus])
def test_every_status_has_words(status: str) -> None:
    call = Call("status")
    call.press(KEYED)
    call.result("ok", status=status)
    assert call.heard[:2] == ["status_is", f"status_{status}"]


def test_unknown_number_is_asked_again_then_a_person() -> None:
    call = Call("hotline")
    call.press("2")
    call.press(KEYED)
    call.result("not_found")
    assert call.heard == ["status_not_found", "status_enter_number"]
    call.press(KEYED)
    call.result("not_found")
    call.press(KEYED)
    call.result("not_found")
    assert call.actions == [Play(("status_not_found",), ""), Invoke("check_hours", {})]


def test_unknown_status_value_reaches_a_person() -> None:
    call = Call("hotline")
    call.press("2")
    call.press(KEYED)
    call.result("ok", status="archived")
    assert call.actions == [Invoke("check_hours", {})]


# ----------------------------------------------------------------------- 3: rating


def test_rating_a_closed_case() -> None:
    call = Call("hotline")
    call.press("3")
    assert call.heard == ["rate_enter_number"]
    call.press(SLIP)
    assert call.heard == ["status_wrong_check_digit", "rate_enter_number"]
    call.press(KEYED)
    assert call.actions == [Invoke("check_rating", {"case_number": KEYED, "caller": CALLER})]
    call.result()
    assert call.heard == ["rate_enter_score"]
    call.press("4")
    assert call.actions == [Invoke("rate_case", {"case_number": KEYED, "score": "4",
                                                 "caller": CALLER})]
    call.result()
    assert call.actions == [Play(("rate_thanks", "thanks_goodbye"), DTMF_KEYS), HangUp()]


@pytest.mark.parametrize(("outcome", "prompt", "then"), [("not_closed", "rate_not_closed", "offer_callback"),
                                                         ("not_reporter", "rate_not_reporter", "main_menu")])
def test_rating_refused_returns_to_the_main_menu(outcome: str, prompt: str, then: str) -> None:
    # not closed yet: the reporter is first offered a rating call-back (回访) once it is
    call = Call("hotline")
    call.press("3")
    call.press(KEYED)
    call.result(outcome)
    assert call.heard == [prompt, "callback_offer" if then == "offer_callback" else "main_menu"]
    assert isinstance(call.pending, WaitDigit) and call.runner.state == then


def test_callback_rates_the_case_it_was_placed_for() -> None:
    call = Call("callback")
    assert call.heard == ["callback_intro", "rate_enter_score"]
    call.press("5")
    assert call.actions == [Invoke("rate_case", {"case_number": KEYED, "score": "5"})]
    call.result()
    assert call.actions[-1] == HangUp()


def test_callback_needs_its_case_number() -> None:
    with pytest.raises(RunnerError, match="case_number"):
        FlowRunner(FLOWS["callback"]).start({"caller": CALLER})


# -------------------------------------------------------------- 0: a person, hours


def test_zero_reaches_an_agent_in_hours() -> None:
    call = Call("hotline")
    call.press("0")
    assert call.actions == [Invoke("check_hours", {})]
    call.result("ok")
    assert call.actions == [Play(("transfer_to_agent",), DTMF_KEYS), Transfer("agent", {})]


def test_zero_after_hours_goes_to_voicemail() -> None:
    call = Call("hotline")
    call.press("0")
    call.result("after_hours")
    assert call.actions == [Play(("after_hours",), DTMF_KEYS), Transfer("voicemail", {})]


def test_voicemail_becomes_a_draft_and_its_number_is_spoken() -> None:
    call = Call("voicemail")
    assert call.actions == [Record(("voicemail_instructions",), 180, 6, name="voicemail")]
    call.speak(20000, "dtmf")
    assert call.actions == [Invoke("voicemail_draft", {
        "recording": "/rec/report-1.wav", "recording_ms": "20000", "caller": CALLER,
        "call_id": "1767225600.42", "case_number": None})]
    call.result()
    assert call.invoked[-1] == "send_number_sms"
    call.result()
    assert call.heard[0] == "voicemail_saved" and SayDigits(DRAFT) in call.actions
    call.silence()
    assert call.actions[-1] == HangUp()


def test_voicemail_that_cannot_be_filed_is_apologised_for() -> None:
    call = Call("voicemail")
    call.speak()
    call.result("error")
    assert call.actions == [Play(("system_busy", "goodbye"), DTMF_KEYS), HangUp()]


# ------------------------------------------------------------ hang-ups: nothing lost


def test_hangup_after_speaking_files_the_draft_and_sends_the_number() -> None:
    call = _at_recording()
    call.speak(6000, "hangup")
    assert call.actions == [Invoke("create_draft", {
        "kind": "event", "major": "2", "recording": "/rec/report-1.wav", "recording_ms": "6000",
        "caller": CALLER, "call_id": "1767225600.42"})]
    call.result()
    assert call.actions == [Invoke("send_number_sms",
                                   {"case_number": DRAFT, "contact": None, "caller": CALLER})]
    call.result()
    assert call.actions == [] and call.runner.finished


def test_hangup_before_speaking_owes_nothing() -> None:
    call = _at_recording()
    call.speak(0, "hangup")
    assert call.actions == [] and call.runner.finished
    call = _at_recording()
    call.hang_up()  # during the instructions
    assert call.actions == [] and call.runner.finished


def test_hangup_at_the_contact_choice_still_sends_the_number() -> None:
    call = _at_contact_choice()
    call.hang_up()
    assert call.actions == [Invoke("send_number_sms",
                                   {"case_number": DRAFT, "contact": None, "caller": CALLER})]
    call.result("error")
    assert call.runner.finished


def test_hangup_while_a_service_call_runs_waits_for_its_result() -> None:
    call = _at_recording()
    call.speak()
    call.hang_up()  # noticed while create_draft was running
    assert call.actions == [] and not call.runner.finished
    call.result()
    assert call.actions == [Invoke("send_number_sms",
                                   {"case_number": DRAFT, "contact": None, "caller": CALLER})]


def test_voicemail_hangup_after_speaking_is_saved() -> None:
    call = Call("voicemail")
    call.speak(15000, "hangup")
    assert [a.action_name for a in call.actions] == ["voicemail_draft"]
    call.result()
    assert [a.action_name for a in call.actions] == ["send_number_sms"]
    call.result()
    assert call.runner.finished


@pytest.mark.parametrize("flow_name", sorted(FLOWS))
def test_hangup_in_every_state_emits_what_is_owed(flow_name: str) -> None:
    """From every waiting point: hang up, let every owed call succeed, check nothing is lost."""
    flow = FLOWS[flow_name]
    paths = explore(flow).paths
    waiting = {name for name, s in flow.states.items()
               if isinstance(s, (MenuState, DigitsState, RecordState, ActionState))}
    assert waiting <= {state for state, hung_up in paths if not hung_up}  # all were visited
    for (state, hung_up), path in paths.items():
        if hung_up:
            continue
        call = replay(flow, path)
        attempted_before = set(call.invoked)
        recording_ms = int(call.runner.variables.get("recording_ms", "0"))
        record_states = [s for s in flow.states.values() if isinstance(s, RecordState)]
        spoke = any(recording_ms >= s.min_ms for s in record_states)
        call.hang_up()
        owed: list[str] = []
        for _ in range(10):
            if call.runner.finished:
                break
            if isinstance(call.pending, Invoke):
                owed.append(call.pending.action_name)
            call.result()
        assert call.runner.finished, f"{flow_name}/{state}: still running after the hangup"
        drafts = {"create_draft", "voicemail_draft"}
        if spoke and not attempted_before & drafts:
            assert owed and owed[0] in drafts, f"{flow_name}/{state}: the recording was dropped"
        has_draft = bool(attempted_before & drafts) or bool(set(owed) & drafts)
        if has_draft and "send_number_sms" not in attempted_before:
            assert "send_number_sms" in owed, f"{flow_name}/{state}: the number SMS was dropped"
        if not (spoke or has_draft):
            assert not set(owed) & (drafts | {"send_number_sms"}), f"{flow_name}/{state}: {owed}"


# ---------------------------------------------- silence and wrong keys: a person


def test_every_flow_but_recover_takes_input() -> None:
    assert set(FLOWS) - set(CALLER_FLOWS) == {"recover"}


@pytest.mark.parametrize("in_hours", [True, False], ids=["in-hours", "after-hours"])
@pytest.mark.parametrize("flow_name", CALLER_FLOWS)
def test_three_silent_tries_reach_a_person_from_every_input(flow_name: str, in_hours: bool) -> None:
    """From every menu, digits and record state: silence ends with the agent (voicemail
    after hours), or, when the caller's business is already concluded, with goodbye."""
    flow = FLOWS[flow_name]
    checked = 0
    for (state_name, hung_up), path in explore(flow).paths.items():
        state = flow.states[state_name]
        if hung_up or not isinstance(state, (MenuState, DigitsState, RecordState)):
            continue
        for silent in (True, False):
            call = replay(flow, path)
            settled_before = call.runner.settled
            for attempt in range(1, state.tries + 1):
                assert call.runner.state == state_name
                if silent or isinstance(state, RecordState):
                    call.silence()
                elif isinstance(state, MenuState):
                    call.press(next(k for k in DTMF_KEYS if k not in state.keys))
                else:
                    call.press("1")
            for _ in range(10):  # the way to a person: only service calls
                if call.runner.finished:
                    break
                pending = call.pending
                assert isinstance(pending, Invoke), f"{flow_name}/{state_name}: {call.actions}"
                if pending.action_name == "check_hours":
                    call.result("ok" if in_hours else "after_hours")
                else:
                    call.result()
                if not call.runner.finished and isinstance(call.pending, WaitDigit):
                    call.silence()  # a settled menu after a saved voicemail
            ending = call.runner.ending
            assert call.runner.finished, f"{flow_name}/{state_name} did not end"
            if isinstance(ending, Transfer):
                assert ending.queue == ("agent" if in_hours else "voicemail")
            else:
                assert ending == HangUp()
                # a committed draft: its number was spoken (and texted), then goodbye
                assert settled_before or {"voicemail_draft", "create_draft"} & set(call.invoked), \
                    f"{flow_name}/{state_name}: silence ended in a hangup"
            checked += 1
    assert checked >= 2


# ------------------------------------------------------------ random walk (seeded)


def _random_event(call: Call, rng: random.Random) -> Event:
    choices = answers(call)
    if call.runner.awaiting in ("menu", "digits") and rng.random() < 0.3:
        return Digits("".join(rng.choice(DTMF_KEYS[:10]) for _ in range(rng.randint(0, 13))))
    if call.runner.awaiting == "action" and rng.random() < 0.1:
        name = _pending_name(call)
        if "error" in ACTIONS[name].outcomes:
            return ActionResult(name, "surprise", {})  # an unknown outcome counts as error
    if rng.random() > 0.05:  # hang up rarely, so walks get deep
        choices = [e for e in choices if not isinstance(e, Hangup)] or choices
    return rng.choice(choices)


def _silent_event(call: Call, rng: random.Random) -> Event:
    if call.runner.awaiting == "record":
        return RecordingDone("/rec/s.wav", 0, "silence")
    if call.runner.awaiting == "action":
        return rng.choice([e for e in answers(call) if isinstance(e, ActionResult)])
    return Timeout()


@pytest.mark.parametrize("flow_name", CALLER_FLOWS)
def test_random_walks_never_hang_up_unasked_and_always_end(flow_name: str) -> None:
    """Any input for a while, then silence: the call ends within a bounded number of steps,
    and HangUp only ever follows a settled state (asserted on every batch by Call)."""
    rng = random.Random(f"ivr-{flow_name}")
    flow = FLOWS[flow_name]
    endings: set[str] = set()
    for _ in range(300):
        call = Call(flow)
        for _ in range(rng.randint(0, 40)):
            if call.runner.finished:
                break
            call.feed(_random_event(call, rng))
        for _ in range(SILENT_STEPS_TO_END):
            if call.runner.finished:
                break
            call.feed(_silent_event(call, rng))
        assert call.runner.finished, f"{flow_name}: still running after silence: {call.events}"
        ending = call.runner.ending
        endings.add("hung-up" if ending is None else
                    ending.queue if isinstance(ending, Transfer) else "hangup")
    # every way a call of this flow can end was seen (the walk is not stuck in a corner)
    assert endings == {s.to for s in flow.states.values() if isinstance(s, TransferState)} | {
        "hangup", "hung-up"}


# Enough for three tries at every input state on the longest way to a person.
SILENT_STEPS_TO_END = 40


# -------------------------------------------------------------------- misuse


def test_events_that_do_not_answer_the_pending_action_are_refused() -> None:
    call = Call("hotline")
    with pytest.raises(UnexpectedEvent):
        call.runner.feed(ActionResult("create_draft", "ok", {}))
    call.press("0")
    with pytest.raises(UnexpectedEvent):
        call.runner.feed(Digits("1"))
    with pytest.raises(UnexpectedEvent):
        call.runner.feed(ActionResult("lookup_status", "ok", {}))


def test_nothing_happens_after_the_end() -> None:
    call = Call("hotline")
    call.press("0")
    call.result("ok")
    assert call.runner.feed(Hangup()) == [] and call.runner.feed(Timeout()) == []


def test_the_runner_must_be_started_once() -> None:
    runner = FlowRunner(FLOWS["hotline"])
    with pytest.raises(RunnerError):
        runner.feed(Timeout())
    runner.start({})
    with pytest.raises(RunnerError):
        runner.start({})


@pytest.mark.parametrize(("validator", "text", "expected"), [
    ("case_number", KEYED, KEYED),
    ("case_number", SLIP, None),
    ("case_number", "1234", None),
    ("case_number", "", None),
    ("phone", OTHER_MOBILE, "+86" + OTHER_MOBILE),
    ("phone", "075512345678", "+8675512345678"),
    ("phone", "123", None),
    ("phone", "13912345678*", None),
    ("score_1_5", "5", "5"),
    ("score_1_5", "6", None),
    ("score_1_5", "45", None),
    (None, "42", "42"),
    (None, "", None),
])
def test_validators(validator: str | None, text: str, expected: str | None) -> None:
    assert validate_digits(validator, text) == expected


def test_a_prompt_marked_not_interruptible_must_be_heard() -> None:
    """Keys skip prompts only back to the first one that must be heard."""
    flow = parse_flow(tomllib.loads("""
        [flow]
        start = "notice"
        [states.notice]
        type = "play"
        prompts = ["welcome"]
        interruptible = false
        next = "hint"
        [states.hint]
        type = "play"
        prompts = ["repeat_number_hint"]
        next = "menu"
        [states.menu]
        type = "menu"
        prompts = ["main_menu"]
        on_fail = "agent"
        keys = { 1 = "agent" }
        [states.agent]
        type = "transfer"
        to = "agent"
    """), known_prompts=PROMPT_IDS)
    call = Call(flow, {})
    assert call.actions == [Play(("welcome",), ""),
                            Play(("repeat_number_hint", "main_menu"), DTMF_KEYS), WaitDigit(6000)]


# ------------------------------------------------------------------------ helpers


def _at_recording() -> Call:
    call = Call("hotline")
    call.press("1")
    call.press("2")  # 事件
    call.press("2")  # 宣传广告
    assert isinstance(call.pending, Record)
    return call


def _at_contact_choice() -> Call:
    call = _at_recording()
    call.speak()
    call.result("ok", case_number=DRAFT)
    assert call.runner.state == "contact"
    return call
