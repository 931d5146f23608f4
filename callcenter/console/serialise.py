"""How cases, log entries and notices look to the console: Chinese labels, masked numbers
as the viewer's role allows, categories and grids by name. Pure functions of the state."""

from __future__ import annotations

import datetime as dt
from pathlib import Path, PurePosixPath
from typing import Any

from callcenter.cases.catalogue import InvalidCategoryCode
from callcenter.cases.grids import Grid, InvalidGridCode
from callcenter.cases.lifecycle import EDITABLE_STATES, CaseStatus
from callcenter.cases.model import CaseFlag, CaseView, Channel, LogEntry
from callcenter.console.auth import ConsoleSession
from callcenter.console.queries import CaseBrief, InboundText, OutboxMessage, TaskNotice
from callcenter.console.state import ConsoleState
from callcenter.service.sms_texts import ANSWERS_ZH, TASK_KINDS_ZH
from callcenter.privacy import changes_for, may_see_number, phone_for, text_for

AUDIO_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg",
               ".opus": "audio/ogg", ".m4a": "audio/mp4", ".webm": "audio/webm"}
CHANNEL_LABELS = {"sms": "短信", "phone": "电话", "staff": "坐席录入", "open311": "网络上报"}
FLAG_LABELS = {
    CaseFlag.NEEDS_TRANSCRIPTION: "待转写", CaseFlag.PARTIAL_MESSAGE: "短信不完整", CaseFlag.LOSSY_TEXT: "含乱码",
    CaseFlag.RECORDING_MISSING: "录音缺失", CaseFlag.RECORDING_EMPTY: "录音为空", CaseFlag.AFTER_HOURS: "非工作时间",
    CaseFlag.FLOOD_FOLDED: "多条合并", CaseFlag.ENDANGERS_PEOPLE: "危及人身安全",
}
ACTION_LABELS = {
    "created": "创建草稿", "updated": "修改转写", "submitted": "提交立案", "rejected": "不予立案",
    "merged": "合并至主案件", "merged_in": "并入重复案件", "platform_event": "平台状态变更", "rated": "评价",
    "task_sent": "派发监督员任务", "task_answered": "监督员回复", "task_escalated": "任务超时，已升级值班长",
    "staff_call": "回拨市民", "callback_requested": "登记回访", "callback": "回访",
}
NOTICE_STATE_LABELS = {"sent": "已发送", "waiting": "待回复", "escalated": "已升级", "answered": "已回复"}


def local_iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def may_see_phone(session: ConsoleSession, state: ConsoleState) -> bool:
    return session.account.role.value in state.settings.phone_visible_roles


def sees_numbers(session: ConsoleSession, state: ConsoleState, *, private: bool = False) -> bool:
    """docs/privacy.md: the role must see numbers and the reporter must not be private."""
    return may_see_number(may_see_phone(session, state)) and not private


def phone_out(phone: str | None, session: ConsoleSession, state: ConsoleState, *, private: bool = False) -> str | None:
    """The number as this role may see it: anonymous and confidential reporters stay masked for all."""
    return phone_for(phone, sees_numbers(session, state, private=private))


def text_out(text: str | None, session: ConsoleSession, state: ConsoleState, *, private: bool = False) -> str | None:
    """Free text with the numbers typed into it masked as for the reporter's own number."""
    return text_for(text, sees_numbers(session, state, private=private))


def category_json(state: ConsoleState, code: str | None) -> dict[str, Any] | None:
    if not code:
        return None
    try:
        category = state.services.catalogue.get(code)
    except InvalidCategoryCode:
        category = None
    if category is None:
        return {"code": code, "name": "未知类别", "major_name": "", "kind_label": ""}
    return {"code": str(category.code), "name": category.name, "major_name": category.major_name,
            "kind_label": category.kind.label_zh, "initials": category.pinyin_initials}


def grid_json(grid: Grid) -> dict[str, Any]:
    return {"code": grid.code.value, "name": grid.name, "street": grid.street_name, "community": grid.community_name}


def grid_by_code(state: ConsoleState, code: str | None) -> dict[str, Any] | None:
    if not code:
        return None
    try:
        grid = state.services.grids.get(code)
    except InvalidGridCode:
        grid = None
    return grid_json(grid) if grid else {"code": code, "name": "未知网格", "street": "", "community": ""}


def channel_label(channel: str, flags: tuple[str, ...], recording: bool, menu_choice: bool = False) -> str:
    """语音留言 for a voicemail, IVR录音 for a report made through the IVR menu: staff treat
    them differently (a voicemail may be about anything, an IVR report has its category)."""
    if channel == "phone":
        legacy_voicemail = CaseFlag.NEEDS_TRANSCRIPTION in flags and not menu_choice  # before the flag
        if CaseFlag.VOICEMAIL in flags or legacy_voicemail:
            return "语音留言"
        if recording:
            return "IVR录音"
    return CHANNEL_LABELS.get(channel, channel)


def visible_flags(flags: tuple[str, ...], recording_available: bool) -> list[str]:
    """Flags as staff should see them now: 录音缺失 goes once the file has arrived (the
    shared volume may lag the call), and 语音留言 is already the channel's label."""
    shown = [f for f in flags if f != CaseFlag.VOICEMAIL]
    if recording_available:
        shown = [f for f in shown if f != CaseFlag.RECORDING_MISSING]
    return shown


def flag_labels(flags: list[str]) -> list[str]:
    return [FLAG_LABELS.get(f, f) for f in flags]  # type: ignore[call-overload]


ACTOR_KINDS = {"platform": "城管平台", "sms": "短信通道", "agi": "语音通道", "phone": "语音通道",
               "gateway": "短信网关", "open311": "网络上报", "system": "系统", "admin": "管理员",
               "supervisor": "监督员", "ivr": "语音导航",
               "voice": "呼叫系统"}


def actor_label(actor: str) -> str:
    """Staff by name (the log's point); machines by what they are, their own name in brackets."""
    kind, _, name = actor.partition(":")
    if kind == "staff" and name:
        return name
    label = ACTOR_KINDS.get(kind)
    if label is None:
        return actor
    return f"{label}（{name}）" if name else label


def log_json(entry: LogEntry, visible: bool) -> dict[str, Any]:
    """A case-log entry; numbers in its changes and reason as a reader with `visible` may see them."""
    return {"at": local_iso(entry.at), "actor": entry.actor, "actor_label": actor_label(entry.actor),
            "action": entry.action, "action_label": ACTION_LABELS.get(entry.action, entry.action),
            "from_status": entry.from_status, "to_status": entry.to_status,
            "to_status_label": CaseStatus(entry.to_status).label_zh if entry.to_status else None,
            "changes": changes_for(entry.changes, visible), "reason": text_for(entry.reason, visible)}


def resolve_recording(root: Path, ref: str | None) -> Path | None:
    """The audio file behind `recording_ref`, only if it lies inside the recordings directory.

    Refs are relative to the directory ("2026/11/24/abc.wav"); an absolute ref is accepted only
    when it already points inside it. `..`, NUL bytes, links out of the tree and non-audio
    files are refused, so a hostile ref cannot read anything else on the machine.
    """
    if not ref or len(ref) > 512 or "\x00" in ref:
        return None
    text = ref.removeprefix("file:").replace("\\", "/")
    rel = PurePosixPath(text)
    if ".." in rel.parts:
        return None
    try:
        base = root.resolve(strict=True)
        candidate = (Path(text) if rel.is_absolute() else base / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    if candidate.suffix.lower() not in AUDIO_TYPES:
        return None
    return candidate


def recordings_root(state: ConsoleState) -> Path:
    return state.services.settings.path(state.settings.recordings_dir)


def case_json(state: ConsoleState, view: CaseView, session: ConsoleSession,
               outbox: list[OutboxMessage] | None = None,
               inbound: list[InboundText] | None = None) -> dict[str, Any]:
    private = view.anonymous or view.confidential
    visible = sees_numbers(session, state, private=private)
    has_recording = bool(view.recording_ref)
    available = has_recording and resolve_recording(recordings_root(state), view.recording_ref) is not None
    thread: list[dict[str, Any]] = []
    # Every text that made or was folded into this case (a flood draft's description holds
    # only the first fifty); the description stands in for drafts that have none on file.
    for text in inbound or []:
        thread.append({"direction": "in", "at": local_iso(text.received_at), "body": text_for(text.text, visible),
                       "party": phone_out(text.sender, session, state, private=private),
                       "status": text.outcome,
                       "status_label": "已合并到本案（短信过多）" if text.outcome == "folded" else "已收到"})
    if not inbound and view.channel == Channel.SMS.value and view.description:
        thread.append({"direction": "in", "at": local_iso(view.created_at), "body": text_for(view.description, visible),
                       "party": phone_out(view.reporter_phone, session, state, private=private),
                       "status": "received", "status_label": "已收到"})
    for message in outbox or []:
        thread.append({
            "direction": "out", "at": local_iso(message.created_at), "body": text_for(message.body, visible),
            "party": phone_out(message.recipient, session, state, private=private), "status": message.status,
            "status_label": "已送达" if message.delivered_at else ("已发送" if message.sent_at else "待发送")})
    suggested = category_json(state, view.suggested_category)
    if suggested is not None:
        suggested["confidence"] = view.suggested_confidence
    return {
        "number": view.number, "status": view.status, "status_label": CaseStatus(view.status).label_zh,
        "channel": view.channel,
        "channel_label": channel_label(view.channel, view.flags, has_recording,
                                       bool(view.kind or view.category_major)),
        "reporter_phone": phone_out(view.reporter_phone, session, state, private=private),
        "anonymous": view.anonymous, "confidential": view.confidential,
        "description": text_for(view.description, visible),
        "has_recording": has_recording, "recording_available": available,
        "recording_url": f"/console/api/cases/{view.number}/recording" if available else None,
        "flags": visible_flags(view.flags, available),
        "flag_labels": flag_labels(visible_flags(view.flags, available)),
        "category": category_json(state, view.category), "suggested_category": suggested,
        "grid": grid_by_code(state, view.grid), "address": text_for(view.address, visible),
        "version": view.version,
        "created_at": local_iso(view.created_at), "updated_at": local_iso(view.updated_at),
        "master_number": view.master_number, "platform_number": view.platform_number,
        "editable": CaseStatus(view.status) in EDITABLE_STATES,
        "can_submit": view.status == CaseStatus.DRAFT.value,
        "log": [log_json(e, visible) for e in view.log], "sms_thread": thread,
    }


def brief_json(state: ConsoleState, brief: CaseBrief, session: ConsoleSession) -> dict[str, Any]:
    private = brief.anonymous or brief.confidential
    # Masked before it is cut short, so half a number cannot slip past the mask.
    description = text_out(brief.description, session, state, private=private) or ""
    return {"number": brief.number, "status": brief.status, "status_label": CaseStatus(brief.status).label_zh,
            "channel_label": CHANNEL_LABELS.get(brief.channel, brief.channel),
            "category": category_json(state, brief.category), "grid": grid_by_code(state, brief.grid),
            "address": text_out(brief.address, session, state, private=private), "description": description[:200],
            "created_at": local_iso(brief.created_at),
            "reporter_phone": phone_out(brief.reporter_phone, session, state,
                                         private=brief.anonymous or brief.confidential)}


def escalation_seconds(state: ConsoleState) -> int:
    return int(state.services.settings.sms.task_escalation_minutes * 60)


def notice_json(state: ConsoleState, notice: TaskNotice, session: ConsoleSession,
                 now: dt.datetime) -> dict[str, Any]:
    """One supervisor task as a notice; the supervisor's phone as this role may see it."""
    limit = escalation_seconds(state)
    until = notice.answered_at or now
    waited = max(0, int((until - notice.created_at).total_seconds()))
    return {
        "code": notice.code, "case_number": notice.case_number, "kind": notice.kind,
        "kind_label": TASK_KINDS_ZH.get(notice.kind, notice.kind),
        "state": notice.state, "state_label": NOTICE_STATE_LABELS[notice.state],
        "grid": grid_by_code(state, notice.grid), "supervisor_name": notice.supervisor_name,
        "supervisor_phone": phone_out(notice.supervisor_phone, session, state),
        "note": text_out(notice.note, session, state),
        "sent_at": local_iso(notice.created_at), "answered_at": local_iso(notice.answered_at),
        "answer": notice.answer, "answer_label": ANSWERS_ZH.get(notice.answer) if notice.answer else None,
        "answer_text": text_out(notice.answer_text, session, state), "escalated_at": local_iso(notice.escalated_at),
        "late": notice.answered_at is not None and notice.escalated_at is not None,
        "waiting_seconds": waited, "limit_seconds": limit, "overdue": waited > limit,
    }

