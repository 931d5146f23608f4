"""Screen-pop handles (来电句柄): a caller's number sealed for consoles that may not see it.

A handle is self-contained: AES-GCM over (expiry, number) under a key every node shares
(`shared_keys`, made once by the first node that needs it). Any node opens a handle any
node made, so a console's follow-up request (the caller's cases, a draft for the caller)
may reach any node: no sticky sessions, no table written per pop, no broker.

Layout, base64url without padding, always 64 characters (so the number's length shows
nowhere)::

    nonce (12 bytes) | ciphertext of expiry (uint32, Unix seconds) + number (E.164, NUL-padded to 16) | tag (16)

The tag makes an altered or forged handle fail to open; the expiry inside it is compared
with this node's clock (nodes keep NTP time; an hour's lifetime makes seconds of drift moot).
With a random 96-bit nonce one key is good for about 2^32 handles (NIST SP 800-38D), decades
of screen-pops for a city; `docs/console.md` says how to replace the key.
"""

from __future__ import annotations

import base64
import os
import re
import struct
import time
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The `shared_keys` row that holds the key.
KEY_NAME = "console_pop"
KEY_BYTES = 32
#: A handle's length in characters (48 bytes in base64url).
HANDLE_LENGTH = 64

_HANDLE = re.compile(rf"[A-Za-z0-9_-]{{{HANDLE_LENGTH}}}", re.ASCII)
_NONCE = 12
_PHONE = 16  # E.164: '+' and at most 15 digits
_PLAIN = struct.Struct(">I16s")
# Binds a handle to its purpose and format: a ciphertext made under the key for anything else
# (or a later layout) does not open as a handle.
_AAD = b"callcenter screen-pop handle v1"


class PopRefused(Exception):
    """A handle that gives no number; `code` is the error the console is told."""

    code = "pop_invalid"


class PopInvalid(PopRefused):
    """Not a handle this service made: malformed, altered, forged, or made under another key."""


class PopExpired(PopRefused):
    """A genuine handle past its lifetime (`console.pop_ttl_minutes`)."""

    code = "pop_expired"


class PopSealer:
    """Makes and opens handles. No I/O: the key and the clock are given."""

    def __init__(self, key: bytes, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"a screen-pop key has {KEY_BYTES} bytes")
        self._aead = AESGCM(key)
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def seal(self, phone: str) -> str:
        """A new handle on `phone` (a normalised E.164 number), valid for the lifetime."""
        raw = phone.encode("ascii")
        if not raw or len(raw) > _PHONE or b"\0" in raw:
            raise ValueError("a screen-pop handle holds a normalised E.164 number")
        expiry = int(self._clock() + self.ttl_seconds)
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, _PLAIN.pack(expiry, raw), _AAD)
        return base64.urlsafe_b64encode(sealed).decode("ascii")

    def open(self, handle: str) -> str:
        """The number a handle holds; PopInvalid or PopExpired otherwise."""
        if not _HANDLE.fullmatch(handle):
            raise PopInvalid("not 64 base64url characters")
        sealed = base64.urlsafe_b64decode(handle)
        try:
            plain = self._aead.decrypt(sealed[:_NONCE], sealed[_NONCE:], _AAD)
        except InvalidTag as exc:
            raise PopInvalid("does not authenticate") from exc
        expiry, raw = _PLAIN.unpack(plain)
        if self._clock() > expiry:
            raise PopExpired("past its lifetime")
        return raw.rstrip(b"\0").decode("ascii")


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)
