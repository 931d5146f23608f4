"""Texts of the SMS channel's own replies (citizens and supervisors), in Simplified Chinese.

Kept apart from `config/templates.toml` because those templates are validated against
the case-notice placeholders only. Each reply puts the intake number first and stays
within one UCS-2 SMS (70 characters) for 12-digit numbers; `fit()` shortens the free
part (an excerpt) so the whole stays within the limit.
"""

from __future__ import annotations

import datetime as dt

from callcenter.cases.lifecycle import CaseStatus

SINGLE_SMS = 70

HELP = ("城管热线短信：直接发送问题描述即可反映；查进度回复CX+受理编号；"
        "评价回复PJ+受理编号+空格+1至5分；退订通知回复TD。")
STATUS_FULL = "受理编号{number}：当前状态{label}{extra}，更新于{when}。"
STATUS_COARSE = "受理编号{number}：{coarse}。详细进度仅告知反映人。"
NOT_FOUND = "受理编号{number}不存在，请核对后重发，如：CX 261124000421"
BAD_NUMBER = "受理编号{number}有误，请核对12位编号后重发。"
RATE_OK = "受理编号{number}：已收到您的评价{score}分，感谢您的支持。"
RATE_NOT_CLOSED = "受理编号{number}：尚未结案，结案后可回复PJ评价。"
RATE_NOT_REPORTER = "受理编号{number}：仅反映人本人可以评价。"
OPT_OUT = "退订成功：不再向您发送案卷进度通知；您今后新反映的问题仍会回复受理编号。"
NO_TASK = "未找到您待回复的任务{code}，请核对任务编号后重发。"
TASK_AMBIGUOUS = "您有{count}个待回复任务，请带任务编号回复，如：1 {code}"
TASK_ACK = "受理编号{number}：任务{code}已记录为“{answer}”，谢谢。"
TASK_ALREADY = "受理编号{number}：任务{code}已回复“{answer}”，无需重复回复。"
TASK_NOTICE = "受理编号{number}【{kind}任务{code}】{excerpt}。属实回复1 {code}，不属实回复2 {code}"
TASK_ESCALATION = "受理编号{number}：{kind}任务{code}已{minutes}分钟无人回复（监督员{name}），请安排。"
STORM_PREFIX = "【同一号码短时多条短信，已合并】"
BINARY_DRAFT = "【二进制短信，无可读文字：{size}字节，编码{coding}，原始内容见短信记录，请人工核查】"
TRUNCATED = "【原文共{length}字，以下已截断，全文见短信记录】"

TASK_KINDS_ZH = {"verify": "核实", "check": "核查"}
ANSWERS_ZH = {"confirmed": "属实", "not_confirmed": "不属实"}

_COARSE = {
    CaseStatus.DRAFT: "已受理，待审核",
    CaseStatus.SUBMITTED: "已受理，待审核",
    CaseStatus.REGISTERED: "处理中",
    CaseStatus.DISPATCHED: "处理中",
    CaseStatus.PROCESSING: "处理中",
    CaseStatus.FEEDBACK: "处理中",
    CaseStatus.VERIFIED: "处理中",
    CaseStatus.REOPENED: "处理中",
    CaseStatus.CLOSED: "已办结",
    CaseStatus.REJECTED: "已办结",
    CaseStatus.MERGED: "已合并处理",
}


def coarse_status(status: str) -> str:
    """What anyone may learn about a case: received, in progress, or done."""
    return _COARSE[CaseStatus(status)]


def full_status(number: str, status: str, *, platform_number: str | None, master: str | None,
                updated: dt.datetime) -> str:
    """The reporter's answer to CX: status, 案卷号 or master case, and when it last changed."""
    extra = ""
    if master:
        extra = f"，已并入{master}"
    elif platform_number:
        extra = f"，案卷号{platform_number}"
    text = STATUS_FULL.format(number=number, label=CaseStatus(status).label_zh, extra=extra,
                              when=f"{updated:%m-%d %H:%M}")
    if len(text) > SINGLE_SMS and extra:
        text = STATUS_FULL.format(number=number, label=CaseStatus(status).label_zh, extra="",
                                  when=f"{updated:%m-%d %H:%M}")
    return text


def fit(template: str, excerpt: str, limit: int = SINGLE_SMS, **fields: str) -> str:
    """Render `template`, shortening `excerpt` (with an ellipsis) until the text fits."""
    flat = " ".join(excerpt.split())
    text = template.format(excerpt=flat, **fields)
    if len(text) <= limit:
        return text
    room = limit - len(template.format(excerpt="", **fields)) - 1
    return template.format(excerpt=flat[:max(room, 0)] + "…", **fields)
