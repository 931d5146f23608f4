"""The console's per-app state: the wired services plus what only the console keeps
(staff store, read queries, the event hub, screen-pop handles)."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web

from callcenter.app import Services
from callcenter.console.auth import StaffStore
from callcenter.console.queries import ConsoleQueries
from callcenter.events import DraftWatcher, EventHub
from callcenter.settings import ConsoleSettings

POP_TTL_SECONDS = 3600.0


@dataclass
class ConsoleState:
    services: Services
    staff: StaffStore
    queries: ConsoleQueries
    hub: EventHub
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


def state_of(request: web.Request) -> ConsoleState:
    return request.app[console_key]
