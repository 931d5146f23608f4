"""The thin Twisted transport around the sans-I/O core: one protocol per call, one factory.

Handlers are asyncio coroutines, `async def handler(call: AgiCall) -> None`, run as asyncio
tasks on the loop under Twisted's asyncio reactor. We do not drive them with
`defer.ensureDeferred`: a coroutine run by Deferred machinery cannot await asyncio futures,
so a handler could not await aiohttp, the async database engine or `asyncio.sleep`. As an
asyncio task it can await both worlds (a Deferred via `Deferred.asFuture(loop)`), and Twisted
code that wants a Deferred for a call can wrap the task with `Deferred.fromFuture(task)`.

All protocol logic lives in `callcenter.agi.protocol`; this module moves bytes, routes on
`agi_network_script` (path only: `errors?foo=bar` goes to the `errors` route), resolves one
asyncio future per command, and turns disconnects and garbage into log lines and exceptions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

import structlog
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from callcenter.agi import commands
from callcenter.agi.errors import AgiError, AgiHangup, AgiProtocolError
from callcenter.agi.protocol import (
    NEED_DATA,
    PAUSED,
    AgiConnection,
    AgiLimits,
    AgiRequest,
    AgiResult,
    ConnectionClosed,
    Hangup,
    raise_for_status,
)
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

AgiHandler = Callable[["AgiCall"], Awaitable[None]]


class AgiCall:
    """What a route handler gets: the env block and one command at a time."""

    def __init__(self, protocol: FastAgiProtocol, request: AgiRequest) -> None:
        self._protocol = protocol
        self.request = request
        self.log = log.bind(call_id=request.uniqueid)

    @property
    def call_id(self) -> str:
        return self.request.uniqueid

    @property
    def hung_up(self) -> bool:
        """True once Asterisk said HANGUP, answered 511, or the connection is gone."""
        return self._protocol.conn.dead or self._protocol.disconnected

    async def command(self, command: str | bytes) -> AgiResult:
        """Send one command and wait for its result.

        Raises AgiHangup when the connection is gone or goes away meanwhile,
        AgiDeadChannel (an AgiHangup) on 511, AgiInvalidCommand on 510, AgiUsageError on 520,
        AgiProtocolError if Asterisk answers garbage, and AgiLocalProtocolError if another
        command of this call is still in flight. `200 result=-1` is returned, not raised:
        it means hangup for GET DATA or RECORD FILE, but a missing file for STREAM FILE.
        """
        result = await self._protocol.send_command(command)
        return raise_for_status(result)

    def close(self) -> None:
        """End the AGI session; the dialplan continues after AGI() if the caller is still up."""
        self._protocol.close()


class FastAgiProtocol(Protocol):
    """One FastAGI connection: feeds the core, starts the handler, resolves results."""

    def __init__(self, factory: AgiServerFactory, peer: str) -> None:
        self.factory = factory
        self.conn = AgiConnection(factory.limits)
        self.disconnected = False
        self._closing = False
        self._pending: asyncio.Future[AgiResult] | None = None
        self._env_timer: IDelayedCall | None = None
        self._log = log.bind(peer=peer)

    def connectionMade(self) -> None:
        self.factory.connections.add(self)
        self._env_timer = self.factory.reactor.callLater(
            self.factory.env_timeout, self._env_timed_out
        )

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self.conn.receive_data(data)
        self._process_events()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.disconnected = True
        self.factory.connections.discard(self)
        self._cancel_env_timer()
        if not self._closing:
            self.conn.receive_data(b"")
            self._process_events()
        self._fail_pending(AgiHangup("the connection to Asterisk closed"))

    async def send_command(self, command: str | bytes) -> AgiResult:
        if self.disconnected or self._closing:
            raise AgiHangup("the connection to Asterisk is closed")
        data = self.conn.send_command(command)
        future: asyncio.Future[AgiResult] = asyncio.get_running_loop().create_future()
        self._pending = future
        self.transport.write(data)  # type: ignore[union-attr]
        return await future

    def close(self) -> None:
        if not self._closing and not self.disconnected:
            self._closing = True
            self.transport.loseConnection()  # type: ignore[union-attr]

    def cut(self) -> None:
        """Drop the connection under a running call (end of a drain): the handler sees it as
        a hang-up (AgiHangup), so its owed work still runs; Asterisk sees the script end."""
        if not self.disconnected:
            self.transport.abortConnection()  # type: ignore[union-attr]

    def _process_events(self) -> None:
        try:
            while True:
                event = self.conn.next_event()
                if event is NEED_DATA:
                    return
                if event is PAUSED:
                    raise AgiProtocolError("Asterisk sent a line with no command in flight")
                if isinstance(event, AgiRequest):
                    self._start_call(event)
                elif isinstance(event, AgiResult):
                    self._resolve(event)
                elif isinstance(event, Hangup):
                    self._log.debug("agi.hangup_line", pending=self.conn.pending_command)
                elif isinstance(event, ConnectionClosed):
                    self._connection_closed(event)
                    return
        except AgiProtocolError as exc:
            self._protocol_error(exc)

    def _start_call(self, request: AgiRequest) -> None:
        self._cancel_env_timer()
        self._log = self._log.bind(call_id=request.uniqueid)
        call = AgiCall(self, request)
        handler = self.factory.routes.get(request.script)
        self._log.info(
            "agi.call_started",
            script=request.script,
            channel_type=request.channel_type,
            callerid=mask_number(request.callerid),
            routed=handler is not None,
        )
        self.factory.track(
            asyncio.get_running_loop().create_task(
                self._run_handler(handler or _unknown_route, call),
                name=f"agi-call-{request.uniqueid}",
            )
        )

    async def _run_handler(self, handler: AgiHandler, call: AgiCall) -> None:
        try:
            with structlog.contextvars.bound_contextvars(call_id=call.call_id):
                await handler(call)
        except AgiHangup as exc:
            self._log.info("agi.call_hung_up", reason=str(exc))
        except AgiProtocolError as exc:
            self._log.info("agi.call_aborted", reason=str(exc))
        except Exception:  # noqa: BLE001 - one failing call must not affect the others
            self._log.exception("agi.handler_failed")
        else:
            self._log.info("agi.call_finished", hung_up=call.hung_up)
        finally:
            self.close()

    def _resolve(self, result: AgiResult) -> None:
        future, self._pending = self._pending, None
        if future is not None and not future.done():
            future.set_result(result)

    def _fail_pending(self, error: AgiError) -> None:
        future, self._pending = self._pending, None
        if future is not None and not future.done():
            future.set_exception(error)

    def _connection_closed(self, event: ConnectionClosed) -> None:
        pending = self.conn.pending_command
        if self.conn.request is None:
            self._log.warning("agi.closed_before_env", unparsed_bytes=len(event.unparsed))
        elif pending is not None:
            self._log.info("agi.closed_mid_command", command=" ".join(pending.split()[:2]))
        self._fail_pending(AgiHangup(f"Asterisk closed the connection (pending: {pending!r})"))

    def _protocol_error(self, error: AgiProtocolError) -> None:
        self._log.warning("agi.protocol_error", error=str(error))
        self._closing = True
        self._cancel_env_timer()
        self._fail_pending(error)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _env_timed_out(self) -> None:
        self._env_timer = None
        self._log.warning("agi.env_timeout", seconds=self.factory.env_timeout)
        self._closing = True
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancel_env_timer(self) -> None:
        if self._env_timer is not None and self._env_timer.active():
            self._env_timer.cancel()
        self._env_timer = None


async def _unknown_route(call: AgiCall) -> None:
    """No handler for this script: say so in Asterisk's log and let the dialplan go on."""
    call.log.warning("agi.unknown_route", script=call.request.script)
    await call.command(
        commands.verbose(f"callcenter: no FastAGI route for {call.request.script!r}")
    )


def _route_key(script: str) -> str:
    key = script.strip("/")
    if "?" in key:
        raise ValueError(f"route {script!r} must not contain a query string")
    return key


class AgiServerFactory(Factory):
    """Holds the route table and settings shared by every call, and tracks running calls."""

    noisy = False

    def __init__(
        self,
        routes: Mapping[str, AgiHandler],
        *,
        reactor: AsyncioSelectorReactor,
        env_timeout: float = 10.0,
        limits: AgiLimits | None = None,
    ) -> None:
        self.routes = {_route_key(script): handler for script, handler in routes.items()}
        self.reactor = reactor
        self.env_timeout = env_timeout
        self.limits = limits or AgiLimits()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections: set[FastAgiProtocol] = set()

    def buildProtocol(self, addr: IAddress | None) -> FastAgiProtocol:
        host, port = getattr(addr, "host", "?"), getattr(addr, "port", "?")
        return FastAgiProtocol(self, f"{host}:{port}")

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def active_calls(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every running handler has finished, or `timeout` seconds have passed
        (for shutdown and tests); True when none is left."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return True

    def cut_all(self) -> int:
        """Drop every open FastAGI connection (see FastAgiProtocol.cut); how many."""
        connections = list(self.connections)
        for connection in connections:
            connection.cut()
        return len(connections)

    def cancel_all(self) -> list[asyncio.Task[None]]:
        """Cancel every running handler (last resort at shutdown); the tasks cancelled."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        return tasks


def start_agi_server(
    reactor: AsyncioSelectorReactor,
    host: str,
    port: int,
    routes: Mapping[str, AgiHandler],
    *,
    env_timeout: float = 10.0,
    limits: AgiLimits | None = None,
    backlog: int = 1024,
) -> IListeningPort:
    """Listen for FastAGI on host:port (0 picks a free port); `.factory` holds the routes.

    The reactor must be the asyncio reactor (`callcenter.runtime.install_reactor`), since
    handlers run as asyncio tasks on its loop.
    """
    if not isinstance(reactor, AsyncioSelectorReactor):
        raise TypeError(
            f"the FastAGI server needs the asyncio reactor, not {type(reactor).__name__}"
        )
    factory = AgiServerFactory(routes, reactor=reactor, env_timeout=env_timeout, limits=limits)
    listening: IListeningPort = reactor.listenTCP(port, factory, backlog=backlog, interface=host)
    return listening
