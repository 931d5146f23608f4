"""Prompt build with the real espeak-ng and sox: telephony format, audible, incremental,
overrides, and the prompt set the IVR flow needs."""

from __future__ import annotations

import math
import os
import shutil
import struct
import subprocess
import sys
import tomllib
import unicodedata
import wave
from pathlib import Path

import pytest

from callcenter.prompts import (
    MANIFEST_NAME,
    PromptError,
    PromptToolMissing,
    build_prompts,
)
from callcenter.ivr.prompt_ids import prompt_ids, sound_name
from callcenter.settings import PromptSettings

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "ivr_scripts" / "prompts" / "zh"

CASE_STATUSES = ["draft", "submitted", "registered", "rejected", "dispatched", "processing",
                 "feedback", "verified", "closed", "reopened", "merged"]
REQUIRED_IDS = {
    "welcome", "main_menu", "report_kind", "report_component_major", "report_event_major",
    "record_instructions", "record_too_short", "record_saved", "contact_choice",
    "enter_callback_number", "your_number_is", "number_also_by_sms", "repeat_number_hint",
    "thanks_goodbye", "status_enter_number", "status_wrong_check_digit", "status_not_found",
    "status_is", "rate_enter_number", "rate_enter_score", "rate_thanks", "rate_not_closed",
    "rate_not_reporter", "transfer_to_agent", "agents_busy", "after_hours",
    "voicemail_instructions", "voicemail_saved", "invalid_input", "no_input", "goodbye",
    *(f"status_{status}" for status in CASE_STATUSES),
    *(f"digit_{d}" for d in range(10)),
    *(f"cat_component_{n:02d}" for n in range(1, 7)),
    *(f"cat_event_{n:02d}" for n in range(1, 6)),
}
STATUS_WORDS = {
    "draft": "已受理", "submitted": "待立案", "registered": "已立案", "rejected": "不予立案",
    "dispatched": "已派遣", "processing": "处置中", "feedback": "已反馈", "verified": "已核查",
    "closed": "已结案", "reopened": "返工处置中", "merged": "已合并",
}
HANDFUL = ["welcome", "main_menu", "digit_1", "status_closed", "cat_event_05"]


def _tools_required() -> bool:
    """Same policy as the PostgreSQL fixtures: CI must run these, never skip them."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def speech_tools() -> None:
    """espeak-ng and sox, for the tests that synthesise."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        reason = (f"{' and '.join(missing)} not installed (Debian: apt-get install espeak-ng sox; "
                  "scripts/test installs them when run as root)")
        if _tools_required():
            pytest.fail(f"{reason}; CI=true, refusing to skip the prompt tests", pytrace=False)
        pytest.skip(reason)


def read_wav(path: Path) -> tuple[wave._wave_params, float, float]:
    """Parameters, duration in seconds and RMS of a 16-bit PCM WAV (stdlib only)."""
    with wave.open(str(path), "rb") as wav:
        params = wav.getparams()
        data = wav.readframes(params.nframes)
    assert params.sampwidth == 2, f"{path.name}: {8 * params.sampwidth}-bit"
    samples = struct.unpack(f"<{len(data) // 2}h", data)
    rms = math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0
    return params, params.nframes / params.framerate, rms


def assert_telephony_speech(path: Path) -> None:
    params, seconds, rms = read_wav(path)
    fmt = (params.framerate, params.nchannels, params.sampwidth, params.comptype)
    assert fmt == (8000, 1, 2, "NONE"), f"{path.name}: {params}"
    assert seconds > 0.3, f"{path.name}: only {seconds:.2f} s"
    assert rms > 500, f"{path.name}: RMS {rms:.0f}, silent"


def write_wav(path: Path, rate: int, channels: int, seconds: float, freq: float = 440.0) -> None:
    frames = bytearray()
    for i in range(int(rate * seconds)):
        value = int(12000 * math.sin(2 * math.pi * freq * i / rate))
        frames += struct.pack("<h", value) * channels
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(frames))


@pytest.fixture
def source(tmp_path: Path, speech_tools: None) -> Path:
    """A copy of a few real prompt texts."""
    src = tmp_path / "zh"
    src.mkdir()
    for prompt_id in HANDFUL:
        shutil.copy(PROMPTS / f"{prompt_id}.txt", src / f"{prompt_id}.txt")
    return src


def test_builds_8khz_mono_16bit_audible_prompts(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = build_prompts(source, out, progress=False)

    assert report.voice in ("cmn-latn-pinyin", "cmn")
    assert report.ids("synthesised") == sorted(HANDFUL)
    assert report.ids("tone") == ["beep"]
    for prompt_id in HANDFUL:
        assert_telephony_speech(out / f"{prompt_id}.wav")
    params, seconds, rms = read_wav(out / "beep.wav")
    assert (params.framerate, params.nchannels) == (8000, 1) and 0.2 < seconds < 1 and rms > 1000
    # a long menu really is longer than one digit: the whole text was spoken
    assert read_wav(out / "main_menu.wav")[1] > 5 * read_wav(out / "digit_1.wav")[1]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [MANIFEST_NAME, "beep.wav", *(f"{i}.wav" for i in HANDFUL)])


@pytest.mark.usefixtures("speech_tools")
def test_every_prompt_in_the_repository_builds_audibly(tmp_path: Path) -> None:
    report = build_prompts(PROMPTS, tmp_path / "all", overrides_dir=tmp_path / "none",
                           progress=False)
    assert set(report.built) == set(prompt_ids(PROMPTS))
    for prompt_id in report.ids("synthesised"):
        assert_telephony_speech(tmp_path / "all" / f"{prompt_id}.wav")


def test_rebuild_is_incremental(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_prompts(source, out, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")}

    again = build_prompts(source, out, progress=False)
    assert again.built == [] and again.unchanged == sorted([*HANDFUL, "beep"])
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.wav")} == stamps

    (source / "goodbye.txt").write_text("再见。\n", encoding="utf-8")
    (source / "status_closed.txt").write_text("已经结案。\n", encoding="utf-8")
    (source / "cat_event_05.txt").unlink()
    changed = build_prompts(source, out, progress=False)
    assert changed.built == ["goodbye", "status_closed"]
    assert changed.removed == ["cat_event_05"] and not (out / "cat_event_05.wav").exists()
    assert (out / "welcome.wav").stat().st_mtime_ns == stamps["welcome.wav"]

    forced = build_prompts(source, out, force=True, progress=False)
    assert forced.unchanged == [] and len(forced.built) == len(HANDFUL) + 1


def test_a_lost_output_file_is_rebuilt(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_prompts(source, out, progress=False)
    (out / "welcome.wav").unlink()
    assert build_prompts(source, out, progress=False).built == ["welcome"]
    assert_telephony_speech(out / "welcome.wav")


def test_telephony_format_override_is_copied_verbatim(source: Path, tmp_path: Path) -> None:
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    write_wav(recorded / "welcome.wav", 8000, 1, 1.0)
    out = tmp_path / "out"

    report = build_prompts(source, out, overrides_dir=recorded, progress=False)
    assert report.ids("override") == ["welcome"] and report.warnings == []
    assert (out / "welcome.wav").read_bytes() == (recorded / "welcome.wav").read_bytes()
    assert build_prompts(source, out, overrides_dir=recorded, progress=False).built == []

    # a new take replaces it; removing the take brings the synthesised voice back
    write_wav(recorded / "welcome.wav", 8000, 1, 2.0, freq=660.0)
    assert build_prompts(source, out, overrides_dir=recorded, progress=False).built == ["welcome"]
    assert (out / "welcome.wav").read_bytes() == (recorded / "welcome.wav").read_bytes()
    (recorded / "welcome.wav").unlink()
    back = build_prompts(source, out, overrides_dir=recorded, progress=False)
    assert back.ids("synthesised") == ["welcome"]
    assert_telephony_speech(out / "welcome.wav")


def test_cd_quality_stereo_override_is_converted_with_a_warning(source: Path,
                                                                tmp_path: Path) -> None:
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    write_wav(recorded / "digit_1.wav", 44100, 2, 1.5)
    write_wav(recorded / "no_such_prompt.wav", 8000, 1, 0.5)
    out = tmp_path / "out"

    report = build_prompts(source, out, overrides_dir=recorded, progress=False)
    assert report.ids("converted") == ["digit_1"]
    assert any("44100 Hz, 2 channel(s)" in w and "converted" in w for w in report.warnings)
    assert any("no_such_prompt" in w and "ignored" in w for w in report.warnings)
    assert not (out / "no_such_prompt.wav").exists()
    params, seconds, rms = read_wav(out / "digit_1.wav")
    assert (params.framerate, params.nchannels, params.sampwidth) == (8000, 1, 2)
    assert abs(seconds - 1.5) < 0.01 and rms > 5000  # the tone itself, not espeak's 幺


@pytest.mark.usefixtures("speech_tools")
def test_hostile_text_is_spoken_not_executed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("still here")
    pwned = tmp_path / "pwned"
    src = tmp_path / "zh"
    src.mkdir()
    hostile = (f'请注意 "$(rm -rf {victim})" \'; touch {pwned}; echo \' `touch {pwned}`\n'
               f"&& touch {pwned} | cat /etc/passwd > {pwned}\n第二行也要读出来。\n")
    (src / "hostile.txt").write_text(hostile, encoding="utf-8")
    (src / "first_line.txt").write_text('请注意 "$(rm -rf x)"\n', encoding="utf-8")

    report = build_prompts(src, tmp_path / "out", progress=False)

    assert report.ids("synthesised") == ["first_line", "hostile"]
    assert (victim / "keep.txt").read_text() == "still here"
    assert not pwned.exists()
    assert_telephony_speech(tmp_path / "out" / "hostile.wav")
    # the lines after the first were spoken too
    spoken = read_wav(tmp_path / "out" / "hostile.wav")[1]
    assert spoken > read_wav(tmp_path / "out" / "first_line.wav")[1] + 2


@pytest.mark.usefixtures("speech_tools")
def test_bad_source_files_are_refused_by_name(tmp_path: Path) -> None:
    src = tmp_path / "zh"
    src.mkdir()
    (src / "latin1.txt").write_bytes("再见".encode("gb18030"))
    with pytest.raises(PromptError, match=r"latin1\.txt: not valid UTF-8"):
        build_prompts(src, tmp_path / "out", progress=False)
    (src / "latin1.txt").unlink()
    (src / "empty.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(PromptError, match=r"empty\.txt: empty prompt text"):
        build_prompts(src, tmp_path / "out", progress=False)
    (src / "empty.txt").write_text("响铃\x07\n", encoding="utf-8")
    with pytest.raises(PromptError, match=r"U\+0007"):
        build_prompts(src, tmp_path / "out", progress=False)
    (src / "empty.txt").unlink()
    (src / "Welcome.txt").write_text("您好\n", encoding="utf-8")
    with pytest.raises(PromptError, match="lower-case ASCII"):
        build_prompts(src, tmp_path / "out", progress=False)


def test_missing_tools_name_the_debian_packages(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "zh"
    source.mkdir()
    shutil.copy(PROMPTS / "welcome.txt", source / "welcome.txt")
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PromptToolMissing, match="apt-get install espeak-ng sox"):
        build_prompts(source, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_builds_into_the_configured_or_given_directory(source: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLCENTER_")}
    env.update(CALLCENTER_PROMPTS__SOURCE=str(source),
               CALLCENTER_PROMPTS__OVERRIDES=str(tmp_path / "rec"),
               CALLCENTER_PROMPTS__OUTPUT=str(tmp_path / "configured"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "callcenter", "prompts", "build", *args],
                              cwd=ROOT, env=env, text=True, capture_output=True, timeout=120)

    first = cli()
    assert first.returncode == 0, first.stderr
    assert "5 synthesised, 1 tone" in first.stdout and str(tmp_path / "configured") in first.stdout
    assert "prompts 6/6" in first.stderr  # the progress line (stderr is not a terminal here)
    assert_telephony_speech(tmp_path / "configured" / "welcome.wav")
    assert "6 unchanged" in cli("--quiet").stdout
    assert "6 unchanged" not in cli("--force", "--quiet").stdout
    given = cli("--output", str(tmp_path / "given"), "--quiet")
    assert given.returncode == 0 and (tmp_path / "given" / "digit_1.wav").is_file()

    (source / "bad.txt").write_bytes(b"\xff\xfe")
    failed = cli("--quiet")
    assert failed.returncode == 1 and "bad.txt: not valid UTF-8" in failed.stderr


def test_the_flow_has_every_prompt_it_needs() -> None:
    present = {p.stem for p in PROMPTS.glob("*.txt")}
    assert REQUIRED_IDS <= present, f"missing prompts: {sorted(REQUIRED_IDS - present)}"
    assert "beep" in prompt_ids(PROMPTS)


@pytest.mark.parametrize("path", sorted(PROMPTS.glob("*.txt")), ids=lambda p: p.stem)
def test_prompt_text_is_clean_mandarin(path: Path) -> None:
    raw = path.read_bytes()
    text = raw.decode("utf-8")  # strict: raises on anything else
    assert not text.startswith("\ufeff"), "no byte-order mark"
    assert text.endswith("\n") and text.count("\n") == 1, "one line, newline-terminated"
    sentence = text.rstrip("\n")
    assert sentence.strip() == sentence != ""
    controls = [c for c in sentence if unicodedata.category(c).startswith("C")]
    assert not controls, "control characters"
    # The Mandarin voice reads Latin letters as pinyin and Arabic numerals as quantities.
    latin = [c for c in sentence if c.isascii() and c.isalnum()]
    assert not latin, "write numbers and words in Chinese characters"
    assert any("\u4e00" <= c <= "\u9fff" for c in sentence)
    assert len(sentence) <= 80, "hotline prompts are short"


def test_prompt_words_match_the_domain() -> None:
    def text(prompt_id: str) -> str:
        return (PROMPTS / f"{prompt_id}.txt").read_text(encoding="utf-8").strip()

    assert [text(f"digit_{d}") for d in range(10)] == list("零幺二三四五六七八九")
    for status, words in STATUS_WORDS.items():
        assert words in text(f"status_{status}")
    assert "井号键" in text("record_instructions")
    catalogue_file = ROOT / "config" / "catalogue" / "cjt214-2005.toml"
    catalogue = tomllib.loads(catalogue_file.read_text(encoding="utf-8"))
    majors = {(m["kind"], m["code"]): m["name"].removesuffix("类") for m in catalogue["majors"]}
    for (kind, code), name in majors.items():
        assert text(f"cat_{kind}_{code}") == name
        menu = text(f"report_{kind}_major")
        assert f"{name}，请按{'零一二三四五六七八九'[int(code)]}" in menu
    assert len([k for k in majors if k[0] == "component"]) == 6
    assert len([k for k in majors if k[0] == "event"]) == 5


def test_sound_names_are_what_asterisk_plays() -> None:
    default = PromptSettings().asterisk_sounds_dir
    assert sound_name("welcome", default) == "callcenter/zh/welcome"
    assert sound_name("beep", "/srv/prompts/zh") == "/srv/prompts/zh/beep"
