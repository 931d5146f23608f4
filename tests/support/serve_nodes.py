"""Whole `callcenter serve` processes for multi-node tests, and what talks to them.

- `ServeNode`: one `python -m callcenter serve --port 0` process, its output in a file; its
  HTTP and FastAGI addresses are read from its `listening` log lines.
- `SseConsole`: one browser's console: its own cookie jar, signed in through the sign-in
  form (CSRF double-submit), reading `/console/events` in the background. `follow(node)`
  opens the stream again on another node with the same cookie, as a browser behind a load
  balancer does when its node dies (sign-in sessions live in the store).
- `PacedCaller`: the scripted Asterisk of tests/voice_calls, slowed down as a real caller
  is (each answer waits `pace` seconds), so a call is still in the IVR when a node dies.

Everything binds 127.0.0.1. Nothing here is the code under test: the nodes are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from tests.agi.asterisk_peer import CallTranscript
from tests.voice_calls.conftest import VoicePeer

ROOT = Path(__file__).resolve().parents[2]
_HTTP = re.compile(r"address=(http://127\.0\.0\.1:\d+/)\s")
_AGI = re.compile(r"address=agi://127\.0\.0\.1:(\d+)/")
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')

# Staff hours around the clock, so key 0 reaches the staff queue whenever the suite runs.
ALWAYS_OPEN_HOURS = """\
timezone = "Asia/Shanghai"
years = []
makeup_day_hours = "mon"
[weekly]
mon = ["00:00-24:00"]
tue = ["00:00-24:00"]
wed = ["00:00-24:00"]
thu = ["00:00-24:00"]
fri = ["00:00-24:00"]
sat = ["00:00-24:00"]
sun = ["00:00-24:00"]
"""


class ServeProcess:
    """One `callcenter serve` process, its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "callcenter", "serve", "--port", "0"], cwd=ROOT,
                                     env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, leases and heartbeats are left as they were."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; the exit status (0 for a clean stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()
        return self.proc.returncode

    def tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:]

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class ServeNode(ServeProcess):
    """A serve process of a cluster test: its name, listeners and the moment it was killed."""

    def __init__(self, name: str, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path)
        self.name = name
        self.http: str = ""
        self.agi_port: int = 0
        self.killed_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.killed_at is None and self.proc.poll() is None

    async def listening(self, timeout: float = 90.0) -> None:
        """Wait for both listeners' log lines; fails at once if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.tail()}"
            text = self.log_text()
            http, agi = _HTTP.search(text), _AGI.search(text)
            if http and agi:
                self.http, self.agi_port = http.group(1), int(agi.group(1))
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not listening within {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        super().kill()
        self.killed_at = time.monotonic()


def local_tcp_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process `pid` holds (Linux /proc), to tell which
    SMPP session at the SMSC (it logs each peer's port) belongs to which node."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if len(cols) > 9 and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def serve_environment(**values: str) -> dict[str, str]:
    """This process's environment without any CALLCENTER_ setting, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env.update(values)
    return env


@dataclass
class SseEvent:
    type: str
    data: dict[str, Any]
    at: float
    node: str


@dataclass
class SseConsole:
    """A browser with the console open: one cookie jar, one event stream at a time."""

    username: str
    password: str
    events: list[SseEvent] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)  # node names, in the order followed
    ended: list[tuple[str, float, str]] = field(default_factory=list)  # node, when, why
    _http: aiohttp.ClientSession | None = None
    _reader: asyncio.Task[None] | None = None
    _hello: asyncio.Event = field(default_factory=asyncio.Event)

    async def sign_in(self, node: ServeNode) -> None:
        # unsafe: the jar keeps cookies set by an IP address (127.0.0.1).
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                           timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        async with self._http.get(node.http + "console/login") as response:
            assert response.status == 200, await response.text()
            match = _CSRF.search(await response.text())
            assert match, "no CSRF field on the sign-in page"
        form = {"csrf_token": match.group(1), "username": self.username, "password": self.password}
        async with self._http.post(node.http + "console/login", data=form, allow_redirects=False) as response:
            assert response.status == 303, await response.text()

    async def follow(self, node: ServeNode, timeout: float = 30.0) -> None:
        """Open the event stream on `node` (the previous one, if any, has ended) and wait for
        its `hello`, so every event published from now on is owed to this console."""
        assert self._http is not None, "sign in first"
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self._hello = asyncio.Event()
        self._reader = asyncio.create_task(self._read(node), name=f"sse-{self.username}-{node.name}")
        async with asyncio.timeout(timeout):
            while not self._hello.is_set():
                if self._reader.done():
                    self._reader.result()
                    raise AssertionError(f"{self.username}: stream on {node.name} ended before hello")
                await asyncio.sleep(0.02)

    async def _read(self, node: ServeNode) -> None:
        assert self._http is not None
        self.streams.append(node.name)
        why = "closed"
        try:
            async with self._http.get(node.http + "console/events",
                                      headers={"Accept": "text/event-stream"}) as response:
                assert response.status == 200, await response.text()
                kind, data = "", ""
                async for raw in response.content:
                    line = raw.decode("utf-8").rstrip("\r\n")
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line == "" and kind:
                        if kind == "hello":
                            self._hello.set()
                        else:
                            self.events.append(SseEvent(kind, json.loads(data), time.monotonic(), node.name))
                        kind, data = "", ""
        except (aiohttp.ClientError, ConnectionError) as exc:
            why = type(exc).__name__
        finally:
            self.ended.append((node.name, time.monotonic(), why))

    async def edit_address(self, node: ServeNode, number: str, address: str) -> None:
        """Save a transcription field through `node`'s console API, as the form does (CSRF
        header, the version the page was loaded at); that node publishes `case_updated`."""
        assert self._http is not None, "sign in first"
        async with self._http.get(node.http + "console/api/me") as response:
            assert response.status == 200, await response.text()
            csrf = (await response.json())["csrf_token"]
        async with self._http.get(node.http + f"console/api/cases/{number}",
                                  headers={"Accept": "application/json"}) as response:
            assert response.status == 200, await response.text()
            case = await response.json()
        version = case["version"] if "version" in case else case["case"]["version"]
        async with self._http.patch(node.http + f"console/api/cases/{number}", headers={"X-CSRF-Token": csrf},
                                    json={"version": version, "address": address}) as response:
            assert response.status == 200, await response.text()

    def updates(self) -> set[str]:
        return {str(event.data.get("number")) for event in self.of_type("case_updated")}

    def of_type(self, kind: str) -> list[SseEvent]:
        return [event for event in self.events if event.type == kind]

    def drafts(self) -> set[str]:
        return {str(event.data.get("number")) for event in self.of_type("draft_created")}

    def pops(self) -> set[str]:
        return {str(event.data.get("call_id")) for event in self.of_type("screen_pop")}

    def resyncs(self) -> int:
        return len(self.of_type("resync"))

    async def close(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._http is not None:
            await self._http.close()


@dataclass
class PacedCaller(VoicePeer):
    """The scripted Asterisk answering each command after `pace` seconds (a prompt being
    played, a caller thinking), so calls last long enough to be cut by a node's death.
    `answered` counts the commands answered so far."""

    pace: float = 0.05
    answered: int = 0

    async def _read_line(self, reader: asyncio.StreamReader, buffer: bytearray,
                         transcript: CallTranscript) -> bytes | None:
        line = await super()._read_line(reader, buffer, transcript)
        if line is not None:
            self.answered += 1
            await asyncio.sleep(self.pace)
        return line
