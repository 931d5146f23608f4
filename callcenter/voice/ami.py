"""Asterisk Manager Interface client: a thin asyncio transport over `ami_protocol`.

pyst2's manager was replaced here (it stays for the classic AGI script): its reader thread
dies on the `ChanVariable` header that manager.conf's `channelvars` adds to every channel
event, and its blocking `send_action` needed a worker thread per connection. Answer times
and screen-pops need those events, so this client reads them: the sans-I/O
`AmiProtocol` frames bytes and matches answers to ActionIDs; this module only owns the
socket, log-in, keep-alive Pings and reconnection.

A supervisor task connects, logs in (`Events: on`), and reconnects with exponential
back-off whenever Asterisk goes away (restart, network), so callers of an action get
`AmiUnavailable` while it is down, never a hang. Each action has a deadline; past it the
connection is renewed (an Asterisk that stopped answering is not trusted with the next one).
Events go to the listeners registered with `on_event` (queue tracker, call-backs); a
listener's failure is logged and never stops the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import phonenumbers
import structlog

from callcenter.cases.numbering import CaseNumber
from callcenter.cases.phones import normalise_phone
from callcenter.settings import AmiSettings
from callcenter.voice.ami_protocol import ActionDone, AmiProtocol, AmiProtocolError, Banner, Event
from callcenter.voice.metrics import VoiceMetrics
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

# Device states (QueueMember Status) of members who cannot take a call.
_UNREACHABLE = frozenset({"4", "5"})  # invalid, unavailable
_BUSY = frozenset({"2", "3", "6", "7", "8"})  # in use, busy, ringing, ringinuse, on hold
_READ_SIZE = 65536

EventListener = Callable[[Event], object]


class AmiError(RuntimeError):
    """Asterisk refused an action (`Response: Error`); the message says why."""


class AmiUnavailable(AmiError):
    """There is no usable AMI connection right now (disabled, down, reconnecting, timed out)."""


@dataclass(frozen=True)
class QueueSnapshot:
    """One queue as QueueStatus reports it."""

    queue: str
    waiting: int
    members: int
    available: int
    paused: int
    in_call: int
    unreachable: int
    completed: int
    abandoned: int
    holdtime: int


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def national_number(phone: str, region: str = "CN") -> str:
    """What the carrier trunk dials: 13812345678, 075512345678 (digits only)."""
    parsed = phonenumbers.parse(normalise_phone(phone, region), None)
    national = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.NATIONAL)
    return "".join(ch for ch in national if ch.isdigit())


class _Link:
    """One TCP connection: the protocol state, the writer, and the actions awaiting answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = AmiProtocol()
        self.waiters: dict[str, asyncio.Future[ActionDone]] = {}
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.close()
        for future in self.waiters.values():
            if not future.done():
                future.set_exception(AmiUnavailable("the AMI connection closed"))
        self.waiters.clear()


class AmiClient:
    """One supervised AMI connection. `start()` once, `stop()` on shutdown."""

    def __init__(
        self,
        settings: AmiSettings,
        *,
        queue: str,
        metrics: VoiceMetrics | None = None,
        region: str = "CN",
        poll_interval: float = 1.0,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.metrics = metrics
        self.region = region
        self.poll_interval = min(poll_interval, settings.ping_interval)
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._listeners: list[EventListener] = []
        self._on_connect: list[Callable[[], Awaitable[None]]] = []
        self.connections = 0  # successful logins so far (reconnects show as > 1)
        self.version: str | None = None

    # ---- lifecycle

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.closed and self._connected.is_set()

    def on_event(self, listener: EventListener) -> None:
        """Call `listener(event)` for every unsolicited AMI event (on the event loop)."""
        self._listeners.append(listener)

    def on_connect(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await `hook()` after every successful log-in (resynchronise after a restart)."""
        self._on_connect.append(hook)

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="ami-supervisor")

    async def stop(self) -> None:
        self._stopping.set()
        link = self._link
        if link is not None and not link.closed:
            with contextlib.suppress(AmiError, OSError, AmiProtocolError):
                await self._send(link, "Logoff", {}, min(self.settings.action_timeout, 2.0), renew=False)
            link.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self.settings.action_timeout + 2)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        self._link = None

    async def wait_connected(self, timeout: float) -> bool:
        """True once logged in (within `timeout` seconds); for start-up checks and tests."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _supervise(self) -> None:
        delay = self.settings.reconnect_min
        while not self._stopping.is_set():
            try:
                link = await self._connect()
            except Exception as exc:  # noqa: BLE001 - whatever it was, try again later
                if not isinstance(exc, (OSError, AmiError, TimeoutError)):
                    log.exception("ami.connect_error")
                log.warning("ami.connect_failed", host=self.settings.host, port=self.settings.port,
                            error=_describe(exc), retry_in=round(delay, 2))
                await self._pause(delay)
                delay = min(delay * 2, self.settings.reconnect_max)
                continue
            delay = self.settings.reconnect_min
            self.connections += 1
            self._connected.set()
            self._gauge(1)
            log.info("ami.connected", host=self.settings.host, port=self.settings.port, version=self.version)
            pinger = asyncio.get_running_loop().create_task(self._keepalive(link), name="ami-ping")
            for hook in self._on_connect:
                try:
                    await hook()
                except Exception:  # noqa: BLE001
                    log.exception("ami.on_connect_failed")
            await self._read(link)
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
            self._connected.clear()
            self._gauge(0)
            self._link = None
            link.close()
            if not self._stopping.is_set():
                log.warning("ami.disconnected", retry_in=round(delay, 2))
                await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _connect(self) -> _Link:
        settings = self.settings
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(settings.host, settings.port, limit=_READ_SIZE), settings.connect_timeout)
        link = _Link(reader, writer)
        try:
            async with asyncio.timeout(settings.connect_timeout):
                while link.protocol.banner is None:
                    data = await reader.read(_READ_SIZE)
                    if not data:
                        raise AmiUnavailable("closed before the AMI greeting")
                    for item in link.protocol.feed(data):
                        if isinstance(item, Banner):
                            self.version = item.version
            self._link = link
            reading = asyncio.get_running_loop().create_task(self._read(link), name="ami-login-reader")
            try:
                done = await self._send(link, "Login", {
                    "Username": settings.username, "Secret": settings.secret, "Events": "on"},
                    settings.action_timeout, renew=False)
            finally:
                # The supervisor reads from here on; cancelling between reads loses nothing.
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            if not done.ok:
                raise AmiError(f"login refused: {done.message or 'no reason given'}")
        except BaseException:
            self._link = None
            link.close()
            raise
        return link

    async def _read(self, link: _Link) -> None:
        """Feed received bytes to the protocol until the connection ends."""
        while not link.closed:
            try:
                data = await link.reader.read(_READ_SIZE)
            except (OSError, asyncio.IncompleteReadError):
                data = b""
            if not data:
                link.close()
                return
            for item in link.protocol.feed(data):
                if isinstance(item, ActionDone):
                    future = link.waiters.pop(item.action_id, None)
                    if future is not None and not future.done():
                        future.set_result(item)
                elif isinstance(item, Event):
                    self._dispatch(item)

    def _dispatch(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                result = listener(event)
                if asyncio.iscoroutine(result):
                    asyncio.get_running_loop().create_task(result)
            except Exception:  # noqa: BLE001 - a listener never stops the reader
                log.exception("ami.listener_failed", ami_event=event.name)

    async def _keepalive(self, link: _Link) -> None:
        """A Ping every ping_interval seconds notices a connection that died without a FIN."""
        while not link.closed:
            await asyncio.sleep(self.settings.ping_interval)
            try:
                await self._send(link, "Ping", {}, self.settings.action_timeout)
            except AmiError as exc:
                log.warning("ami.ping_failed", error=_describe(exc))
                link.close()
                return

    async def _send(self, link: _Link, action: str, fields: Mapping[str, str | int | Sequence[str]],
                    timeout: float, *, action_id: str | None = None, renew: bool = True) -> ActionDone:
        if link.closed:
            raise AmiUnavailable("not connected to Asterisk (AMI)")
        action_id, data = link.protocol.action(action, fields, action_id=action_id)
        future: asyncio.Future[ActionDone] = asyncio.get_running_loop().create_future()
        link.waiters[action_id] = future
        try:
            link.writer.write(data)
            await link.writer.drain()
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            link.protocol.forget(action_id)
            link.waiters.pop(action_id, None)
            if renew:
                link.close()  # the supervisor reconnects
            raise AmiUnavailable(f"no answer from Asterisk within {timeout:g} s") from exc
        except (OSError, ConnectionError) as exc:
            link.close()
            raise AmiUnavailable(_describe(exc)) from exc

    def _gauge(self, value: int) -> None:
        if self.metrics is not None:
            self.metrics.ami_connected.set(value)

    # ---- actions

    async def action(self, action: str, fields: Mapping[str, str | int | Sequence[str]] | None = None, *,
                     action_id: str | None = None, timeout: float | None = None) -> ActionDone:
        """Send one action and await its answer (with a list action's events).

        Raises AmiUnavailable while there is no connection or no answer in time, AmiError when
        Asterisk answers `Response: Error`, ValueError for a field that would inject headers."""
        link = self._link
        if link is None or link.closed or not self._connected.is_set():
            raise AmiUnavailable("not connected to Asterisk (AMI)")
        try:
            done = await self._send(link, action, fields or {}, timeout or self.settings.action_timeout,
                                    action_id=action_id)
        except AmiProtocolError as exc:
            raise ValueError(str(exc)) from exc
        if not done.ok:
            raise AmiError(done.message or "Asterisk refused the action")
        return done

    def new_action_id(self, kind: str) -> str:
        link = self._link
        return (link.protocol if link is not None else AmiProtocol()).next_action_id(kind)

    async def originate_callback(self, phone: str, case_number: str, *, action_id: str | None = None,
                                 variables: Mapping[str, str] | None = None) -> str:
        """Ring a reporter and run the `callback` IVR (rate a closed case) when they answer.

        Returns the ActionID; the outcome arrives later as an `OriginateResponse` event with
        it. Raises ValueError for a bad number or case number, AmiUnavailable while Asterisk is
        unreachable, AmiError if it refuses.
        """
        number = CaseNumber.parse(case_number).value
        dial = national_number(phone, self.region)
        action_id = action_id or self.new_action_id("callback")
        settings = self.settings
        extra = [f"{key}={value}" for key, value in (variables or {}).items()]
        await self.action("Originate", {
            "Channel": settings.callback_channel.format(number=dial),
            "Context": settings.callback_context,
            "Exten": "s",
            "Priority": "1",
            "CallerID": settings.callback_caller_id,
            "Timeout": str(settings.callback_ring_seconds * 1000),
            "Async": "true",
            "Variable": [f"CALLCENTER_CASE_NUMBER={number}", *extra],
        }, action_id=action_id)
        log.info("ami.callback_originated", case_number=number, phone=mask_number(phone), action_id=action_id)
        return action_id

    async def originate_staff_dial(self, interface: str, phone: str, case_number: str, *,
                                   action_id: str | None = None) -> str:
        """Ring a staff member's own phone (`interface`, e.g. PJSIP/1001); when they answer,
        the `staff_dial_context` dialplan dials the reporter through the carrier trunk.

        The number travels only in channel variables (digits, checked again by the
        dialplan); the staff phone is shown the case number, not the citizen's. Returns the
        ActionID: the staff leg's `OriginateResponse` and the dialplan's `UserEvent:
        CallcenterStaffDial` (when the call ends) carry it. Raises as `originate_callback`.
        """
        number = CaseNumber.parse(case_number).value
        dial = national_number(phone, self.region)
        settings = self.settings
        prefix, _, suffix = settings.callback_channel.partition("{number}")
        action_id = action_id or self.new_action_id("staffdial")
        await self.action("Originate", {
            "Channel": interface,
            "Context": settings.staff_dial_context,
            "Exten": "s",
            "Priority": "1",
            "CallerID": f'"回拨 {number}" <{number}>',
            "Timeout": str(settings.staff_dial_ring_seconds * 1000),
            "Async": "true",
            "Variable": [f"CALLCENTER_CASE_NUMBER={number}", f"CALLCENTER_DIAL_NUMBER={dial}",
                         f"CALLCENTER_DIAL_PREFIX={prefix}", f"CALLCENTER_DIAL_SUFFIX={suffix}",
                         f"CALLCENTER_DIAL_CID={settings.callback_caller_id}",
                         f"CALLCENTER_DIAL_SECONDS={settings.callback_ring_seconds}",
                         f"CALLCENTER_STAFF_CALL={action_id}"],
        }, action_id=action_id)
        log.info("ami.staff_dial_originated", case_number=number, interface=interface,
                 phone=mask_number(phone), action_id=action_id)
        return action_id

    async def queue_status(self, queue: str | None = None) -> QueueSnapshot:
        """The staff queue's callers and members (QueueStatus)."""
        name = queue or self.queue
        done = await self.action("QueueStatus", {"Queue": name})
        blocks = [dict(message.headers) for message in done.events]
        params = next((b for b in blocks if b.get("Event") == "QueueParams" and b.get("Queue") == name), {})
        members = [b for b in blocks if b.get("Event") == "QueueMember" and b.get("Queue") == name]
        paused = sum(1 for m in members if m.get("Paused") == "1")
        in_call = sum(1 for m in members if m.get("InCall") == "1" or m.get("Status") in _BUSY)
        unreachable = sum(1 for m in members if m.get("Status") in _UNREACHABLE)
        available = sum(1 for m in members if m.get("Status") == "1" and m.get("Paused") != "1"
                        and m.get("InCall") != "1")
        return QueueSnapshot(queue=name, waiting=_int(params.get("Calls")), members=len(members),
                             available=available, paused=paused, in_call=in_call, unreachable=unreachable,
                             completed=_int(params.get("Completed")), abandoned=_int(params.get("Abandoned")),
                             holdtime=_int(params.get("Holdtime")))

    async def refresh_metrics(self) -> None:
        """Metrics refresh hook: queue gauges while connected (nothing is set while down)."""
        if self.metrics is None or not self.connected:
            return
        snapshot = await self.queue_status()
        self.metrics.queue_waiting.set(snapshot.waiting, queue=snapshot.queue)
        for state, value in (("logged_in", snapshot.members - snapshot.unreachable),
                             ("available", snapshot.available), ("paused", snapshot.paused),
                             ("in_call", snapshot.in_call)):
            self.metrics.queue_members.set(value, queue=snapshot.queue, state=state)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
