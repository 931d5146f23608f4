"""/console/: the staff console's pages, its JSON API and its live event stream.

Pages are static files; every value reaches the browser as JSON and is put on the page
with textContent. Staff actions go through the case service with the actor
"staff:<姓名>", so each case's log names the person who acted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hmac
import html
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from yarl import URL

from callcenter.api.http import ApiError, json_response, read_json
from callcenter.api.keys import services_key
from callcenter.app import Services
from callcenter.cases.catalogue import CaseKind, CategoryCode, InvalidCategoryCode
from callcenter.cases.grids import Grid, InvalidGridCode
from callcenter.cases.lifecycle import EDITABLE_STATES, CaseStatus, RejectionReason
from callcenter.cases.model import CaseFlag, CaseView, Channel, LogEntry
from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.console.auth import ConsoleSession, SignInRefused, StaffStore
from callcenter.console.hub import ConsoleEvent, ConsoleHub, DraftWatcher
from callcenter.console.queries import NOTICE_STATES, CaseBrief, ConsoleQueries, OutboxMessage, TaskNotice
from callcenter.service.cases import DraftInput
from callcenter.service.errors import Conflict, ServiceError
from callcenter.service.sms_texts import ANSWERS_ZH, TASK_KINDS_ZH
from callcenter.settings import ConsoleSettings
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "cc_console"
LOGIN_COOKIE = "cc_login"
CSRF_HEADER = "X-CSRF-Token"
BACKGROUND_HEADER = "X-Console-Background"
HEARTBEAT_SECONDS = 15.0
POP_TTL_SECONDS = 3600.0

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
AUDIO_TYPES = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".oga": "audio/ogg",
               ".opus": "audio/ogg", ".m4a": "audio/mp4", ".webm": "audio/webm"}
_NEXT_RE = re.compile(r"/console/[A-Za-z0-9/_\-?=&.%+]*")

CHANNEL_LABELS = {"sms": "短信", "phone": "电话", "staff": "坐席录入", "open311": "网络上报"}
FLAG_LABELS = {
    CaseFlag.NEEDS_TRANSCRIPTION: "待转写", CaseFlag.PARTIAL_MESSAGE: "短信不完整", CaseFlag.LOSSY_TEXT: "含乱码",
    CaseFlag.RECORDING_MISSING: "录音缺失", CaseFlag.RECORDING_EMPTY: "录音为空", CaseFlag.AFTER_HOURS: "非工作时间",
    CaseFlag.FLOOD_FOLDED: "多条合并",
}
ACTION_LABELS = {
    "created": "创建草稿", "updated": "修改转写", "submitted": "提交立案", "rejected": "不予立案",
    "merged": "合并至主案件", "merged_in": "并入重复案件", "platform_event": "平台状态变更", "rated": "评价",
    "task_sent": "派发监督员任务", "task_answered": "监督员回复", "task_escalated": "任务超时，已升级值班长",
}
NOTICE_STATE_LABELS = {"sent": "已发送", "waiting": "待回复", "escalated": "已升级", "answered": "已回复"}
FIELD_LABELS = {
    "description": "问题描述", "category": "类别", "grid": "网格", "address": "地址", "reporter_phone": "电话号码",
    "version": "版本", "reason": "原因", "note": "备注", "into": "主案件受理编号", "number": "受理编号",
    "anonymous": "匿名", "confidential": "保密", "pop": "来电", "from": "开始日期", "to": "结束日期", "q": "搜索词",
    "state": "状态", "case": "受理编号", "limit": "条数",
}
SIGN_IN_MESSAGES = {
    "bad": "用户名或密码错误",
    "expired": "登录已超时，请重新登录",
    "signed_out": "您已安全退出",
    "csrf": "页面已过期，请重新登录",
}

H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


# ---------------------------------------------------------------------------- state


@dataclass
class ConsoleState:
    services: Services
    staff: StaffStore
    queries: ConsoleQueries
    hub: ConsoleHub
    watcher: DraftWatcher
    static: dict[str, Path]
    pops: dict[str, tuple[str, float]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> ConsoleSettings:
        return self.services.settings.console

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.services.settings.cases.timezone)

    def remember_pop(self, phone: str) -> str:
        """An opaque handle on a caller's number, for consoles that may not see it."""
        now = time.monotonic()
        for key in [k for k, (_, expiry) in self.pops.items() if expiry < now]:
            del self.pops[key]
        token = secrets.token_urlsafe(12)
        self.pops[token] = (phone, now + POP_TTL_SECONDS)
        return token

    def pop_phone(self, token: str) -> str | None:
        found = self.pops.get(token)
        return found[0] if found and found[1] >= time.monotonic() else None


console_key: web.AppKey[ConsoleState] = web.AppKey("console", ConsoleState)


def console_hub(app: web.Application) -> ConsoleHub:
    """The hub of an app that has the console; for channels that publish into it."""
    return app[console_key].hub


# ---------------------------------------------------------------------------- helpers


def _state(request: web.Request) -> ConsoleState:
    return request.app[console_key]


def _fail(status: int, code: str, message: str, field: str | None = None) -> ApiError:
    return ApiError(status, code, message, field)


def _zh_service_error(exc: ServiceError) -> str:
    text = exc.message
    if exc.code == "not_found":
        return "未找到该案件"
    if exc.code == "conflict":
        return "该案件已被他人修改"
    if exc.code == "illegal_transition":
        return "该案件当前状态不允许此操作"
    if exc.field == "category":
        return "提交前请先选择类别" if "before submitting" in text else "类别代码无效，请从分类中选择"
    if exc.field == "grid":
        return "网格代码无效，请从网格列表中选择"
    if exc.field == "reporter_phone":
        return "电话号码无效"
    if exc.field == "description":
        return "请填写问题描述" if "needs a description" in text else "问题描述过长或含非法字符"
    if exc.field == "address":
        return "地址过长或含非法字符"
    if exc.field == "into":
        return "不能合并到自身" if "itself" in text else "主案件受理编号无效"
    if exc.field == "number":
        return "受理编号无效"
    return "输入有误" + (f"：{FIELD_LABELS.get(exc.field, exc.field)}" if exc.field else "")


async def _read(request: web.Request, model: type[BaseModel]) -> Any:
    """read_json with the message in Chinese (the English detail stays for the log)."""
    try:
        return await read_json(request, model)
    except ApiError as exc:
        label = FIELD_LABELS.get(exc.field or "", exc.field or "")
        zh = {413: "提交的内容过大", 415: "请求格式错误"}.get(exc.status, f"输入有误：{label}" if label else "请求格式错误")
        raise ApiError(exc.status, exc.code, zh, exc.field) from exc


def _local_iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _may_see_phone(session: ConsoleSession, state: ConsoleState) -> bool:
    return session.account.role.value in state.settings.phone_visible_roles


def _phone_out(phone: str | None, session: ConsoleSession, state: ConsoleState, *, private: bool = False) -> str | None:
    """The number as this role may see it: anonymous and confidential reporters stay masked for all."""
    if not phone:
        return None
    if _may_see_phone(session, state) and not private:
        return phone
    return mask_number(phone)


def _category_json(state: ConsoleState, code: str | None) -> dict[str, Any] | None:
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


def _grid_json(grid: Grid) -> dict[str, Any]:
    return {"code": grid.code.value, "name": grid.name, "street": grid.street_name, "community": grid.community_name}


def _grid_by_code(state: ConsoleState, code: str | None) -> dict[str, Any] | None:
    if not code:
        return None
    try:
        grid = state.services.grids.get(code)
    except InvalidGridCode:
        grid = None
    return _grid_json(grid) if grid else {"code": code, "name": "未知网格", "street": "", "community": ""}


def _channel_label(channel: str, flags: tuple[str, ...], recording: bool) -> str:
    if channel == "phone":
        if CaseFlag.NEEDS_TRANSCRIPTION in flags:
            return "语音留言"
        if recording:
            return "IVR录音"
    return CHANNEL_LABELS.get(channel, channel)


ACTOR_KINDS = {"platform": "城管平台", "sms": "短信通道", "agi": "语音通道", "phone": "语音通道",
               "gateway": "短信网关", "open311": "网络上报", "system": "系统", "admin": "管理员",
               "supervisor": "监督员", "ivr": "语音导航"}


def _actor_label(actor: str) -> str:
    """Staff by name (the log's point); machines by what they are, their own name in brackets."""
    kind, _, name = actor.partition(":")
    if kind == "staff" and name:
        return name
    label = ACTOR_KINDS.get(kind)
    if label is None:
        return actor
    return f"{label}（{name}）" if name else label


def _log_json(entry: LogEntry) -> dict[str, Any]:
    return {"at": _local_iso(entry.at), "actor": entry.actor, "actor_label": _actor_label(entry.actor),
            "action": entry.action, "action_label": ACTION_LABELS.get(entry.action, entry.action),
            "from_status": entry.from_status, "to_status": entry.to_status,
            "to_status_label": CaseStatus(entry.to_status).label_zh if entry.to_status else None,
            "changes": entry.changes, "reason": entry.reason}


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


def _recordings_root(state: ConsoleState) -> Path:
    return state.services.settings.path(state.settings.recordings_dir)


def _case_json(state: ConsoleState, view: CaseView, session: ConsoleSession,
               outbox: list[OutboxMessage] | None = None) -> dict[str, Any]:
    private = view.anonymous or view.confidential
    has_recording = bool(view.recording_ref)
    available = has_recording and resolve_recording(_recordings_root(state), view.recording_ref) is not None
    thread: list[dict[str, Any]] = []
    if view.channel == Channel.SMS.value and view.description:
        thread.append({"direction": "in", "at": _local_iso(view.created_at), "body": view.description,
                       "party": _phone_out(view.reporter_phone, session, state, private=private),
                       "status": "received", "status_label": "已收到"})
    for message in outbox or []:
        thread.append({
            "direction": "out", "at": _local_iso(message.created_at), "body": message.body,
            "party": _phone_out(message.recipient, session, state, private=private), "status": message.status,
            "status_label": "已送达" if message.delivered_at else ("已发送" if message.sent_at else "待发送")})
    suggested = _category_json(state, view.suggested_category)
    if suggested is not None:
        suggested["confidence"] = view.suggested_confidence
    return {
        "number": view.number, "status": view.status, "status_label": CaseStatus(view.status).label_zh,
        "channel": view.channel, "channel_label": _channel_label(view.channel, view.flags, has_recording),
        "reporter_phone": _phone_out(view.reporter_phone, session, state, private=private),
        "anonymous": view.anonymous, "confidential": view.confidential, "description": view.description,
        "has_recording": has_recording, "recording_available": available,
        "recording_url": f"/console/api/cases/{view.number}/recording" if available else None,
        "flags": list(view.flags), "flag_labels": [FLAG_LABELS.get(f, f) for f in view.flags],  # type: ignore[call-overload]
        "category": _category_json(state, view.category), "suggested_category": suggested,
        "grid": _grid_by_code(state, view.grid), "address": view.address, "version": view.version,
        "created_at": _local_iso(view.created_at), "updated_at": _local_iso(view.updated_at),
        "master_number": view.master_number, "platform_number": view.platform_number,
        "editable": CaseStatus(view.status) in EDITABLE_STATES,
        "can_submit": view.status == CaseStatus.DRAFT.value,
        "log": [_log_json(e) for e in view.log], "sms_thread": thread,
    }


def _brief_json(state: ConsoleState, brief: CaseBrief, session: ConsoleSession) -> dict[str, Any]:
    return {"number": brief.number, "status": brief.status, "status_label": CaseStatus(brief.status).label_zh,
            "channel_label": CHANNEL_LABELS.get(brief.channel, brief.channel),
            "category": _category_json(state, brief.category), "grid": _grid_by_code(state, brief.grid),
            "address": brief.address, "description": brief.description[:200],
            "created_at": _local_iso(brief.created_at),
            "reporter_phone": _phone_out(brief.reporter_phone, session, state,
                                         private=brief.anonymous or brief.confidential)}


def _security_headers(response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/console" or request.path.startswith("/console/"):
        _security_headers(response)


# ---------------------------------------------------------------------------- auth wrappers


async def _session(request: web.Request, *, touch: bool) -> ConsoleSession | None:
    return await _state(request).staff.resolve(request.cookies.get(SESSION_COOKIE), touch=touch)


def _csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def page(handler: Callable[[web.Request, ConsoleSession], Awaitable[web.StreamResponse]]) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    """A page that needs a signed-in session; otherwise off to the sign-in page."""
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        session = await _session(request, touch=True)
        if session is None:
            query = {"next": str(request.rel_url)}
            if request.cookies.get(SESSION_COOKIE):
                query["m"] = "expired"
            response = _see_other(str(URL("/console/login").with_query(query)))
            response.del_cookie(SESSION_COOKIE, path="/console")
            return response
        return await handler(request, session)
    return wrapper


def api(handler: Callable[[web.Request, ConsoleSession], Awaitable[web.StreamResponse]]) -> Callable[
        [web.Request], Awaitable[web.StreamResponse]]:
    """A JSON endpoint: a live session, and the CSRF token on anything that changes state."""
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        background = request.headers.get(BACKGROUND_HEADER) == "1"
        session = await _session(request, touch=not background)
        if session is None:
            expired = bool(request.cookies.get(SESSION_COOKIE))
            raise _fail(401, "session_expired" if expired else "unauthorized",
                        "登录已超时，请重新登录" if expired else "请先登录")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not _csrf_ok(
                session.csrf_token, request.headers.get(CSRF_HEADER)):
            log.warning("console.csrf_refused", path=request.path, actor=session.account.actor)
            raise _fail(403, "csrf", "请求缺少有效的安全令牌，请刷新页面后重试")
        structlog.contextvars.bind_contextvars(actor=session.account.actor)
        try:
            return await handler(request, session)
        except ServiceError as exc:
            raise ApiError(exc.status, exc.code, _zh_service_error(exc), exc.field) from exc
    return wrapper


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def _set_cookie(response: web.StreamResponse, state: ConsoleState, name: str, value: str) -> None:
    response.set_cookie(name, value, path="/console", httponly=True, samesite="Strict",
                        secure=state.settings.secure_cookies)


# ---------------------------------------------------------------------------- pages


def _static_response(state: ConsoleState, name: str) -> web.Response:
    path = state.static[name]
    return web.Response(body=path.read_bytes(), content_type="text/html", charset="utf-8")


def _login_page(state: ConsoleState, message: str | None, next_url: str, status: int = 200,
                *, error: bool = False) -> web.Response:
    """The sign-in form with a fresh pre-session CSRF token (double-submit cookie)."""
    token = secrets.token_urlsafe(32)
    text = state.static["login.html"].read_text(encoding="utf-8")
    text = (text.replace("__CSRF__", html.escape(token, quote=True))
            .replace("__NEXT__", html.escape(next_url, quote=True))
            .replace("__MESSAGE_CLASS__", "message error" if error else ("message" if message else "message hidden"))
            .replace("__MESSAGE__", html.escape(message or "")))
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    _set_cookie(response, state, LOGIN_COOKIE, token)
    return response


def _safe_next(raw: str | None) -> str:
    if raw and _NEXT_RE.fullmatch(raw) and "//" not in raw:
        return raw
    return "/console/"


async def login_page(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    code = request.query.get("m", "")
    return _login_page(state, SIGN_IN_MESSAGES.get(code), _safe_next(request.query.get("next")),
                       error=code in ("expired", "csrf"))


async def login_submit(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    form = await request.post()
    next_url = _safe_next(str(form.get("next", "")))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not _csrf_ok(expected, str(form.get("csrf_token", ""))):
        log.warning("console.login_csrf_refused")
        return _login_page(state, SIGN_IN_MESSAGES["csrf"], next_url, status=403, error=True)
    username = str(form.get("username", ""))[:64]
    password = str(form.get("password", ""))
    if not username.strip() or not password:
        return _login_page(state, "请输入用户名和密码", next_url, status=400, error=True)
    try:
        account = await state.staff.authenticate(username, password)
    except SignInRefused as refused:
        if refused.reason == "locked" and refused.locked_until is not None:
            until = refused.locked_until.astimezone(state.tz).strftime("%H:%M")
            log.warning("console.sign_in_locked", username=username.strip()[:64])
            return _login_page(state, f"密码错误次数过多，账户已锁定，请于 {until} 后再试", next_url,
                               status=423, error=True)
        log.info("console.sign_in_refused", username=username.strip()[:64])
        return _login_page(state, SIGN_IN_MESSAGES["bad"], next_url, status=401, error=True)
    token, _session_info = await state.staff.open_session(account)
    log.info("console.signed_in", actor=account.actor, role=account.role.value)
    response = _see_other(next_url)
    _set_cookie(response, state, SESSION_COOKIE, token)
    response.del_cookie(LOGIN_COOKIE, path="/console")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    session = await _session(request, touch=False)
    if session is not None:
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type == "application/x-www-form-urlencoded":
            given = str((await request.post()).get("csrf_token", ""))
        if not _csrf_ok(session.csrf_token, given):
            raise _fail(403, "csrf", "请求缺少有效的安全令牌，请刷新页面后重试")
        await state.staff.close_session(request.cookies.get(SESSION_COOKIE))
        log.info("console.signed_out", actor=session.account.actor)
    response = _see_other("/console/login?m=signed_out")
    response.del_cookie(SESSION_COOKIE, path="/console")
    return response


@page
async def index(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    return _static_response(_state(request), "index.html")


async def root_redirect(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/console/")


async def static_file(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    name = request.match_info["name"]
    path = state.static.get(name)
    if path is None or name.endswith(".html"):
        raise web.HTTPNotFound()
    response = web.Response(body=path.read_bytes(), content_type=_STATIC_TYPES[path.suffix], charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    return response


# ---------------------------------------------------------------------------- reads


@api
async def me(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    account = session.account
    return json_response({
        "username": account.username, "display_name": account.display_name, "role": account.role.value,
        "role_label": account.role.label_zh, "csrf_token": session.csrf_token,
        "may_see_phone": _may_see_phone(session, state), "timezone": state.services.settings.cases.timezone,
        "idle_timeout_minutes": state.settings.idle_timeout_minutes,
        "queue_target_seconds": state.settings.queue_target_minutes * 60,
        "reject_reasons": [{"value": r.value, "label": r.label_zh} for r in RejectionReason],
    })


@api
async def queue(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    rows, total = await state.queries.queue()
    now = dt.datetime.now(dt.UTC)
    target = state.settings.queue_target_minutes * 60
    items = []
    for row in rows:
        suggested = _category_json(state, row.suggested_category)
        items.append({
            "number": row.number, "channel": row.channel,
            "channel_label": _channel_label(row.channel, row.flags, row.recording),
            "flag_labels": [FLAG_LABELS.get(f, f) for f in row.flags],  # type: ignore[call-overload]
            "created_at": _local_iso(row.created_at),
            "waiting_seconds": max(0, int((now - row.created_at).total_seconds())), "target_seconds": target,
            "suggested_category": suggested, "category": _category_json(state, row.category),
            "excerpt": row.description[:80],
            "reporter_phone": _phone_out(row.reporter_phone, session, state,
                                         private=row.anonymous or row.confidential)})
    return json_response({"now": now.isoformat(), "total": total, "items": items})


async def _case_payload(state: ConsoleState, view: CaseView, session: ConsoleSession) -> dict[str, Any]:
    return _case_json(state, view, session, await state.queries.outbox_for(view.id))


@api
async def get_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    view = await state.services.cases.get(request.match_info["number"])
    return json_response(await _case_payload(state, view, session))


@api
async def duplicates(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """Candidates for the draft being edited: the form's category and grid, not the saved ones."""
    state = _state(request)
    view = await state.services.cases.get(request.match_info["number"], with_log=False)
    category_raw = request.query.get("category") or view.category or view.suggested_category
    grid_raw = request.query.get("grid") or view.grid
    if not category_raw or not grid_raw:
        return json_response({"items": [], "needs": "category_and_grid"})
    try:
        category = str(CategoryCode.parse(category_raw))
        grid = state.services.grids.get(grid_raw)
    except (InvalidCategoryCode, InvalidGridCode) as exc:
        raise _fail(422, "invalid", "类别或网格代码无效") from exc
    if grid is None:
        return json_response({"items": [], "needs": "category_and_grid"})
    grids = [grid.code.value, *(g.code.value for g in state.services.grids.neighbours(grid.code))]
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=state.settings.duplicate_window_days)
    found = await state.queries.duplicates(view.number, category, grids, since)
    return json_response({"items": [_brief_json(state, b, session) for b in found],
                          "category": _category_json(state, category), "grids": grids,
                          "window_days": state.settings.duplicate_window_days})


@api
async def recording(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    view = await state.services.cases.get(request.match_info["number"], with_log=False)
    path = resolve_recording(_recordings_root(state), view.recording_ref)
    if path is None:
        if view.recording_ref:
            log.warning("console.recording_missing", case_number=view.number)
        raise _fail(404, "recording_missing", "录音缺失")
    log.info("console.recording_played", case_number=view.number, actor=session.account.actor)
    response = web.FileResponse(path, headers={"Content-Type": AUDIO_TYPES[path.suffix.lower()],
                                               "Cache-Control": "private, no-store"})
    return response


@api
async def catalogue(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    cat = state.services.catalogue
    query = request.query.get("q")
    if query is not None:
        if len(query) > 40:
            raise _fail(400, "invalid", "搜索词过长", "q")
        return json_response({"items": [_category_json(state, str(c.code)) for c in cat.search(query, 20)]})
    kinds = []
    for kind in CaseKind:
        majors = [{"code": m.code, "name": m.name,
                   "minors": [{"code": str(c.code), "name": c.name, "initials": c.pinyin_initials}
                              for c in cat.minors(kind, m.code)]}
                  for m in cat.majors(kind)]
        kinds.append({"kind": kind.value, "label": kind.label_zh, "majors": majors})
    return json_response({"edition": cat.edition, "kinds": kinds})


@api
async def grids(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    query = request.query.get("q", "")
    if len(query) > 40:
        raise _fail(400, "invalid", "搜索词过长", "q")
    return json_response({"items": [_grid_json(g) for g in state.services.grids.search(query, 20)]})


def _escalation_seconds(state: ConsoleState) -> int:
    return int(state.services.settings.sms.task_escalation_minutes * 60)


def _notice_json(state: ConsoleState, notice: TaskNotice, session: ConsoleSession,
                 now: dt.datetime) -> dict[str, Any]:
    """One supervisor task as a notice; the supervisor's phone as this role may see it."""
    limit = _escalation_seconds(state)
    until = notice.answered_at or now
    waited = max(0, int((until - notice.created_at).total_seconds()))
    return {
        "code": notice.code, "case_number": notice.case_number, "kind": notice.kind,
        "kind_label": TASK_KINDS_ZH.get(notice.kind, notice.kind),
        "state": notice.state, "state_label": NOTICE_STATE_LABELS[notice.state],
        "grid": _grid_by_code(state, notice.grid), "supervisor_name": notice.supervisor_name,
        "supervisor_phone": _phone_out(notice.supervisor_phone, session, state), "note": notice.note,
        "sent_at": _local_iso(notice.created_at), "answered_at": _local_iso(notice.answered_at),
        "answer": notice.answer, "answer_label": ANSWERS_ZH.get(notice.answer) if notice.answer else None,
        "answer_text": notice.answer_text, "escalated_at": _local_iso(notice.escalated_at),
        "late": notice.answered_at is not None and notice.escalated_at is not None,
        "waiting_seconds": waited, "limit_seconds": limit, "overdue": waited > limit,
    }


@api
async def notices(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """督办通知: supervisor tasks by state, newest first, from supervisor_tasks.

    `state` is waiting, escalated, answered or all (default); `case` keeps one case's tasks;
    `limit` (1-200, default 50) caps the items of each state. `counts` are exact.
    """
    state = _state(request)
    wanted = request.query.get("state", "all")
    if wanted not in (*NOTICE_STATES, "all"):
        raise _fail(400, "invalid", "状态应为 waiting、escalated、answered 或 all", "state")
    case_number: str | None = None
    if request.query.get("case"):
        try:
            case_number = CaseNumber.parse(request.query["case"][:32]).value
        except InvalidCaseNumber as exc:
            raise _fail(400, "invalid", "受理编号无效", "case") from exc
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 200:
        raise _fail(400, "invalid", "条数应为 1 到 200", "limit")
    states = NOTICE_STATES if wanted == "all" else (wanted,)
    items, counts = await state.queries.notices(states, case_number, limit)
    now = dt.datetime.now(dt.UTC)
    return json_response({
        "now": now.isoformat(), "state": wanted, "case": case_number, "limit": limit,
        "limit_seconds": _escalation_seconds(state), "counts": counts.as_dict(),
        "items": [_notice_json(state, n, session, now) for n in items],
        "state_labels": NOTICE_STATE_LABELS})


def _screen_pop_phone(state: ConsoleState, request: web.Request) -> str:
    pop = request.query.get("pop")
    if pop:
        phone = state.pop_phone(pop[:64])
        if phone is None:
            raise _fail(404, "pop_expired", "来电信息已过期", "pop")
        return phone
    raw = request.query.get("phone", "")
    try:
        return normalise_phone(raw, state.services.settings.cases.default_region)
    except InvalidPhoneNumber as exc:
        raise _fail(422, "invalid", "电话号码无效", "phone") from exc


async def screen_pop(request: web.Request) -> web.StreamResponse:
    """The caller's open cases and history; a browser asking for HTML gets the console page."""
    if "application/json" not in request.headers.get("Accept", ""):
        return await index(request)
    return await _screen_pop_json(request)


def _pop_case_number(raw: object) -> str | None:
    """The intake number an IVR transfer carries (the draft the caller just filed), if valid."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return CaseNumber.parse(raw[:32]).value
    except InvalidCaseNumber:
        log.warning("console.screen_pop_bad_case_number", length=len(raw))
        return None


@api
async def _screen_pop_json(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """The caller (`phone` or a `pop` handle) with open cases and history, and with `case` the
    draft the IVR filed during this call. A caller who withheld the number may come with
    `case` alone."""
    state = _state(request)
    call_case: dict[str, Any] | None = None
    if request.query.get("case"):
        number = _pop_case_number(request.query["case"])
        if number is None:
            raise _fail(400, "invalid", "受理编号无效", "case")
        brief = await state.queries.brief(number)
        call_case = _brief_json(state, brief, session) if brief is not None else None
        if not request.query.get("pop") and not request.query.get("phone"):
            log.info("console.screen_pop", actor=session.account.actor, case_number=number)
            return json_response({"phone_display": None, "phone": None, "pop": None, "open_cases": [],
                                  "history": [], "case": call_case})
    phone = _screen_pop_phone(state, request)
    open_cases, history = await state.queries.by_phone(phone)
    visible = _may_see_phone(session, state)
    log.info("console.screen_pop", actor=session.account.actor, caller=mask_number(phone))
    return json_response({
        "phone_display": phone if visible else mask_number(phone), "phone": phone if visible else None,
        "pop": state.remember_pop(phone),
        "open_cases": [_brief_json(state, b, session) for b in open_cases],
        "history": [_brief_json(state, b, session) for b in history], "case": call_case})


# ---------------------------------------------------------------------------- writes

Short = Annotated[StrictStr, Field(max_length=256)]
Code = Annotated[StrictStr, Field(max_length=32)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DraftIn(_In):
    description: Annotated[StrictStr, Field(max_length=4000)] = ""
    reporter_phone: Annotated[StrictStr, Field(max_length=32)] | None = None
    pop: Annotated[StrictStr, Field(max_length=64)] | None = None
    category: Code | None = None
    grid: Code | None = None
    address: Short | None = None
    anonymous: StrictBool = False
    confidential: StrictBool = False


class TranscriptionIn(_In):
    version: StrictInt
    seen_log: Annotated[StrictInt, Field(ge=0)] | None = None
    description: Annotated[StrictStr, Field(max_length=4000)] | None = None
    category: Code | None = None
    grid: Code | None = None
    address: Short | None = None


class SubmitIn(_In):
    version: StrictInt
    seen_log: Annotated[StrictInt, Field(ge=0)] | None = None


class RejectIn(_In):
    reason: RejectionReason
    note: Short | None = None


class MergeIn(_In):
    into: Code
    note: Short | None = None


def _changed(state: ConsoleState, view: CaseView) -> None:
    state.hub.publish("case_updated", {"number": view.number, "status": view.status})


async def _conflict(state: ConsoleState, number: str, session: ConsoleSession, seen_log: int | None) -> web.Response:
    """409 with what the colleague changed; the browser keeps what this person typed."""
    current = await state.services.cases.get(number)
    others = [_log_json(e) for e in current.log[seen_log:]] if seen_log is not None else []
    return json_response({"error": "conflict", "message": "该案件已被他人修改",
                          "current": await _case_payload(state, current, session), "others": others}, status=409)


@api
async def create_draft(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    body: DraftIn = await _read(request, DraftIn)
    phone = body.reporter_phone or None
    channel = Channel.STAFF
    if body.pop:
        phone = state.pop_phone(body.pop)
        if phone is None:
            raise _fail(404, "pop_expired", "来电信息已过期，请手工填写电话号码", "pop")
        channel = Channel.PHONE
    if not body.description.strip():
        raise _fail(422, "invalid", "请填写问题描述", "description")
    view = await state.services.cases.create_draft(DraftInput(
        channel=channel, description=body.description, reporter_phone=phone, anonymous=body.anonymous,
        confidential=body.confidential, category=body.category or None, grid=body.grid or None,
        address=body.address or None), actor=session.account.actor)
    state.hub.publish("draft_created", {"number": view.number, "channel": view.channel})
    return json_response(await _case_payload(state, view, session), status=201)


@api
async def update_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    number = request.match_info["number"]
    body: TranscriptionIn = await _read(request, TranscriptionIn)
    changes = body.model_dump(exclude_unset=True, exclude={"version", "seen_log"})
    try:
        view = await state.services.cases.update_transcription(
            number, changes, actor=session.account.actor, expected_version=body.version)
    except Conflict:
        return await _conflict(state, number, session, body.seen_log)
    _changed(state, view)
    return json_response(await _case_payload(state, view, session))


@api
async def submit_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    number = request.match_info["number"]
    body: SubmitIn = await _read(request, SubmitIn)
    try:
        view = await state.services.cases.submit(number, actor=session.account.actor, expected_version=body.version)
    except Conflict:
        return await _conflict(state, number, session, body.seen_log)
    _changed(state, view)
    return json_response(await _case_payload(state, view, session))


@api
async def reject_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    body: RejectIn = await _read(request, RejectIn)
    view = await state.services.cases.reject(request.match_info["number"], body.reason,
                                             actor=session.account.actor, note=body.note or None)
    _changed(state, view)
    return json_response(await _case_payload(state, view, session))


@api
async def merge_case(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    body: MergeIn = await _read(request, MergeIn)
    view = await state.services.cases.merge(request.match_info["number"], body.into.strip(),
                                            actor=session.account.actor, note=body.note or None)
    _changed(state, view)
    if view.master_number:
        state.hub.publish("case_updated", {"number": view.master_number, "status": "merged_in"})
    return json_response(await _case_payload(state, view, session))


class CallbackIn(_In):
    phone: Short | None = None


_CALLBACK_REFUSED = {"not_found": (404, "案件不存在"), "no_phone": (422, "该案件没有可回访的电话号码"),
                     "busy": (409, "正在回访中，请稍后再试"), "invalid": (422, "案件编号或电话号码无效")}


@api
async def request_callback(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    """The reporter asked staff for a rating call-back (回访) once the case is closed."""
    from callcenter.voice.callbacks import CallbackRefused, CallbackService

    state = _state(request)
    settings = state.services.settings
    if not settings.callback.enabled:
        raise _fail(409, "callback_disabled", "未开通回访")
    body: CallbackIn = await _read(request, CallbackIn)
    service = CallbackService(state.services.sessions, settings.callback, ami=None,
                              timezone=settings.cases.timezone, region=settings.cases.default_region)
    try:
        view = await service.request(request.match_info["number"], by=session.account.actor,
                                     phone=body.phone or None)
    except CallbackRefused as exc:
        status, message = _CALLBACK_REFUSED.get(exc.code, _CALLBACK_REFUSED["invalid"])
        raise _fail(status, exc.code, message, "phone" if exc.code == "invalid" and body.phone else None) from exc
    return json_response({"case_number": view.case_number, "status": view.status,
                          "phone": _phone_out(view.phone, session, state)})


# ---------------------------------------------------------------------------- dashboard

# GB/T 33358: at least 95 % of calls answered within 15 s (shown beside the figure).
ANSWER_TARGET_RATE = 0.95


def _parse_day(raw: str | None, default: dt.date, name: str) -> dt.date:
    if not raw:
        return default
    try:
        return dt.date.fromisoformat(raw)
    except ValueError as exc:
        raise _fail(400, "invalid", f"{FIELD_LABELS[name]}格式应为 YYYY-MM-DD", name) from exc


@api
async def dashboard(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = _state(request)
    tz = state.tz
    now = dt.datetime.now(dt.UTC)
    today = now.astimezone(tz).date()
    first = _parse_day(request.query.get("from"), today, "from")
    last = _parse_day(request.query.get("to"), first if request.query.get("from") else today, "to")
    if last < first:
        raise _fail(400, "invalid", "结束日期不能早于开始日期", "to")
    if (last - first).days > 366:
        raise _fail(400, "invalid", "统计周期最长一年", "to")

    def start_of(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), tzinfo=tz).astimezone(dt.UTC)

    today_start, today_end = start_of(today), start_of(today + dt.timedelta(days=1))
    period_start, period_end = start_of(first), start_of(last + dt.timedelta(days=1))
    queries = state.queries
    waiting, oldest = await queries.drafts_waiting()
    queued, sent, delivered = await queries.sms_out(today_start, today_end)
    receipts_delivered, undelivered = await queries.sms_delivery(today_start, today_end)
    sms_in = await queries.sms_in(today_start, today_end)
    calls = await queries.calls(today_start, today_end)
    by_category = await queries.counts_by("category", period_start, period_end)
    by_grid = await queries.counts_by("grid", period_start, period_end)
    evaluation = await queries.evaluation(period_start, period_end,
                                          dt.timedelta(hours=state.settings.closure_deadline_hours))
    today_intake = await queries.intake(today_start, today_end)
    supervision = await queries.supervision(today_start, today_end)
    oldest_task = supervision.oldest_waiting
    return json_response({
        "generated_at": now.isoformat(),
        "today": {
            "date": today.isoformat(), "intake": today_intake,
            # A rate whose denominator is 0 is null (暂无数据); see docs/console.md.
            "calls": calls.calls, "answered_within_15s": calls.answered_in_target,
            "answered_within_15s_rate": calls.answered_in_target_rate,
            "answered_within_15s_target": ANSWER_TARGET_RATE, "abandoned": calls.abandoned,
            "queued": calls.queued, "answered": calls.answered, "mean_wait_seconds": calls.mean_wait_seconds,
            "sms_in": sms_in, "sms_out": queued, "sms_sent": sent, "sms_delivered": delivered,
            "sms_undelivered": undelivered,
            "sms_delivery_rate": (round(receipts_delivered / (receipts_delivered + undelivered), 4)
                                  if receipts_delivered + undelivered else None)},
        "drafts": {"waiting": waiting, "oldest": None if oldest is None else {
            "number": oldest.number, "created_at": _local_iso(oldest.created_at),
            "waiting_seconds": max(0, int((now - oldest.created_at).total_seconds()))},
            "target_seconds": state.settings.queue_target_minutes * 60},
        "period": {"from": first.isoformat(), "to": last.isoformat()},
        "by_category": [{**(_category_json(state, code) or {}), "count": n} for code, n in by_category],
        "by_grid": [{**(_grid_by_code(state, code) or {}), "count": n} for code, n in by_grid],
        "evaluation": {**evaluation.as_dict(), "deadline_hours": state.settings.closure_deadline_hours},
        "supervision": {
            "sent_today": supervision.sent, "answered_today": supervision.answered,
            "confirmed_today": supervision.confirmed, "not_confirmed_today": supervision.not_confirmed,
            "escalated_today": supervision.escalated, "waiting": supervision.waiting_now,
            "escalated_unanswered": supervision.escalated_open_now,
            "limit_seconds": _escalation_seconds(state),
            "oldest_waiting": None if oldest_task is None else {
                "code": oldest_task.code, "case_number": oldest_task.case_number,
                "waiting_seconds": max(0, int((now - oldest_task.created_at).total_seconds()))}},
    })


# ---------------------------------------------------------------------------- live events


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    lines = [f"id: {event_id}"] if event_id is not None else []
    lines += [f"event: {event}", "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":"))]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


def _for_subscriber(state: ConsoleState, event: ConsoleEvent, session: ConsoleSession) -> dict[str, Any] | None:
    """What this console may see of an event; None when it is someone else's."""
    data = dict(event.data)
    if event.type == "screen_pop":
        agent = data.get("agent")
        if agent and str(agent).casefold() != session.account.username:
            return None
        case_number = _pop_case_number(data.get("case_number"))
        try:
            phone: str | None = normalise_phone(str(data.get("phone") or ""),
                                                state.services.settings.cases.default_region)
        except InvalidPhoneNumber:
            phone = None
        if phone is None:
            if case_number is None:
                return None
            # A withheld number: the pop still shows the draft the caller filed.
            return {"pop": None, "phone": None, "phone_display": None, "call_id": data.get("call_id"),
                    "case_number": case_number}
        visible = _may_see_phone(session, state)
        return {"pop": state.remember_pop(phone), "phone": phone if visible else None,
                "phone_display": phone if visible else mask_number(phone), "call_id": data.get("call_id"),
                "case_number": case_number}
    for key in ("phone", "reporter_phone", "recipient"):
        if data.get(key):
            data[key] = _phone_out(str(data[key]), session, state)
    return data


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: new drafts, case changes, screen pops, notices.

    Streaming does not count as activity: an unattended console still times out, and the
    stream then says `session_expired` and ends.
    """
    state = _state(request)
    token = request.cookies.get(SESSION_COOKIE)
    session = await state.staff.resolve(token, touch=False)
    if session is None:
        raise _fail(401, "session_expired" if token else "unauthorized", "登录已超时，请重新登录")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await response.prepare(request)
    await response.write(b"retry: 3000\n\n" + _sse("hello", {"user": session.account.display_name}))
    with contextlib.suppress(ConnectionResetError), state.hub.subscribe(session.account.username) as sub:
        while not sub.closed:
            event = await sub.next(HEARTBEAT_SECONDS)
            if sub.closed:
                break
            if sub.overflowed:
                sub.overflowed = False
                while not sub.queue.empty():
                    sub.queue.get_nowait()
                await response.write(_sse("resync", {}))
                continue
            if event is None:
                if await state.staff.resolve(token, touch=False) is None:
                    await response.write(_sse("session_expired", {"message": "登录已超时，请重新登录"}))
                    break
                await response.write(b": keepalive\n\n")
                continue
            payload = _for_subscriber(state, event, session)
            if payload is not None:
                await response.write(_sse(event.type, payload, event.id))
    return response


# ---------------------------------------------------------------------------- wiring


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[console_key]
    state.task = asyncio.get_running_loop().create_task(state.watcher.run(), name="console-draft-watcher")
    yield
    state.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await state.task


async def _shutdown(app: web.Application) -> None:
    app[console_key].hub.close()


def add_routes(app: web.Application) -> None:
    """Mount the console on the service's app (call from make_app, after services_key is set)."""
    services = app[services_key]
    hub = getattr(services, "events", None)
    if not isinstance(hub, ConsoleHub):
        hub = ConsoleHub()
    static = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in (*_STATIC_TYPES, ".html")}
    state = ConsoleState(
        services=services, staff=StaffStore(services.sessions, services.settings.console),
        queries=ConsoleQueries(services.sessions), hub=hub,
        watcher=DraftWatcher(hub, services.sessions, services.settings.console.poll_seconds), static=static)
    app[console_key] = state
    app.on_response_prepare.append(_on_prepare)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_shutdown)
    r = app.router
    r.add_get("/console", root_redirect)
    r.add_get("/console/", index)
    r.add_get("/console/login", login_page)
    r.add_post("/console/login", login_submit)
    r.add_post("/console/logout", logout)
    r.add_get("/console/screen-pop", screen_pop)
    r.add_get("/console/events", events)
    r.add_get("/console/static/{name}", static_file)
    r.add_get("/console/api/me", me)
    r.add_get("/console/api/queue", queue)
    r.add_get("/console/api/notices", notices)
    r.add_get("/console/api/dashboard", dashboard)
    r.add_get("/console/api/catalogue", catalogue)
    r.add_get("/console/api/grids", grids)
    r.add_post("/console/api/cases", create_draft)
    r.add_get("/console/api/cases/{number}", get_case)
    r.add_patch("/console/api/cases/{number}", update_case)
    r.add_post("/console/api/cases/{number}/submit", submit_case)
    r.add_post("/console/api/cases/{number}/reject", reject_case)
    r.add_post("/console/api/cases/{number}/merge", merge_case)
    r.add_post("/console/api/cases/{number}/callback", request_callback)
    r.add_get("/console/api/cases/{number}/duplicates", duplicates)
    r.add_get("/console/api/cases/{number}/recording", recording)
