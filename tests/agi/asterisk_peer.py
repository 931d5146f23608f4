"""A scripted Asterisk for FastAGI tests, and the reference transcripts it imitates.

`ScriptedAsterisk` connects to a FastAGI server the way res_agi does, sends the `agi_*`
environment block, then answers each command line: from a script you give it, or else
by simulating a channel (a caller who presses `dtmf` keys, channel variables, a hangup
after N commands, a dead channel that answers 511). It is written on plain asyncio
streams, independent of the server under test, and returns a `CallTranscript` of what
the server sent. Response formats follow the captured Asterisk 22 transcripts in
`../shared/reference/asterisk-agi/`; their byte lines live in `tests/agi/reference/
agi-sessions.txt`, which `load_reference_sessions()` reads, so a plain clone runs them.

    peer = ScriptedAsterisk(script="hotline", dtmf="12#5", hangup_after=6)
    transcript = await peer.run("127.0.0.1", port)
    assert transcript.argvs[0] == ["ANSWER"]

Whole-call tests use `AgiServerHarness` (the `agi_server` fixture): `start(routes)` serves
on 127.0.0.1 port 0 and `await call(peer)` plays one call and waits for its handler.

DTMF model: `dtmf` is the sequence of keys the caller presses, in order; a `,` is a
pause long enough for any timeout; a `.` is the caller waiting for the beep (prompts
before a recording take barge-in, so without it the `#` meant to end the recording would
skip the instructions instead). GET DATA takes keys up to `#`, a pause or its max;
WAIT FOR DIGIT takes one; STREAM FILE, SAY and RECORD FILE take the next key only if it
is one of their escape digits (otherwise the caller is waiting for the prompt to end).
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort

from callcenter.agi.protocol import AgiLimits
from callcenter.agi.server import AgiHandler, AgiServerFactory, start_agi_server

# --------------------------------------------------------------------------------------
# Facts about res_agi (Asterisk 22), from agi-show-commands.txt and the transcripts.
# --------------------------------------------------------------------------------------

KNOWN_COMMANDS: Final = (
    "answer", "asyncagi break", "channel status", "database del", "database deltree",
    "database get", "database put", "exec", "get data", "get full variable", "get option",
    "get variable", "hangup", "noop", "receive char", "receive text", "record file",
    "say alpha", "say digits", "say number", "say phonetic", "say date", "say time",
    "say datetime", "send image", "send text", "set autohangup", "set callerid",
    "set context", "set extension", "set music", "set priority", "set variable",
    "stream file", "control stream file", "tdd mode", "verbose", "wait for digit",
    "speech create", "speech set", "speech destroy", "speech load grammar",
    "speech unload grammar", "speech activate grammar", "speech deactivate grammar",
    "speech recognize", "gosub",
)  # fmt: skip
ALLOWED_ON_DEAD_CHANNEL: Final = frozenset({
    "asyncagi break", "database del", "database deltree", "database get", "database put",
    "exec", "get full variable", "get variable", "noop", "set variable", "verbose",
    "speech destroy", "speech unload grammar",
})  # fmt: skip
# Fewest argv entries (command words included) before Asterisk answers 520.
MIN_ARGC: Final = {
    "control stream file": 5, "database get": 4, "database put": 5, "exec": 2, "get data": 3,
    "get full variable": 4, "get variable": 3, "record file": 6, "say alpha": 4,
    "say digits": 4, "say number": 4, "set music": 3, "set variable": 4, "stream file": 4,
    "verbose": 2, "wait for digit": 4,
}  # fmt: skip
DEAD_CHANNEL_LINE: Final = "511 Command Not Permitted on a dead channel or intercept routine"
INVALID_COMMAND_LINE: Final = "510 Invalid or unknown command"
MAX_COMMAND_BYTES: Final = 2047  # res_agi's fgets() buffer minus its NUL
_KNOWN_APPS: Final = frozenset({"playback", "queue", "dial", "wait", "noop", "background", "set"})


def split_agi_args(line: str) -> list[str]:
    """Split a command line into argv the way res_agi's parse_args does.

    Spaces and tabs separate arguments outside double quotes; a `"` toggles quoting and
    starts an argument even when empty (`""`); a backslash makes the next character
    literal, inside quotes or not. Everything else, CR included, is argument text.
    """
    argv: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == "\\" and not escaped:
            escaped = True
            continue
        if ch == '"' and not escaped:
            quoted = not quoted
            if current is None:
                current = []
            continue
        if ch in " \t" and not quoted and not escaped:
            if current is not None:
                argv.append("".join(current))
                current = None
            continue
        if current is None:
            current = []
        current.append(ch)
        escaped = False
    if current is not None:
        argv.append("".join(current))
    return argv


def match_command(argv: Sequence[str]) -> str | None:
    """The command an argv names (case-insensitive, longest match), or None if unknown."""
    words = [word.lower() for word in argv]
    best: str | None = None
    for name in KNOWN_COMMANDS:
        parts = name.split()
        if words[: len(parts)] == parts and (best is None or len(parts) > len(best.split())):
            best = name
    return best


_uniqueids = itertools.count(1)


def default_env(
    script: str = "hotline",
    *,
    uniqueid: str | None = None,
    callerid: str = "0501234567",
    calleridname: str = "Citizen Test",
    args: Sequence[str] = (),
    **overrides: str,
) -> dict[str, str]:
    """The env block Asterisk 22 sends over a Local channel, keys in its order.

    `overrides` replace or add keys, with or without the `agi_` prefix.
    """
    number = next(_uniqueids)
    env = {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://127.0.0.1:4573/{script}",
        "agi_channel": f"Local/dtmf@caller-{number:08x};1",
        "agi_language": "en",
        "agi_type": "Local",
        "agi_uniqueid": uniqueid or f"1795477691.{number}",
        "agi_version": "22.10.1",
        "agi_callerid": callerid,
        "agi_calleridname": calleridname,
        "agi_callingpres": "67" if callerid == "unknown" else "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "unknown",
        "agi_rdnis": "unknown",
        "agi_context": "hotline",
        "agi_extension": "s",
        "agi_priority": "4",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "140240834705088",
    }
    env.update({f"agi_arg_{i}": value for i, value in enumerate(args, start=1)})
    env.update(
        {key if key.startswith("agi_") else f"agi_{key}": value for key, value in overrides.items()}
    )
    return env


def encode_env(env: Mapping[str, str]) -> bytes:
    """`key: value` lines and the empty line, as Asterisk writes them."""
    return "".join(f"{key}: {value}\n" for key, value in env.items()).encode() + b"\n"


# --------------------------------------------------------------------------------------
# The scripted peer
# --------------------------------------------------------------------------------------


class _Disconnect:
    def __repr__(self) -> str:
        return "DISCONNECT"


DISCONNECT: Final = _Disconnect()
"""A reply that closes the connection instead of answering the command."""

Reply = str | bytes | _Disconnect
"""str: response line(s), "\\n" added; bytes: written exactly as given; DISCONNECT."""


@dataclass(frozen=True)
class Command:
    """One command line as the peer received it."""

    index: int
    line: str
    argv: tuple[str, ...]
    name: str | None


Responder = Callable[[Command], Reply | None]
"""Returns the reply to a command, or None for the simulated channel's answer."""


@dataclass
class CallTranscript:
    """What happened on one connection, from Asterisk's side."""

    env: dict[str, str]
    commands: list[str] = field(default_factory=list)
    dialogue: list[tuple[str, bytes]] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    recordings: list[str] = field(default_factory=list)
    executed: list[tuple[str, str]] = field(default_factory=list)
    bad_lines: list[bytes] = field(default_factory=list)
    hung_up: bool = False
    server_closed: bool = False
    pipelined: bool = False
    timed_out: bool = False
    env_bytes_sent: int = 0

    @property
    def argvs(self) -> list[list[str]]:
        """Each command as Asterisk would split it."""
        return [split_agi_args(line) for line in self.commands]


@dataclass
class ScriptedAsterisk:
    """One simulated call. Every option is keyword-friendly; see the module docstring.

    script / env      agi_network_script, and env overrides on top of `default_env`
    dtmf              keys the caller presses, `,` for a pause
    on_command        a Responder, or a list of replies by command index (None: simulate)
    hangup_after      the caller hangs up during command number hangup_after (0-based)
    sighup            Asterisk's AGISIGHUP: send `HANGUP` lines (default yes)
    exit_on_hangup    AGIEXITONHANGUP: `HANGUP` twice, then close without answering
    variables         channel variables preset for GET VARIABLE
    missing_files     prompts that do not exist (STREAM FILE gives result=-1 endpos=0)
    env_bytes         send these bytes instead of a proper env block (b"" sends nothing)
    flood_env         send env lines for ever, never the empty line (stops at 8 MiB)
    read_timeout      give up when the server says nothing for this long
    """

    script: str = "hotline"
    env: Mapping[str, str] = field(default_factory=dict)
    dtmf: str = ""
    on_command: Responder | Sequence[Reply | None] | None = None
    hangup_after: int | None = None
    sighup: bool = True
    exit_on_hangup: bool = False
    variables: Mapping[str, str] = field(default_factory=dict)
    missing_files: Collection[str] = ()
    env_bytes: bytes | None = None
    flood_env: bool = False
    read_timeout: float = 10.0

    def __post_init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._keys = list(self.dtmf)
        self._dead = False
        self._database: dict[tuple[str, str], str] = {}

    async def run(self, host: str, port: int) -> CallTranscript:
        """Connect, play the call, and return its transcript once the connection ends.

        Each run starts from the configured state, so one instance can be replayed.
        """
        self._reset()
        env = default_env(self.script, **dict(self.env))
        transcript = CallTranscript(env=env, variables=dict(self.variables))
        transcript.variables.setdefault("CHANNEL", env["agi_channel"])
        reader, writer = await asyncio.open_connection(host, port)
        try:
            if self.flood_env:
                await self._flood(reader, writer, transcript)
                return transcript
            payload = encode_env(env) if self.env_bytes is None else self.env_bytes
            writer.write(payload)
            transcript.env_bytes_sent = len(payload)
            transcript.dialogue += [("<<", line) for line in payload.splitlines(keepends=True)]
            await self._serve(reader, writer, transcript)
        except (ConnectionResetError, BrokenPipeError):
            transcript.server_closed = True
        finally:
            writer.close()
            with suppress(OSError):
                await writer.wait_closed()
        transcript.hung_up = transcript.hung_up or self._dead
        return transcript

    async def _flood(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transcript: CallTranscript
    ) -> None:
        batch = b"".join(f"agi_flood_{i}: {'x' * 40}\n".encode() for i in range(1000))
        try:
            while transcript.env_bytes_sent < 8 * 1024 * 1024:
                writer.write(batch)
                await asyncio.wait_for(writer.drain(), self.read_timeout)
                transcript.env_bytes_sent += len(batch)
                if reader.at_eof():
                    break
                await asyncio.sleep(0)
            transcript.server_closed = (
                await asyncio.wait_for(reader.read(), self.read_timeout) == b""
            )
        except (ConnectionResetError, BrokenPipeError):
            transcript.server_closed = True
        except TimeoutError:
            transcript.timed_out = True

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, transcript: CallTranscript
    ) -> None:
        buffer = bytearray()
        for index in itertools.count():
            raw = await self._read_line(reader, buffer, transcript)
            if raw is None:
                transcript.server_closed = not transcript.timed_out
                if self.sighup and not transcript.timed_out:
                    with suppress(OSError):
                        writer.write(b"HANGUP\n")  # Asterisk says it again when the script ends
                return
            if buffer:
                transcript.pipelined = True  # the next command came before our answer
            transcript.dialogue.append((">>", raw))
            if b"\r" in raw or len(raw) > MAX_COMMAND_BYTES:
                transcript.bad_lines.append(raw)
            line = raw[:-1].decode("utf-8", errors="replace")
            transcript.commands.append(line)
            argv = split_agi_args(line)
            command = Command(index, line, tuple(argv), match_command(argv))
            reply = self._scripted(command)
            if reply is None:
                reply, close = self._simulate(command, transcript)
            else:
                close = False
            if isinstance(reply, _Disconnect):
                return
            data = (
                reply
                if isinstance(reply, bytes)
                else (reply if reply.endswith("\n") or not reply else reply + "\n").encode()
            )
            for chunk in data.splitlines(keepends=True):
                transcript.dialogue.append(("<<", chunk))
            writer.write(data)
            await writer.drain()
            if close:
                return

    async def _read_line(
        self, reader: asyncio.StreamReader, buffer: bytearray, transcript: CallTranscript
    ) -> bytes | None:
        while b"\n" not in buffer:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), self.read_timeout)
            except TimeoutError:
                transcript.timed_out = True
                return None
            if not chunk:
                return None
            buffer += chunk
        end = buffer.index(b"\n") + 1
        line = bytes(buffer[:end])
        del buffer[:end]
        return line

    def _scripted(self, command: Command) -> Reply | None:
        if self.on_command is None:
            return None
        if callable(self.on_command):
            return self.on_command(command)
        replies = self.on_command
        return replies[command.index] if command.index < len(replies) else None

    # ---- the simulated channel -------------------------------------------------------

    def _simulate(
        self, command: Command, transcript: CallTranscript
    ) -> tuple[str | _Disconnect, bool]:
        """The reply lines for one command, and whether to close the connection after."""
        name = command.name
        if not self._dead and self.hangup_after is not None and command.index >= self.hangup_after:
            return self._caller_hangs_up(command, transcript)
        if name is None:
            return INVALID_COMMAND_LINE, False
        if self._dead and name not in ALLOWED_ON_DEAD_CHANNEL:
            return DEAD_CHANNEL_LINE, False
        if len(command.argv) < MIN_ARGC.get(name, len(name.split())):
            return self._usage(name), False
        if name == "hangup":
            self._dead = True
            return "200 result=1" + ("\nHANGUP" if self.sighup else ""), False
        return self._alive(command, transcript), False

    def _caller_hangs_up(
        self, command: Command, transcript: CallTranscript
    ) -> tuple[str | _Disconnect, bool]:
        self._dead = True
        transcript.hung_up = True
        interrupted = {
            "answer": "200 result=-1",
            "get data": "200 result=-1",
            "wait for digit": "200 result=-1",
            "stream file": "200 result=-1 endpos=0",
            "control stream file": "200 result=-1 endpos=0",
            "record file": "200 result=-1 (hangup) endpos=11360",
            "say digits": "200 result=-1",
            "say number": "200 result=-1",
            "say alpha": "200 result=-1",
        }.get(command.name or "")
        if self.exit_on_hangup:
            lines = ([interrupted] if interrupted else []) + ["HANGUP", "HANGUP"]
            return "\n".join(lines), True
        if interrupted is not None:
            return interrupted + ("\nHANGUP" if self.sighup else ""), False
        # Noticed before a command that does not wait on the channel: HANGUP line first.
        after, _ = self._simulate(command, transcript)
        assert isinstance(after, str)
        return ("HANGUP\n" if self.sighup else "") + after, False

    def _usage(self, name: str) -> str:
        return "\n".join([
            "520-Invalid command syntax.  Proper usage follows:",
            f"Usage: {name.upper()} (scripted peer: missing arguments)",
            "See 'agi show commands' on a real Asterisk for the full text.",
            "520 End of proper usage.",
        ])  # fmt: skip

    def _next_key(self) -> str | None:
        return self._keys[0] if self._keys else None

    def _take_key(self) -> str | None:
        return self._keys.pop(0) if self._keys else None

    def _interrupt(self, escape_digits: str) -> str | None:
        key = self._next_key()
        if key is not None and key not in ",." and key in escape_digits:
            return self._take_key()
        return None

    def _alive(self, command: Command, transcript: CallTranscript) -> str:
        argv, name = command.argv, command.name
        if name == "answer":
            return "200 result=0"
        if name in ("stream file", "control stream file"):
            if argv[2 if name == "stream file" else 3] in self.missing_files:
                return "200 result=-1 endpos=0"
            key = self._interrupt(argv[3 if name == "stream file" else 4])
            endpos = "-1" if name == "control stream file" else ("4000" if key else "8000")
            return f"200 result={ord(key) if key else 0} endpos={endpos}"
        if name == "get data":
            return self._get_data(int(argv[4]) if len(argv) > 4 else 1024)
        if name == "wait for digit":
            key = self._take_key()
            return f"200 result={ord(key) if key and key != ',' else 0}"
        if name == "record file":
            transcript.recordings.append(argv[2])
            if self._next_key() == ".":  # the caller waited for the beep
                self._take_key()
            key = self._interrupt(argv[4])
            if key is not None:
                return f"200 result={ord(key)} (dtmf) endpos=9760"
            if self._next_key() == ",":
                self._take_key()
            return f"200 result=0 (timeout) endpos={max(int(argv[5]), 0) * 8}"
        if name in ("say digits", "say number", "say alpha"):
            key = self._interrupt(argv[3])
            return f"200 result={ord(key) if key else 0}"
        if name == "set variable":
            transcript.variables[argv[2]] = argv[3]
            return "200 result=1"
        if name == "get variable":
            value = transcript.variables.get(argv[2])
            return "200 result=0" if value is None else f"200 result=1 ({value})"
        if name == "get full variable":
            expanded = re.sub(r"\$\{(\w+)\}", lambda m: transcript.variables.get(m[1], ""), argv[3])
            return f"200 result=1 ({expanded})"
        if name == "exec":
            transcript.executed.append((argv[1], argv[2] if len(argv) > 2 else ""))
            return "200 result=0" if argv[1].lower() in _KNOWN_APPS else "200 result=-2"
        if name == "database put":
            self._database[(argv[2], argv[3])] = argv[4]
            return "200 result=1"
        if name == "database get":
            value = self._database.get((argv[2], argv[3]))
            return "200 result=0" if value is None else f"200 result=1 ({value})"
        if name == "channel status":
            return "200 result=6"
        if name == "verbose":
            return "200 result=1"
        return "200 result=0"

    def _get_data(self, max_digits: int) -> str:
        digits, timed_out = "", False
        while len(digits) < max_digits:
            key = self._take_key()
            if key is None or key == ",":
                timed_out = True
                break
            if key == "#":
                break
            digits += key
        return f"200 result={digits}" + (" (timeout)" if timed_out else "")


# --------------------------------------------------------------------------------------
# A server under test, for tests that drive whole calls
# --------------------------------------------------------------------------------------


class AgiServerHarness:
    """Starts FastAGI servers on 127.0.0.1 port 0 and plays scripted calls against them."""

    def __init__(self, reactor: AsyncioSelectorReactor) -> None:
        self.reactor = reactor
        self._ports: list[IListeningPort] = []
        self.factory: AgiServerFactory | None = None
        self.port = 0

    def start(
        self,
        routes: Mapping[str, AgiHandler],
        *,
        env_timeout: float = 10.0,
        limits: AgiLimits | None = None,
    ) -> AgiServerFactory:
        listening = start_agi_server(
            self.reactor, "127.0.0.1", 0, routes, env_timeout=env_timeout, limits=limits
        )
        self._ports.append(listening)
        self.port = listening.getHost().port  # type: ignore[attr-defined]
        self.factory = listening.factory  # type: ignore[attr-defined]
        assert isinstance(self.factory, AgiServerFactory)
        return self.factory

    async def call(self, peer: ScriptedAsterisk) -> CallTranscript:
        """Play one call and wait until the server has finished handling it."""
        transcript = await peer.run("127.0.0.1", self.port)
        await self.drain()
        return transcript

    async def drain(self, timeout: float = 10.0) -> None:
        if self.factory is not None:
            await asyncio.wait_for(self.factory.drain(), timeout)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        with suppress(TimeoutError):
            await self.drain()
        for listening in self._ports:
            stopped = listening.stopListening()
            if isinstance(stopped, Deferred):
                await stopped.asFuture(loop)
        self._ports.clear()


# --------------------------------------------------------------------------------------
# The reference transcripts
# --------------------------------------------------------------------------------------


SESSIONS_FILE = Path(__file__).resolve().parent / "reference" / "agi-sessions.txt"


def reference_dir() -> Path:
    """`../shared/reference/asterisk-agi` beside the project (or a git worktree's), or
    under $CALLCENTER_SHARED_DIR."""
    from tests.support.asterisk import shared_dir

    return shared_dir() / "reference" / "asterisk-agi"


@dataclass(frozen=True)
class ReferenceSession:
    """One connection of transcripts.txt: `<<` lines Asterisk sent, `>>` lines the probe sent.

    An inbound `b""` is the end of the stream.
    """

    name: str
    lines: tuple[tuple[str, bytes], ...]

    @property
    def inbound(self) -> bytes:
        return b"".join(data for direction, data in self.lines if direction == "<<")

    @property
    def inbound_lines(self) -> list[bytes]:
        return [data for direction, data in self.lines if direction == "<<"]

    @property
    def outbound(self) -> list[bytes]:
        return [data for direction, data in self.lines if direction == ">>"]

    @property
    def has_env(self) -> bool:
        return bool(self.lines) and self.lines[0] == ("<<", b"agi_network: yes\n")

    @property
    def ends_with_eof(self) -> bool:
        return ("<<", b"") in self.lines


_SECTION = re.compile(r"(?:--- )?(\d+[a-z]?)\. ")
_PROBE_LINE = re.compile(r"\s+\d+\.\d+ \[(c\d+)\] (<<|>>) (.*)")
_SESSION_LINE = re.compile(r"(\S+) (<<|>>) (.*)")


def parse_transcripts(path: Path) -> list[ReferenceSession]:
    """Every probe-logged connection of the shared transcripts.txt, in file order."""
    sessions: dict[str, list[tuple[str, bytes]]] = {}
    section = "?"
    for text_line in path.read_text(encoding="utf-8").splitlines():
        if (heading := _SECTION.match(text_line)) is not None:
            section = heading[1]
        elif (probe := _PROBE_LINE.fullmatch(text_line)) is not None:
            value = ast.literal_eval(probe[3])
            assert isinstance(value, str), text_line
            sessions.setdefault(f"{section}-{probe[1]}", []).append(
                (probe[2], value.encode("utf-8"))
            )
    return [ReferenceSession(name, tuple(lines)) for name, lines in sessions.items()]


def load_reference_sessions(path: Path | None = None) -> list[ReferenceSession]:
    """The sessions kept in tests/ (`<session> <<|>> <repr of the line>`), in file order."""
    sessions: dict[str, list[tuple[str, bytes]]] = {}
    for text_line in (path or SESSIONS_FILE).read_text(encoding="utf-8").splitlines():
        if not text_line or text_line.startswith("#"):
            continue
        match = _SESSION_LINE.fullmatch(text_line)
        assert match is not None, text_line
        value = ast.literal_eval(match[3])
        assert isinstance(value, str), text_line
        sessions.setdefault(match[1], []).append((match[2], value.encode("utf-8")))
    return [ReferenceSession(name, tuple(lines)) for name, lines in sessions.items()]


def write_sessions(sessions: list[ReferenceSession], path: Path = SESSIONS_FILE) -> None:
    """Refresh tests/agi/reference/agi-sessions.txt from parsed transcripts."""
    lines = ["# FastAGI lines exchanged with a real Asterisk 22.10.1, one per line:",
             "# <section>-<connection> <'<<' from Asterisk | '>>' to Asterisk> <Python repr of the line>.",
             "# Extracted from ../shared/reference/asterisk-agi/transcripts.txt by",
             "# tests/agi/asterisk_peer.py:write_sessions; test_agi_protocol checks it still matches."]
    for session in sessions:
        lines += [f"{session.name} {direction} {data.decode('utf-8')!r}" for direction, data in session.lines]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
