"""Asterisk Manager Interface through pyst2: call-backs (Originate) and staff-queue status.

pyst2's `asterisk.manager.Manager` is blocking and starts its own reader threads, so every
call into it runs on one dedicated worker thread (which also keeps its single response
queue in order: one action at a time) and the event loop only awaits the result. A
supervisor task connects, logs in, pings, and reconnects with exponential back-off
whenever Asterisk goes away (restart, network), so callers of `originate_callback()` get
`AmiUnavailable` while it is down, never a hang.

Two pyst2 details this module works around:

- Its message parser crashes its reader thread on any event with a `ChanVariable` header
  (Python 2's `dict.has_key`), and manager.conf sends one with every channel event
  (`channelvars = CALLCENTER_CASE_NUMBER`). We log in with `Events: off`: this client only
  sends actions and reads their responses; list responses (QueueStatus) still arrive.
- `send_action` waits for ever on a queue. Each action has a deadline; past it, the socket
  is shut down and the waiter released, so the worker thread is free again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import queue
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import phonenumbers
import structlog
from asterisk.manager import Manager, ManagerAuthException, ManagerException, ManagerSocketException

from callcenter.cases.numbering import CaseNumber
from callcenter.cases.phones import normalise_phone
from callcenter.settings import AmiSettings
from callcenter.voice.metrics import VoiceMetrics
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

T = TypeVar("T")
_HEADER_UNSAFE = re.compile(r"[\r\n\x00]")
# Device states (QueueMember Status) of members who cannot take a call.
_UNREACHABLE = frozenset({"4", "5"})  # invalid, unavailable
_BUSY = frozenset({"2", "3", "6", "7", "8"})  # in use, busy, ringing, ringinuse, on hold


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


class _Manager(Manager):  # type: ignore[misc]
    """pyst2's Manager with a connect timeout (its own connect can block for minutes on a
    host that drops SYNs); the socket is blocking afterwards, as its reader thread needs."""

    def connect_with_timeout(self, host: str, port: int, timeout: float) -> Any:
        if self._connected.is_set():
            raise ManagerException("Already connected to manager")
        try:
            raw = socket.create_connection((host, int(port)), timeout=timeout)
            raw.settimeout(None)
            self._sock = raw.makefile(mode="rwb", buffering=0)
            raw.close()  # the file object keeps the descriptor open
        except OSError as exc:
            raise ManagerSocketException(exc.errno, exc.strerror or str(exc)) from exc
        self._connected.set()
        self._running.set()
        self.message_thread.start()
        self.event_dispatch_thread.start()
        try:
            return self._response_queue.get(timeout=timeout)
        except queue.Empty as exc:
            raise ManagerSocketException(0, "no AMI greeting") from exc

    def abort(self) -> None:
        """Cut the connection and release any waiter; safe from any thread, never raises."""
        sock = getattr(self._sock, "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._connected.clear()
        for _ in range(max(1, len(self._reswaiting))):
            self._response_queue.put(None)


def _blocks(text: str) -> list[dict[str, str]]:
    """`Key: Value` blocks separated by blank lines (AMI list responses)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
    if current:
        blocks.append(current)
    return blocks


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
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ami")
        self._manager: _Manager | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._action_ids = itertools.count(1)
        self.connections = 0  # successful logins so far (reconnects show as > 1)

    # ---- lifecycle

    @property
    def connected(self) -> bool:
        manager = self._manager
        return manager is not None and manager.connected()

    async def start(self) -> None:
        if self._task is None:
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name="ami-supervisor")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self.settings.action_timeout + 2)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        manager, self._manager = self._manager, None
        if manager is not None:
            manager.abort()
        self._executor.shutdown(wait=False, cancel_futures=True)

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
                manager = await self._connect()
            except Exception as exc:  # noqa: BLE001 - whatever it was, try again later
                if not isinstance(exc, (ManagerException, OSError, AmiError)):
                    log.exception("ami.connect_error")
                log.warning("ami.connect_failed", host=self.settings.host, port=self.settings.port,
                            error=_describe(exc), retry_in=round(delay, 2))
                await self._pause(delay)
                delay = min(delay * 2, self.settings.reconnect_max)
                continue
            delay = self.settings.reconnect_min
            self._manager = manager
            self.connections += 1
            self._connected.set()
            self._gauge(1)
            log.info("ami.connected", host=self.settings.host, port=self.settings.port,
                     version=getattr(manager, "version", None))
            await self._watch(manager)
            self._connected.clear()
            self._gauge(0)
            self._manager = None
            await self._close(manager)
            if not self._stopping.is_set():
                log.warning("ami.disconnected", retry_in=round(delay, 2))
                await self._pause(delay)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _connect(self) -> _Manager:
        manager = _Manager()
        settings = self.settings

        def connect() -> None:
            greeting = manager.connect_with_timeout(settings.host, settings.port, settings.connect_timeout)
            if greeting is None:
                raise ManagerSocketException(0, "no AMI greeting")
            response = manager.send_action({
                "Action": "Login", "Username": settings.username, "Secret": settings.secret,
                "Events": "off"})
            if response is None or response.get_header("Response") != "Success":
                message = response.get_header("Message") if response is not None else "no answer"
                raise ManagerAuthException(message)

        try:
            await self._blocking(manager, connect, settings.connect_timeout + settings.action_timeout)
        except BaseException:
            manager.abort()
            raise
        return manager

    async def _watch(self, manager: _Manager) -> None:
        """Until the connection drops or we stop; a Ping every ping_interval seconds."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.settings.ping_interval
        while not self._stopping.is_set() and manager.connected():
            await self._pause(self.poll_interval)
            if loop.time() >= next_ping and manager.connected() and not self._stopping.is_set():
                next_ping = loop.time() + self.settings.ping_interval
                try:
                    await self._blocking(manager, lambda: manager.send_action({"Action": "Ping"}),
                                         self.settings.action_timeout)
                except (ManagerException, OSError, AmiError) as exc:
                    log.warning("ami.ping_failed", error=_describe(exc))
                    manager.abort()

    async def _close(self, manager: _Manager) -> None:
        def close() -> None:
            if manager.connected():
                try:
                    manager.send_action({"Action": "Logoff"})
                except ManagerException:
                    pass
            manager.abort()
            manager.close()

        try:
            await self._blocking(manager, close, self.settings.action_timeout)
        except (ManagerException, OSError, AmiError):
            manager.abort()

    async def _blocking(self, manager: _Manager, fn: Callable[[], T], timeout: float) -> T:
        """Run a pyst2 call on the AMI thread; past `timeout`, cut the connection."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, fn)
        except RuntimeError as exc:  # executor shut down
            raise AmiUnavailable("the AMI client is stopped") from exc
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError as exc:
            manager.abort()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise AmiUnavailable(f"no answer from Asterisk within {timeout:g} s") from exc

    def _gauge(self, value: int) -> None:
        if self.metrics is not None:
            self.metrics.ami_connected.set(value)

    # ---- actions

    async def _action(self, fields: dict[str, Any]) -> Any:
        manager = self._manager
        if manager is None or not manager.connected():
            raise AmiUnavailable("not connected to Asterisk (AMI)")
        for key, value in fields.items():
            for item in value if isinstance(value, list) else [value]:
                if _HEADER_UNSAFE.search(str(item)) or _HEADER_UNSAFE.search(key):
                    raise ValueError(f"AMI header {key} contains a line break")
        try:
            response = await self._blocking(manager, lambda: manager.send_action(dict(fields)),
                                            self.settings.action_timeout)
        except ManagerException as exc:
            raise AmiUnavailable(_describe(exc)) from exc
        if response is None:
            raise AmiUnavailable("the AMI connection closed")
        if response.get_header("Response") == "Error":
            raise AmiError(response.get_header("Message") or "Asterisk refused the action")
        return response

    def _action_id(self, kind: str) -> str:
        return f"callcenter-{kind}-{next(self._action_ids)}-{secrets.token_hex(3)}"

    async def originate_callback(self, phone: str, case_number: str) -> str:
        """Ring a reporter and run the `callback` IVR (rate a closed case) when they answer.

        Returns the ActionID. Raises ValueError for a bad number or case number,
        AmiUnavailable while Asterisk is unreachable, AmiError if it refuses.
        """
        number = CaseNumber.parse(case_number).value
        dial = national_number(phone, self.region)
        action_id = self._action_id("callback")
        settings = self.settings
        await self._action({
            "Action": "Originate",
            "ActionID": action_id,
            "Channel": settings.callback_channel.format(number=dial),
            "Context": settings.callback_context,
            "Exten": "s",
            "Priority": "1",
            "CallerID": settings.callback_caller_id,
            "Timeout": str(settings.callback_ring_seconds * 1000),
            "Async": "true",
            "Variable": [f"CALLCENTER_CASE_NUMBER={number}"],
        })
        log.info("ami.callback_originated", case_number=number, phone=mask_number(phone), action_id=action_id)
        return action_id

    async def queue_status(self, queue: str | None = None) -> QueueSnapshot:
        """The staff queue's callers and members (QueueStatus)."""
        name = queue or self.queue
        response = await self._action({"Action": "QueueStatus", "Queue": name,
                                       "ActionID": self._action_id("queue")})
        blocks = _blocks(getattr(response, "data", "") or "")
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
    if isinstance(exc, ManagerException) and exc.args:
        return " ".join(str(a) for a in exc.args if a not in (None, 0))
    return str(exc) or type(exc).__name__
