"""Splitting an outgoing (MT) text into SMS parts (长短信拆分), pure functions.

Written here rather than taken from ``smpplib.gsm.make_parts`` because that
helper cuts UTF-16 at a fixed byte count (an emoji or a CJK Extension-B
character on a boundary is split in two), may cut a GSM escape pair, picks a
random 8-bit reference that can collide, and its GSM table maps "`" to the code
of "§" and lacks the form feed.  We split by character and choose references
with `ReferenceAllocator`.

Capacities, in characters of the chosen alphabet (UCS-2 units or GSM septets):

=========  ======  ===================  ====================
alphabet   single  per part, 8-bit ref  per part, 16-bit ref
=========  ======  ===================  ====================
GSM 7-bit  160     153                  152
UCS-2      70      67                   66
=========  ======  ===================  ====================

A character outside the Basic Multilingual Plane takes 2 UCS-2 units and a GSM
extension character 2 septets; neither is ever split across parts.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, Literal

from sms.codec import DataCoding, EncodeError, gsm7_encode, gsm7_fits, ucs2_encode
from sms.concat import ESM_UDHI, IEI_CONCAT_8BIT, IEI_CONCAT_16BIT

__all__ = [
    "MAX_PARTS",
    "MessagePart",
    "MessageTooLong",
    "ReferenceAllocator",
    "segment_count",
    "split_text",
]

MAX_PARTS: Final = 255

_GSM_SINGLE: Final = 160
_UCS2_SINGLE: Final = 70
# Per-part capacity by (alphabet, reference bits): 140 octets less the UDH.
_PER_PART: Final[dict[tuple[int, int], int]] = {
    (DataCoding.GSM7, 8): 153,
    (DataCoding.GSM7, 16): 152,
    (DataCoding.UCS2, 8): 67,
    (DataCoding.UCS2, 16): 66,
}


class MessageTooLong(ValueError):
    """The text needs more parts than allowed (at most 255)."""


@dataclass(frozen=True, slots=True)
class MessagePart:
    """One submit_sm worth of message.

    ``payload`` is the complete short_message, UDH included, ready to send with
    this ``data_coding`` and ``esm_class``; ``udh`` repeats the header for
    inspection.  A single-part message has ``udh=None``, ``ref=None`` and
    ``seq == total == 1``.  GSM text is carried unpacked, one septet per octet.
    """

    payload: bytes
    data_coding: int
    esm_class: int
    udh: bytes | None
    ref: int | None
    seq: int
    total: int


def _units(text: str, coding: int) -> list[int]:
    """Size of every character in the alphabet's units (septets or UTF-16 units)."""
    if coding == DataCoding.GSM7:
        return [len(gsm7_encode(ch)) for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _choose(text: str, *, allow_gsm7: bool) -> int:
    return DataCoding.GSM7 if allow_gsm7 and gsm7_fits(text) else DataCoding.UCS2


def _chunks(text: str, coding: int, ref_bits: int) -> list[str]:
    """Greedy split on character boundaries."""
    units = _units(text, coding)
    single = _GSM_SINGLE if coding == DataCoding.GSM7 else _UCS2_SINGLE
    if sum(units) <= single:
        return [text]
    capacity = _PER_PART[(coding, ref_bits)]
    chunks: list[str] = []
    start = used = 0
    for i, size in enumerate(units):
        if used + size > capacity:
            chunks.append(text[start:i])
            start, used = i, 0
        used += size
    chunks.append(text[start:])
    return chunks


def _encode(text: str, coding: int) -> bytes:
    return gsm7_encode(text) if coding == DataCoding.GSM7 else ucs2_encode(text)


def _check_text(text: str) -> None:
    for pos, ch in enumerate(text):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            msg = f"text has a lone surrogate U+{ord(ch):04X} at position {pos}"
            raise EncodeError(msg)


def segment_count(text: str, *, ref_bits: Literal[8, 16] = 8, allow_gsm7: bool = True) -> int:
    """How many parts ``text`` needs; use it to decide whether to allocate a reference."""
    _check_text(text)
    return len(_chunks(text, _choose(text, allow_gsm7=allow_gsm7), ref_bits))


def _udh(ref: int, total: int, seq: int, ref_bits: int) -> bytes:
    if ref_bits == 8:
        return bytes([5, IEI_CONCAT_8BIT, 3, ref, total, seq])
    return bytes([6, IEI_CONCAT_16BIT, 4, ref >> 8, ref & 0xFF, total, seq])


def split_text(
    text: str,
    *,
    reference: int | None = None,
    ref_bits: Literal[8, 16] = 8,
    allow_gsm7: bool = True,
    max_parts: int = MAX_PARTS,
) -> list[MessagePart]:
    """Split ``text`` into parts with concatenation UDHs.

    GSM 7-bit is used when every character fits (and ``allow_gsm7``), otherwise
    UCS-2.  ``reference`` is required only when more than one part results; get
    it from `ReferenceAllocator`.  Raises `MessageTooLong` past ``max_parts``
    (never more than 255) and `EncodeError` for a lone surrogate.  An empty text
    gives one empty part.
    """
    if ref_bits not in (8, 16):
        msg = f"ref_bits must be 8 or 16, got {ref_bits}"
        raise ValueError(msg)
    _check_text(text)
    coding = _choose(text, allow_gsm7=allow_gsm7)
    chunks = _chunks(text, coding, ref_bits)
    total = len(chunks)
    if total == 1:
        return [MessagePart(_encode(text, coding), coding, 0, None, None, 1, 1)]
    limit = min(max_parts, MAX_PARTS)
    if total > limit:
        msg = f"text needs {total} parts, more than the limit of {limit}"
        raise MessageTooLong(msg)
    if reference is None:
        msg = f"text needs {total} parts; pass a concatenation reference"
        raise ValueError(msg)
    if not 0 <= reference < (1 << ref_bits):
        msg = f"reference {reference} does not fit in {ref_bits} bits"
        raise ValueError(msg)
    parts: list[MessagePart] = []
    for seq, chunk in enumerate(chunks, start=1):
        udh = _udh(reference, total, seq, ref_bits)
        parts.append(
            MessagePart(udh + _encode(chunk, coding), coding, ESM_UDHI, udh, reference, seq, total)
        )
    return parts


class ReferenceAllocator:
    """Concatenation references that do not collide per destination while in flight.

    One rotating counter, shared by all destinations, proposes the next value;
    values still in use for that destination are skipped.  References only need
    to differ per destination (the handset keys by sender), and a single counter
    keeps the persistent state one int: store `state` and pass it back in after
    a restart so recent references are not reused at once.  Call `release` once
    every part has its final result.

    If every reference is in use for one destination (a caller that never
    releases), the one allocated longest ago is reused rather than failing the
    send: by then that message has almost surely been delivered or expired.
    """

    def __init__(self, *, bits: Literal[8, 16] = 8, state: int = 0) -> None:
        if bits not in (8, 16):
            msg = f"bits must be 8 or 16, got {bits}"
            raise ValueError(msg)
        self._size = 1 << bits
        self._bits: Literal[8, 16] = bits
        self._next = state % self._size
        self._in_use: dict[str, OrderedDict[int, None]] = {}

    @property
    def bits(self) -> Literal[8, 16]:
        """Width of the references handed out, to pass to `split_text`."""
        return self._bits

    @property
    def state(self) -> int:
        """The counter to persist."""
        return self._next

    def in_use(self, destination: str) -> frozenset[int]:
        """References currently held for ``destination``."""
        return frozenset(self._in_use.get(destination, ()))

    def allocate(self, destination: str, avoid: Collection[int] = ()) -> int:
        """A reference not in use for ``destination``; marks it in use.

        ``avoid``: references held for it elsewhere (another process sending to the same
        handset), skipped as long as a free value is left.
        """
        held = self._in_use.setdefault(destination, OrderedDict())
        if len(held) >= self._size:
            ref, _ = held.popitem(last=False)
        else:
            taken = held.keys() | {a % self._size for a in avoid}
            if len(taken) >= self._size:
                taken = held.keys()
            ref = self._next
            while ref in taken:
                ref = (ref + 1) % self._size
        self._next = (ref + 1) % self._size
        held[ref] = None
        return ref

    def release(self, destination: str, ref: int) -> None:
        """Mark ``ref`` free again for ``destination``; unknown values are ignored."""
        held = self._in_use.get(destination)
        if held is None:
            return
        held.pop(ref, None)
        if not held:
            del self._in_use[destination]
