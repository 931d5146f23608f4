"""Drive the node-smpp SMSC simulator in `tests/smsc/` from Python (tests and benchmarks).

Runtime code, not test code: the benchmarks (`bench/bench_sms.py`) run from the project's
own install without pytest. The simulator's files are found in the source tree
(`tests/smsc/` beside this package) or where `CALLCENTER_SMSC_DIR` points.

The simulator is a child process owned by its user (a test session, a benchmark). It picks its own
free ports on 127.0.0.1 and announces them on stdout, so there is no race
between choosing a port and binding it. Control requests are line-JSON over a
second loopback socket, one connection per request, which works the same from
blocking code and from a running event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import select
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any, Self

SMSC_DIR = Path(os.environ.get("CALLCENTER_SMSC_DIR") or Path(__file__).resolve().parents[1] / "tests" / "smsc")
SIMULATOR = SMSC_DIR / "simulator.js"

# SMPP 3.4 command_status values the tests script most often.
ESME_ROK = 0x00
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58
ESME_RSYSERR = 0x08
ESME_RX_T_APPN = 0x64


class SimulatorError(RuntimeError):
    """The simulator answered a control request with an error."""


def ensure_node_modules(npm: str | None = None) -> None:
    """Run `npm ci` once if the pinned packages are missing.

    A lock file serialises concurrent test processes (pytest-xdist workers).
    """
    if (SMSC_DIR / "node_modules" / "smpp" / "package.json").exists():
        return
    npm = npm or shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH; it is needed to install tests/smsc")
    lock_path = SMSC_DIR / ".npm-ci.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (SMSC_DIR / "node_modules" / "smpp" / "package.json").exists():
                subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                    cwd=SMSC_DIR,
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    with contextlib.suppress(OSError):
        lock_path.unlink()


class SmscSimulator:
    """One simulator process plus its control channel.

    Use `start()`/`stop()` (or the context manager) from a fixture, then
    `call()` from blocking code or `await acall()` from async tests. The
    async helpers below cover the common commands; README.md lists them all.
    """

    def __init__(
        self,
        *,
        system_id: str | None = "callcenter",
        password: str | None = "secret",
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        log_path: Path | None = None,
        node: str | None = None,
    ) -> None:
        self.system_id = system_id
        self.password = password
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.log_path = log_path
        self.node = node or shutil.which("node") or "node"
        self.host = "127.0.0.1"
        self.port = 0
        self.control_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 20.0) -> None:
        """Install node packages if needed, spawn the simulator, wait for ready."""
        ensure_node_modules()
        argv = [self.node, str(SIMULATOR)]
        if self.system_id is not None:
            argv += ["--system-id", self.system_id]
        if self.password is not None:
            argv += ["--password", self.password]
        if self.tls_cert is not None and self.tls_key is not None:
            argv += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        if self.log_path is not None:
            self._log_file = self.log_path.open("ab")
        self._process = subprocess.Popen(
            argv,
            cwd=SMSC_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file if self._log_file is not None else subprocess.DEVNULL,
        )
        ready = self._read_ready_line(timeout)
        self.port = int(ready["smpp_port"])
        self.control_port = int(ready["control_port"])

    def _read_ready_line(self, timeout: float) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdout is not None
        stdout = self._process.stdout
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._process.poll() is not None:
                self.stop()
                raise RuntimeError(f"SMSC simulator did not become ready (got {line!r})")
            readable, _, _ = select.select([stdout], [], [], remaining)
            if readable:
                chunk = os.read(stdout.fileno(), 4096)
                if not chunk:
                    continue
                line += chunk
        ready: dict[str, Any] = json.loads(line.decode())
        return ready

    def stop(self) -> None:
        """Stop the process we started, by its own handle, and reap it."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=3)
        if process is not None and process.stdout is not None:
            process.stdout.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def running(self) -> bool:
        """Whether the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- control

    def _request_line(self, cmd: str, args: dict[str, Any]) -> bytes:
        return (json.dumps({"cmd": cmd, **args}) + "\n").encode()

    @staticmethod
    def _unwrap(line: bytes) -> Any:
        if not line:
            raise SimulatorError("simulator closed the control connection")
        reply = json.loads(line.decode())
        if not reply["ok"]:
            raise SimulatorError(reply["error"])
        return reply["result"]

    def call(self, cmd: str, /, timeout: float = 30.0, **args: Any) -> Any:
        """Send one control command and block for its answer."""
        with socket.create_connection((self.host, self.control_port), timeout=timeout) as conn:
            conn.sendall(self._request_line(cmd, args))
            with conn.makefile("rb") as reader:
                return self._unwrap(reader.readline())

    async def acall(self, cmd: str, /, timeout: float = 30.0, **args: Any) -> Any:
        """Send one control command without blocking the event loop."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                self.host, self.control_port, limit=64 * 1024 * 1024
            )
            try:
                writer.write(self._request_line(cmd, args))
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
        return self._unwrap(line)

    # ------------------------------------------------------------ sync helpers

    def reset(self) -> None:
        """Drop every SMPP session and forget scripts, settings and events."""
        self.call("reset")

    def events_sync(self, kind: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """Recorded events of one kind whose fields equal `where`."""
        result: list[dict[str, Any]] = self.call("events", kind=kind, where=where)
        return result

    # ----------------------------------------------------------- async helpers

    async def configure(self, **settings: Any) -> dict[str, Any]:
        """Change simulator settings (credentials, blackhole, auto_receipt...)."""
        result: dict[str, Any] = await self.acall("configure", **settings)
        return result

    async def script_submits(self, *responses: dict[str, Any]) -> None:
        """Queue how the next submit_sm PDUs are answered, one entry each."""
        await self.acall("script_submits", responses=list(responses))

    async def release_withheld(self, count: int | None = None) -> int:
        """Answer submit_sm PDUs that a `withhold` entry kept back."""
        result = await self.acall("release_withheld", count=count)
        return int(result["released"])

    async def deliver(self, **pdu: Any) -> int:
        """Send a deliver_sm (MO) built by node-smpp; returns its sequence."""
        result = await self.acall("deliver", **pdu)
        return int(result["sequence"])

    async def receipt(self, message_id: str, **fields: Any) -> int:
        """Send a delivery receipt for `message_id` (form: tlv, text or both)."""
        result = await self.acall("receipt", message_id=message_id, **fields)
        return int(result["sequence"])

    async def send_raw(self, data: bytes, session: int | None = None) -> None:
        """Write raw bytes on an SMPP connection (garbage, hand-made PDUs)."""
        await self.acall("send_raw", hex=data.hex(), session=session)

    async def drop(self, *, all_sessions: bool = False, how: str = "destroy") -> list[int]:
        """Close SMPP connections without unbinding (`how`: destroy or end)."""
        result = await self.acall("drop", all=all_sessions, how=how)
        return list(result["dropped"])

    async def unbind(self, session: int | None = None) -> int:
        """Send an SMSC-initiated unbind; the simulator closes after the resp."""
        result = await self.acall("unbind", session=session)
        return int(result["sequence"])

    async def enquire_link(self, session: int | None = None) -> int:
        """Send an SMSC-initiated enquire_link."""
        result = await self.acall("enquire_link", session=session)
        return int(result["sequence"])

    async def sessions(self) -> list[dict[str, Any]]:
        """Open SMPP sessions and their bind modes."""
        result: list[dict[str, Any]] = await self.acall("sessions")
        return result

    async def events(self, kind: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """Recorded events of one kind whose fields equal `where`."""
        result: list[dict[str, Any]] = await self.acall("events", kind=kind, where=where)
        return result

    async def wait_for(
        self, kind: str, count: int = 1, timeout: float = 5.0, **where: Any
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` matching events are recorded; return them all."""
        result: list[dict[str, Any]] = await self.acall(
            "wait",
            timeout=timeout + 5.0,
            kind=kind,
            count=count,
            where=where,
            timeout_ms=int(timeout * 1000),
        )
        return result
