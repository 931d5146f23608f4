"""`callcenter serve`: every listener on one event loop.

Twisted is the network runtime, installed on the asyncio reactor, so Twisted protocols
(FastAGI, SMPP), aiohttp and the async database engine all share one asyncio loop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from twisted.internet.defer import Deferred

from callcenter.app import Services, build_services
from callcenter.db import migrate
from callcenter.logs import configure_logging
from callcenter.runtime import install_reactor
from callcenter.service.sms_channel import SmsRuntime
from callcenter.settings import Settings

if TYPE_CHECKING:
    from callcenter.voice import VoiceChannel

log = structlog.get_logger(__name__)


class Runtime:
    """What `serve` starts, kept together so shutdown can stop it in reverse order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: Services | None = None
        self.runner: web.AppRunner | None = None
        self.listeners: list[Any] = []
        self.sms: SmsRuntime | None = None
        self.voice: VoiceChannel | None = None
        self._agi_port: Any = None

    async def start(self) -> None:
        from callcenter.web.app import make_app

        self.services = build_services(self.settings)
        await self.services.check_database()
        self.runner = web.AppRunner(make_app(self.services), access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        for sock in site._server.sockets if site._server else ():  # noqa: SLF001 - to log port 0's real port
            host, port = sock.getsockname()[:2]
            if self.services.cluster is not None:  # the heartbeat row names where the node listens
                self.services.cluster.nodes.address = f"http://{host}:{port}/"
            log.info("listening", service="http", address=f"http://{host}:{port}/")
            log.info("listening", service="console", address=f"http://{host}:{port}/console/")
        await self._first_account_hint()
        if self.services.sms is not None:
            self.sms = SmsRuntime(self.services.sms, self.settings)
            await self.sms.start()
        if self.settings.agi.enabled:
            await self._start_voice(self.services)

    async def _first_account_hint(self) -> None:
        """A fresh install has no console account; say how to create one (it is not a web page)."""
        from callcenter.console.auth import StaffStore

        assert self.services is not None
        store = StaffStore(self.services.sessions, self.settings.console)
        if await store.account_count() == 0:
            log.warning("console.no_accounts",
                        hint="create the first account: scripts/callcenter staff create "
                             "--username NAME --name 姓名 --role shift_leader")

    async def _start_voice(self, services: Services) -> None:
        """The FastAGI listener with the IVR routes, and AMI when enabled (callcenter.voice)."""
        from callcenter.voice import VoiceChannel

        self.voice = VoiceChannel(services)
        reactor = install_reactor(asyncio.get_running_loop())
        self._agi_port = self.voice.listen(reactor, self.settings.agi.host, self.settings.agi.port)
        self.listeners.append(self._agi_port)
        address = self._agi_port.getHost()
        log.info("listening", service="agi", address=f"agi://{address.host}:{address.port}/",
                 routes=sorted(self.voice.routes))
        await self.voice.start_ami()

    async def stop(self) -> None:
        if self.services is not None:
            self.services.state.draining = True  # /healthz: 503 draining from now on
        if self.voice is not None:
            # Stop taking calls and drain them while the database is still there.
            if self._agi_port in self.listeners:
                self.listeners.remove(self._agi_port)
            await self.voice.stop()
        if self.sms is not None:
            await self.sms.stop()
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
