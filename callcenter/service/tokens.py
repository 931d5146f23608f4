"""Bearer tokens with roles. Only a SHA-256 of each token is stored; the token is shown once."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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
    sessions: async_sessionmaker[AsyncSession]

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
        async with self.sessions() as session:
            row = await session.scalar(
                select(ApiTokenRow).where(ApiTokenRow.token_hash == hash_token(token),
                                          ApiTokenRow.revoked_at.is_(None)))
            return None if row is None else Principal(name=row.name, role=Role(row.role))

    async def revoke(self, name: str) -> int:
        async with self.sessions() as session, session.begin():
            rows = (await session.scalars(
                select(ApiTokenRow).where(ApiTokenRow.name == name, ApiTokenRow.revoked_at.is_(None)))).all()
            for row in rows:
                row.revoked_at = dt.datetime.now(dt.UTC)
            return len(rows)
