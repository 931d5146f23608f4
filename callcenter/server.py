"""`callcenter serve`: every listener on one event loop.

Twisted is the network runtime, installed on the asyncio reactor, so Twisted protocols
(FastAGI, SMPP), aiohttp and the async database engine all share one asyncio loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from twisted.internet.defer import Deferred

from callcenter.app import Services, build_services
from callcenter.db import migrate
from callcenter.logs import configure_logging
from callcenter.runtime import install_reactor
from callcenter.settings import Settings

log = structlog.get_logger(__name__)


class Runtime:
    """What `serve` starts, kept together so shutdown can stop it in reverse order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Services | None = None
        self.runner: web.AppRunner | None = None
        self.listeners: list[Any] = []

    async def start(self) -> None:
        from callcenter.api.app import make_app

        self.services = build_services(self.settings)
        await self.services.check_database()
        self.runner = web.AppRunner(make_app(self.services), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        for sock in site._server.sockets if site._server else ():  # noqa: SLF001 - to log port 0's real port
            host, port = sock.getsockname()[:2]
            log.info("listening", service="http", address=f"http://{host}:{port}/")

    async def stop(self) -> None:
        for listener in reversed(self.listeners):
            await Deferred.asFuture(listener.stopListening(), asyncio.get_running_loop())
        if self.runner is not None:
            await self.runner.cleanup()
        if self.services is not None:
            await self.services.close()
        log.info("stopped")


def serve(settings: Settings) -> int:
    configure_logging(settings.logging)
    try:
        state = migrate.upgrade_if_empty(settings.database.url)
    except Exception as exc:  # noqa: BLE001 - reported and turned into an exit code
        log.error("database.unusable", error=str(exc))
        return 1
    log.info("database.ready", schema=state)

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    reactor = install_reactor(loop)
    runtime = Runtime(settings)
    exit_code = 0

    def started(_: object) -> None:
        log.info("started")

    def failed(failure: Any) -> None:
        nonlocal exit_code
        exit_code = 1
        log.error("startup.failed", error=failure.getErrorMessage())
        reactor.stop()

    def on_running() -> None:
        Deferred.fromFuture(loop.create_task(runtime.start())).addCallbacks(started, failed)

    reactor.callWhenRunning(on_running)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromFuture(loop.create_task(runtime.stop()))
    )
    reactor.run()  # installs SIGINT/SIGTERM handlers that stop the reactor cleanly
    return exit_code
