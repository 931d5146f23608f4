import pytest

from callcenter.cases.lifecycle import (
    FINAL_STATES,
    TRANSITIONS,
    CaseStatus,
    IllegalTransition,
    WorkflowStep,
    check_transition,
)


def test_the_happy_path_of_the_seven_steps_is_allowed() -> None:
    path = [CaseStatus.DRAFT, CaseStatus.SUBMITTED, CaseStatus.REGISTERED, CaseStatus.DISPATCHED,
            CaseStatus.PROCESSING, CaseStatus.FEEDBACK, CaseStatus.VERIFIED, CaseStatus.CLOSED]
    for current, target in zip(path, path[1:], strict=False):
        check_transition(current, target)
    assert [s.step for s in path] == sorted(s.step for s in path)
    assert path[-1].step is WorkflowStep.CLOSURE


def test_rework_and_merge_and_rejection() -> None:
    check_transition(CaseStatus.VERIFIED, CaseStatus.REOPENED)
    check_transition(CaseStatus.CLOSED, CaseStatus.REOPENED)
    check_transition(CaseStatus.REOPENED, CaseStatus.DISPATCHED)
    check_transition(CaseStatus.DRAFT, CaseStatus.MERGED)
    check_transition(CaseStatus.SUBMITTED, CaseStatus.REJECTED)


@pytest.mark.parametrize(("current", "target"), [
    (CaseStatus.DRAFT, CaseStatus.CLOSED),
    (CaseStatus.DRAFT, CaseStatus.DISPATCHED),
    (CaseStatus.REJECTED, CaseStatus.REGISTERED),
    (CaseStatus.MERGED, CaseStatus.DRAFT),
    (CaseStatus.CLOSED, CaseStatus.PROCESSING),
])
def test_illegal_transitions_are_refused_with_the_reason(current: CaseStatus, target: CaseStatus) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_transition(current, target)
    assert current.value in str(info.value) and target.value in str(info.value)


def test_final_states_lead_nowhere_and_every_state_has_a_chinese_label() -> None:
    for state in FINAL_STATES:
        assert not TRANSITIONS[state]
    for state in CaseStatus:
        assert state in TRANSITIONS
        assert state.label_zh
