"""Prompt ids and the sound names Asterisk plays them by: what the flows, the executor and
the dialplan need to know about prompts, apart from how the WAV files are made
(`callcenter/prompts.py`, espeak-ng and sox).

A prompt id is the stem of `ivr_scripts/prompts/zh/<id>.txt`, or a tone the builder makes
without text (TONE_IDS). Asterisk plays it as `callcenter/zh/<id>`.
"""

from __future__ import annotations

import re
from pathlib import Path

# Prompts that are tones, not speech (built with sox). `beep` precedes every recording:
# RECORD FILE's own BEEP needs Asterisk's core sounds, which slim images leave out.
TONE_IDS: tuple[str, ...] = ("beep",)
PROMPT_ID = re.compile(r"[a-z][a-z0-9_]*")
SOUNDS_ROOT = "/var/lib/asterisk/sounds"


def prompt_ids(source_dir: Path | str) -> list[str]:
    """Every prompt id the source directory defines, plus the tones."""
    return sorted({p.stem for p in Path(source_dir).glob("*.txt")} | set(TONE_IDS))


def sound_name(prompt_id: str, asterisk_sounds_dir: str, sounds_root: str = SOUNDS_ROOT) -> str:
    """The name Asterisk's Playback/STREAM FILE take for a prompt: relative, no extension.

    `/var/lib/asterisk/sounds/callcenter/zh` + `welcome` -> `callcenter/zh/welcome`; a
    directory outside Asterisk's sounds root is addressed by its absolute path.
    """
    base = Path(asterisk_sounds_dir)
    try:
        relative = base.relative_to(sounds_root)
    except ValueError:
        return str(base / prompt_id)
    return str(relative / prompt_id)
