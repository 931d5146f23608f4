"""Sign-in, sign-out and the guards every other handler sits behind: session cookie,
CSRF token (double-submit before sign-in, per session after), security headers."""

from __future__ import annotations

import functools
import hmac
import html
import re
import secrets
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from yarl import URL

from callcenter.cases.lifecycle import RejectionReason
from callcenter.console.auth import ConsoleSession, SignInRefused
from callcenter.console.inputs import fail, zh_service_error
from callcenter.console.serialise import may_see_phone
from callcenter.console.state import ConsoleState, state_of
from callcenter.service.errors import ServiceError
from callcenter.web.http import ApiError, json_response

log = structlog.get_logger(__name__)

SESSION_COOKIE = "cc_console"
LOGIN_COOKIE = "cc_login"
CSRF_HEADER = "X-CSRF-Token"
BACKGROUND_HEADER = "X-Console-Background"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; media-src 'self'; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_NEXT_RE = re.compile(r"/console/[A-Za-z0-9/_\-?=&.%+]*")
SIGN_IN_MESSAGES = {
    "bad": "用户名或密码错误",
    "expired": "登录已超时，请重新登录",
    "signed_out": "您已安全退出",
    "csrf": "页面已过期，请重新登录",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SessionHandler = Callable[[web.Request, ConsoleSession], Awaitable[web.StreamResponse]]


def security_headers(response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/console" or request.path.startswith("/console/"):
        security_headers(response)


async def session_of(request: web.Request, *, touch: bool) -> ConsoleSession | None:
    return await state_of(request).staff.resolve(request.cookies.get(SESSION_COOKIE), touch=touch)


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


def page(handler: SessionHandler) -> Handler:
    """A page that needs a signed-in session; otherwise off to the sign-in page."""
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        session = await session_of(request, touch=True)
        if session is None:
            query = {"next": str(request.rel_url)}
            if request.cookies.get(SESSION_COOKIE):
                query["m"] = "expired"
            response = see_other(str(URL("/console/login").with_query(query)))
            response.del_cookie(SESSION_COOKIE, path="/console")
            return response
        return await handler(request, session)
    return wrapper


def api(handler: SessionHandler) -> Handler:
    """A JSON endpoint: a live session, and the CSRF token on anything that changes state."""
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        background = request.headers.get(BACKGROUND_HEADER) == "1"
        session = await session_of(request, touch=not background)
        if session is None:
            expired = bool(request.cookies.get(SESSION_COOKIE))
            raise fail(401, "session_expired" if expired else "unauthorized",
                       "登录已超时，请重新登录" if expired else "请先登录")
        if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_ok(
                session.csrf_token, request.headers.get(CSRF_HEADER)):
            log.warning("console.csrf_refused", path=request.path, actor=session.account.actor)
            raise fail(403, "csrf", "请求缺少有效的安全令牌，请刷新页面后重试")
        structlog.contextvars.bind_contextvars(actor=session.account.actor)
        try:
            return await handler(request, session)
        except ServiceError as exc:
            raise ApiError(exc.status, exc.code, zh_service_error(exc), exc.field) from exc
    return wrapper


def see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


def set_cookie(response: web.StreamResponse, state: ConsoleState, name: str, value: str) -> None:
    response.set_cookie(name, value, path="/console", httponly=True, samesite="Strict",
                        secure=state.settings.secure_cookies)


def render_login(state: ConsoleState, message: str | None, next_url: str, status: int = 200,
                 *, error: bool = False, username: str = "") -> web.Response:
    """The sign-in form with a fresh pre-session CSRF token (double-submit cookie). After a
    wrong password the user name stays filled in and the password field has the focus."""
    token = secrets.token_urlsafe(32)
    text = state.static["login.html"].read_text(encoding="utf-8")
    text = (text.replace("__USERNAME_FOCUS__", "" if username else "autofocus")
            .replace("__PASSWORD_FOCUS__", "autofocus" if username else "")
            .replace("__USERNAME__", html.escape(username, quote=True))
            .replace("__CSRF__", html.escape(token, quote=True))
            .replace("__NEXT__", html.escape(next_url, quote=True))
            .replace("__MESSAGE_CLASS__", "message error" if error else ("message" if message else "message hidden"))
            .replace("__MESSAGE__", html.escape(message or "")))
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    set_cookie(response, state, LOGIN_COOKIE, token)
    return response


def safe_next(raw: str | None) -> str:
    if raw and _NEXT_RE.fullmatch(raw) and "//" not in raw:
        return raw
    return "/console/"


async def login_page(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    code = request.query.get("m", "")
    return render_login(state, SIGN_IN_MESSAGES.get(code), safe_next(request.query.get("next")),
                       error=code in ("expired", "csrf"))


async def login_submit(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    try:
        form = await request.post()
    except (UnicodeDecodeError, ValueError, LookupError):  # LookupError: charset=bogus
        return render_login(state, "请求格式错误", "", status=400, error=True)
    next_url = safe_next(str(form.get("next", "")))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not csrf_ok(expected, str(form.get("csrf_token", ""))):
        log.warning("console.login_csrf_refused")
        return render_login(state, SIGN_IN_MESSAGES["csrf"], next_url, status=403, error=True)
    username = str(form.get("username", ""))[:64]
    password = str(form.get("password", ""))
    if not username.strip() or not password:
        return render_login(state, "请输入用户名和密码", next_url, status=400, error=True,
                            username=username.strip())
    if "\x00" in username or "\x00" in password:  # no account has one; PostgreSQL cannot compare it
        return render_login(state, SIGN_IN_MESSAGES["bad"], next_url, status=400, error=True,
                            username=username.strip().replace("\x00", ""))
    try:
        account = await state.staff.authenticate(username, password)
    except SignInRefused as refused:
        if refused.reason == "locked" and refused.locked_until is not None:
            until = refused.locked_until.astimezone(state.tz).strftime("%H:%M")
            log.warning("console.sign_in_locked", username=username.strip()[:64])
            return render_login(state, f"密码错误次数过多，账户已锁定，请于 {until} 后再试", next_url,
                                status=423, error=True, username=username.strip())
        log.info("console.sign_in_refused", username=username.strip()[:64])
        return render_login(state, SIGN_IN_MESSAGES["bad"], next_url, status=401, error=True,
                            username=username.strip())
    token, _session_info = await state.staff.open_session(account)
    log.info("console.signed_in", actor=account.actor, role=account.role.value)
    response = see_other(next_url)
    set_cookie(response, state, SESSION_COOKIE, token)
    response.del_cookie(LOGIN_COOKIE, path="/console")
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    session = await session_of(request, touch=False)
    if session is not None:
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type == "application/x-www-form-urlencoded":
            given = str((await request.post()).get("csrf_token", ""))
        if not csrf_ok(session.csrf_token, given):
            raise fail(403, "csrf", "请求缺少有效的安全令牌，请刷新页面后重试")
        await state.staff.close_session(request.cookies.get(SESSION_COOKIE))
        log.info("console.signed_out", actor=session.account.actor)
    response = see_other("/console/login?m=signed_out")
    response.del_cookie(SESSION_COOKIE, path="/console")
    return response



@api
async def me(request: web.Request, session: ConsoleSession) -> web.StreamResponse:
    state = state_of(request)
    account = session.account
    return json_response({
        "username": account.username, "display_name": account.display_name, "role": account.role.value,
        "role_label": account.role.label_zh, "csrf_token": session.csrf_token,
        "may_see_phone": may_see_phone(session, state), "timezone": state.services.settings.cases.timezone,
        "idle_timeout_minutes": state.settings.idle_timeout_minutes,
        "queue_target_seconds": state.settings.queue_target_minutes * 60,
        "reject_reasons": [{"value": r.value, "label": r.label_zh} for r in RejectionReason],
    })

