"""Debian's baresip as a real SIP softphone for the voice tests.

It calls the real Asterisk of tests/support/asterisk.py as phone 1002 of the project's
pjsip.conf (the test softphone: context from-phones, 12319 reaches the hotline), sends
keys as RFC 4733 telephone-events, plays a WAV as its microphone and is driven over
baresip's ctrl_tcp socket (netstring JSON commands). Audio it hears goes to a WAV file.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import wave
from pathlib import Path
from typing import Any

from tests.support.asterisk import AsteriskPeer, free_port

# pjsip.conf [1002-auth]: the sample password of the test softphone.
PHONE = "1002"
PHONE_PASSWORD = "SAMPLE-tester-1002-change-me"


def find_baresip() -> str | None:
    return shutil.which("baresip")


def _netstring(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    return str(len(data)).encode() + b":" + data + b","


class Softphone:
    """One baresip process registered to nothing (regint=0), authenticating per call."""

    def __init__(self, asterisk: AsteriskPeer, root: Path, microphone: Path | None = None) -> None:
        self.asterisk = asterisk
        self.root = root
        self.microphone = microphone
        self.control_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._writer: asyncio.StreamWriter | None = None

    def _config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        rtp = self.asterisk.ports.rtp[1] + 2  # just above Asterisk's own RTP range
        microphone = self.microphone
        if microphone is None:  # a quiet line (aufile cannot read /dev/null)
            microphone = self.root / "quiet.wav"
            with wave.open(str(microphone), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(8000)
                wav.writeframes(b"\0\0" * 8000 * 120)
        source = f"aufile,{microphone}"
        (self.root / "config").write_text(f"""poll_method epoll
sip_listen 127.0.0.1:{free_port(socket.SOCK_DGRAM)}
audio_player aufile,{self.root / 'heard.wav'}
audio_source {source}
audio_alert aufile,/dev/null
rtp_ports {rtp}-{rtp + 20}
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module account.so
module ctrl_tcp.so
module_app menu.so
ctrl_tcp_listen 127.0.0.1:{self.control_port}
""", encoding="utf-8")
        (self.root / "accounts").write_text(
            f"<sip:{PHONE}@127.0.0.1:{self.asterisk.ports.sip}>;auth_pass={PHONE_PASSWORD};regint=0;"
            "audio_codecs=PCMA,PCMU\n", encoding="utf-8")

    async def start(self) -> None:
        binary = find_baresip()
        if binary is None:
            raise RuntimeError("baresip is not installed (Debian: apt-get install baresip-core)")
        self._config()
        log = (self.root / "baresip.log").open("wb")
        self.process = subprocess.Popen([binary, "-f", str(self.root)], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)
        log.close()
        for _ in range(100):
            try:
                _, self._writer = await asyncio.open_connection("127.0.0.1", self.control_port)
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"baresip did not open its control port: {self.log()[-2000:]}")

    async def command(self, command: str, params: str = "") -> None:
        assert self._writer is not None
        self._writer.write(_netstring({"command": command, "params": params, "token": command}))
        await self._writer.drain()

    async def dial(self, number: str) -> None:
        await self.command("dial", f"sip:{number}@127.0.0.1:{self.asterisk.ports.sip}")

    async def keys(self, digits: str, gap: float = 0.6) -> None:
        """RFC 4733 telephone-events, one key at a time."""
        for digit in digits:
            await self.command("sndcode", digit)
            await asyncio.sleep(gap)

    async def hangup(self) -> None:
        await self.command("hangup")

    def log(self) -> str:
        path = self.root / "baresip.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                process.kill()
