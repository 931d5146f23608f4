"""Flow files: every shipped flow loads; broken ones are refused with a message naming
the file, the state and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from callcenter.cases.catalogue import CaseKind, Catalogue
from callcenter.ivr import FlowError, load_flow, load_flows
from callcenter.ivr.flow import (
    ACTIONS,
    ActionState,
    DigitsState,
    HangupState,
    MenuState,
    RecordState,
    TransferState,
)
from callcenter.ivr.loader import FLOWS_DIR, PROMPTS_DIR

# A small valid flow; each bad-flow test breaks one thing in it.
GOOD = """
[flow]
name = "tiny"
start = "menu"

[states.menu]
type = "menu"
prompts = ["main_menu"]
on_fail = "to_person"
keys = { 1 = "number", 0 = "to_person" }

[states.number]
type = "digits"
prompts = ["status_enter_number"]
validator = "case_number"
store = "case_number"
max_digits = 12
next = "lookup"
on_fail = "to_person"

[states.lookup]
type = "action"
call = "lookup_status"
args = ["case_number"]
[states.lookup.outcomes]
ok = "say"
not_found = { next = "number", play = ["status_not_found"], fail = true }
error = "to_person"

[states.say]
type = "say_status"
settled = true
next = "bye"
on_unknown = "to_person"

[states.bye]
type = "hangup"
prompts = ["goodbye"]

[states.to_person]
type = "action"
call = "check_hours"
outcomes = { ok = "agent", after_hours = "agent" }

[states.agent]
type = "transfer"
to = "agent"
prompts = ["transfer_to_agent"]
"""


def write(tmp_path: Path, text: str, name: str = "tiny.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refused(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(FlowError) as caught:
        load_flow(path, PROMPTS_DIR)
    message = str(caught.value)
    assert str(path) in message
    return message


# ---------------------------------------------------------------- shipped flows


def test_every_shipped_flow_loads() -> None:
    flows = load_flows()
    assert set(flows) == {"hotline", "status", "voicemail", "callback", "recover"}
    assert {p.stem for p in FLOWS_DIR.glob("*.toml")} == set(flows)
    for flow in flows.values():
        assert flow.start in flow.states
        assert flow.source.endswith(f"{flow.name}.toml")


def test_the_hotline_keys_are_the_contract() -> None:
    """Main menu 1/2/3/0/9; 部件 majors 1-6, 事件 majors 1-5; status and rating by number."""
    flow = load_flows()["hotline"]
    menu = flow.states["main_menu"]
    assert isinstance(menu, MenuState)
    assert {k: t.target for k, t in menu.keys.items()} == {
        "1": "report_kind", "2": "status_number", "3": "rate_number", "0": "to_person",
        "9": "main_menu"}
    kind = flow.states["report_kind"]
    assert isinstance(kind, MenuState)
    assert {k: dict(t.assign) for k, t in kind.keys.items()} == {
        "1": {"kind": "component"}, "2": {"kind": "event"}}
    for state, majors in (("component_major", "123456"), ("event_major", "12345")):
        menu = flow.states[state]
        assert isinstance(menu, MenuState) and menu.store == "major"
        assert "".join(sorted(menu.keys)) == majors
    for state in ("status_number", "rate_number"):
        digits = flow.states[state]
        assert isinstance(digits, DigitsState) and digits.validator == "case_number"
    score = flow.states["rate_score"]
    assert isinstance(score, MenuState) and "".join(sorted(score.keys)) == "12345"
    contact = flow.states["contact"]
    assert isinstance(contact, MenuState) and sorted(contact.keys) == ["1", "2"]
    record = flow.states["record"]
    assert isinstance(record, RecordState) and record.max_seconds > 0 and record.silence_seconds > 0


def test_recover_reads_the_lost_ivr_s_trail_from_the_channel_and_always_ends_with_a_person() -> None:
    flow = load_flows()["recover"]
    assert flow.from_channel == ("case_number", "recording", "report_keys")
    action = flow.states[flow.start]
    assert isinstance(action, ActionState) and action.call == "recover_draft"
    assert {o: t.target for o, t in action.outcomes.items()} == {
        "ok": "to_person", "nothing": "to_person", "rejected": "to_person", "error": "to_person"}


def test_from_channel_names_only_known_channel_context(tmp_path: Path) -> None:
    text = GOOD.replace('start = "menu"', 'start = "menu"\nfrom_channel = ["recording", "secret"]')
    assert "unknown channel context 'secret'" in refused(tmp_path, text)
    fine = GOOD.replace('start = "menu"', 'start = "menu"\nfrom_channel = ["recording", "report_keys"]')
    assert load_flow(write(tmp_path, fine), PROMPTS_DIR).from_channel == ("recording", "report_keys")


def test_shipped_input_states_all_have_a_way_to_a_person_or_an_end() -> None:
    for flow in load_flows().values():
        for state in flow.states.values():
            if isinstance(state, (MenuState, DigitsState, RecordState)):
                assert state.tries >= 1 and state.on_fail.target in flow.states


def test_the_good_sample_loads(tmp_path: Path) -> None:
    flow = load_flow(write(tmp_path, GOOD), PROMPTS_DIR)
    assert flow.name == "tiny" and len(flow.states) == 7


# --------------------------------------------------------------------- refused


def test_not_toml(tmp_path: Path) -> None:
    assert "not valid TOML" in refused(tmp_path, GOOD + "\n[states.menu\n")


def test_unknown_state_type(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('type = "say_status"', 'type = "speak"'))
    assert "state 'say': type: unknown state type 'speak'" in message


def test_unknown_key(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('max_digits = 12', 'max_digits = 12\nmax_digit = 3'))
    assert "state 'number': max_digit: unknown key for a digits state" in message


def test_unknown_top_level_and_flow_keys(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('[flow]', '[menus]\n\n[flow]\nstrat = "x"'))
    assert "menus: unknown top-level table" in message
    assert "[flow] strat: unknown key" in message


def test_dangling_transition(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('1 = "number"', '1 = "numbre"'))
    assert "state 'menu': keys.1: goes to 'numbre', which is not a state" in message


def test_dangling_start(tmp_path: Path) -> None:
    assert "[flow] start: start state 'menus' does not exist" in refused(
        tmp_path, GOOD.replace('start = "menu"', 'start = "menus"'))


def test_unknown_prompt_id(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('["goodbye"]', '["good_bye"]'))
    assert "state 'bye': prompts: unknown prompt id 'good_bye'" in message


def test_unknown_prompt_in_a_transition(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('["status_not_found"]', '["not_found"]'))
    assert "state 'lookup': outcomes.not_found.play: unknown prompt id 'not_found'" in message


def test_prompts_are_checked_against_the_given_directory(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "main_menu.txt").write_text("菜单", encoding="utf-8")
    path = write(tmp_path, GOOD)
    with pytest.raises(FlowError, match="unknown prompt id 'goodbye'"):
        load_flow(path, prompts)
    assert load_flow(path, None).name == "tiny"  # None: no prompt check


def test_unreachable_state(tmp_path: Path) -> None:
    extra = '\n[states.orphan]\ntype = "play"\nprompts = ["goodbye"]\nnext = "agent"\n'
    assert "state 'orphan': unreachable from start 'menu'" in refused(tmp_path, GOOD + extra)


def test_state_that_can_never_end(tmp_path: Path) -> None:
    text = GOOD.replace('keys = { 1 = "number", 0 = "to_person" }',
                        'keys = { 1 = "number", 0 = "to_person", 5 = "limbo" }')
    text += ('\n[states.limbo]\ntype = "menu"\nprompts = ["main_menu"]\non_fail = "limbo"\n'
             'keys = { 9 = "limbo" }\n')
    assert "state 'limbo': no transfer or hangup state can be reached" in refused(tmp_path, text)


def test_menu_without_on_fail(tmp_path: Path) -> None:
    text = GOOD.replace('on_fail = "to_person"\nkeys = { 1', 'keys = { 1')
    assert "state 'menu': on_fail: missing (required for a menu state)" in refused(tmp_path, text)


@pytest.mark.parametrize("tries", ["0", "-1", "2.5", '"3"'])
def test_tries_below_one(tmp_path: Path, tries: str) -> None:
    text = GOOD.replace('on_fail = "to_person"\nkeys = { 1',
                        f'tries = {tries}\non_fail = "to_person"\nkeys = {{ 1')
    assert "state 'menu': tries: must be a whole number from 1 to 20" in refused(tmp_path, text)


def test_bad_defaults(tmp_path: Path) -> None:
    text = GOOD.replace('[flow]', '[defaults]\ntries = 0\nretries = 3\n\n[flow]')
    message = refused(tmp_path, text)
    assert "[defaults] tries: must be a whole number from 1 to 20" in message
    assert "[defaults] retries: unknown key" in message


def test_key_that_is_not_a_phone_key(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('0 = "to_person" }', '10 = "to_person" }'))
    assert "state 'menu': keys.10: '10' is not a phone key" in message


def test_unknown_service_action(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('call = "lookup_status"', 'call = "find_case"'))
    assert "state 'lookup': call: unknown service action 'find_case'" in message


def test_every_outcome_must_be_mapped(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('error = "to_person"\n', ''))
    assert "state 'lookup': outcomes: lookup_status can answer ['error']" in message


def test_outcome_the_action_does_not_have(tmp_path: Path) -> None:
    text = GOOD.replace('after_hours = "agent"', 'after_hours = "agent", closed = "agent"')
    message = refused(tmp_path, text)
    assert "state 'to_person': outcomes.closed: check_hours has no outcome 'closed'" in message


def test_hangup_without_a_settled_state_first(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace("settled = true\n", ""))
    assert "state 'bye': hangs up on a caller whose business is not concluded" in message
    assert "menu -> number -> lookup -> say -> bye" in message


def test_hangup_reached_by_silence_is_refused(tmp_path: Path) -> None:
    """The failure path of a menu may not end the call: it must reach a person."""
    text = GOOD.replace('on_fail = "to_person"\nkeys = { 1', 'on_fail = "bye"\nkeys = { 1')
    message = refused(tmp_path, text)
    assert ("state 'bye': hangs up on a caller whose business is not concluded: "
            "reachable via menu -> bye") in message


def test_on_hangup_must_name_an_action(tmp_path: Path) -> None:
    text = GOOD.replace('store = "case_number"', 'store = "case_number"\non_hangup = "bye"')
    message = refused(tmp_path, text)
    assert "state 'number': on_hangup: must name an action state" in message


def test_fail_transition_must_target_an_input(tmp_path: Path) -> None:
    message = refused(tmp_path, GOOD.replace('next = "number", play', 'next = "say", play'))
    assert ("state 'lookup': outcomes.not_found: "
            "fail = true needs a menu, digits or record target") in message


def test_loop_without_waiting(tmp_path: Path) -> None:
    text = GOOD.replace('next = "bye"\non_unknown', 'next = "again"\non_unknown')
    text += '\n[states.again]\ntype = "play"\nprompts = ["goodbye"]\nnext = "say"\n'
    assert "loop without waiting for the caller" in refused(tmp_path, text)


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('validator = "case_number"', 'validator = "damm"',
     "state 'number': validator: unknown validator 'damm'"),
    ('to = "agent"', 'to = "supervisor"',
     "state 'agent': to: unknown transfer target 'supervisor'"),
    ('store = "case_number"', 'store = "Case Number"',
     "state 'number': store: 'Case Number' is not a name"),
    ('max_digits = 12', 'max_digits = 0',
     "state 'number': max_digits: must be a whole number from 1 to 32"),
    ('settled = true', 'settled = "yes"', "state 'say': settled: must be true or false"),
    ('prompts = ["goodbye"]', 'prompts = "goodbye"',
     "state 'bye': prompts: must be a list of prompt ids"),
    ('1 = "number"', '1 = { next = "number", sett = { a = "b" } }',
     "state 'menu': keys.1: unknown transition key(s) ['sett']"),
])
def test_bad_values_name_state_and_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD
    assert expected in refused(tmp_path, GOOD.replace(old, new, 1))


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('type = "say_status"', 'type = "speak"')
    text = text.replace('max_digits = 12', 'max_digits = 12\nfoo = 1')
    message = refused(tmp_path, text)
    assert "2 problem(s)" in message and "'speak'" in message and "foo" in message


def test_duplicate_flow_names_in_a_directory(tmp_path: Path) -> None:
    write(tmp_path, GOOD, "a.toml")
    write(tmp_path, GOOD, "b.toml")
    with pytest.raises(FlowError, match="flow name 'tiny' is also used by"):
        load_flows(tmp_path, PROMPTS_DIR)


def test_record_limits(tmp_path: Path) -> None:
    text = GOOD.replace('0 = "to_person" }', '0 = "to_person", 7 = "rec" }')
    text += ('\n[states.rec]\ntype = "record"\nprompts = ["record_instructions"]\nnext = "agent"\n'
             'on_fail = "agent"\nmax_seconds = 3\nmin_seconds = 5\n')
    assert "state 'rec': min_seconds: must be below max_seconds (3)" in refused(tmp_path, text)


def test_the_action_catalogue_is_what_the_flows_use() -> None:
    """Every service action is used by a shipped flow, and each maps every outcome."""
    used: set[str] = set()
    for flow in load_flows().values():
        for state in flow.states.values():
            if isinstance(state, ActionState):
                used.add(state.call)
                assert set(state.outcomes) == ACTIONS[state.call].outcomes
            assert not isinstance(state, HangupState) or not state.settled
            if isinstance(state, TransferState):
                assert state.to in ("agent", "voicemail")
    assert used == set(ACTIONS)


def test_major_keys_announce_the_catalogue_major_they_store() -> None:
    """Key N stores major digit N; the prompt played names the catalogue's major 0N."""
    flow = load_flows()["hotline"]
    catalogue = Catalogue.default()
    for state_name, kind in (("component_major", CaseKind.COMPONENT),
                             ("event_major", CaseKind.EVENT)):
        menu = flow.states[state_name]
        assert isinstance(menu, MenuState)
        for key, transition in menu.keys.items():
            major = catalogue.major_by_digit(kind, int(key))
            assert major is not None, f"{kind} has no major for key {key}"
            (prompt,) = transition.prompts
            assert prompt == f"cat_{kind.value}_{major.code}"
            text = (PROMPTS_DIR / f"{prompt}.txt").read_text(encoding="utf-8").strip()
            assert text == major.name.removesuffix("类")  # 公用设施类 is said 公用设施
