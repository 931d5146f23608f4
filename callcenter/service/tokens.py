"""Bearer tokens with roles. Only a SHA-256 of each token is stored; the token is shown once."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter.cluster.store import TOKEN_REVOKED, record_events
from callcenter.db.tables import ApiTokenRow


class Role(enum.StrEnum):
    STAFF = "staff"          # 接线员: files and transcribes cases
    PLATFORM = "platform"    # the urban-management platform: status events, task notices
    GATEWAY = "gateway"      # SMS gateways delivering inbound texts over HTTP
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role

    @property
    def actor(self) -> str:
        return f"{self.role.value}:{self.name}"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class TokenStore:
    """Token check with a short positive cache: every API request asks, the answer rarely changes.

    A revocation takes effect at once in this process. On PostgreSQL it also writes a
    `token_revoked` cluster event in its own transaction, and every node's cluster bus drops
    those tokens from its cache when the NOTIFY arrives; while a node's bus is not listening
    its cache is off (`set_cache_enabled`), so no node keeps honouring a revoked token. On
    SQLite (one node) another process, such as the CLI, is seen within `cache_seconds`.
    """

    sessions: async_sessionmaker[AsyncSession]
    cache_seconds: float = 30.0
    origin: str = "cli"
    _cache: dict[str, tuple[Principal, float]] = field(default_factory=dict, repr=False)
    _cache_enabled: bool = field(default=True, repr=False)

    @property
    def cache_enabled(self) -> bool:
        return self._cache_enabled

    def set_cache_enabled(self, enabled: bool) -> None:
        """The cluster bus turns the cache off while it may be missing revocations."""
        if not enabled:
            self._cache.clear()
        self._cache_enabled = enabled

    def forget(self, digests: Iterable[str]) -> None:
        """Drop tokens from the cache (revoked on another node)."""
        for digest in digests:
            self._cache.pop(digest, None)

    async def create(self, role: Role, name: str) -> str:
        name = name.strip()
        if not name or len(name) > 128:
            raise ValueError("token name must be 1 to 128 characters")
        token = f"cc_{role.value}_{secrets.token_urlsafe(32)}"
        async with self.sessions() as session, session.begin():
            session.add(ApiTokenRow(name=name, role=role.value, token_hash=hash_token(token),
                                    created_at=dt.datetime.now(dt.UTC)))
        return token

    async def verify(self, token: str) -> Principal | None:
        if not token or len(token) > 256:
            return None
        digest = hash_token(token)
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self.sessions() as session:
            row = await session.scalar(
                select(ApiTokenRow).where(ApiTokenRow.token_hash == digest, ApiTokenRow.revoked_at.is_(None)))
        if row is None:
            self._cache.pop(digest, None)
            return None
        principal = Principal(name=row.name, role=Role(row.role))
        if not self._cache_enabled:
            return principal
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (principal, time.monotonic() + self.cache_seconds)
        return principal

    async def revoke(self, name: str) -> int:
        async with self.sessions() as session, session.begin():
            rows = (await session.scalars(
                select(ApiTokenRow).where(ApiTokenRow.name == name, ApiTokenRow.revoked_at.is_(None)))).all()
            for row in rows:
                row.revoked_at = dt.datetime.now(dt.UTC)
                self._cache.pop(row.token_hash, None)
            if rows and session.get_bind().dialect.name == "postgresql":
                digests = [row.token_hash for row in rows]
                await record_events(session, self.origin, [
                    (TOKEN_REVOKED, None, {"digests": digests[i:i + 100]}) for i in range(0, len(digests), 100)])
            return len(rows)
