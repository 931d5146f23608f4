"""One exception hierarchy for everything that can go wrong on a FastAGI connection.

Callers catch `AgiHangup` for "the caller is gone" (it covers 511 on a dead channel
and a connection that closed under a pending command), `AgiProtocolError` for a peer
that does not speak AGI, and `AgiError` for anything else in this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callcenter.agi.protocol import AgiResult


class AgiError(Exception):
    """Base of every AGI error; carries the parsed result when there is one."""

    def __init__(self, message: str, result: AgiResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class AgiHangup(AgiError):
    """The channel hung up or the connection to Asterisk is gone."""


class AgiDeadChannel(AgiHangup):
    """511: the command is not allowed on a channel that has hung up."""


class AgiInvalidCommand(AgiError):
    """510: Asterisk does not know the command."""


class AgiUsageError(AgiError):
    """520: the command's arguments were wrong; `usage` is Asterisk's usage text."""

    def __init__(self, message: str, result: AgiResult | None = None, usage: str = "") -> None:
        super().__init__(message, result)
        self.usage = usage


class AgiProtocolError(AgiError):
    """The peer sent bytes that are not valid FastAGI (garbage, over-long, unterminated)."""


class AgiLocalProtocolError(AgiError):
    """We misused the protocol: a second command in flight, a command before the env block,
    or a command line that Asterisk would split or misread."""


class AgiArgumentError(AgiError, ValueError):
    """A value cannot be put into an AGI command safely (control characters, bad digits)."""
