"""Recordings of reports and voicemails: one volume, two mounts.

Asterisk writes a file where *it* sees the volume (`recordings.asterisk_dir`, the path we
send in RECORD FILE); the service reads the same file where *it* sees the volume
(`recordings.service_dir`). In docker-compose both are the same path; on two hosts sharing
NFS they usually differ. A draft stores only the file name (`recording_ref`, relative to
the directory, as the console resolves it), so a mount point can move without touching cases.

`check()` never raises: a missing file or one with no audio (RECORD FILE writes a 44-byte
WAV header and nothing else when the caller said nothing, or the mount is not shared) is a
flag on the draft for staff, not a crash that loses the caller's report.
"""

from __future__ import annotations

import array
import datetime as dt
import enum
import math
import operator
import re
import sys
import secrets
import wave
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog

from callcenter.cases.model import CaseFlag
from callcenter.settings import RecordingSettings, Settings

log = structlog.get_logger(__name__)

FORMAT = "wav"
# Speech detection: 20 ms frames whose RMS level is above the threshold count as speech.
FRAME_MS = 20
DEFAULT_SPEECH_DBFS = -40.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_HINT = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_ID_CHARS = 40
# What new_target() names, and nothing else: a ref that comes back from the channel
# (CALLCENTER_RECORDING, read by `recover`) must match it before any file is touched.
_OWN_REF = re.compile(r"[a-z][a-z0-9_]{0,31}-[0-9]{8}T[0-9]{6}-[A-Za-z0-9._-]{1,40}-[0-9a-f]{8}\.wav")


class RecordingState(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    EMPTY = "empty"


@dataclass(frozen=True)
class RecordingCheck:
    """What the service found behind a recording_ref."""

    ref: str
    state: RecordingState
    frames: int = 0
    duration_ms: int = 0
    detail: str = ""

    @property
    def flags(self) -> tuple[str, ...]:
        """Case flags for the draft (none when the file has audio)."""
        if self.state is RecordingState.MISSING:
            return (CaseFlag.RECORDING_MISSING.value,)
        if self.state is RecordingState.EMPTY:
            return (CaseFlag.RECORDING_EMPTY.value,)
        return ()


@dataclass(frozen=True)
class RecordingTarget:
    """Where one recording goes: `asterisk_path` for RECORD FILE (no extension, Asterisk
    adds it), `ref` for the draft."""

    asterisk_path: str
    ref: str


@dataclass(frozen=True)
class Speech:
    """What a WAV holds: its length and how much of it is louder than the speech threshold."""

    duration_ms: int
    speech_ms: int


def measure_speech(path: Path | str, threshold_dbfs: float = DEFAULT_SPEECH_DBFS) -> Speech:
    """Energy detector over the frames of a 16-bit PCM WAV (what Asterisk's `wav` writes).

    Why not the length: with silence detection RECORD FILE trims only (silence - 1 s) from
    the end, so a caller who said nothing leaves a take of about 1 s of digital silence or
    line noise. Raises wave.Error / OSError / ValueError for a file it cannot judge.
    """
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{wav.getsampwidth() * 8}-bit audio: only 16-bit PCM is measured")
        rate = wav.getframerate() or 8000
        channels = wav.getnchannels() or 1
        raw = wav.readframes(wav.getnframes())
    samples = array.array("h")
    samples.frombytes(raw[: len(raw) - len(raw) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    step = max(1, rate * FRAME_MS // 1000) * channels
    threshold = 32768.0 * 10 ** (threshold_dbfs / 20)
    limit = threshold * threshold * step  # compare sums of squares: no sqrt per frame
    voiced = 0
    for start in range(0, len(samples) - step + 1, step):
        frame = samples[start:start + step]
        if math.fsum(map(operator.mul, frame, frame)) >= limit:
            voiced += 1
    total_frames = len(samples) // channels
    return Speech(duration_ms=total_frames * 1000 // rate, speech_ms=voiced * FRAME_MS)


class RecordingStore:
    """Names recordings, and checks what Asterisk wrote."""

    def __init__(self, asterisk_dir: str, service_dir: Path,
                 speech_dbfs: float = DEFAULT_SPEECH_DBFS) -> None:
        self.asterisk_dir = asterisk_dir.rstrip("/") or "/"
        self.service_dir = service_dir
        self.speech_dbfs = speech_dbfs

    @classmethod
    def from_settings(cls, settings: Settings) -> RecordingStore:
        section: RecordingSettings = settings.recordings
        return cls(section.asterisk_dir, settings.path(section.service_dir),
                   settings.voice.speech_threshold_dbfs)

    def speech(self, ref: str) -> Speech | None:
        """Speech in the recording behind `ref`; None when there is no readable file (the
        caller then is judged by the take's length, and the draft flags the file)."""
        path = self.service_path(ref)
        if path is None:
            return None
        try:
            return measure_speech(path, self.speech_dbfs)
        except FileNotFoundError:
            return None
        except (wave.Error, EOFError, OSError, ValueError) as exc:
            log.info("voice.speech_unmeasured", recording=ref[:80], error=str(exc)[:200])
            return None

    def new_target(self, hint: str, call_id: str, now: dt.datetime | None = None) -> RecordingTarget:
        """A fresh, flat file name: `report-20261124T0930-<call id>-<random>.wav`.

        Flat because RECORD FILE does not create directories; the call id is cleaned (it
        comes from the peer) and a random part keeps two calls with the same id apart.
        """
        kind = hint if _HINT.fullmatch(hint) else "recording"
        clean_id = _UNSAFE.sub("_", call_id)[:_MAX_ID_CHARS] or "call"
        stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S")
        stem = f"{kind}-{stamp}-{clean_id}-{secrets.token_hex(4)}"
        return RecordingTarget(asterisk_path=f"{self.asterisk_dir}/{stem}", ref=f"{stem}.{FORMAT}")

    @staticmethod
    def is_own_ref(ref: str) -> bool:
        """Whether `ref` is a name this service gives recordings (`new_target`): flat, no
        path, only the IVR's pattern. Anything else from the channel is refused."""
        return _OWN_REF.fullmatch(ref) is not None

    def service_path(self, ref: str) -> Path | None:
        """The file behind a ref on the service's mount; None for a ref that is not ours."""
        rel = PurePosixPath(ref)
        if rel.is_absolute() or len(rel.parts) != 1 or rel.name in ("", ".", ".."):
            return None
        return self.service_dir / rel.name

    def check(self, ref: str | None) -> RecordingCheck:
        """Is there audio behind `ref`? Never raises."""
        text = ref or ""
        try:
            path = self.service_path(text) if text else None
            if path is None:
                return RecordingCheck(text, RecordingState.MISSING, detail="no usable recording ref")
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return RecordingCheck(text, RecordingState.MISSING, detail="no such file")
            try:
                with wave.open(str(path), "rb") as wav:
                    frames = wav.getnframes()
                    rate = wav.getframerate() or 8000
            except (wave.Error, EOFError) as exc:
                # A header with no data chunk (or a truncated one) has no audio either.
                return RecordingCheck(text, RecordingState.EMPTY, detail=f"not readable as WAV: {exc}")
            if frames <= 0:
                return RecordingCheck(text, RecordingState.EMPTY, detail=f"{size} bytes, no audio frames")
            return RecordingCheck(text, RecordingState.OK, frames=frames,
                                  duration_ms=frames * 1000 // rate)
        except Exception as exc:  # noqa: BLE001 - a permission or I/O error is a flag, not a crash
            log.warning("voice.recording_check_failed", recording=text[:80], error=str(exc))
            return RecordingCheck(text, RecordingState.MISSING, detail=f"unreadable: {exc}")


def check_recording_dirs(settings: Settings, *, create: bool = True) -> list[str]:
    """What is wrong with the recording folders, in words for the operator (empty: fine).

    The service must be able to read and write `service_dir` (created when missing). When
    `asterisk_dir` is the same path, Asterisk runs on this host and writes there too: a
    folder that is missing makes every RECORD FILE fail at once (the caller would be handed
    over as if silent). The console's player must look in the same folder."""
    problems: list[str] = []
    service = settings.path(settings.recordings.service_dir)
    if not service.is_dir() and create:
        try:
            service.mkdir(parents=True, exist_ok=True)
            log.info("voice.recordings_dir_created", path=str(service))
        except OSError as exc:
            problems.append(f"recordings.service_dir {service} does not exist and cannot be created: "
                            f"{exc.strerror or exc}")
    if service.is_dir():
        import os

        if not os.access(service, os.R_OK | os.W_OK | os.X_OK):
            problems.append(f"recordings.service_dir {service} is not readable and writable by this service")
    elif not problems:
        problems.append(f"recordings.service_dir {service} is not a folder")
    asterisk = Path(settings.recordings.asterisk_dir)
    if not asterisk.is_absolute():
        problems.append(f"recordings.asterisk_dir {asterisk} must be an absolute path (Asterisk's view)")
    console = settings.path(settings.console.recordings_dir)
    if console != service:
        problems.append(f"console.recordings_dir {console} differs from recordings.service_dir {service}: "
                        "the console would not find the recordings the IVR files")
    return problems
