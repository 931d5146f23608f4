"""Staff accounts and console sessions: scrypt passwords, lock-out, idle expiry, CSRF tokens.

Only hashes are stored: the password as scrypt with a per-user salt, the session cookie as
SHA-256, so a copy of the database signs nobody in.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.db.tables import ConsoleSessionRow, StaffAccountRow
from callcenter.settings import ConsoleSettings

log = structlog.get_logger(__name__)

# scrypt cost: 16 MiB and ~50 ms per check; stored with each hash, so it can be raised later.
SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_DKLEN = 2**14, 8, 1, 32
MIN_PASSWORD = 8
MAX_PASSWORD = 256
_USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
# Touch a session at most this often, so a busy page does not write on every request.
_TOUCH_EVERY = dt.timedelta(seconds=15)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class StaffRole(enum.StrEnum):
    STAFF = "staff"                # 接线员
    SHIFT_LEADER = "shift_leader"  # 值班长

    @property
    def label_zh(self) -> str:
        return "值班长" if self is StaffRole.SHIFT_LEADER else "接线员"


class AccountError(ValueError):
    """A staff account cannot be created as asked; the message says why."""


@dataclass(frozen=True)
class StaffAccount:
    id: int
    username: str
    display_name: str
    role: StaffRole

    @property
    def actor(self) -> str:
        """What the case log records: the staff member's name, not a login handle."""
        return f"staff:{self.display_name}"


@dataclass(frozen=True)
class ConsoleSession:
    account: StaffAccount
    csrf_token: str
    expires_at: dt.datetime


class SignInRefused(Exception):
    """Wrong username or password (`reason="bad"`) or a locked account (`reason="locked"`)."""

    def __init__(self, reason: str, locked_until: dt.datetime | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.locked_until = locked_until


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=SCRYPT_DKLEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check; a malformed stored hash never matches."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        want = base64.b64decode(expected)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(want), maxmem=64 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


# Checked when the username is unknown, so a wrong name costs as long as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def normalise_username(username: str) -> str:
    return unicodedata.normalize("NFKC", username).strip().casefold()


def hash_session_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _account(row: StaffAccountRow) -> StaffAccount:
    return StaffAccount(id=row.id, username=row.username, display_name=row.display_name,
                        role=StaffRole(row.role))


@dataclass
class StaffStore:
    sessions: async_sessionmaker[AsyncSession]
    settings: ConsoleSettings
    now: Callable[[], dt.datetime] = utcnow

    @property
    def idle(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.settings.idle_timeout_minutes)

    # ---- accounts ---------------------------------------------------------------------

    async def account_count(self) -> int:
        """How many accounts exist (start-up tells a fresh install how to make the first)."""
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(StaffAccountRow)) or 0)

    async def create_account(self, username: str, display_name: str, role: StaffRole | str,
                             password: str) -> StaffAccount:
        name = normalise_username(username)
        if not _USERNAME_RE.fullmatch(name):
            raise AccountError("username: 2-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        display = unicodedata.normalize("NFKC", display_name).strip()
        if not display or len(display) > 64 or any(unicodedata.category(ch).startswith("C") for ch in display):
            raise AccountError("name: 1-64 printable characters (the staff member's name, e.g. 王芳)")
        try:
            staff_role = StaffRole(role)
        except ValueError as exc:
            raise AccountError("role: staff or shift_leader") from exc
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            raise AccountError(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        hashed = await asyncio.to_thread(hash_password, password)
        row = StaffAccountRow(username=name, display_name=display, role=staff_role.value, password_hash=hashed,
                              failed_attempts=0, locked_until=None, created_at=self.now())
        try:
            async with self.sessions() as session, session.begin():
                session.add(row)
        except IntegrityError as exc:
            raise AccountError(f"username {name!r} is taken") from exc
        return _account(row)

    async def authenticate(self, username: str, password: str) -> StaffAccount:
        """The account if the password is right and it is not locked; otherwise SignInRefused.

        Wrong passwords are counted with an atomic UPDATE, so parallel guesses cannot slip
        past the limit; reaching it locks the account and starts the count again.
        """
        name = normalise_username(username)
        password = password[:MAX_PASSWORD]
        async with self.sessions() as session:
            row = await session.scalar(select(StaffAccountRow).where(StaffAccountRow.username == name))
        if row is None:
            await asyncio.to_thread(verify_password, password, _DUMMY_HASH)
            raise SignInRefused("bad")
        now = self.now()
        if row.locked_until is not None and row.locked_until > now:
            raise SignInRefused("locked", row.locked_until)
        if await asyncio.to_thread(verify_password, password, row.password_hash):
            async with self.sessions() as session, session.begin():
                await session.execute(update(StaffAccountRow).where(StaffAccountRow.id == row.id)
                                      .values(failed_attempts=0, locked_until=None))
            return _account(row)
        account = StaffAccountRow
        until: dt.datetime | None = None
        async with self.sessions() as session, session.begin():
            count = (await session.execute(
                update(account).where(account.id == row.id)
                .values(failed_attempts=account.failed_attempts + 1)
                .returning(account.failed_attempts))).scalar_one()
            if count >= self.settings.max_failed_logins:
                until = now + dt.timedelta(minutes=self.settings.lockout_minutes)
                await session.execute(update(account).where(account.id == row.id)
                                      .values(failed_attempts=0, locked_until=until))
        # Raised after the commit: raising inside the block would roll the lock back.
        if until is not None:
            log.warning("console.account_locked", username=name, until=until.isoformat())
            raise SignInRefused("locked", until)
        raise SignInRefused("bad")

    # ---- sessions ---------------------------------------------------------------------

    async def open_session(self, account: StaffAccount) -> tuple[str, ConsoleSession]:
        """A new session; returns the cookie value (shown to the browser only) and the session."""
        token = secrets.token_urlsafe(32)
        now = self.now()
        row = ConsoleSessionRow(id_hash=hash_session_token(token), account_id=account.id,
                                csrf_token=secrets.token_urlsafe(32), created_at=now,
                                expires_at=now + self.idle, last_seen=now)
        async with self.sessions() as session, session.begin():
            # Housekeeping while we are here: expired sessions are worthless.
            await session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.expires_at < now))
            session.add(row)
        return token, ConsoleSession(account=account, csrf_token=row.csrf_token, expires_at=row.expires_at)

    async def resolve(self, token: str | None, *, touch: bool) -> ConsoleSession | None:
        """The live session for a cookie value, or None (unknown or idle too long).

        `touch` extends the idle deadline: real clicks do, background polling does not, so an
        open but unattended console still times out.
        """
        if not token or len(token) > 128:
            return None
        key = hash_session_token(token)
        now = self.now()
        async with self.sessions() as session:
            found = (await session.execute(
                select(ConsoleSessionRow, StaffAccountRow)
                .join(StaffAccountRow, StaffAccountRow.id == ConsoleSessionRow.account_id)
                .where(ConsoleSessionRow.id_hash == key))).first()
            if found is None:
                return None
            row, account_row = found
            if row.expires_at <= now:
                await session.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.id_hash == key))
                await session.commit()
                return None
            expires = row.expires_at
            if touch and now - row.last_seen >= _TOUCH_EVERY:
                expires = now + self.idle
                await session.execute(update(ConsoleSessionRow).where(ConsoleSessionRow.id_hash == key)
                                      .values(last_seen=now, expires_at=expires))
                await session.commit()
            return ConsoleSession(account=_account(account_row), csrf_token=row.csrf_token, expires_at=expires)

    async def close_session(self, token: str | None) -> None:
        if not token:
            return
        async with self.sessions() as session, session.begin():
            await session.execute(delete(ConsoleSessionRow)
                                  .where(ConsoleSessionRow.id_hash == hash_session_token(token)))
