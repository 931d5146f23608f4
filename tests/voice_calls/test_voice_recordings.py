"""Recordings: two mounts of one volume, a missing or header-only file flagged on the draft,
and the category a phone report carries."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from callcenter.cases.catalogue import CaseKind, Catalogue
from callcenter.cases.model import CaseFlag
from callcenter.console.serialise import resolve_recording
from callcenter.voice.actions import phone_report_text, voicemail_text
from callcenter.voice.recordings import RecordingState, RecordingStore, Speech, measure_speech
from tests.voice_calls.conftest import ASTERISK_DIR, Voice, number_heard, sounds, write_wav

session_loop = pytest.mark.asyncio(loop_scope="session")


@session_loop
async def test_unshared_recording_is_flagged_on_the_draft_not_a_crash(
        voice: Voice, no_tracebacks: Any) -> None:
    # the service cannot see the file: judged by the take's length, filed, flagged for staff
    transcript = await voice.call(voice.peer("hotline", "121.#1", audio="none"))
    (draft,) = await voice.drafts()
    assert set(draft.flags) == {CaseFlag.NEEDS_TRANSCRIPTION.value, CaseFlag.RECORDING_MISSING.value}
    assert draft.recording_ref  # kept: staff see what was expected, ops can look for it
    assert number_heard(transcript) == draft.number  # the caller is served all the same
    assert len(await voice.outbox(draft.id)) == 1
    snapshot = {m["name"]: m for m in (await voice.services.metrics.snapshot())["metrics"]}
    assert snapshot["voice_recordings_total"]["samples"] == [
        {"labels": {"kind": "report", "state": "missing"}, "value": 1.0}]


@session_loop
@pytest.mark.parametrize("audio", ["header", "silence"])
async def test_a_take_without_speech_is_a_silent_try_and_three_reach_a_person(
        voice: Voice, audio: str, no_tracebacks: Any) -> None:
    # header: no audio reached Asterisk; silence: what a real Asterisk leaves of a silent
    # caller (about 1 s of digital silence, endpos=8000) -- long enough by length alone
    transcript = await voice.call(voice.peer("hotline", "121", audio=audio))
    assert await voice.drafts() == []
    heard = sounds(transcript)
    assert heard.count("record_too_short") == 2 and heard.count("beep") == 3
    assert heard[-1] == "transfer_to_agent"
    assert transcript.variables["CALLCENTER_NEXT"] == "agent"


@session_loop
async def test_a_missing_recording_folder_fails_each_take_at_once_then_a_person(
        voice: Voice, agi_logs: list[dict[str, Any]]) -> None:
    # what a real Asterisk does when its recording folder is absent (start-up checks say so)
    transcript = await voice.call(voice.peer("hotline", "121.#1", folder_missing=True))
    assert await voice.drafts() == []
    assert len(transcript.recordings) == 3
    assert sounds(transcript)[-1] == "transfer_to_agent"
    assert [e["reason"] for e in agi_logs if e.get("event") == "voice.record_failed"] == ["writefile"] * 3


def test_speech_is_found_in_the_audio_not_in_its_length(tmp_path: Path) -> None:
    rate = 8000
    silent = tmp_path / "silent.wav"
    write_wav(silent, 0, seconds_of_silence=1.0)
    noise = tmp_path / "noise.wav"
    write_wav(noise, 0, seconds_of_silence=2.0, noise_dbfs=-60)
    spoken = tmp_path / "spoken.wav"
    write_wav(spoken, rate * 2)
    assert measure_speech(silent) == Speech(duration_ms=1000, speech_ms=0)
    assert measure_speech(noise).speech_ms == 0 and measure_speech(noise).duration_ms == 2000
    assert measure_speech(spoken).speech_ms == 2000
    assert measure_speech(noise, threshold_dbfs=-70).speech_ms == 2000  # the threshold decides


@session_loop
async def test_asterisk_and_service_see_the_volume_at_different_paths(voice: Voice) -> None:
    assert not str(voice.recordings).startswith(ASTERISK_DIR)
    transcript = await voice.call(voice.peer("voicemail", ".#"))
    (draft,) = await voice.drafts()
    record = next(argv for argv in transcript.argvs if argv[:2] == ["RECORD", "FILE"])
    assert record[2].startswith(ASTERISK_DIR + "/") and "/" not in draft.recording_ref
    # the console plays it from its own setting, the service's mount
    root = voice.services.settings.path(voice.services.settings.console.recordings_dir)
    assert resolve_recording(root, draft.recording_ref) == (voice.recordings / draft.recording_ref).resolve()


def test_check_never_raises(tmp_path: Path) -> None:
    store = RecordingStore(ASTERISK_DIR, tmp_path)
    write_wav(tmp_path / "speech.wav", 8000)
    write_wav(tmp_path / "header.wav", 0)
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00")
    (tmp_path / "text.wav").write_text("not audio at all", encoding="utf-8")
    (tmp_path / "dir.wav").mkdir()
    assert store.check("speech.wav").state is RecordingState.OK
    assert store.check("speech.wav").duration_ms == 1000
    assert (tmp_path / "header.wav").stat().st_size == 44
    for ref, state in [("header.wav", RecordingState.EMPTY), ("garbage.wav", RecordingState.EMPTY),
                       ("text.wav", RecordingState.EMPTY), ("nothing.wav", RecordingState.MISSING),
                       ("dir.wav", RecordingState.MISSING), ("../etc/passwd", RecordingState.MISSING),
                       ("/etc/passwd", RecordingState.MISSING), ("", RecordingState.MISSING),
                       (None, RecordingState.MISSING), ("a\x00b.wav", RecordingState.MISSING)]:
        assert store.check(ref).state is state, ref


def test_recording_names_are_flat_safe_and_unique(tmp_path: Path) -> None:
    store = RecordingStore(ASTERISK_DIR + "/", tmp_path)
    hostile = '1.2" HANGUP\n../../x' + "9" * 200
    now = dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)
    first, second = store.new_target("report", hostile, now), store.new_target("report", hostile, now)
    assert first.ref != second.ref
    for target in (first, second):
        assert target.asterisk_path == f"{ASTERISK_DIR}/{target.ref.removesuffix('.wav')}"
        assert target.ref.startswith("report-20261124T093000-1.2__HANGUP_.._.._x")
        assert set(target.ref) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        assert len(target.ref) < 100 and store.service_path(target.ref) == tmp_path / target.ref
    assert store.new_target("../evil", "1").ref.startswith("recording-")


def test_phone_menu_choice_becomes_a_suggested_category_for_every_major() -> None:
    """The decision of docs/voice.md: kind + major in the text, the major's 其他 row (XX99)
    suggested where the catalogue has one, nothing suggested otherwise, never a wrong row."""
    catalogue = Catalogue.default()
    seen_with_row = 0
    for kind in CaseKind:
        for major in catalogue.majors(kind):
            text, expected = phone_report_text(catalogue, kind.value, str(int(major.code)), 12)
            assert f"{kind.label_zh}{kind.prefix}{major.code}大类" in text and "录音12秒" in text
            others = [c for c in catalogue.minors(kind, major.code) if c.code.minor == "99"]
            assert expected == (str(others[0].code) if others else None)
            suggested = catalogue.suggest(text)
            assert [str(c.code) for c, _ in suggested[:1]] == ([expected] if expected else [])
            assert all(c.code.kind is kind and c.major_code == major.code for c, _ in suggested)
            seen_with_row += bool(others)
    assert seen_with_row >= 1
    for kind, major in [(None, None), ("component", "9"), ("bogus", "1"), ("event", "x")]:
        text, expected = phone_report_text(catalogue, kind, major, 0)
        assert expected is None and catalogue.suggest(text) == [] and text.startswith("电话报告")
    assert catalogue.suggest(voicemail_text(30, "261124000012")) == []
