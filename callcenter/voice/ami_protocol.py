"""Asterisk Manager Interface (AMI) as a sans-I/O protocol: bytes in, messages out.

No sockets here (the asyncio transport is `callcenter.voice.ami`). What Asterisk 22 sends:

- one banner line, `Asterisk Call Manager/<version>`, without a blank line after it;
- then messages: `Key: Value` lines ending with an empty line, CRLF throughout. A key may
  repeat (`ChanVariable: A=1`, `ChanVariable: B=2`, one per `channelvars` entry), so a
  message keeps every value in order; look-ups ignore the key's case;
- an action's answer (`Response: Success|Error|Goodbye`) echoes its ActionID. A list action
  (QueueStatus) answers `EventList: start`, then events with the same ActionID, then an
  event with `EventList: Complete`;
- events (`Event: AgentConnect`) at any time, between the parts of a list too.

`AmiProtocol` frames the bytes, correlates answers with the actions it encoded, and hands
back `ActionDone` (the answer, with a list's events) and `Event` (everything unsolicited,
including `OriginateResponse`, which carries the ActionID of an action already answered).
Hostile or broken input never raises out of `feed`: an over-long line or message is
dropped and counted in `rejected`, and the stream resynchronises at the next empty line.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

CRLF = b"\r\n"
BANNER_PREFIX = "Asterisk Call Manager/"
# Limits against a peer that never ends a line or a message (Asterisk's own lines are short;
# a QueueStatus of a large queue comes as many small messages).
MAX_LINE = 16 * 1024
MAX_HEADERS = 512
_UNSAFE = re.compile(r"[\r\n\x00]")
_KEY = re.compile(r"[A-Za-z0-9_\-]{1,64}")


class AmiProtocolError(ValueError):
    """An action that cannot be encoded safely (a line break would inject headers)."""


@dataclass(frozen=True)
class Message:
    """One AMI message: its headers in arrival order, repeated keys kept."""

    headers: tuple[tuple[str, str], ...]

    def get(self, key: str, default: str | None = None) -> str | None:
        folded = key.casefold()
        for name, value in self.headers:
            if name.casefold() == folded:
                return value
        return default

    def get_all(self, key: str) -> list[str]:
        folded = key.casefold()
        return [value for name, value in self.headers if name.casefold() == folded]

    def __getitem__(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    @property
    def action_id(self) -> str | None:
        return self.get("ActionID")

    def variables(self, key: str = "ChanVariable") -> dict[str, str]:
        """Channel variables of `key` (`ChanVariable`, `DestChanVariable`) as a dict.

        Asterisk writes `ChanVariable: NAME=value`; older versions wrote
        `ChanVariable(Channel): NAME=value`, which is accepted too."""
        folded = key.casefold()
        found: dict[str, str] = {}
        for name, value in self.headers:
            bare = name.split("(", 1)[0].casefold()
            if bare == folded:
                var, sep, val = value.partition("=")
                if sep and var:
                    found[var] = val
        return found


@dataclass(frozen=True)
class Banner:
    version: str


@dataclass(frozen=True)
class Event:
    """An unsolicited message (`Event: ...`)."""

    name: str
    message: Message

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.message.get(key, default)


@dataclass(frozen=True)
class ActionDone:
    """The answer to one action, and for a list action the events of the list."""

    action_id: str
    action: str
    response: Message
    events: tuple[Message, ...] = ()

    @property
    def ok(self) -> bool:
        return (self.response.get("Response") or "").casefold() in ("success", "goodbye", "follows")

    @property
    def message(self) -> str:
        return self.response.get("Message") or ""


@dataclass
class _Pending:
    action: str
    response: Message | None = None
    events: list[Message] = field(default_factory=list)


Received = Banner | Event | ActionDone


def encode_action(action: str, fields: Mapping[str, str | int | Sequence[str]] | Iterable[tuple[str, str]],
                  action_id: str) -> bytes:
    """`Action: <action>`, `ActionID`, then the fields (a list value repeats the key, as
    Originate's `Variable` does); refuses keys or values that would break the framing."""
    pairs: list[tuple[str, str]] = [("Action", action), ("ActionID", action_id)]
    items = fields.items() if isinstance(fields, Mapping) else fields
    for key, value in items:
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            pairs.append((key, str(item)))
    lines = []
    for key, value in pairs:
        if not _KEY.fullmatch(key):
            raise AmiProtocolError(f"AMI header name {key[:40]!r} is not a plain word")
        if _UNSAFE.search(value):
            raise AmiProtocolError(f"AMI header {key} contains a line break")
        lines.append(f"{key}: {value}".encode())
    return CRLF.join(lines) + CRLF + CRLF


class AmiProtocol:
    """One AMI connection's state: framing, action ids, answers waiting for their lists.

    Use: `data = proto.action("Ping")` (returns the ActionID and the bytes to send), then
    `for item in proto.feed(chunk): ...`. A new connection needs a new instance.
    """

    def __init__(self, prefix: str = "callcenter") -> None:
        self.prefix = prefix
        self.banner: Banner | None = None
        self.rejected = 0  # lines or messages dropped as malformed or too long
        self._buffer = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._discarding = False
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._salt = secrets.token_hex(3)

    # ---- sending

    def next_action_id(self, kind: str = "action") -> str:
        return f"{self.prefix}-{kind}-{next(self._ids)}-{self._salt}"

    def action(self, action: str, fields: Mapping[str, str | int | Sequence[str]] | None = None, *,
               action_id: str | None = None) -> tuple[str, bytes]:
        """Encode an action and remember it until its answer (and list) has come."""
        action_id = action_id or self.next_action_id(action.casefold())
        data = encode_action(action, fields or {}, action_id)
        self._pending[action_id] = _Pending(action)
        return action_id, data

    def forget(self, action_id: str) -> None:
        """Stop waiting for an action (its caller gave up)."""
        self._pending.pop(action_id, None)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # ---- receiving

    def feed(self, data: bytes) -> list[Received]:
        """Everything complete in the bytes received so far."""
        self._buffer += data
        out: list[Received] = []
        for line in self._lines():
            if self.banner is None and not self._headers and line.startswith(BANNER_PREFIX):
                self.banner = Banner(line[len(BANNER_PREFIX):].strip())
                out.append(self.banner)
                continue
            if line == "":
                if self._discarding:
                    self._discarding = False
                elif self._headers:
                    message = Message(tuple(self._headers))
                    out.extend(self._dispatch(message))
                self._headers = []
                continue
            if self._discarding:
                continue
            key, sep, value = line.partition(":")
            if not sep or not key.strip():
                # `Response: Follows` output of old versions, or garbage: keep it visible.
                self._headers.append(("Output", line))
            else:
                self._headers.append((key.strip(), value.strip()))
            if len(self._headers) > MAX_HEADERS:
                self._drop()
        return out

    def _lines(self) -> Iterator[str]:
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    del self._buffer[:]
                    self._drop()
                return
            raw = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if len(raw) > MAX_LINE:
                self._drop()
                continue
            yield raw.rstrip(b"\r").decode("utf-8", errors="replace")

    def _drop(self) -> None:
        """Throw away the message being read, up to its closing empty line."""
        self.rejected += 1
        self._headers = []
        self._discarding = True

    def _dispatch(self, message: Message) -> list[Received]:
        action_id = message.action_id
        pending = self._pending.get(action_id) if action_id is not None else None
        name = message.get("Event")
        # OriginateResponse is an event that also has a `Response` header: `Event` decides.
        if name is None and message.get("Response") is not None:
            if pending is None or pending.response is not None:
                # The answer to an action we no longer wait for (timed out, or not ours).
                return []
            if (message.get("EventList") or "").casefold() == "start":
                pending.response = message
                return []
            del self._pending[action_id]  # type: ignore[arg-type]
            return [ActionDone(action_id, pending.action, message)]  # type: ignore[arg-type]
        if name is None:
            self.rejected += 1
            return []
        if pending is not None and pending.response is not None:
            if (message.get("EventList") or "").casefold() == "complete":
                del self._pending[action_id]  # type: ignore[arg-type]
                return [ActionDone(action_id, pending.action, pending.response,  # type: ignore[arg-type]
                                   tuple(pending.events))]
            pending.events.append(message)
            return []
        return [Event(name, message)]
