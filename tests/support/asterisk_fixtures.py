"""pytest fixtures for the real Asterisk (tests/support/asterisk.py).

    pytest_plugins = ["tests.support.asterisk_fixtures"]     (tests/conftest.py does this)

- `asterisk`: one Asterisk 22 per test session with the project's config/asterisk/ files
  (ports and paths changed). Outside CI a missing Asterisk skips with the reason; in CI
  (CI=true) it fails instead.
- `ivr_sounds`: the IVR's Mandarin prompts built once per session (espeak-ng + sox), and
  `caller_speech`: what test citizens say, built the same way (the caller plays them).

Tests point the dialplan at their own FastAGI listener with
`await asterisk.set_agi_nodes([port])`, then place calls with
`asterisk.call(script, callerid=...)` and `await asterisk.wait_idle()`.
"""

from __future__ import annotations

import shutil
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.asterisk import REPO_ROOT, AsteriskPeer, asterisk_or_skip, is_ci

# What test citizens say (the caller half plays these as its voice).
CALLER_SENTENCES = {
    "report_streetlight": "人民路和解放路路口的路灯坏了，晚上很黑，请尽快修理。",
    "report_rubbish": "小区门口的垃圾已经三天没人清理了。",
}


def _tools_or_skip() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (Debian: apt-get install espeak-ng sox)"
        if is_ci():
            pytest.fail(f"{reason}; CI=true, refusing to skip", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def asterisk_prefix() -> Path:
    return asterisk_or_skip()


@pytest.fixture(scope="session")
def asterisk(asterisk_prefix: Path, ivr_sounds: Sounds,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsteriskPeer]:
    """A running Asterisk with the IVR's prompts as its `callcenter/zh` sounds."""
    peer = AsteriskPeer(prefix=asterisk_prefix, root=tmp_path_factory.mktemp("asterisk"),
                        sounds={"callcenter/zh": ivr_sounds.directory})
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@dataclass(frozen=True)
class Sounds:
    """Built WAVs: `path(id)` is what Playback / STREAM FILE take (absolute, no extension)."""

    directory: Path

    def path(self, prompt_id: str) -> str:
        return str(self.directory / prompt_id)


def _cache(name: str) -> Path:
    # Under the worktree's ignored var/: incremental (the build keeps a manifest), per checkout.
    return REPO_ROOT / "var" / "test-cache" / name


def build_ivr_sounds() -> Sounds:
    """The IVR's Mandarin prompts, built (incrementally) under var/test-cache/."""
    from callcenter.prompts import build_prompts

    out = _cache("prompts-zh")
    build_prompts(REPO_ROOT / "ivr_scripts" / "prompts" / "zh", out, overrides_dir=None, progress=False)
    return Sounds(out)


def build_caller_speech(scratch: Path) -> Sounds:
    """What test citizens say (CALLER_SENTENCES), plus a minute of a silent line."""
    from callcenter.prompts import build_prompts

    source = scratch / "caller-speech-src"
    source.mkdir(parents=True, exist_ok=True)
    for name, text in CALLER_SENTENCES.items():
        (source / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
    out = _cache("caller-speech")
    build_prompts(source, out, overrides_dir=None, progress=False)
    # A silent caller on a real line still sends audio frames: 60 s of digital silence.
    silence = out / "silence_60s.wav"
    if not silence.exists():
        with wave.open(str(silence), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(8000)
            wav.writeframes(b"\0\0" * 8000 * 60)
    return Sounds(out)


@pytest.fixture(scope="session")
def ivr_sounds() -> Sounds:
    _tools_or_skip()
    return build_ivr_sounds()


@pytest.fixture(scope="session")
def caller_speech(tmp_path_factory: pytest.TempPathFactory) -> Sounds:
    _tools_or_skip()
    return build_caller_speech(tmp_path_factory.mktemp("caller-speech"))
