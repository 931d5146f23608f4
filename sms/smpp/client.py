"""Twisted transport for `SmppSession`, with an asyncio-facing client service.

`SmppProtocol` is deliberately thin: it feeds bytes to the session, writes
what the session queues, and runs the session's single deadline timer. All
protocol decisions live in `session.py`.

`SmppClient` owns the connection(s) (one transceiver, or a transmitter and a
receiver for bind_mode "tx+rx"): connect, bind, reconnect with exponential
back-off and jitter, a submit window, a parts-per-second token bucket and the
asyncio API (`await submit(...)`, `on_deliver` handler). Twisted must run on
the asyncio reactor on the same loop, because futures are resolved directly
from protocol callbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import random
import secrets
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

import structlog
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from sms.privacy import mask_number
from sms.smpp.session import (
    BindComplete,
    BindFailed,
    BindMode,
    CommandId,
    DeliverSm,
    Event,
    GenericNack,
    LinkDead,
    LocalProtocolError,
    ProtocolError,
    ResponseTimeout,
    SessionState,
    SmppError,
    SmppSession,
    Status,
    SubmitRequest,
    SubmitResponse,
    UnbindRequested,
    Unbound,
    status_name,
)

log = structlog.get_logger("sms.smpp")

DeliverHandler = Callable[[DeliverSm], Awaitable[int]]

#: While `on_deliver` runs: which connection the deliver_sm came on ("trx#3": role and the
#: link's connection count) and its sequence number. The SMSC resends on the same connection
#: only what it got no ESME_ROK for; intake tells a redelivery from a citizen's repetition
#: by it (callcenter.service.sms_intake).
DELIVER_ORIGIN: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "smpp_deliver_origin", default=None)
BindModeSetting = Literal["trx", "tx+rx"]


# ------------------------------------------------------------------ results and errors


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The SMSC's answer to one submit_sm part."""

    message_id: str | None
    status: int

    @property
    def ok(self) -> bool:
        """Accepted by the SMSC (which says nothing yet about delivery)."""
        return self.status == Status.ROK

    @property
    def status_name(self) -> str:
        """Readable command_status, for logs and metrics."""
        return status_name(self.status)


class SubmitInDoubt(SmppError):
    """The part was sent but no answer came: it may or may not be at the SMSC.

    Resending can duplicate the SMS; not resending can lose it. The outbox
    decides, keyed by its own message id.
    """


class SubmitTimeout(SubmitInDoubt):
    """No submit_sm_resp within the response timeout."""


class ClientStopped(SmppError):
    """The client was stopped before the request could be sent."""


class BindError(SmppError):
    """The SMSC refused the bind (wrong password, unknown system_id...)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"bind refused: {status_name(status)}")
        self.status = status


class BindState(enum.IntEnum):
    """Link state for metrics; ordered so the weakest link wins in tx+rx."""

    STOPPED = 0
    DISCONNECTED = 1
    CONNECTING = 2
    BINDING = 3
    UNBINDING = 4
    BOUND = 5


@dataclass
class SmppStats:
    """Monotonic counters for metrics."""

    connects: int = 0
    connect_failures: int = 0
    binds: int = 0
    bind_failures: int = 0
    links_dead: int = 0
    protocol_errors: int = 0
    unbinds_received: int = 0
    submits: int = 0
    submit_errors: int = 0
    submits_in_doubt: int = 0
    throttled: int = 0
    delivers: int = 0
    receipts: int = 0


# ------------------------------------------------------------------ pacing


class TokenBucket:
    """Parts-per-second limit: `take(now)` returns 0 when a token was taken,
    otherwise how long to wait. `pause_until` stops it after ESME_RTHROTTLED.
    """

    def __init__(self, rate: float, burst: float = 1.0, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst)
        self._tokens = self.burst
        self._stamp = now
        self._paused_until = now

    def take(self, now: float) -> float:
        """Take one token if there is one; else the seconds until there will be."""
        if now < self._paused_until:
            return self._paused_until - now
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate

    def pause_until(self, until: float) -> None:
        """Hold every send until `until` (SMSC asked us to slow down)."""
        self._paused_until = max(self._paused_until, until)
        self._tokens = 0.0
        self._stamp = max(self._stamp, until)


class Backoff:
    """Exponential reconnect delay with jitter, within [minimum, maximum].

    Attempt n waits min(maximum, minimum * 2**n * U(1, 1.5)): it doubles per
    failure and the random factor spreads out clients restarted together.
    """

    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        if minimum <= 0 or maximum < minimum:
            raise ValueError("need 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._attempt = 0

    def next(self) -> float:
        """The delay before the next attempt; grows until `reset`."""
        base = self.minimum * 2.0 ** min(self._attempt, 32)
        self._attempt += 1
        return min(self.maximum, base * self._rng.uniform(1.0, 1.5))

    def reset(self) -> None:
        """Start again from `minimum` (after a successful bind)."""
        self._attempt = 0


# ------------------------------------------------------------------ the Twisted protocol


def _quick_ack(transport: Any) -> None:
    """Acknowledge what was just read at once (Linux TCP_QUICKACK; the kernel resets it).

    An SMSC that keeps Nagle's algorithm on holds its next deliver_sm until its previous
    segment is acknowledged; our ACK would otherwise ride on the deliver_sm_resp, which waits
    for the text's commit, or on the delayed-ACK timer (up to 40 ms).
    """
    handle = getattr(transport, "socket", None)
    if handle is not None and _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            handle.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)


class SmppProtocol(Protocol):
    """Bytes <-> `SmppSession`, plus the session's one deadline timer."""

    def __init__(
        self,
        session: SmppSession,
        *,
        reactor: Any,
        clock: Callable[[], float],
        on_events: Callable[[SmppProtocol, list[Event]], None],
        on_lost: Callable[[SmppProtocol, Failure], None],
    ) -> None:
        self.session = session
        self._reactor = reactor
        self._clock = clock
        self._on_events = on_events
        self._on_lost = on_lost
        # Twisted's zope interfaces are opaque to mypy without its plugin: Any.
        self._timer: Any = None
        self._lost = False
        self._closing = False

    @property
    def is_open(self) -> bool:
        """Connected and the session may still send."""
        return (
            not self._lost
            and self.transport is not None
            and self.session.state is not SessionState.CLOSED
        )

    # Twisted hooks ---------------------------------------------------------

    def connectionMade(self) -> None:
        # SMPP is small PDUs in both directions with a window of requests in flight: with Nagle's
        # algorithm a submit_sm written right after a deliver_sm_resp waits for the peer's
        # (delayed) ACK of the resp, tens of milliseconds per exchange.
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        self._reschedule()

    def dataReceived(self, data: bytes) -> None:
        _quick_ack(self.transport)
        self._process(self.session.receive_data(data))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.session.close()
        self._on_lost(self, reason)

    # commands --------------------------------------------------------------

    def bind(self, mode: BindMode, *, system_id: str, password: str, system_type: str) -> int:
        """Send the bind request."""
        seq = self.session.bind(
            mode, system_id=system_id, password=password, system_type=system_type
        )
        self._flush()
        return seq

    def submit(self, request: SubmitRequest) -> int:
        """Send one submit_sm; the response arrives as an event."""
        seq = self.session.submit(request)
        self._flush()
        return seq

    def ack_deliver(self, sequence: int, status: int) -> None:
        """Send deliver_sm_resp for a deliver_sm the handler has finished with."""
        self.session.ack_deliver(sequence, status)
        self._flush()

    def unbind(self) -> None:
        """Start a clean unbind."""
        self.session.unbind()
        self._flush()

    def abort(self) -> None:
        """Drop the connection now, without waiting for queued writes."""
        transport: Any = self.transport
        if transport is not None and not self._lost:
            self._closing = True
            transport.abortConnection()

    # internals -------------------------------------------------------------

    def _on_timer(self) -> None:
        self._timer = None
        self._process(self.session.tick(self._clock()))

    def _process(self, events: list[Event]) -> None:
        self._write_pending()
        if events:
            self._on_events(self, events)
        self._finish(dead=any(isinstance(event, LinkDead) for event in events))

    def _flush(self) -> None:
        self._write_pending()
        self._finish(dead=False)

    def _write_pending(self) -> None:
        data = self.session.data_to_send()
        transport: Any = self.transport
        if data and transport is not None and not self._lost:
            transport.write(data)

    def _finish(self, *, dead: bool) -> None:
        if self._lost:
            return
        if self.session.state is SessionState.CLOSED:
            transport: Any = self.transport
            if not self._closing and transport is not None:
                self._closing = True
                # A dead link may have a stuck send buffer: abort. Otherwise let
                # the last PDU (unbind_resp, generic_nack) reach the peer first.
                if dead:
                    transport.abortConnection()
                else:
                    transport.loseConnection()
            return
        self._reschedule()

    def _reschedule(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        deadline = self.session.next_deadline()
        if deadline is not None:
            self._timer = self._reactor.callLater(
                max(0.0, deadline - self._clock()), self._on_timer
            )


# ------------------------------------------------------------------ one connection role


class _Link:
    """One connection (transceiver, transmitter or receiver) and its reconnect loop."""

    def __init__(self, client: SmppClient, role: str, mode: BindMode) -> None:
        self.client = client
        self.role = role
        self.mode = mode
        self.state = BindState.DISCONNECTED
        self.protocol: SmppProtocol | None = None
        self.pending: dict[int, asyncio.Future[SubmitResult]] = {}
        self.backoff = Backoff(client.reconnect_min, client.reconnect_max, client._rng)
        self.task: asyncio.Task[None] | None = None
        self.next_sequence = client.first_sequence
        self.connections = 0  # connections made so far: names a connection in DELIVER_ORIGIN
        self._attempt: SmppProtocol | None = None  # the connection the waiters belong to
        self._bind_waiter: asyncio.Future[Event | None] | None = None
        self._lost_waiter: asyncio.Future[None] | None = None
        self._log = log.bind(link=role, host=client.host, port=client.port)

    # the loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Connect, bind, wait for the connection to end, back off, repeat."""
        client = self.client
        while not client._stopping:
            self._set_state(BindState.CONNECTING)
            loop = asyncio.get_running_loop()
            self._bind_waiter = loop.create_future()
            self._lost_waiter = loop.create_future()
            protocol = SmppProtocol(
                client._new_session(self.next_sequence),
                reactor=client._reactor,
                clock=client._clock,
                on_events=self._on_events,
                on_lost=self._on_lost,
            )
            self._attempt = protocol
            try:
                connecting = connectProtocol(client._endpoint(), protocol)  # type: ignore[no-untyped-call]
                await connecting.asFuture(loop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any connect failure means: back off, retry
                client.stats.connect_failures += 1
                self._log.warning("smpp.connect_failed", error=str(exc))
                self._set_state(BindState.DISCONNECTED)
                await client._pause(self.backoff.next())
                continue
            client.stats.connects += 1
            self.connections += 1
            # Unique across restarts too: a connection of the process before a crash is another one.
            protocol.connection_name = f"{self.role}#{self.connections}@{client.instance}"  # type: ignore[attr-defined]
            self.protocol = protocol
            self._set_state(BindState.BINDING)
            try:
                protocol.bind(
                    self.mode,
                    system_id=client.system_id,
                    password=client.password,
                    system_type=client.system_type,
                )
            except LocalProtocolError:
                pass  # lost before we could bind; the lost waiter is already done
            if isinstance(await self._bind_waiter, BindFailed):
                protocol.abort()
            await self._lost_waiter
            self.next_sequence = protocol.session.next_sequence
            self.protocol = None
            self._fail_pending(SubmitInDoubt("connection lost before submit_sm_resp"))
            self._set_state(BindState.DISCONNECTED)
            if client._stopping:
                break
            delay = self.backoff.next()
            self._log.info("smpp.reconnect_scheduled", delay=round(delay, 3))
            await client._pause(delay)
        self._set_state(BindState.STOPPED)

    async def shutdown(self, timeout: float) -> None:
        """Unbind cleanly if bound, then make sure the connection is gone."""
        protocol = self.protocol
        if protocol is not None and protocol.is_open and self.state is BindState.BOUND:
            self._set_state(BindState.UNBINDING)
            with contextlib.suppress(LocalProtocolError):
                protocol.unbind()
        elif protocol is not None:
            protocol.abort()  # not bound: nothing to say goodbye to
        if protocol is not None and self._lost_waiter is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._lost_waiter)
            except TimeoutError:
                protocol.abort()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.protocol is not None:
            self.protocol.abort()
        self._fail_pending(ClientStopped("client stopped"))
        self._set_state(BindState.STOPPED)

    # protocol callbacks -----------------------------------------------------

    def _on_events(self, protocol: SmppProtocol, events: list[Event]) -> None:
        if protocol is not self._attempt:
            return
        for event in events:
            self._on_event(protocol, event)

    def _on_event(self, protocol: SmppProtocol, event: Event) -> None:
        client = self.client
        if isinstance(event, BindComplete):
            client.stats.binds += 1
            self.backoff.reset()
            client._last_bind_error = None
            self._set_state(BindState.BOUND)
            self._log.info("smpp.bound", mode=self.mode.value, smsc=event.smsc_system_id)
            self._resolve_bind(event)
        elif isinstance(event, BindFailed):
            client.stats.bind_failures += 1
            client._last_bind_error = event.status
            self._log.error("smpp.bind_refused", status=status_name(event.status))
            self._resolve_bind(event)
        elif isinstance(event, SubmitResponse):
            self._on_submit_response(event)
        elif isinstance(event, ResponseTimeout):
            if event.command_id == CommandId.SUBMIT_SM:
                client.stats.submits_in_doubt += 1
                future = self.pending.pop(event.sequence, None)
                if future is not None and not future.done():
                    future.set_exception(
                        SubmitTimeout(f"no submit_sm_resp for sequence {event.sequence}")
                    )
                client._notify()
        elif isinstance(event, DeliverSm):
            client._dispatch_deliver(self, protocol, event)
        elif isinstance(event, UnbindRequested):
            client.stats.unbinds_received += 1
            self._log.warning("smpp.unbind_received")
        elif isinstance(event, Unbound):
            self._log.info("smpp.unbound")
        elif isinstance(event, LinkDead):
            client.stats.links_dead += 1
            self._log.warning("smpp.link_dead", reason=event.reason)
            self._resolve_bind(None)
        elif isinstance(event, ProtocolError):
            client.stats.protocol_errors += 1
            self._log.warning(
                "smpp.protocol_error", reason=event.reason, fatal=event.fatal, seq=event.sequence
            )
        elif isinstance(event, GenericNack):
            self._log.warning(
                "smpp.generic_nack", seq=event.sequence, status=status_name(event.status)
            )

    def _on_submit_response(self, event: SubmitResponse) -> None:
        client = self.client
        future = self.pending.pop(event.sequence, None)
        if event.status == Status.RTHROTTLED:
            client.stats.throttled += 1
            client._bucket.pause_until(client._clock() + client.throttle_pause)
        elif event.status != Status.ROK:
            client.stats.submit_errors += 1
        if future is not None and not future.done():
            future.set_result(SubmitResult(event.message_id, event.status))
        client._notify()

    def _on_lost(self, protocol: SmppProtocol, reason: Failure) -> None:
        if protocol is not self._attempt:
            return
        self._log.info("smpp.connection_lost", reason=reason.getErrorMessage())
        self._resolve_bind(None)
        if self._lost_waiter is not None and not self._lost_waiter.done():
            self._lost_waiter.set_result(None)
        self.client._notify()

    def _resolve_bind(self, result: Event | None) -> None:
        if self._bind_waiter is not None and not self._bind_waiter.done():
            self._bind_waiter.set_result(result)
        self.client._notify()

    # helpers ------------------------------------------------------------------

    def _fail_pending(self, exc: SmppError) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                if isinstance(exc, SubmitInDoubt):
                    self.client.stats.submits_in_doubt += 1
                future.set_exception(exc)
        self.client._notify()

    def _set_state(self, state: BindState) -> None:
        if state is not self.state:
            self.state = state
            self.client._notify()

    def can_submit(self) -> bool:
        return (
            self.state is BindState.BOUND
            and self.protocol is not None
            and self.protocol.is_open
            and self.protocol.session.can_submit
        )


# ------------------------------------------------------------------ the client service


class SmppClient:
    """An ESME service: keeps itself bound and offers submit/deliver to asyncio.

    Construct, `await start()`, then `await submit(...)`; inbound deliver_sm
    go to `on_deliver`, whose returned status is sent in deliver_sm_resp only
    after it returns (an exception answers ESME_RX_T_APPN so the SMSC retries).
    `await stop()` lets running handlers finish, unbinds and closes.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        system_id: str,
        password: str,
        system_type: str = "",
        bind_mode: BindModeSetting = "trx",
        enquire_link_interval: float = 30.0,
        enquire_link_timeout: float = 10.0,
        response_timeout: float = 30.0,
        bind_timeout: float = 15.0,
        connect_timeout: float = 10.0,
        window: int = 10,
        max_parts_per_second: float = 50.0,
        burst: float = 1.0,
        throttle_pause: float = 1.0,
        tls: bool | IOpenSSLClientConnectionCreator = False,
        reconnect_min: float = 1.0,
        reconnect_max: float = 60.0,
        first_sequence: int = 1,
        on_deliver: DeliverHandler | None = None,
        drain_timeout: float = 5.0,
        reactor: Any = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if bind_mode not in ("trx", "tx+rx"):
            raise ValueError(f"bind_mode must be 'trx' or 'tx+rx', got {bind_mode!r}")
        self.host = host
        self.port = port
        self.system_id = system_id
        self.password = password
        self.system_type = system_type
        self.bind_mode = bind_mode
        self.enquire_link_interval = enquire_link_interval
        self.enquire_link_timeout = enquire_link_timeout
        self.response_timeout = response_timeout
        self.bind_timeout = bind_timeout
        self.connect_timeout = connect_timeout
        self.window = window
        self.throttle_pause = throttle_pause
        self.tls = tls
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.first_sequence = first_sequence
        self.drain_timeout = drain_timeout
        self.on_deliver = on_deliver
        self.stats = SmppStats()
        self._reactor = reactor if reactor is not None else _default_reactor()
        self._clock = clock
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(max_parts_per_second, burst, now=clock())
        self._stopping = False
        self._started = False
        self._last_bind_error: int | None = None
        self._waiters: asyncio.Future[None] | None = None
        self._deliver_tasks: set[asyncio.Task[None]] = set()
        self.instance = secrets.token_hex(4)
        self._submit_turn = asyncio.Lock()
        self._stop_event: asyncio.Event | None = None
        if bind_mode == "trx":
            self._links = [_Link(self, "trx", BindMode.TRANSCEIVER)]
            self._tx_link = self._rx_link = self._links[0]
        else:
            self._tx_link = _Link(self, "tx", BindMode.TRANSMITTER)
            self._rx_link = _Link(self, "rx", BindMode.RECEIVER)
            self._links = [self._tx_link, self._rx_link]

    # lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the connect/bind loops; returns at once (see `wait_bound`)."""
        if self._started:
            raise RuntimeError("client already started")
        self._started = True
        self._stop_event = asyncio.Event()
        for link in self._links:
            link.task = asyncio.create_task(link.run(), name=f"smpp-{link.role}")

    async def stop(self, timeout: float = 5.0) -> None:
        """Finish running deliver handlers, unbind, close; fail waiting submits."""
        if self._stopping:
            return
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        self._notify()
        if self._deliver_tasks:
            await asyncio.wait(set(self._deliver_tasks), timeout=self.drain_timeout)
        await asyncio.gather(*(link.shutdown(timeout) for link in self._links))
        for task in list(self._deliver_tasks):
            task.cancel()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_bound(self, timeout: float) -> None:
        """Wait until every link is bound; `BindError` if the latest bind was refused."""
        async with asyncio.timeout(timeout):
            while not self.is_bound:
                if self._last_bind_error is not None:
                    raise BindError(self._last_bind_error)
                if self._stopping:
                    raise ClientStopped("client stopped")
                await self._changed()

    # state for metrics -------------------------------------------------------------

    @property
    def bind_state(self) -> BindState:
        """The weakest link's state (BOUND only when all links are bound)."""
        return min(link.state for link in self._links)

    @property
    def bind_states(self) -> dict[str, BindState]:
        """State per link role: `trx`, or `tx` and `rx`."""
        return {link.role: link.state for link in self._links}

    @property
    def is_bound(self) -> bool:
        """Every link is bound."""
        return self.bind_state is BindState.BOUND

    @property
    def outstanding(self) -> int:
        """Submits sent and not yet answered."""
        return len(self._tx_link.pending)

    @property
    def last_bind_error(self) -> int | None:
        """Status of the most recent refused bind, cleared by a successful one."""
        return self._last_bind_error

    # submit ------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> SubmitResult:
        """Send one part when bound, a window slot is free and the rate allows.

        Waits as long as needed (wrap in `asyncio.timeout` to bound it).
        Returns the SMSC's status, including errors such as ESME_RTHROTTLED;
        raises `SubmitInDoubt` when the answer never came, `ClientStopped`
        when stopped first, `ValueError` for fields that cannot be encoded.
        Cancelling after the part went out leaves it in doubt as well.
        """
        loop = asyncio.get_running_loop()
        link = self._tx_link
        # One caller at a time waits for a window slot (asyncio.Lock is FIFO): with every
        # caller waiting on the shared change future, each freed slot woke all of them.
        async with self._submit_turn:
            while True:
                if self._stopping:
                    raise ClientStopped("client stopped")
                if link.can_submit():
                    wait = self._bucket.take(self._clock())
                    if wait <= 0:
                        break
                    await self._pause(wait)
                    continue
                await self._changed()
            assert link.protocol is not None
            future: asyncio.Future[SubmitResult] = loop.create_future()
            seq = link.protocol.submit(request)
            link.pending[seq] = future
        self.stats.submits += 1
        log.debug(
            "smpp.submit",
            seq=seq,
            to=mask_number(request.destination_addr),
            octets=len(request.short_message),
            dcs=request.data_coding,
        )
        return await future

    # deliver -------------------------------------------------------------------------

    def _dispatch_deliver(self, link: _Link, protocol: SmppProtocol, event: DeliverSm) -> None:
        if event.is_receipt:
            self.stats.receipts += 1
        else:
            self.stats.delivers += 1
        task = asyncio.get_running_loop().create_task(self._run_deliver(link, protocol, event))
        self._deliver_tasks.add(task)
        task.add_done_callback(self._deliver_tasks.discard)

    async def _run_deliver(self, link: _Link, protocol: SmppProtocol, event: DeliverSm) -> None:
        status: int = Status.RX_T_APPN
        handler = self.on_deliver
        if handler is None:
            link._log.warning("smpp.deliver_without_handler", seq=event.sequence)
        else:
            DELIVER_ORIGIN.set((getattr(protocol, "connection_name", link.role), event.sequence))
            try:
                status = int(await handler(event))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failing handler must not kill the link
                link._log.exception(
                    "smpp.deliver_handler_failed",
                    seq=event.sequence,
                    source=mask_number(event.source_addr),
                )
                status = Status.RX_T_APPN
        if not protocol.is_open:
            link._log.warning(
                "smpp.deliver_ack_lost", seq=event.sequence, status=status_name(status)
            )
            return
        try:
            protocol.ack_deliver(event.sequence, status)
        except LocalProtocolError as exc:
            link._log.warning("smpp.deliver_ack_failed", seq=event.sequence, error=str(exc))

    # internals ---------------------------------------------------------------------------

    def _new_session(self, first_sequence: int) -> SmppSession:
        return SmppSession(
            clock=self._clock,
            window=self.window,
            first_sequence=first_sequence,
            enquire_link_interval=self.enquire_link_interval,
            enquire_link_timeout=self.enquire_link_timeout,
            response_timeout=self.response_timeout,
            bind_timeout=self.bind_timeout,
        )

    def _endpoint(self) -> Any:
        """TCP (IP literals skip the resolver thread pool) or hostname, maybe wrapped in TLS."""
        reactor = self._reactor
        endpoint: Any
        if isIPAddress(self.host):
            endpoint = TCP4ClientEndpoint(
                reactor, self.host, self.port, timeout=self.connect_timeout
            )
        elif isIPv6Address(self.host):
            endpoint = TCP6ClientEndpoint(  # type: ignore[no-untyped-call]
                reactor, self.host, self.port, timeout=self.connect_timeout
            )
        else:
            endpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=self.connect_timeout)
        if self.tls is False:
            return endpoint
        if self.tls is True:
            from twisted.internet.ssl import optionsForClientTLS

            creator: IOpenSSLClientConnectionCreator = optionsForClientTLS(self.host)
        else:
            creator = self.tls
        return wrapClientTLS(creator, endpoint)

    def _notify(self) -> None:
        """Wake everything waiting in `_changed` (state, window or stop changed)."""
        waiters, self._waiters = self._waiters, None
        if waiters is not None and not waiters.done():
            waiters.set_result(None)

    def _changed(self) -> asyncio.Future[None]:
        if self._waiters is None:
            self._waiters = asyncio.get_running_loop().create_future()
        return self._waiters

    async def _pause(self, delay: float) -> None:
        """Sleep, but wake at once when the client is stopped."""
        if self._stop_event is None or self._stopping:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stop_event.wait()


def _default_reactor() -> Any:
    """The installed reactor, which must be the asyncio one.

    Importing `twisted.internet.reactor` would install the default (epoll)
    reactor as a side effect, so refuse before that can happen.
    """
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    reactor = sys.modules.get("twisted.internet.reactor")
    if not isinstance(reactor, AsyncioSelectorReactor):
        raise RuntimeError(  # noqa: TRY004 - a setup problem, not a bad argument
            "SmppClient needs twisted.internet.asyncioreactor installed on the running loop "
            f"(found {type(reactor).__name__})"
        )
    return reactor


__all__ = [
    "Backoff",
    "BindError",
    "BindState",
    "ClientStopped",
    "DeliverHandler",
    "SmppClient",
    "SmppProtocol",
    "SmppStats",
    "SubmitInDoubt",
    "SubmitResult",
    "SubmitTimeout",
    "TokenBucket",
]
