"""Whole calls: the real FastAGI server with the voice routes, a scripted Asterisk that
writes real WAV files where RECORD FILE says, and the real case service on SQLite and
PostgreSQL.

Everything here runs on the session event loop (Twisted's reactor is bound to it; see
tests/agi/conftest.py). The suite's `services` fixture is an async fixture on a
function-scoped loop, so its engine's connections would belong to another loop than the
AGI handlers that use them: `voice_services` builds the same services on the session loop
instead, from the same `settings` (database matrix) fixture.
"""

from __future__ import annotations

import array
import asyncio
import datetime as dt
import math
import random
import re
import wave
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import pytest_asyncio
from sqlalchemy import select

from callcenter.app import Services, build_services
from callcenter.cases.lifecycle import CaseStatus
from callcenter.cases.model import CaseView, Channel
from callcenter.db import migrate
from callcenter.db.tables import CaseRow, OutboxRow
from callcenter.service.cases import DraftInput, PlatformEvent
from callcenter.settings import Settings
from callcenter.voice import VoiceChannel
from callcenter.agi.protocol import AgiResult
from callcenter.agi.server import AgiCall, AgiHandler
from tests.agi.asterisk_peer import AgiServerHarness, CallTranscript, Command, ScriptedAsterisk, split_agi_args
from tests.support.asterisk import AsteriskPeer
from tests.support.asterisk_fixtures import Sounds
from tests.agi.conftest import _session_reactor, agi_logs, agi_server, reactor  # noqa: F401 - fixtures

ASTERISK_DIR = "/var/spool/asterisk/recording/callcenter"
SOUNDS = "callcenter/zh/"
CALLER = "13812345678"
CALLER_E164 = "+8613812345678"
OTHER = "13912345678"
OTHER_E164 = "+8613912345678"
IN_HOURS = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))   # a Monday
AFTER_HOURS = dt.datetime(2026, 10, 1, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))  # 国庆节
_ENDPOS = re.compile(r"endpos=(\d+)")
# The scripted caller's recordings are short: a real one is up to two minutes of audio.
MAX_TEST_FRAMES = 24_000


class Clock:
    def __init__(self, value: dt.datetime) -> None:
        self.value = value

    def __call__(self) -> dt.datetime:
        return self.value


def write_wav(path: Path, frames: int, *, seconds_of_silence: float = 0.0,
              noise_dbfs: float | None = None) -> None:
    """8 kHz mono 16-bit PCM, what Asterisk's `wav` format writes: `frames` of a tone, then
    `seconds_of_silence` of digital silence (or of line noise at noise_dbfs)."""
    samples = array.array("h", (int(8000 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(frames)))
    quiet = int(8000 * seconds_of_silence)
    if noise_dbfs is None:
        samples.extend([0] * quiet)
    else:
        level = 32768 * 10 ** (noise_dbfs / 20)
        rng = random.Random(7)
        samples.extend(int(rng.gauss(0, level)) for _ in range(quiet))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(samples.tobytes())


@dataclass
class VoicePeer(ScriptedAsterisk):
    """The scripted Asterisk, plus the side effect of RECORD FILE: a WAV file on the shared
    volume, seen by the test (and the service) under `service_dir`.

    audio: "speech" writes endpos samples of a tone, "header" only the 44-byte header (no
    audio reached Asterisk), "none" no file at all (a volume that is not shared),
    "silence" what a real Asterisk 22 leaves of a caller who says nothing and presses
    nothing: silence detection ends the take, which keeps ~1 s of pure silence
    (`200 result=0 endpos=8000`).
    """

    service_dir: Path | None = None
    asterisk_dir: str = ASTERISK_DIR
    audio: Literal["speech", "header", "none", "silence"] = "speech"
    written: list[Path] = field(default_factory=list)
    # Asterisk's recording folder does not exist: RECORD FILE fails at once, no file.
    folder_missing: bool = False

    def _alive(self, command: Command, transcript: CallTranscript) -> str:
        if command.name == "record file" and self.folder_missing:
            transcript.recordings.append(command.argv[2])
            return "200 result=-1 (writefile)"
        reply = super()._alive(command, transcript)
        if command.name == "record file":
            if self.audio == "silence" and "(dtmf)" not in reply:
                reply = "200 result=0 endpos=8000"
            self._write(command, reply)
        return reply

    def _caller_hangs_up(self, command: Command, transcript: CallTranscript) -> Any:
        reply, close = super()._caller_hangs_up(command, transcript)
        if command.name == "record file" and isinstance(reply, str):
            self._write(command, reply)
        return reply, close

    def _write(self, command: Command, reply: str) -> None:
        if self.service_dir is None or self.audio == "none" or len(command.argv) < 3:
            return
        target = command.argv[2]
        if not target.startswith(self.asterisk_dir + "/"):
            return
        match = _ENDPOS.search(reply)
        frames = min(int(match.group(1)) if match else 0, MAX_TEST_FRAMES)
        path = self.service_dir / (target[len(self.asterisk_dir) + 1:] + ".wav")
        if self.audio == "silence":
            write_wav(path, 0, seconds_of_silence=frames / 8000)
        else:
            write_wav(path, frames if self.audio == "speech" else 0)
        self.written.append(path)


def sounds(transcript: CallTranscript) -> list[str]:
    """Prompt ids played (STREAM FILE, and the prompt of GET DATA), in order."""
    return [argv[2].removeprefix(SOUNDS) for argv in transcript.argvs
            if [w.upper() for w in argv[:2]] in (["STREAM", "FILE"], ["GET", "DATA"]) and len(argv) > 2]


def number_heard(transcript: CallTranscript) -> str:
    """The digits read out after the last `your_number_is`."""
    heard = sounds(transcript)
    if "your_number_is" not in heard:
        return ""
    start = len(heard) - 1 - heard[::-1].index("your_number_is")
    digits = ""
    for prompt in heard[start + 1:]:
        if not prompt.startswith("digit_"):
            break
        digits += prompt.removeprefix("digit_")
    return digits


@dataclass
class Voice:
    """The system under test: services, the voice channel, its AGI server, the clock."""

    services: Services
    channel: VoiceChannel
    server: AgiServerHarness
    clock: Clock
    recordings: Path

    def peer(self, script: str = "hotline", dtmf: str = "", *, callerid: str = CALLER,
             **options: Any) -> VoicePeer:
        env = dict(options.pop("env", {}))
        env.setdefault("callerid", callerid)
        return VoicePeer(script=script, dtmf=dtmf, env=env, service_dir=self.recordings, **options)

    async def call(self, peer: ScriptedAsterisk) -> CallTranscript:
        return await self.server.call(peer)

    async def calls(self, peers: Sequence[ScriptedAsterisk]) -> list[CallTranscript]:
        transcripts = await asyncio.gather(*(peer.run("127.0.0.1", self.server.port) for peer in peers))
        await self.server.drain(60)
        return list(transcripts)

    async def drafts(self) -> list[CaseRow]:
        async with self.services.sessions() as session:
            return list((await session.scalars(
                select(CaseRow).where(CaseRow.channel == Channel.PHONE.value).order_by(CaseRow.id))).all())

    async def outbox(self, case_id: int | None = None) -> list[OutboxRow]:
        query = select(OutboxRow).order_by(OutboxRow.id)
        if case_id is not None:
            query = query.where(OutboxRow.case_id == case_id)
        async with self.services.sessions() as session:
            return list((await session.scalars(query)).all())

    async def case(self, phone: str | None = CALLER, *, status: CaseStatus = CaseStatus.DRAFT) -> CaseView:
        return await make_case(self.services, phone, status)


async def make_case(services: Services, phone: str | None = CALLER, status: CaseStatus = CaseStatus.DRAFT
                    ) -> CaseView:
    """A case made the way staff and the platform would, in the given status."""
    cases = services.cases
    view = await cases.create_draft(DraftInput(channel=Channel.STAFF, description="路灯不亮",
                                               reporter_phone=phone, category="C0101",
                                               notify_reporter=False), actor="test")
    if status == CaseStatus.DRAFT:
        return view
    await cases.submit(view.number, actor="test")
    steps = [CaseStatus.REGISTERED, CaseStatus.DISPATCHED, CaseStatus.FEEDBACK, CaseStatus.CLOSED]
    for index, step in enumerate(steps):
        view = await cases.apply_platform_event(
            view.number, PlatformEvent(event_id=f"{view.number}-{index}", status=step))
        if step == status:
            break
    return view


def voice_settings(settings: Settings, recordings: Path) -> Settings:
    return settings.model_copy(update={
        "recordings": settings.recordings.model_copy(
            update={"asterisk_dir": ASTERISK_DIR, "service_dir": str(recordings)}),
        "console": settings.console.model_copy(update={"recordings_dir": str(recordings)}),
    })


@pytest_asyncio.fixture(loop_scope="session")
async def voice_services(settings: Settings, tmp_path: Path) -> AsyncIterator[Services]:
    """The suite's services (SQLite and PostgreSQL), built on the session loop."""
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    configured = voice_settings(settings, recordings)
    migrate.upgrade(configured.database.url)
    services = build_services(configured)
    try:
        yield services
    finally:
        await services.close()


@pytest.fixture
def clock() -> Clock:
    return Clock(IN_HOURS)


@pytest_asyncio.fixture(loop_scope="session")
async def voice(voice_services: Services, agi_server: AgiServerHarness, clock: Clock) -> AsyncIterator[Voice]:  # noqa: F811
    channel = VoiceChannel(voice_services, now=clock)
    agi_server.start(channel.routes)
    channel.factory = agi_server.factory
    yield Voice(voice_services, channel, agi_server, clock,
                voice_services.settings.path(voice_services.settings.recordings.service_dir))


@pytest.fixture
def no_tracebacks(agi_logs: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:  # noqa: F811
    """Fails the test if any call logged an unexpected exception."""
    yield agi_logs
    crashed = [e for e in agi_logs if e.get("event") in ("agi.handler_failed", "voice.ivr_failed",
                                                         "voice.action_failed")]
    assert not crashed, crashed


# ---------------------------------------------------------------------------------------
# Whole calls through a real Asterisk 22 and the project's own dialplan
# ---------------------------------------------------------------------------------------


@dataclass
class AgiLine:
    """One AGI command the service sent on a real call and what Asterisk answered."""

    command: str
    result: AgiResult | None
    error: str | None = None

    @property
    def argv(self) -> list[str]:
        return split_agi_args(self.command)


@dataclass
class RealCall:
    """What one call (all its AGI sessions: hotline, then voicemail...) looked like."""

    tag: str
    sessions: list[tuple[str, list[AgiLine]]] = field(default_factory=list)

    @property
    def lines(self) -> list[AgiLine]:
        return [line for _, session in self.sessions for line in session]

    @property
    def routes(self) -> list[str]:
        return [route for route, _ in self.sessions]

    @property
    def argvs(self) -> list[list[str]]:
        return [line.argv for line in self.lines]

    def played(self) -> list[str]:
        """Prompt ids Asterisk really played (STREAM FILE / GET DATA not failed), in order."""
        heard = []
        for line in self.lines:
            argv = line.argv
            if [w.upper() for w in argv[:2]] in (["STREAM", "FILE"], ["GET", "DATA"]) and len(argv) > 2:
                if line.result is not None and not (argv[0].upper() == "STREAM" and line.result.failed):
                    heard.append(Path(argv[2]).name)
        return heard

    def number_heard(self) -> str:
        heard = self.played()
        if "your_number_is" not in heard:
            return ""
        start = len(heard) - 1 - heard[::-1].index("your_number_is")
        digits = ""
        for prompt in heard[start + 1:]:
            if not prompt.startswith("digit_"):
                break
            digits += prompt.removeprefix("digit_")
        return digits

    def set_variables(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for argv in self.argvs:
            if [w.upper() for w in argv[:2]] == ["SET", "VARIABLE"] and len(argv) >= 4:
                found[argv[2]] = argv[3]
        return found


@dataclass
class RealVoice:
    """The voice channel listening for a real Asterisk that runs the project's dialplan."""

    services: Services
    channel: VoiceChannel
    asterisk: AsteriskPeer
    clock: Clock
    recordings: Path
    speech: Sounds
    port: int
    calls: dict[str, RealCall] = field(default_factory=dict)

    def place(self, script: str = "", *, callerid: str | None = CALLER, **options: Any) -> str:
        tag = self.asterisk.call(script, callerid=callerid, **options)
        self.calls[tag] = RealCall(tag)
        return tag

    def say(self, sentence: str = "report_streetlight") -> str:
        """A caller step: play this sentence into the call (the citizen speaking)."""
        return "p" + self.speech.path(sentence)

    def silent(self) -> str:
        """A caller step: a minute of a silent line (frames of digital silence)."""
        return "p" + self.speech.path("silence_60s")

    async def case(self, phone: str | None = CALLER, *, status: CaseStatus = CaseStatus.DRAFT) -> CaseView:
        return await make_case(self.services, phone, status)

    async def settle(self, timeout: float = 120.0) -> None:
        """Until every call has ended in Asterisk and every AGI handler has finished."""
        await self.asterisk.wait_idle(timeout)
        factory = self.channel.factory
        if factory is not None:
            await asyncio.wait_for(factory.drain(), 30)

    async def run(self, script: str = "", *, timeout: float = 120.0, **options: Any) -> RealCall:
        tag = self.place(script, **options)
        await self.settle(timeout)
        return self.calls[tag]

    async def drafts(self) -> list[CaseRow]:
        async with self.services.sessions() as session:
            return list((await session.scalars(
                select(CaseRow).where(CaseRow.channel == Channel.PHONE.value).order_by(CaseRow.id))).all())

    async def outbox(self, case_id: int | None = None) -> list[OutboxRow]:
        query = select(OutboxRow).order_by(OutboxRow.id)
        if case_id is not None:
            query = query.where(OutboxRow.case_id == case_id)
        async with self.services.sessions() as session:
            return list((await session.scalars(query)).all())

    def _record(self, handler: AgiHandler, route: str) -> AgiHandler:
        async def recorded(call: AgiCall) -> None:
            tag = call.request.get("calleridname") or ""
            lines: list[AgiLine] = []
            self.calls.setdefault(tag, RealCall(tag)).sessions.append((route, lines))
            send = call.command

            async def command(line: str | bytes) -> AgiResult:
                text = line.decode() if isinstance(line, bytes) else line
                try:
                    result = await send(line)
                except Exception as exc:
                    lines.append(AgiLine(text.rstrip("\n"), None, type(exc).__name__))
                    raise
                lines.append(AgiLine(text.rstrip("\n"), result))
                return result

            call.command = command  # type: ignore[method-assign]
            await handler(call)

        return recorded


@pytest_asyncio.fixture(loop_scope="session")
async def real_voice(settings: Settings, tmp_path: Path, asterisk: AsteriskPeer, ivr_sounds: Sounds,
                     caller_speech: Sounds, reactor: Any, clock: Clock) -> AsyncIterator[RealVoice]:  # noqa: F811
    """The voice channel on a free port, with the real Asterisk's dialplan pointed at it.

    Recordings: Asterisk and the service share one local folder (both mounts the same path).
    Prompts: the built Mandarin WAVs, linked as Asterisk's `callcenter/zh` sounds (the default
    `prompts.asterisk_sounds_dir`), as in production.
    """
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    configured = settings.model_copy(update={
        "recordings": settings.recordings.model_copy(
            update={"asterisk_dir": str(recordings), "service_dir": str(recordings)}),
        "console": settings.console.model_copy(update={"recordings_dir": str(recordings)}),
    })
    migrate.upgrade(configured.database.url)
    services = build_services(configured)
    channel = VoiceChannel(services, now=clock)
    voice = RealVoice(services, channel, asterisk, clock, recordings, caller_speech, 0)
    channel.routes = {route: voice._record(handler, route) for route, handler in channel.routes.items()}
    listening = channel.listen(reactor, "127.0.0.1", 0)
    voice.port = listening.getHost().port  # type: ignore[attr-defined]
    await asterisk.set_agi_nodes([voice.port])
    try:
        yield voice
    finally:
        try:
            await voice.settle(60)
        finally:
            await channel.stop()
            await services.close()
