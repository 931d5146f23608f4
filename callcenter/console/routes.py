"""/console/: every URL of the staff console in one place, and its start and stop.

Pages are static files; every value reaches the browser as JSON and is put on the page
with textContent. The handlers live by concern: sign-in and CSRF (signin), case actions
(cases), the dashboard and notices (dashboard), screen pops (screen_pop), live events (live).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web

from callcenter.console import cases, dashboard, live, pages, screen_pop, signin
from callcenter.console.auth import StaffStore
from callcenter.console.queries import ConsoleQueries
from callcenter.console.state import ConsoleState, console_key
from callcenter.events import DraftWatcher, EventHub
from callcenter.web.keys import services_key


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
    """Mount the console on the service's app (the app factory calls it, after services_key is set)."""
    services = app[services_key]
    hub: EventHub = services.events
    static = {p.name: p for p in pages.STATIC_DIR.iterdir()
              if p.is_file() and p.suffix in (*pages.STATIC_TYPES, ".html")}
    state = ConsoleState(
        services=services, staff=StaffStore(services.sessions, services.settings.console),
        queries=ConsoleQueries(services.sessions), hub=hub,
        watcher=DraftWatcher(hub, services.sessions, services.settings.console.poll_seconds), static=static)
    app[console_key] = state
    app.on_response_prepare.append(signin.on_prepare)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_shutdown)
    r = app.router
    r.add_get("/console", pages.root_redirect)
    r.add_get("/console/", pages.index)
    r.add_get("/console/login", signin.login_page)
    r.add_post("/console/login", signin.login_submit)
    r.add_post("/console/logout", signin.logout)
    r.add_get("/console/screen-pop", screen_pop.screen_pop)
    r.add_get("/console/events", live.events)
    r.add_get("/console/static/{name}", pages.static_file)
    r.add_get("/console/api/me", signin.me)
    r.add_get("/console/api/queue", cases.queue)
    r.add_get("/console/api/notices", dashboard.notices)
    r.add_get("/console/api/dashboard", dashboard.dashboard)
    r.add_get("/console/api/catalogue", pages.catalogue)
    r.add_get("/console/api/grids", pages.grids)
    r.add_post("/console/api/cases", cases.create_draft)
    r.add_get("/console/api/cases/{number}", cases.get_case)
    r.add_patch("/console/api/cases/{number}", cases.update_case)
    r.add_post("/console/api/cases/{number}/submit", cases.submit_case)
    r.add_post("/console/api/cases/{number}/reject", cases.reject_case)
    r.add_post("/console/api/cases/{number}/merge", cases.merge_case)
    r.add_post("/console/api/cases/{number}/callback", cases.request_callback)
    r.add_post("/console/api/cases/{number}/call-reporter", cases.call_reporter)
    r.add_get("/console/api/cases/{number}/duplicates", cases.duplicates)
    r.add_get("/console/api/cases/{number}/recording", cases.recording)
