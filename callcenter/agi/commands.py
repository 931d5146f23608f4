"""Typed builders for the AGI commands the IVR sends; each returns one command line.

Quoting. res_agi splits a command line on spaces and tabs; a double quote opens or closes
a quoted run and a backslash makes the next character literal, inside quotes or not. So
every string value goes out as `"..."` with `\\` and `"` backslash-escaped, and comes back
as exactly one argument whatever it contains: spaces, quotes, backslashes, UTF-8.
Numbers are formatted by us and go out bare, as do fixed keywords (`BEEP`, `s=4`).

Control characters. A line feed would end the command and start a second one, a carriage
return stays glued to the argument, a NUL truncates it. Quoting cannot neutralise any of
them, so a value with a C0 control character (tab excepted) or DEL is rejected with
`AgiArgumentError` rather than silently altered: the value is either hostile or a bug, and
a changed value stored in a channel variable is worse than a visible error. The one
exception is `verbose()`, whose free-text log message gets control characters replaced
by spaces, because a log line is better slightly altered than lost.

Length. Asterisk reads at most 2047 bytes per command line and runs the rest as another
command, so a builder refuses to produce a longer line.
"""

from __future__ import annotations

import re

from callcenter.agi.errors import AgiArgumentError
from callcenter.agi.protocol import DTMF_KEYS, MAX_COMMAND_BYTES

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_APP_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# Characters Asterisk's application-argument parser gives a meaning to (separators,
# quoting, nesting): refused in EXEC arguments instead of being escaped a second time.
_APP_ARG_SPECIAL = frozenset(',|"\\()[]')
_SAY_DIGITS = frozenset("0123456789*#")
_VERBOSE_MAX_CHARS = 1000


def quote(value: str | int) -> str:
    """One argument, double-quoted and escaped so res_agi reads back exactly `value`."""
    text = str(value)
    bad = _CONTROL.search(text)
    if bad is not None:
        raise AgiArgumentError(
            f"control character {bad.group()!r} cannot be sent in an AGI argument"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise AgiArgumentError(f"value is not encodable as UTF-8: {exc}") from exc
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _line(*parts: str) -> str:
    line = " ".join(parts)
    size = len(line.encode("utf-8")) + 1
    if size > MAX_COMMAND_BYTES:
        raise AgiArgumentError(
            f"command would be {size} bytes; Asterisk reads at most {MAX_COMMAND_BYTES} per line"
        )
    return line


def _number(value: int, name: str, minimum: int = 0) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise AgiArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise AgiArgumentError(f"{name} must be >= {minimum}, got {value}")
    return str(value)


def _keys(keys: str, name: str = "escape digits") -> str:
    unknown = set(keys) - DTMF_KEYS
    if unknown:
        raise AgiArgumentError(
            f"{name} may only contain 0-9 * # A-D, got {''.join(sorted(unknown))!r}"
        )
    return quote(keys)


def _name(value: str, what: str) -> str:
    if not value:
        raise AgiArgumentError(f"{what} must not be empty")
    return quote(value)


def answer() -> str:
    """Answer the channel: `200 result=0`, or `result=-1` if the caller already hung up."""
    return "ANSWER"


def hangup() -> str:
    """Hang up our channel; Asterisk then sends a `HANGUP` line."""
    return "HANGUP"


def noop() -> str:
    return "NOOP"


def channel_status() -> str:
    """`200 result=6` while the channel is up; 511 once it is dead."""
    return "CHANNEL STATUS"


def stream_file(filename: str, escape_digits: str = "", offset_samples: int | None = None) -> str:
    """Play a prompt; a key in `escape_digits` stops it and comes back as its ASCII code."""
    parts = ["STREAM FILE", _name(filename, "file name"), _keys(escape_digits)]
    if offset_samples is not None:
        parts.append(_number(offset_samples, "offset_samples"))
    return _line(*parts)


def control_stream_file(
    filename: str,
    escape_digits: str = "",
    skip_ms: int | None = None,
    forward_key: str | None = None,
    rewind_key: str | None = None,
    pause_key: str | None = None,
) -> str:
    """Play a prompt the caller can skip through; later options need the earlier ones,
    so Asterisk's defaults (3000 ms, `#`, `*`, none) fill the gaps."""
    parts = ["CONTROL STREAM FILE", _name(filename, "file name"), _keys(escape_digits)]
    keys = [forward_key, rewind_key, pause_key]
    last_key = max((i for i, key in enumerate(keys) if key is not None), default=-1)
    if skip_ms is not None or last_key >= 0:
        parts.append(_number(3000 if skip_ms is None else skip_ms, "skip_ms"))
    for key, default in zip(keys[: last_key + 1], ("#", "*", "")):
        parts.append(_keys(default if key is None else key, "control keys"))
    return _line(*parts)


def get_data(filename: str, timeout_ms: int | None = None, max_digits: int | None = None) -> str:
    """Play a prompt and collect keys until `#`, `max_digits` or the timeout.

    `max_digits` needs a timeout before it; without one, 0 asks for Asterisk's default.
    """
    parts = ["GET DATA", _name(filename, "file name")]
    if timeout_ms is not None or max_digits is not None:
        parts.append(_number(timeout_ms if timeout_ms is not None else 0, "timeout_ms"))
    if max_digits is not None:
        parts.append(_number(max_digits, "max_digits", minimum=1))
    return _line(*parts)


def wait_for_digit(timeout_ms: int) -> str:
    """Wait for one key (ASCII code in the result, 0 on timeout); -1 waits for ever."""
    return _line("WAIT FOR DIGIT", _number(timeout_ms, "timeout_ms", minimum=-1))


def say_digits(digits: str, escape_digits: str = "") -> str:
    """Read a digit string out, e.g. a case number."""
    if not digits or set(digits) - _SAY_DIGITS:
        raise AgiArgumentError("say_digits takes a non-empty string of 0-9 * #")
    return _line("SAY DIGITS", quote(digits), _keys(escape_digits))


def say_number(number: int, escape_digits: str = "") -> str:
    return _line("SAY NUMBER", _number(number, "number", minimum=-(2**31)), _keys(escape_digits))


def say_alpha(text: str, escape_digits: str = "") -> str:
    """Spell a string out character by character."""
    return _line("SAY ALPHA", _name(text, "text"), _keys(escape_digits))


def record_file(
    filename: str,
    file_format: str = "wav",
    escape_digits: str = "#",
    timeout_ms: int = -1,
    *,
    offset_samples: int | None = None,
    beep: bool = False,
    silence_s: int | None = None,
) -> str:
    """Record the caller until a key in `escape_digits`, `timeout_ms` (-1: none) or
    `silence_s` seconds of silence. BEEP and s= must follow an offset, so 0 is sent for it.

    Results: `200 result=35 (dtmf) endpos=9760`, `200 result=0 (timeout) endpos=57600`,
    `200 result=-1 (hangup) endpos=11360`.
    """
    parts = [
        "RECORD FILE",
        _name(filename, "file name"),
        _name(file_format, "file format"),
        _keys(escape_digits),
        _number(timeout_ms, "timeout_ms", minimum=-1),
    ]
    if offset_samples is not None or beep or silence_s is not None:
        parts.append(_number(offset_samples or 0, "offset_samples"))
    if beep:
        parts.append("BEEP")
    if silence_s is not None:
        parts.append("s=" + _number(silence_s, "silence_s", minimum=1))
    return _line(*parts)


def set_variable(name: str, value: str | int) -> str:
    """Set a channel variable (works on a dead channel too)."""
    return _line("SET VARIABLE", _name(name, "variable name"), quote(value))


def get_variable(name: str) -> str:
    """`200 result=1 (value)`, or `200 result=0` when unset."""
    return _line("GET VARIABLE", _name(name, "variable name"))


def get_full_variable(expression: str, channel: str | None = None) -> str:
    """Evaluate a dialplan expression such as `${CHANNEL}`.

    Asterisk evaluates functions in it, so it must never contain caller-supplied text.
    """
    parts = ["GET FULL VARIABLE", _name(expression, "expression")]
    if channel is not None:
        parts.append(_name(channel, "channel"))
    return _line(*parts)


def exec_application(application: str, *args: str | int) -> str:
    """Run a dialplan application (`Queue`, `Dial`, `Playback`) with comma-joined args.

    `200 result=-2` means no such application. Arguments may not contain `, | " \\ ( ) [ ]`:
    the application's own parser would split or unquote them a second time.
    """
    if not _APP_NAME.fullmatch(application):
        raise AgiArgumentError(f"not an application name: {application!r}")
    texts = [str(arg) for arg in args]
    for text in texts:
        special = _APP_ARG_SPECIAL.intersection(text)
        if special:
            raise AgiArgumentError(
                f"application argument contains {''.join(sorted(special))!r}, "
                "which the application would parse again"
            )
    parts = ["EXEC", application]
    if texts:
        parts.append(quote(",".join(texts)))
    return _line(*parts)


def queue(name: str, options: str = "", timeout_s: int | None = None) -> str:
    """Hand the call to an ACD queue of operators: `Queue(name,options,,,timeout)`."""
    args: list[str | int] = [name, options]
    if timeout_s is not None:
        args += ["", "", _number(timeout_s, "timeout_s")]
    while args and args[-1] == "":
        args.pop()
    return exec_application("Queue", *args)


def dial(target: str, timeout_s: int | None = None, options: str = "") -> str:
    """Transfer to another endpoint: `Dial(target,timeout,options)`."""
    args: list[str | int] = [target]
    if timeout_s is not None or options:
        args.append(_number(timeout_s, "timeout_s") if timeout_s is not None else "")
    if options:
        args.append(options)
    return exec_application("Dial", *args)


def verbose(message: str, level: int = 1) -> str:
    """Log a message in Asterisk's verbose log; control characters become spaces and
    the message is cut to 1000 characters."""
    if level not in (1, 2, 3, 4):
        raise AgiArgumentError(f"verbose level must be 1-4, got {level!r}")
    clean = _CONTROL.sub(" ", message)[:_VERBOSE_MAX_CHARS]
    clean = clean.encode("utf-8", errors="replace").decode("utf-8")
    return _line("VERBOSE", quote(clean), str(level))


def set_music(on: bool, music_class: str | None = None) -> str:
    """Start or stop music on hold, e.g. while a case is being created."""
    parts = ["SET MUSIC", "on" if on else "off"]
    if music_class is not None:
        parts.append(_name(music_class, "music class"))
    return _line(*parts)
