"""CALLCENTER_REPORT_KEYS: what the IVR writes before a take (`report_keys`) is exactly what
`recover` reads back (`parse_report_keys`), for every take of every shipped flow; and the
recording names `recover` accepts are exactly the ones the IVR makes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from callcenter.ivr import load_flows
from callcenter.ivr.flow import ActionState, RecordState
from callcenter.ivr.executor import report_keys
from callcenter.voice.actions import parse_report_keys
from callcenter.voice.recordings import RecordingStore

FLOWS = load_flows()


def takes() -> list[tuple[str, str]]:
    return [(flow.name, name) for flow in FLOWS.values() for name, state in flow.states.items()
            if isinstance(state, RecordState)]


@pytest.mark.parametrize(("flow_name", "state_name"), takes())
def test_every_take_of_a_shipped_flow_leaves_keys_recover_reads_back(flow_name: str, state_name: str) -> None:
    flow = FLOWS[flow_name]
    state = flow.states[state_name]
    assert isinstance(state, RecordState)
    target = flow.states[state.next.target]
    assert isinstance(target, ActionState) and target.call in ("create_draft", "voicemail_draft")
    variables = {"kind": "component", "major": "6", "case_number": "261203000123", "caller": "+8613812345678",
                 "call_id": "1733212345.17", "recording": "x", "contact": "13912345678"}
    keys = report_keys(flow, state_name, variables)
    assert keys is not None
    parsed = parse_report_keys(keys)
    assert parsed is not None and parsed["draft"] == target.call
    assert parsed["min_ms"] == str(state.min_ms)
    # the draft action's own args the caller chose, and nothing the recovering node knows itself
    expected = {name for name in target.args if name in variables} - {"recording", "recording_ms", "caller", "call_id"}
    assert set(parsed) - {"draft", "min_ms"} == expected


def test_values_that_could_carry_a_separator_are_left_out() -> None:
    keys = report_keys(FLOWS["hotline"], "record", {"kind": "event&draft=rate_case", "major": "1"})
    assert keys == "draft=create_draft&major=1&min_ms=1000"


def test_a_state_that_is_not_a_take_leaves_no_keys() -> None:
    assert report_keys(FLOWS["hotline"], "main_menu", {}) is None
    assert report_keys(FLOWS["hotline"], "no_such_state", {}) is None


def test_recover_accepts_the_names_the_ivr_makes_and_nothing_else(tmp_path: Path) -> None:
    store = RecordingStore("/var/spool/asterisk/recording/callcenter", tmp_path)
    now = dt.datetime(2026, 12, 3, 14, 40, tzinfo=dt.UTC)
    for hint, call_id in (("report", "1733212345.17"), ("voicemail", "a/b c"), ("BAD hint", ""),
                          ("report", "x" * 200), ("report", "..")):
        assert store.is_own_ref(store.new_target(hint, call_id, now).ref)
    for ref in ("../report-20261203T144000-1-0123abcd.wav", "report-20261203T144000-1-0123abcd.wav\n",
                "report-20261203T144000-1-0123ABCD.wav", "report-2026120T144000-1-0123abcd.wav",
                "sub/report-20261203T144000-1-0123abcd.wav", ""):
        assert not store.is_own_ref(ref), ref
