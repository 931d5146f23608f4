"""Sans-I/O FastAGI core: bytes from Asterisk in, events out; commands in, bytes out.

Theory of operation
-------------------
One `AgiConnection` per call, driven by whoever owns the socket:

* `receive_data(data)` appends what Asterisk sent (`b""` means EOF);
* `next_event()` returns the next `AgiRequest`, `AgiResult`, `Hangup` or
  `ConnectionClosed`, or one of the signals `NEED_DATA` / `PAUSED`;
* `send_command(cmd)` returns the exact bytes to write for one command.

States (everything that moves them lives in this module):

    ENV       reading the `agi_*: value` block up to its empty line; no command may be sent
    IDLE      the block is in and nothing is in flight; `send_command` is allowed
    AWAITING  one command sent; its result (for 520, the whole usage block) is incomplete
    CLOSED    Asterisk closed the connection
    ERROR     Asterisk sent something that is not FastAGI; `next_event` re-raises for ever

Asterisk writes a bare `HANGUP` line whenever it notices the hangup: before a result, after
one, and again when the script ends. It becomes a `Hangup` event in IDLE or AWAITING and
never changes the state. In IDLE any other complete line is data nobody asked for:
`next_event` returns `PAUSED` and leaves it buffered (a live server treats that as a
protocol error, a replay sends its next command). Commands are never pipelined: Asterisk
executes the first and leaves the rest in its stdio buffer, so a second `send_command`
while one is in flight raises `AgiLocalProtocolError`.

Every buffer is bounded (`AgiLimits`), so a peer that never ends a line or the env block
costs at most a few tens of KiB and gets an `AgiProtocolError`, never an endless wait.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from urllib.parse import parse_qsl

from callcenter.agi.errors import (
    AgiDeadChannel,
    AgiInvalidCommand,
    AgiLocalProtocolError,
    AgiProtocolError,
    AgiUsageError,
)
from sms.privacy import mask_number

# res_agi reads a command with fgets() into a 2048-byte buffer: a longer line is cut and its
# tail runs as a second command, so the whole line including "\n" must fit in 2047 bytes.
MAX_COMMAND_BYTES: Final = 2047

DTMF_KEYS: Final = frozenset("0123456789*#ABCD")

_ENV_KEY = re.compile(r"agi_[a-z0-9_]{1,64}")
_STATUS_LINE = re.compile(r"(\d{3})(?: (.*))?")
_RESULT_TOKEN = re.compile(r"-?[0-9]+|[0-9A-D*#]*")
_KEY_VALUE = re.compile(r"([a-z][a-z0-9_]*)=([^\s()]*)")
_INTEGER = re.compile(r"-?[0-9]+")
_MAX_EXTRA_FIELDS = 16
_UNKNOWN_VALUES = frozenset({"", "unknown"})
_DIGIT_RUN = re.compile(r"\d{7,}")


class AgiState(enum.Enum):
    """Where the connection is in its life; see the module docstring."""

    ENV = "env"
    IDLE = "idle"
    AWAITING = "awaiting"
    CLOSED = "closed"
    ERROR = "error"


class Signal(enum.Enum):
    """Non-event answers of `next_event`."""

    NEED_DATA = "need-data"
    PAUSED = "paused"


NEED_DATA: Final = Signal.NEED_DATA
"""Nothing complete is buffered: feed more bytes."""
PAUSED: Final = Signal.PAUSED
"""A complete line is waiting but no command is in flight to own it."""


@dataclass(frozen=True)
class AgiLimits:
    """Upper bounds on what a peer can make us buffer; all in bytes or lines."""

    max_line_bytes: int = 8192
    max_env_bytes: int = 64 * 1024
    max_env_lines: int = 256
    max_usage_lines: int = 256
    max_usage_bytes: int = 64 * 1024
    max_unsolicited_bytes: int = 64 * 1024


def _known(value: str | None) -> str | None:
    """Asterisk writes "unknown" for an absent caller ID, DNID or RDNIS."""
    return None if value is None or value in _UNKNOWN_VALUES else value


@dataclass(frozen=True, repr=False)
class AgiRequest:
    """The `agi_*` environment block Asterisk sends first, with typed accessors.

    The repr leaves out caller ID and channel name, which can contain phone numbers.
    """

    headers: Mapping[str, str]

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))

    def __repr__(self) -> str:
        return (
            f"AgiRequest(script={self.script!r}, uniqueid={self.uniqueid!r}, "
            f"headers={len(self.headers)})"
        )

    def get(self, name: str) -> str | None:
        """A header by name, with or without the `agi_` prefix."""
        return self.headers.get(name if name.startswith("agi_") else f"agi_{name}")

    def _text(self, name: str) -> str:
        return self.headers.get(name, "")

    @property
    def network_script(self) -> str:
        """The URL path after the host, query string included (`errors?foo=bar`)."""
        return self._text("agi_network_script")

    @property
    def script(self) -> str:
        """The script path without query string or leading slash: what routes match on."""
        return self.network_script.partition("?")[0].strip("/")

    @property
    def query(self) -> dict[str, str]:
        """Query parameters of the AGI URL; the last one wins on repeats."""
        return dict(parse_qsl(self.network_script.partition("?")[2], keep_blank_values=True))

    @property
    def request_url(self) -> str:
        return self._text("agi_request")

    @property
    def channel(self) -> str:
        return self._text("agi_channel")

    @property
    def channel_type(self) -> str:
        return self._text("agi_type")

    @property
    def language(self) -> str:
        return self._text("agi_language")

    @property
    def uniqueid(self) -> str:
        """Asterisk's unique call id; our logs key every event with it as `call_id`."""
        return self._text("agi_uniqueid")

    @property
    def version(self) -> str:
        return self._text("agi_version")

    @property
    def callerid(self) -> str | None:
        """The caller's number, or None when Asterisk reports it as unknown."""
        return _known(self.headers.get("agi_callerid"))

    @property
    def calleridname(self) -> str | None:
        return _known(self.headers.get("agi_calleridname"))

    @property
    def callingpres(self) -> int | None:
        """Presentation flags (67 = no caller ID available)."""
        value = self.headers.get("agi_callingpres", "")
        return int(value) if _INTEGER.fullmatch(value) else None

    @property
    def dnid(self) -> str | None:
        return _known(self.headers.get("agi_dnid"))

    @property
    def rdnis(self) -> str | None:
        return _known(self.headers.get("agi_rdnis"))

    @property
    def context(self) -> str:
        return self._text("agi_context")

    @property
    def extension(self) -> str:
        return self._text("agi_extension")

    @property
    def priority(self) -> str:
        return self._text("agi_priority")

    @property
    def enhanced(self) -> bool:
        """True for EAGI (audio on fd 3), which FastAGI never is."""
        return self._text("agi_enhanced") not in ("", "0", "0.0")

    @property
    def accountcode(self) -> str:
        return self._text("agi_accountcode")

    @property
    def threadid(self) -> str:
        return self._text("agi_threadid")

    @property
    def args(self) -> tuple[str, ...]:
        """The extra AGI() arguments, `agi_arg_1` first."""
        numbered = []
        for key, value in self.headers.items():
            suffix = key.removeprefix("agi_arg_")
            if suffix != key and suffix.isdigit():
                numbered.append((int(suffix), value))
        return tuple(value for _, value in sorted(numbered))


@dataclass(frozen=True)
class AgiResult:
    """One complete response to one command.

    `result` is the text after `result=` (200 only); `data` is the parenthesised part of a
    200 line (`timeout`, `dtmf`, `hangup`, a variable's value) or, for 510/511/520, the
    status text; `extra` holds trailing `key=value` fields such as `endpos`; `usage` is the
    usage text of a 520 block; `raw` is the line (or block) as received, without "\\n".

        200 result=57 endpos=8480          -> result "57", extra {"endpos": "8480"}, digit "9"
        200 result= (timeout)              -> result "", data "timeout"
        200 result=-1 (hangup) endpos=11360
        200 result=1 (Local/dtmf@caller-00000003;1)
        511 Command Not Permitted on a dead channel or intercept routine
    """

    code: int
    result: str | None = None
    data: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)
    raw: str = ""
    usage: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == 200

    @property
    def number(self) -> int | None:
        """`result` as an int, when it is one (`"-1"`, `"57"`; not `"*0"` or `""`)."""
        if self.result is not None and _INTEGER.fullmatch(self.result):
            return int(self.result)
        return None

    @property
    def failed(self) -> bool:
        """`result=-1`: the channel hung up during the command, or the command failed."""
        return self.result == "-1"

    @property
    def digit(self) -> str | None:
        """The key of an ASCII-code result (WAIT FOR DIGIT, STREAM FILE, RECORD FILE)."""
        number = self.number
        if number is None or not 0 < number < 128:
            return None
        key = chr(number)
        return key if key in DTMF_KEYS else None

    @property
    def digits(self) -> str | None:
        """The keys GET DATA collected (`""` for none); None when it failed or hung up."""
        if self.code != 200 or self.result is None or self.failed:
            return None
        return self.result

    @property
    def timed_out(self) -> bool:
        return self.data == "timeout"

    @property
    def endpos(self) -> int | None:
        value = self.extra.get("endpos")
        return int(value) if value is not None and _INTEGER.fullmatch(value) else None


@dataclass(frozen=True)
class Hangup:
    """Asterisk's unprompted `HANGUP` line: the channel is gone (or the script ended)."""


@dataclass(frozen=True)
class ConnectionClosed:
    """Asterisk closed the connection; `unparsed` is an unterminated last line, if any."""

    unparsed: bytes = b""


Event = AgiRequest | AgiResult | Hangup | ConnectionClosed


def raise_for_status(result: AgiResult) -> AgiResult:
    """Turn 510/511/520 into their exceptions; return any 200 result unchanged."""
    if result.code == 510:
        raise AgiInvalidCommand(result.data or "invalid or unknown command", result)
    if result.code == 511:
        raise AgiDeadChannel(result.data or "command not permitted on a dead channel", result)
    if result.code == 520:
        raise AgiUsageError("invalid command syntax", result, usage=result.usage or "")
    return result


def _shorten(text: str, limit: int = 80) -> str:
    """A peer's line for an error message: cut short, digit runs masked as phone numbers."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return repr(_DIGIT_RUN.sub(lambda match: mask_number(match[0]), text))


def _split_data_and_extra(line: str, rest: str) -> tuple[str | None, dict[str, str]]:
    """Split `(data) k=v k=v` from the right, so a value may itself contain `)` or spaces."""
    fields: list[tuple[str, str]] = []
    head = rest
    while head:
        cut = head.rfind(" ")
        match = _KEY_VALUE.fullmatch(head[cut + 1 :])
        if match is None:
            break
        fields.append((match[1], match[2]))
        if len(fields) > _MAX_EXTRA_FIELDS:
            raise AgiProtocolError(f"too many key=value fields in result line {_shorten(line)}")
        head = head[:cut] if cut >= 0 else ""
    if not head:
        data = None
    elif head.startswith("(") and head.endswith(")"):
        data = head[1:-1]
    else:
        raise AgiProtocolError(f"unparseable text after the result in {_shorten(line)}")
    return data, dict(reversed(fields))


def parse_result_line(line: str) -> AgiResult | None:
    """Parse one single-line response; None for a provisional `100 ...` line.

    A multi-line 520 block is assembled by `AgiConnection`, not here.
    """
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise AgiProtocolError(f"not an AGI response line: {_shorten(line)}")
    code, text = int(match[1]), match[2] or ""
    if code == 100:
        return None
    if code in (510, 511, 520):
        return AgiResult(code=code, data=text, raw=line, usage="" if code == 520 else None)
    if code != 200:
        raise AgiProtocolError(f"unexpected response code {code} in {_shorten(line)}")
    if not text.startswith("result="):
        raise AgiProtocolError(f"200 response without result=: {_shorten(line)}")
    token, _, rest = text[len("result=") :].partition(" ")
    if not _RESULT_TOKEN.fullmatch(token):
        raise AgiProtocolError(f"unexpected result value in {_shorten(line)}")
    data, extra = _split_data_and_extra(line, rest)
    return AgiResult(code=200, result=token, data=data, extra=extra, raw=line)


def encode_command(command: str | bytes) -> bytes:
    """Validate one command line and return it as bytes ending in a bare "\\n".

    Refused: an empty line; CR, LF, NUL or other control characters (a CR becomes part
    of the last argument, a LF starts a second command); bytes that are not UTF-8; a line
    longer than Asterisk's command buffer, whose tail would run as another command.
    """
    if isinstance(command, bytes):
        try:
            text = command.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AgiLocalProtocolError(f"command is not valid UTF-8: {exc}") from exc
    else:
        text = command
    if not text.strip():
        raise AgiLocalProtocolError("empty command")
    bad = next((ch for ch in text if (ch < " " and ch != "\t") or ch == "\x7f"), None)
    if bad is not None:
        raise AgiLocalProtocolError(
            f"control character {bad!r} in command {_shorten(text, 40)}: "
            "one line per command, no CR (Asterisk keeps it) and no LF (it starts another command)"
        )
    try:
        data = text.encode("utf-8") + b"\n"
    except UnicodeEncodeError as exc:
        raise AgiLocalProtocolError(f"command cannot be encoded as UTF-8: {exc}") from exc
    if len(data) > MAX_COMMAND_BYTES:
        raise AgiLocalProtocolError(
            f"command is {len(data)} bytes; Asterisk reads at most {MAX_COMMAND_BYTES} per line "
            "and would run the rest as a second command"
        )
    return data


class AgiConnection:
    """The protocol state of one FastAGI call, seen from the server; does no I/O."""

    def __init__(self, limits: AgiLimits | None = None) -> None:
        self.limits = limits or AgiLimits()
        self._state = AgiState.ENV
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already known to hold no "\n"
        self._eof = False
        self._error: AgiProtocolError | None = None
        self._env: dict[str, str] = {}
        self._env_bytes = 0
        self._request: AgiRequest | None = None
        self._pending: str | None = None
        self._usage: list[str] | None = None  # lines of a 520 block being read
        self._usage_bytes = 0
        self._closed_event: ConnectionClosed | None = None
        self.hangup_seen = False
        self.dead = False

    @property
    def state(self) -> AgiState:
        return self._state

    @property
    def request(self) -> AgiRequest | None:
        """The environment block, once it is complete."""
        return self._request

    @property
    def buffered(self) -> int:
        """Bytes received and not yet turned into events."""
        return len(self._buffer)

    @property
    def pending_command(self) -> str | None:
        """The command whose result is still awaited."""
        return self._pending

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from Asterisk; `b""` marks the end of the stream."""
        if self._eof:
            raise AgiLocalProtocolError("data received after end of stream")
        if data:
            if self._error is None:  # after a protocol error nothing is read any more
                self._buffer += data
        else:
            self._eof = True

    def send_command(self, command: str | bytes) -> bytes:
        """Put one command in flight and return its bytes; see `encode_command`."""
        if self._state is not AgiState.IDLE:
            reasons = {
                AgiState.ENV: "the environment block has not been received yet",
                AgiState.AWAITING: "a command is still in flight "
                f"({_shorten(self._pending or '')}); "
                "Asterisk runs one at a time and stalls on pipelined commands",
                AgiState.CLOSED: "the connection is closed",
                AgiState.ERROR: "the connection failed with a protocol error",
            }
            raise AgiLocalProtocolError(f"cannot send a command: {reasons[self._state]}")
        data = encode_command(command)
        self._pending = data[:-1].decode("utf-8")
        self._state = AgiState.AWAITING
        return data

    def next_event(self) -> Event | Signal:
        """The next event, `NEED_DATA` or `PAUSED`; raises `AgiProtocolError` on garbage.

        Once closed it returns the same `ConnectionClosed` on every call.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_event()
        except AgiProtocolError as exc:
            self._state = AgiState.ERROR
            self._error = exc
            self._buffer.clear()
            raise

    def _next_event(self) -> Event | Signal:
        while True:
            if self._closed_event is not None:
                return self._closed_event
            line = self._take_line()
            if line is None:
                if not self._eof:
                    return NEED_DATA
                self._close()
                continue
            if self._state is AgiState.ENV:
                size = self._scanned + 1
                self._consume_line()
                request = self._env_line(line, size)
                if request is not None:
                    return request
                continue
            if self._usage is None and line == "HANGUP":
                self._consume_line()
                self.hangup_seen = True
                self.dead = True
                return Hangup()
            if self._state is AgiState.IDLE:
                if self._eof:  # nobody can ask for this line any more
                    self._close()
                    continue
                if len(self._buffer) > self.limits.max_unsolicited_bytes:
                    raise AgiProtocolError(
                        f"{len(self._buffer)} bytes arrived with no command in flight"
                    )
                return PAUSED
            self._consume_line()
            result = self._response_line(line)
            if result is not None:
                self._state = AgiState.IDLE
                self._pending = None
                if result.code == 511:
                    self.dead = True
                return result

    def _close(self) -> None:
        self._state = AgiState.CLOSED
        self._closed_event = ConnectionClosed(unparsed=bytes(self._buffer))
        self._buffer.clear()

    def _take_line(self) -> str | None:
        """Peek at the next complete line (without "\\n" and a "\\r" before it)."""
        end = self._buffer.find(b"\n", self._scanned)
        limit = self.limits.max_line_bytes
        if end < 0:
            self._scanned = len(self._buffer)
            if len(self._buffer) > limit:
                raise AgiProtocolError(f"line longer than {limit} bytes without a newline")
            return None
        if end > limit:
            raise AgiProtocolError(f"line of {end} bytes is longer than {limit}")
        self._scanned = end
        raw = bytes(self._buffer[:end])
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        return raw.decode("utf-8", errors="replace")

    def _consume_line(self) -> None:
        del self._buffer[: self._scanned + 1]
        self._scanned = 0

    def _env_line(self, line: str, size: int) -> AgiRequest | None:
        if not line:
            if not self._env:
                raise AgiProtocolError("empty environment block")
            self._request = AgiRequest(self._env)
            self._state = AgiState.IDLE
            return self._request
        self._env_bytes += size
        if len(self._env) >= self.limits.max_env_lines:
            raise AgiProtocolError(
                f"environment block has more than {self.limits.max_env_lines} lines"
            )
        if self._env_bytes > self.limits.max_env_bytes:
            raise AgiProtocolError(
                f"environment block is larger than {self.limits.max_env_bytes} bytes"
            )
        key, colon, value = line.partition(":")
        if not colon or not _ENV_KEY.fullmatch(key):
            raise AgiProtocolError(f"not an agi_* environment line: {_shorten(line)}")
        if key in self._env:
            raise AgiProtocolError(f"duplicate environment key {key!r}")
        self._env[key] = value.removeprefix(" ")
        return None

    def _response_line(self, line: str) -> AgiResult | None:
        if self._usage is not None:
            return self._usage_line(line)
        if line.startswith("520-"):
            self._usage = [line]
            self._usage_bytes = len(line)
            return None
        return parse_result_line(line)

    def _usage_line(self, line: str) -> AgiResult | None:
        assert self._usage is not None
        self._usage.append(line)
        self._usage_bytes += len(line) + 1
        if len(self._usage) > self.limits.max_usage_lines + 2:
            raise AgiProtocolError(
                f"520 usage text has more than {self.limits.max_usage_lines} lines"
            )
        if self._usage_bytes > self.limits.max_usage_bytes:
            raise AgiProtocolError(
                f"520 usage text is larger than {self.limits.max_usage_bytes} bytes"
            )
        if not line.startswith("520 "):
            return None
        block, self._usage = self._usage, None
        return AgiResult(
            code=520,
            data=block[0][len("520-") :],
            raw="\n".join(block),
            usage="\n".join(block[1:-1]),
        )
