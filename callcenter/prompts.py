"""IVR prompts: Mandarin texts rendered to 8 kHz WAV files that Asterisk plays.

Asterisk ships no Mandarin sounds, so every sentence, digit and category name the caller
hears is a file built here from `ivr_scripts/prompts/zh/<id>.txt` with espeak-ng (Mandarin)
and sox (Debian packages `espeak-ng`, `sox`). A recorded human voice replaces any prompt by
dropping `<id>.wav` into the overrides directory. Rebuilds are incremental: a manifest keeps
the hash of what each output was made from.

Subprocesses get argument lists and the text on stdin: prompt text never reaches a shell.
"""

from __future__ import annotations

import array
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata
import wave
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog

# Prompt ids and sound names live apart from the builder (callcenter/ivr/prompt_ids.py).
from callcenter.ivr.prompt_ids import PROMPT_ID, TONE_IDS

log = structlog.get_logger(__name__)

SAMPLE_RATE = 8000
CHANNELS = 1
SAMPLE_WIDTH = 2  # bytes: 16-bit signed PCM, what Asterisk's format_wav reads as slin
MANIFEST_NAME = ".prompts-manifest.json"
# Bump when the synthesis pipeline changes (voice, speed, effects): every prompt is rebuilt.
PIPELINE_VERSION = 1
# Debian 12's espeak-ng 1.51 `cmn` voice reads the pinyin it derives from each character as
# English ("好" -> "hao two", espeak-ng issue #1236); `cmn-latn-pinyin` speaks it as Mandarin.
VOICE_PREFERENCE = ("cmn-latn-pinyin", "cmn")
SPEED_WPM = 170
NORMALISE_DBFS = -3.0
# A synthesised prompt shorter or quieter than this means the voice produced nothing usable.
MIN_SECONDS = 0.2
MIN_RMS = 100.0
TOOLS = {"espeak-ng": "espeak-ng", "sox": "sox"}  # executable -> Debian package
TOOL_TIMEOUT_SECONDS = 60
# Tones that are not speech: built with sox, overridable like any prompt. `beep` is played
# before recording because RECORD FILE's own BEEP needs Asterisk's core sounds, which
# slim Asterisk images leave out (a missing beep makes RECORD FILE fail with "randomerror").
TONES: dict[str, tuple[str, ...]] = {
    "beep": ("synth", "0.25", "sine", "1000", "vol", "0.5", "pad", "0", "0.1"),
}
_PROMPT_ID = PROMPT_ID
# Every tone id has its recipe here, and nothing else does.
assert set(TONES) == set(TONE_IDS), "callcenter/ivr/prompt_ids.py TONE_IDS and TONES differ"

Action = Literal["synthesised", "tone", "override", "converted", "unchanged"]


class PromptError(RuntimeError):
    """A prompt could not be built; the message names the prompt and what to fix."""


class PromptToolMissing(PromptError):
    """espeak-ng or sox is not installed."""


@dataclass(frozen=True)
class PromptResult:
    prompt_id: str
    action: Action
    output: Path
    warning: str | None = None


@dataclass
class BuildReport:
    """What a build did, per prompt, so the CLI and tests can say it precisely."""

    output_dir: Path
    voice: str | None
    results: list[PromptResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def ids(self, *actions: Action) -> list[str]:
        return sorted(r.prompt_id for r in self.results if r.action in actions)

    @property
    def built(self) -> list[str]:
        """Prompts whose output was (re)written in this run."""
        return self.ids("synthesised", "tone", "override", "converted")

    @property
    def unchanged(self) -> list[str]:
        return self.ids("unchanged")

    def summary(self) -> str:
        counts = {action: len(self.ids(action)) for action in
                  ("synthesised", "tone", "override", "converted", "unchanged")}
        parts = [f"{n} {action}" for action, n in counts.items() if n]
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        return f"{len(self.results)} prompts in {self.output_dir}: " + (", ".join(parts) or "none")


@dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    sample_width: int
    frames: int
    rms: float

    @property
    def seconds(self) -> float:
        return self.frames / self.rate if self.rate else 0.0

    @property
    def telephony(self) -> bool:
        """True for exactly what Asterisk plays without transcoding surprises."""
        wanted = (SAMPLE_RATE, CHANNELS, SAMPLE_WIDTH)
        return (self.rate, self.channels, self.sample_width) == wanted


def wav_info(path: Path) -> WavInfo:
    """Format and loudness of a PCM WAV file (raises wave.Error for other encodings)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getcomptype() != "NONE":
            raise wave.Error(f"compressed WAV ({wav.getcompname()})")
        rate, channels, width, frames = (wav.getframerate(), wav.getnchannels(),
                                         wav.getsampwidth(), wav.getnframes())
        data = wav.readframes(frames)
    rms = 0.0
    if width == 2 and data:
        samples = array.array("h")
        samples.frombytes(data[: len(data) - len(data) % 2])
        if sys.byteorder == "big":
            samples.byteswap()
        rms = math.sqrt(sum(s * s for s in samples) / len(samples))
    return WavInfo(rate=rate, channels=channels, sample_width=width, frames=frames, rms=rms)


def read_prompt_text(path: Path) -> str:
    """The sentence to speak: strict UTF-8, plain text; line breaks count as spaces."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    text = " ".join(text.removeprefix("\ufeff").split())
    if not text:
        raise PromptError(f"{path}: empty prompt text")
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise PromptError(f"{path}: control or unassigned character U+{ord(char):04X}; "
                              "prompts are plain text")
    return text


def find_tools() -> dict[str, str]:
    """Paths of espeak-ng and sox, or an error naming the Debian packages to install."""
    found = {tool: shutil.which(tool) for tool in TOOLS}
    absent = [tool for tool, path in found.items() if path is None]
    if absent:
        packages = " ".join(sorted(TOOLS[tool] for tool in absent))
        raise PromptToolMissing(f"cannot build prompts: {', '.join(absent)} not found; "
                                f"install the Debian package(s): apt-get install {packages}")
    return {tool: path for tool, path in found.items() if path is not None}


def choose_voice(espeak: str) -> str:
    """The best Mandarin voice this espeak-ng has (see VOICE_PREFERENCE)."""
    listing = _run([espeak, "--voices=cmn"], what="espeak-ng --voices").stdout
    names = {line.split()[1].lower() for line in listing.splitlines()[1:] if len(line.split()) > 1}
    for voice in VOICE_PREFERENCE:
        if voice in names:
            return voice
    raise PromptToolMissing(
        "espeak-ng has no Mandarin voice (cmn); install the Debian package espeak-ng-data "
        "(pulled in by espeak-ng)")


class _Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


class _TextProgress:
    """Fallback without tqdm: a rewritten line on a terminal, a few plain lines in logs."""

    def __init__(self, total: int, stream: Any) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.step = max(1, total // 10)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.tty:
            self.stream.write(f"\rprompts {self.done}/{self.total}")
        elif self.done == self.total or self.done % self.step == 0:
            self.stream.write(f"prompts {self.done}/{self.total}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> _Progress:
    """tqdm on a terminal when installed; otherwise a plain line (logs stay readable)."""
    if not enabled or total == 0:
        return _NoProgress()
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            bar: _Progress = tqdm(total=total, desc="prompts", unit="prompt", file=sys.stderr)
            return bar
    return _TextProgress(total, sys.stderr)


def _run(args: list[str], *, what: str,
         stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, timeout=TOOL_TIMEOUT_SECONDS,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise PromptError(f"{what}: timed out after {TOOL_TIMEOUT_SECONDS} s") from exc
    stderr = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode != 0:
        raise PromptError(f"{what}: exit status {done.returncode}: {stderr[-500:]}")
    stdout = done.stdout.decode("utf-8", "replace")
    return subprocess.CompletedProcess(args, done.returncode, stdout, stderr)


# Synthesised speech: espeak-ng's leading and trailing silence trimmed (a 12-digit intake
# number is read from 12 files, so every 0.2 s counts), then a short fixed pad.
_TRIM = ("silence", "1", "0.01", "-45d", "reverse", "silence", "1", "0.01", "-45d", "reverse")
_PAD = ("pad", "0.05", "0.1")


def _sox_to_telephony(sox: str, source: Path, target: Path, *, speech: bool,
                      what: str, generate: tuple[str, ...] = ()) -> None:
    """Write 8 kHz mono 16-bit signed PCM WAV (optionally from a sox generator instead).

    speech: trim, normalise lightly and pad synthesised speech; recordings and tones are
    only converted.
    """
    inputs = ["-n"] if generate else [str(source)]
    effects = list(generate) if generate else ["remix", "-"]
    if speech:
        effects += _TRIM
    effects += ["rate", "-h", str(SAMPLE_RATE)]
    if speech:
        effects += ["norm", str(NORMALISE_DBFS), *_PAD]
    # -D: no dither, so the same input always gives the same bytes.
    _run([sox, "-q", "-D", *inputs, "-t", "wav", "-r", str(SAMPLE_RATE), "-c", str(CHANNELS),
          "-b", "16", "-e", "signed-integer", str(target), *effects], what=what)


def _atomic_target(output: Path) -> Path:
    # Same directory, so os.replace is atomic: Asterisk never plays a half-written file.
    fd, name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".wav", dir=output.parent)
    os.close(fd)
    return Path(name)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class _Job:
    prompt_id: str
    kind: Literal["tts", "tone", "override"]
    source: Path | None  # the .txt or override .wav
    key: str  # what the output is made from; unchanged key + fresh output -> skip
    text: str = ""


def _load_manifest(path: Path) -> dict[str, dict[str, str]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    prompts = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(prompts, dict):
        return {}
    return {k: v for k, v in prompts.items() if isinstance(v, dict)}


def _save_manifest(path: Path, prompts: dict[str, dict[str, str]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    data = {"pipeline": PIPELINE_VERSION, "prompts": dict(sorted(prompts.items()))}
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _plan(source_dir: Path, overrides_dir: Path | None, voice_of: Callable[[], str],
          warnings: list[str]) -> list[_Job]:
    texts = {p.stem: p for p in sorted(source_dir.glob("*.txt"))}
    for prompt_id in texts:
        if not _PROMPT_ID.fullmatch(prompt_id):
            raise PromptError(f"{texts[prompt_id]}: prompt ids are lower-case ASCII, digits and _ "
                              "(they become Asterisk sound names)")
    overrides: dict[str, Path] = {}
    if overrides_dir is not None and overrides_dir.is_dir():
        overrides = {p.stem: p for p in sorted(overrides_dir.glob("*.wav"))}
    for prompt_id in sorted(set(overrides) - set(texts) - set(TONES)):
        warnings.append(f"override {overrides[prompt_id]} has no {prompt_id}.txt: ignored "
                        "(keep the text beside every recording)")
    jobs: list[_Job] = []
    for prompt_id in sorted(set(texts) | set(TONES)):
        if prompt_id in overrides:
            path = overrides[prompt_id]
            key = f"override:{PIPELINE_VERSION}:{_sha256(path.read_bytes())}"
            jobs.append(_Job(prompt_id, "override", path, key))
        elif prompt_id in texts:
            text = read_prompt_text(texts[prompt_id])
            key = f"tts:{PIPELINE_VERSION}:{voice_of()}:{SPEED_WPM}:{_sha256(text.encode())}"
            jobs.append(_Job(prompt_id, "tts", texts[prompt_id], key, text))
        else:
            key = f"tone:{PIPELINE_VERSION}:{' '.join(TONES[prompt_id])}"
            jobs.append(_Job(prompt_id, "tone", None, key))
    return jobs


def _fresh(job: _Job, output: Path, manifest: dict[str, dict[str, str]]) -> bool:
    if manifest.get(job.prompt_id, {}).get("key") != job.key or not output.is_file():
        return False
    return job.source is None or output.stat().st_mtime >= job.source.stat().st_mtime


def _build_one(job: _Job, output: Path, tools: dict[str, str], voice: str | None) -> PromptResult:
    target = _atomic_target(output)
    try:
        if job.kind == "tts":
            assert voice is not None and job.source is not None
            with tempfile.TemporaryDirectory(prefix="prompt-") as tmp:
                raw = Path(tmp) / "espeak.wav"
                # -b 1: the text on stdin is UTF-8; no -m, so markup in it is spoken, not obeyed.
                _run([tools["espeak-ng"], "-v", voice, "-s", str(SPEED_WPM), "-b", "1",
                      "-w", str(raw), "--stdin"], stdin=job.text.encode("utf-8"),
                     what=f"espeak-ng for {job.source}")
                _sox_to_telephony(tools["sox"], raw, target, speech=True,
                                  what=f"sox for {job.source}")
            info = wav_info(target)
            if info.seconds < MIN_SECONDS or info.rms < MIN_RMS:
                raise PromptError(f"{job.source}: espeak-ng voice {voice} produced no audible "
                                  f"speech ({info.seconds:.2f} s, RMS {info.rms:.0f})")
            action: Action = "synthesised"
            warning = None
        elif job.kind == "tone":
            _sox_to_telephony(tools["sox"], Path(), target, speech=False,
                              what=f"sox tone {job.prompt_id}", generate=TONES[job.prompt_id])
            action, warning = "tone", None
        else:
            assert job.source is not None
            try:
                ready = wav_info(job.source).telephony
            except (wave.Error, EOFError) as exc:
                ready, reason = False, str(exc)
            else:
                reason = ""
            if ready:
                shutil.copyfile(job.source, target)
                action, warning = "override", None
            else:
                info_text = reason or _describe(job.source)
                warning = (f"override {job.source} is {info_text}, not 8000 Hz mono 16-bit PCM: "
                           "converted with sox (save it in that format to have it used verbatim)")
                _sox_to_telephony(tools["sox"], job.source, target, speech=False,
                                  what=f"sox for override {job.source}")
                action = "converted"
        os.chmod(target, 0o644)  # Asterisk runs as another user in its own container
        os.replace(target, output)
    finally:
        target.unlink(missing_ok=True)
    return PromptResult(job.prompt_id, action, output, warning)


def _describe(path: Path) -> str:
    info = wav_info(path)
    return f"{info.rate} Hz, {info.channels} channel(s), {8 * info.sample_width}-bit"


def build_prompts(
    source_dir: Path | str,
    output_dir: Path | str,
    overrides_dir: Path | str | None = None,
    force: bool = False,
    progress: bool = True,
    jobs: int | None = None,
) -> BuildReport:
    """Render every `<id>.txt` (and built-in tone) in source_dir to `<id>.wav` in output_dir.

    An override `<id>.wav` replaces the synthesised prompt. Unchanged prompts are skipped
    unless force. Outputs of prompts whose source was deleted are removed.
    """
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    overrides = Path(overrides_dir) if overrides_dir is not None else None
    if not source_dir.is_dir():
        raise PromptError(f"prompt source directory not found: {source_dir}")
    tools = find_tools()
    voice_cache: list[str] = []

    def voice_of() -> str:
        if not voice_cache:
            voice_cache.append(choose_voice(tools["espeak-ng"]))
        return voice_cache[0]

    report = BuildReport(output_dir=output_dir, voice=None)
    planned = _plan(source_dir, overrides, voice_of, report.warnings)
    report.voice = voice_cache[0] if voice_cache else None
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = output_dir / MANIFEST_NAME
    manifest = _load_manifest(manifest_path)

    todo: list[_Job] = []
    for job in planned:
        output = output_dir / f"{job.prompt_id}.wav"
        if not force and _fresh(job, output, manifest):
            report.results.append(PromptResult(job.prompt_id, "unchanged", output))
        else:
            todo.append(job)

    started = time.monotonic()
    bar = _progress(len(todo), progress)
    failures: list[str] = []
    workers = max(1, min(jobs or min(2, os.cpu_count() or 1), len(todo) or 1))
    try:
        # Two workers keep both cores busy: the work is in the espeak-ng and sox processes.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prompt") as pool:
            futures: dict[Future[PromptResult], _Job] = {
                pool.submit(_build_one, job, output_dir / f"{job.prompt_id}.wav", tools,
                            report.voice): job
                for job in todo}
            for future in as_completed(futures):
                job = futures[future]
                try:
                    result = future.result()
                except PromptError as exc:
                    failures.append(str(exc))
                    manifest.pop(job.prompt_id, None)
                else:
                    report.results.append(result)
                    manifest[job.prompt_id] = {"key": job.key, "kind": job.kind}
                    if result.warning:
                        report.warnings.append(result.warning)
                bar.update()
    finally:
        bar.close()

    wanted = {job.prompt_id for job in planned}
    for prompt_id in sorted(set(manifest) - wanted):
        (output_dir / f"{prompt_id}.wav").unlink(missing_ok=True)
        del manifest[prompt_id]
        report.removed.append(prompt_id)
    _save_manifest(manifest_path, manifest)
    report.results.sort(key=lambda r: r.prompt_id)

    for warning in report.warnings:
        log.warning("prompt_warning", detail=warning)
    if failures:
        raise PromptError(f"{len(failures)} prompt(s) failed:\n" + "\n".join(sorted(failures)))
    log.info("prompts_built", voice=report.voice, output=str(output_dir), built=len(report.built),
             unchanged=len(report.unchanged), removed=len(report.removed),
             seconds=round(time.monotonic() - started, 2))
    return report
