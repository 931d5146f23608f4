"""The case lifecycle as one transition table.

States follow the platform's seven steps (信息收集, 案卷建立, 任务派遣, 任务处理, 处理反馈,
核实结案, 综合评价). Everything that decides whether a status change is allowed lives
here, so the service, the HTTP API and the platform events all ask the same table.
"""

from __future__ import annotations

import enum


class CaseStatus(enum.StrEnum):
    DRAFT = "draft"                  # 草稿 (受理登记)
    SUBMITTED = "submitted"          # 已提交 (待立案)
    REGISTERED = "registered"        # 已立案
    REJECTED = "rejected"            # 不予立案
    DISPATCHED = "dispatched"        # 已派遣
    PROCESSING = "processing"        # 处置中
    FEEDBACK = "feedback"            # 已反馈
    VERIFIED = "verified"            # 已核查
    CLOSED = "closed"                # 已结案
    REOPENED = "reopened"            # 返工
    MERGED = "merged"                # 已合并

    @property
    def label_zh(self) -> str:
        return _LABELS_ZH[self]

    @property
    def step(self) -> WorkflowStep:
        return _STEPS[self]


_LABELS_ZH = {
    CaseStatus.DRAFT: "已受理",
    CaseStatus.SUBMITTED: "待立案",
    CaseStatus.REGISTERED: "已立案",
    CaseStatus.REJECTED: "不予立案",
    CaseStatus.DISPATCHED: "已派遣",
    CaseStatus.PROCESSING: "处置中",
    CaseStatus.FEEDBACK: "已反馈",
    CaseStatus.VERIFIED: "已核查",
    CaseStatus.CLOSED: "已结案",
    CaseStatus.REOPENED: "返工处置中",
    CaseStatus.MERGED: "已合并",
}


class WorkflowStep(enum.IntEnum):
    COLLECTION = 1      # 信息收集
    CREATION = 2        # 案卷建立
    DISPATCH = 3        # 任务派遣
    PROCESSING = 4      # 任务处理
    FEEDBACK = 5        # 处理反馈
    CLOSURE = 6         # 核实结案
    EVALUATION = 7      # 综合评价


_STEPS = {
    CaseStatus.DRAFT: WorkflowStep.COLLECTION,
    CaseStatus.SUBMITTED: WorkflowStep.CREATION,
    CaseStatus.REGISTERED: WorkflowStep.CREATION,
    CaseStatus.REJECTED: WorkflowStep.CREATION,
    CaseStatus.MERGED: WorkflowStep.CREATION,
    CaseStatus.DISPATCHED: WorkflowStep.DISPATCH,
    CaseStatus.PROCESSING: WorkflowStep.PROCESSING,
    CaseStatus.REOPENED: WorkflowStep.PROCESSING,
    CaseStatus.FEEDBACK: WorkflowStep.FEEDBACK,
    CaseStatus.VERIFIED: WorkflowStep.CLOSURE,
    CaseStatus.CLOSED: WorkflowStep.CLOSURE,
}

S = CaseStatus
TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    S.DRAFT: frozenset({S.SUBMITTED, S.REJECTED, S.MERGED}),
    S.SUBMITTED: frozenset({S.REGISTERED, S.REJECTED, S.MERGED, S.DRAFT}),
    S.REGISTERED: frozenset({S.DISPATCHED, S.MERGED}),
    S.REJECTED: frozenset(),
    S.DISPATCHED: frozenset({S.PROCESSING, S.FEEDBACK}),
    S.PROCESSING: frozenset({S.FEEDBACK}),
    S.FEEDBACK: frozenset({S.VERIFIED, S.CLOSED, S.REOPENED}),
    S.VERIFIED: frozenset({S.CLOSED, S.REOPENED}),
    S.CLOSED: frozenset({S.REOPENED}),
    S.REOPENED: frozenset({S.DISPATCHED, S.PROCESSING, S.FEEDBACK}),
    S.MERGED: frozenset(),
}

OPEN_STATES = frozenset(set(CaseStatus) - {S.REJECTED, S.CLOSED, S.MERGED})
FINAL_STATES = frozenset({S.REJECTED, S.MERGED})
EDITABLE_STATES = frozenset({S.DRAFT, S.SUBMITTED})


class RejectionReason(enum.StrEnum):
    DUPLICATE = "duplicate"          # 重复
    OUT_OF_SCOPE = "out_of_scope"    # 不属于受理范围
    INVALID = "invalid"              # 无效信息

    @property
    def label_zh(self) -> str:
        return {
            RejectionReason.DUPLICATE: "重复反映",
            RejectionReason.OUT_OF_SCOPE: "不属于城管受理范围",
            RejectionReason.INVALID: "信息无效",
        }[self]


class IllegalTransition(ValueError):
    def __init__(self, current: CaseStatus, target: CaseStatus) -> None:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "none (final state)"
        super().__init__(
            f"a case in status {current.value!r} cannot become {target.value!r}; allowed: {allowed}"
        )
        self.current = current
        self.target = target


def check_transition(current: CaseStatus, target: CaseStatus) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
