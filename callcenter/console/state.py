"""The console's per-app state: the wired services plus what only the console keeps
(staff store, read queries, the event hub, the screen-pop sealer)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web

from callcenter.app import Services
from callcenter.console.auth import StaffStore
from callcenter.console.pop_handles import KEY_NAME, PopSealer, new_key
from callcenter.console.queries import ConsoleQueries
from callcenter.events import DraftWatcher, EventHub
from callcenter.service.shared_keys import shared_key
from callcenter.settings import ConsoleSettings


@dataclass
class ConsoleState:
    services: Services
    staff: StaffStore
    queries: ConsoleQueries
    hub: EventHub
    watcher: DraftWatcher
    static: dict[str, Path]
    pops: PopSealer | None = None
    task: asyncio.Task[None] | None = None

    @property
    def settings(self) -> ConsoleSettings:
        return self.services.settings.console

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.services.settings.cases.timezone)

    async def pop_sealer(self) -> PopSealer:
        """Seals and opens screen-pop handles with the key every node shares (read from the
        store once, made there by the first node that needs it)."""
        if self.pops is None:
            key = await shared_key(self.services.engine, KEY_NAME, new_key)
            self.pops = PopSealer(key, self.settings.pop_ttl_minutes * 60.0)
        return self.pops


console_key: web.AppKey[ConsoleState] = web.AppKey("console", ConsoleState)


def state_of(request: web.Request) -> ConsoleState:
    return request.app[console_key]
