"""Citizen-facing replies: intake number first, one UCS-2 SMS (70 characters) where the content allows."""

from __future__ import annotations

import datetime as dt

import pytest

from callcenter.cases.lifecycle import CaseStatus
from callcenter.service import sms_texts as texts

NUMBER = "261124000421"


@pytest.mark.parametrize("body", [
    texts.HELP,
    texts.OPT_OUT,
    texts.NOT_FOUND.format(number=NUMBER),
    texts.BAD_NUMBER.format(number=NUMBER),
    texts.RATE_OK.format(number=NUMBER, score=5),
    texts.RATE_NOT_CLOSED.format(number=NUMBER),
    texts.RATE_NOT_REPORTER.format(number=NUMBER),
    texts.NO_TASK.format(code="T123456"),
    texts.TASK_AMBIGUOUS.format(count=3, code="T123456"),
    texts.TASK_ACK.format(number=NUMBER, code="T123456", answer="不属实"),
    texts.TASK_ALREADY.format(number=NUMBER, code="T123456", answer="不属实"),
    texts.TASK_ESCALATION.format(number=NUMBER, kind="核查", code="T123456", minutes="30", name="欧阳建国"),
    *(texts.STATUS_COARSE.format(number=NUMBER, coarse=texts.coarse_status(s)) for s in CaseStatus),
    *(texts.full_status(NUMBER, s, platform_number="AJ-2026-00001234", master=None,
                        updated=dt.datetime(2026, 11, 24, 9, 5)) for s in CaseStatus),
    texts.full_status(NUMBER, "merged", platform_number=None, master="261124000439",
                      updated=dt.datetime(2026, 11, 24, 9, 5)),
    texts.fit(texts.TASK_NOTICE, "龙岗大道布吉段：" + "路灯不亮" * 40, number=NUMBER, kind="核实", code="T123456"),
])
def test_replies_fit_one_sms(body: str) -> None:
    assert len(body) <= texts.SINGLE_SMS, body


def test_the_intake_number_comes_first_and_a_cut_excerpt_says_so() -> None:
    assert texts.RATE_OK.format(number=NUMBER, score=4).startswith(f"受理编号{NUMBER}")
    notice = texts.fit(texts.TASK_NOTICE, "路灯不亮" * 40, number=NUMBER, kind="核实", code="T9")
    assert notice.startswith(f"受理编号{NUMBER}【核实任务T9】") and "…" in notice and notice.endswith("不属实回复2 T9")
    short = texts.fit(texts.TASK_NOTICE, "井盖丢失", number=NUMBER, kind="核实", code="T9")
    assert "…" not in short and "井盖丢失" in short
