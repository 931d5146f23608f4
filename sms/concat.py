"""Concatenated (long) MO SMS: UDH and SAR parsing and reassembly (长短信重组).

Sans-I/O: the caller passes the clock (``now``) into every call; there are no
timers or threads.  The rules that come from what goes wrong in real gateways:

* Parts may arrive in any order and more than once (an SMSC redelivers when our
  deliver_sm_resp is lost).  Completion is by count, not by the last sequence.
* The key is (sender, destination, ref, total).  Without the sender, two
  citizens who happen to use the same 8-bit reference towards our service number
  would have their texts mixed.
* Nothing is ever dropped.  A message still incomplete after ``timeout`` seconds,
  or pushed out by the memory bounds, comes back as a `PartialMessage` with the
  gaps marked, so the caller can keep it as a flagged draft (草稿案卷).
* Parts are stored as raw bytes and decoded once, joined, so a GSM escape pair or
  a UTF-16 surrogate pair that a sender cut across two parts still decodes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import structlog

from sms.codec import DEFAULT_GBK_CODINGS, DecodedText, decode_short_message
from sms.privacy import mask_number

__all__ = [
    "IEI_CONCAT_8BIT",
    "IEI_CONCAT_16BIT",
    "CompleteMessage",
    "ConcatError",
    "ConcatInfo",
    "InformationElement",
    "PartialMessage",
    "Reassembler",
    "Segment",
    "UdhError",
    "UserDataHeader",
    "concat_from_sar",
    "decode_parts",
    "default_gap_marker",
    "extract_segment",
    "join_parts",
    "parse_udh",
]

log = structlog.get_logger(__name__)

IEI_CONCAT_8BIT: Final = 0x00
IEI_CONCAT_16BIT: Final = 0x08
ESM_UDHI: Final = 0x40

_MAX_SEGMENTS: Final = 255


class ConcatError(ValueError):
    """Concatenation data (UDH or SAR TLVs) that cannot be used."""


class UdhError(ConcatError):
    """A User Data Header whose lengths do not add up."""


@dataclass(frozen=True, slots=True)
class ConcatInfo:
    """Where one part sits in its message: reference, total parts, 1-based sequence."""

    ref: int
    total: int
    seq: int
    ref_bits: Literal[8, 16] = 8


@dataclass(frozen=True, slots=True)
class InformationElement:
    """One UDH information element, kept even when we do not interpret it."""

    iei: int
    data: bytes


@dataclass(frozen=True, slots=True)
class UserDataHeader:
    """A parsed UDH; ``length`` counts the UDHL octet itself."""

    elements: tuple[InformationElement, ...]
    concat: ConcatInfo | None
    length: int


@dataclass(frozen=True, slots=True)
class Segment:
    """One received short_message split into concatenation info and body bytes."""

    concat: ConcatInfo | None
    payload: bytes
    udh: UserDataHeader | None = None


def _concat_ie(iei: int, data: bytes) -> ConcatInfo | None:
    """Interpret a concatenation IE; out-of-range values make it ignorable (23.040 §9.2.3.24.1)."""
    if iei == IEI_CONCAT_8BIT:
        if len(data) != 3:
            msg = f"8-bit concatenation IE must have 3 octets, has {len(data)}"
            raise UdhError(msg)
        ref, total, seq = data[0], data[1], data[2]
        bits: Literal[8, 16] = 8
    else:
        if len(data) != 4:
            msg = f"16-bit concatenation IE must have 4 octets, has {len(data)}"
            raise UdhError(msg)
        ref, total, seq = int.from_bytes(data[:2], "big"), data[2], data[3]
        bits = 16
    if total == 0 or seq == 0 or seq > total:
        # The standard says to ignore the whole element; the text is then
        # handled as a message of its own, which keeps it.
        return None
    return ConcatInfo(ref=ref, total=total, seq=seq, ref_bits=bits)


def parse_udh(short_message: bytes) -> tuple[UserDataHeader, bytes]:
    """Split a short_message that starts with a UDH into (header, body).

    Concatenation IEs (0x00 8-bit reference, 0x08 16-bit reference) are read;
    other IEs are kept but skipped.  When a concatenation IE appears more than
    once the last one wins, as 23.040 says.  Raises `UdhError` when a length
    runs past the data.

    >>> parse_udh(bytes.fromhex("050003a40201") + b"hi")[0].concat
    ConcatInfo(ref=164, total=2, seq=1, ref_bits=8)
    """
    if not short_message:
        msg = "UDHI is set but the short_message is empty"
        raise UdhError(msg)
    udhl = short_message[0]
    end = 1 + udhl
    if end > len(short_message):
        msg = f"UDH length {udhl} exceeds the {len(short_message) - 1} octets that follow"
        raise UdhError(msg)
    elements: list[InformationElement] = []
    concat: ConcatInfo | None = None
    pos = 1
    while pos < end:
        if pos + 2 > end:
            msg = f"truncated information element header at UDH offset {pos}"
            raise UdhError(msg)
        iei, iedl = short_message[pos], short_message[pos + 1]
        data_end = pos + 2 + iedl
        if data_end > end:
            msg = f"information element 0x{iei:02X} of length {iedl} runs past the UDH"
            raise UdhError(msg)
        data = short_message[pos + 2 : data_end]
        elements.append(InformationElement(iei, data))
        if iei in (IEI_CONCAT_8BIT, IEI_CONCAT_16BIT):
            concat = _concat_ie(iei, data)
        pos = data_end
    return UserDataHeader(tuple(elements), concat, end), short_message[end:]


def concat_from_sar(
    sar_msg_ref_num: int | None,
    sar_total_segments: int | None,
    sar_segment_seqnum: int | None,
) -> ConcatInfo | None:
    """Concatenation info from the three SAR TLVs; None when none is present.

    Some but not all present, or values out of range, raise `ConcatError`.
    """
    values = (sar_msg_ref_num, sar_total_segments, sar_segment_seqnum)
    if all(v is None for v in values):
        return None
    if sar_msg_ref_num is None or sar_total_segments is None or sar_segment_seqnum is None:
        msg = f"incomplete SAR TLVs (ref, total, seq) = {values}"
        raise ConcatError(msg)
    if not 0 <= sar_msg_ref_num <= 0xFFFF:
        msg = f"sar_msg_ref_num {sar_msg_ref_num} is outside 0..65535"
        raise ConcatError(msg)
    if not 1 <= sar_total_segments <= _MAX_SEGMENTS:
        msg = f"sar_total_segments {sar_total_segments} is outside 1..255"
        raise ConcatError(msg)
    if not 1 <= sar_segment_seqnum <= sar_total_segments:
        msg = f"sar_segment_seqnum {sar_segment_seqnum} is outside 1..{sar_total_segments}"
        raise ConcatError(msg)
    return ConcatInfo(
        ref=sar_msg_ref_num, total=sar_total_segments, seq=sar_segment_seqnum, ref_bits=16
    )


def extract_segment(
    short_message: bytes,
    esm_class: int,
    *,
    sar_msg_ref_num: int | None = None,
    sar_total_segments: int | None = None,
    sar_segment_seqnum: int | None = None,
) -> Segment:
    """Strip the UDH when esm_class has UDHI (0x40) and find the concatenation info.

    A concatenation IE in the UDH takes precedence over SAR TLVs.  Errors are
    `ConcatError`/`UdhError`; the caller should then keep the raw bytes as a
    lossy draft rather than drop the message.
    """
    udh: UserDataHeader | None = None
    body = short_message
    concat: ConcatInfo | None = None
    if esm_class & ESM_UDHI:
        udh, body = parse_udh(short_message)
        concat = udh.concat
    if concat is None:
        concat = concat_from_sar(sar_msg_ref_num, sar_total_segments, sar_segment_seqnum)
    return Segment(concat=concat, payload=body, udh=udh)


# --- reassembly -----------------------------------------------------------------------


def default_gap_marker(seq: int, total: int) -> str:
    """Marker put where part ``seq`` of ``total`` is missing; readable by staff (坐席)."""
    return f"[第{seq}/{total}段缺失]"


@dataclass(frozen=True, slots=True)
class CompleteMessage:
    """All parts arrived (or the message was never split)."""

    sender: str
    destination: str
    text: str
    lossy: bool
    ref: int | None
    total: int


@dataclass(frozen=True, slots=True)
class PartialMessage:
    """An incomplete long message handed back instead of being dropped.

    ``reason`` is "timeout", "evicted" (memory bound) or "flushed" (shutdown).
    """

    sender: str
    destination: str
    ref: int
    total: int
    text: str
    parts_present: tuple[int, ...]
    reason: str
    lossy: bool = True


Reassembled = CompleteMessage | PartialMessage
_Key = tuple[str, str, int, int]


def decode_parts(parts: Sequence[tuple[bytes, int]], gbk_codings: frozenset[int] = DEFAULT_GBK_CODINGS,
                 ) -> DecodedText:
    """Decode runs of parts with one data_coding as a single byte string (pairs cut across parts join)."""
    texts: list[str] = []
    lossy = False
    run = bytearray()
    run_coding: int | None = None
    for payload, coding in [*parts, (b"", -1)]:
        if coding != run_coding and run_coding is not None:
            decoded = decode_short_message(bytes(run), run_coding, gbk_codings=gbk_codings)
            texts.append(decoded.text)
            lossy |= decoded.lossy
            run.clear()
        run_coding = coding
        run += payload
    return DecodedText("".join(texts), lossy)


def join_parts(
    sender: str,
    destination: str,
    ref: int,
    total: int,
    parts: Mapping[int, tuple[bytes, int]],
    *,
    reason: str | None = None,
    gbk_codings: frozenset[int] = DEFAULT_GBK_CODINGS,
    gap_marker: Callable[[int, int], str] = default_gap_marker,
) -> Reassembled:
    """The message the stored ``parts`` (seq -> (payload, data_coding)) make.

    Every part present and no ``reason``: a `CompleteMessage`. Otherwise a `PartialMessage`
    (``reason`` "timeout", "evicted", "flushed") with ``gap_marker`` where a part is missing.
    The store-backed reassembly (callcenter.service.sms_intake) and `Reassembler` share it.
    """
    if reason is None and all(seq in parts for seq in range(1, total + 1)):
        text = decode_parts([parts[s] for s in range(1, total + 1)], gbk_codings)
        return CompleteMessage(sender, destination, text.text, text.lossy, ref, total)
    pieces: list[str] = []
    run: list[tuple[bytes, int]] = []
    for seq in range(1, total + 1):
        part = parts.get(seq)
        if part is not None:
            run.append(part)
            continue
        if run:
            pieces.append(decode_parts(run, gbk_codings).text)
            run = []
        pieces.append(gap_marker(seq, total))
    if run:
        pieces.append(decode_parts(run, gbk_codings).text)
    return PartialMessage(
        sender=sender,
        destination=destination,
        ref=ref,
        total=total,
        text="".join(pieces),
        parts_present=tuple(sorted(s for s in parts if 1 <= s <= total)),
        reason=reason or "timeout",
    )


@dataclass(slots=True)
class _Pending:
    first_seen: float
    parts: dict[int, tuple[bytes, int]] = field(default_factory=dict)


class Reassembler:
    """Collects concatenated MO parts until a message is complete.

    Memory is bounded by ``max_pending_per_sender`` and ``max_pending_total``;
    when a bound is hit the oldest pending message is returned as a partial.
    Completed messages are remembered for ``timeout`` seconds so that a part the
    SMSC redelivers after completion is recognised and ignored instead of
    starting a second, partial copy.
    """

    def __init__(
        self,
        *,
        timeout: float = 300.0,
        max_pending_per_sender: int = 16,
        max_pending_total: int = 10_000,
        gbk_codings: frozenset[int] = DEFAULT_GBK_CODINGS,
        gap_marker: Callable[[int, int], str] = default_gap_marker,
    ) -> None:
        if timeout <= 0 or max_pending_per_sender < 1 or max_pending_total < 1:
            msg = "timeout and the pending bounds must be positive"
            raise ValueError(msg)
        self._timeout = timeout
        self._max_per_sender = max_pending_per_sender
        self._max_total = max_pending_total
        self._gbk_codings = gbk_codings
        self._gap_marker = gap_marker
        # Insertion order is arrival order of the first part: the head is the oldest.
        self._pending: OrderedDict[_Key, _Pending] = OrderedDict()
        self._per_sender: dict[str, int] = {}
        self._recent: OrderedDict[_Key, tuple[float, dict[int, tuple[bytes, int]]]] = OrderedDict()

    @property
    def pending_count(self) -> int:
        """Messages waiting for more parts."""
        return len(self._pending)

    def add(
        self,
        *,
        sender: str,
        destination: str,
        segment: Segment,
        data_coding: int,
        now: float,
    ) -> list[Reassembled]:
        """Add one received part; return whatever became final because of it.

        The list holds the completed message, if this part completed one, and
        any partial messages evicted to respect the memory bounds.
        """
        concat = segment.concat
        if concat is None or concat.total == 1:
            text = self._decode([(segment.payload, data_coding)])
            ref = None if concat is None else concat.ref
            return [CompleteMessage(sender, destination, text.text, text.lossy, ref, 1)]

        key: _Key = (sender, destination, concat.ref, concat.total)
        part = (segment.payload, data_coding)
        if self._is_redelivery(key, concat.seq, part, now):
            log.info("sms.concat.duplicate_after_complete", sender=mask_number(sender))
            return []

        out: list[Reassembled] = []
        pending = self._pending.get(key)
        if pending is None:
            out.extend(self._make_room(sender))
            pending = _Pending(first_seen=now)
            self._pending[key] = pending
            self._per_sender[sender] = self._per_sender.get(sender, 0) + 1
        if concat.seq in pending.parts:
            # First copy wins; a repeated part is a redelivery, not new text.
            return out
        pending.parts[concat.seq] = part
        if len(pending.parts) == concat.total:
            self._forget(key)
            self._remember(key, pending.parts, now)
            ordered = [pending.parts[s] for s in range(1, concat.total + 1)]
            text = self._decode(ordered)
            out.append(
                CompleteMessage(
                    sender, destination, text.text, text.lossy, concat.ref, concat.total
                )
            )
        return out

    def expire(self, now: float) -> list[PartialMessage]:
        """Return, oldest first, the messages whose first part is ``timeout`` old."""
        out: list[PartialMessage] = []
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if now - pending.first_seen < self._timeout:
                break
            out.append(self._pop_partial(key, "timeout"))
        while self._recent:
            key, (done_at, _) = next(iter(self._recent.items()))
            if now - done_at < self._timeout:
                break
            del self._recent[key]
        return out

    def flush_all(self) -> list[PartialMessage]:
        """Hand back everything pending, for a clean shutdown."""
        return [self._pop_partial(key, "flushed") for key in list(self._pending)]

    # -- internals --

    def _decode(self, parts: list[tuple[bytes, int]]) -> DecodedText:
        return decode_parts(parts, self._gbk_codings)

    def _make_room(self, sender: str) -> list[PartialMessage]:
        out: list[PartialMessage] = []
        if self._per_sender.get(sender, 0) >= self._max_per_sender:
            oldest = next(k for k in self._pending if k[0] == sender)
            out.append(self._pop_partial(oldest, "evicted"))
        if len(self._pending) >= self._max_total:
            out.append(self._pop_partial(next(iter(self._pending)), "evicted"))
        for partial in out:
            log.warning(
                "sms.concat.evicted",
                sender=mask_number(partial.sender),
                parts_present=len(partial.parts_present),
                total=partial.total,
            )
        return out

    def _pop_partial(self, key: _Key, reason: str) -> PartialMessage:
        pending = self._pending[key]
        self._forget(key)
        sender, destination, ref, total = key
        partial = join_parts(sender, destination, ref, total, pending.parts, reason=reason,
                             gbk_codings=self._gbk_codings, gap_marker=self._gap_marker)
        assert isinstance(partial, PartialMessage)
        return partial

    def _forget(self, key: _Key) -> None:
        del self._pending[key]
        sender = key[0]
        left = self._per_sender[sender] - 1
        if left:
            self._per_sender[sender] = left
        else:
            del self._per_sender[sender]

    def _remember(self, key: _Key, parts: dict[int, tuple[bytes, int]], now: float) -> None:
        self._recent[key] = (now, parts)
        self._recent.move_to_end(key)
        while len(self._recent) > self._max_total:
            self._recent.popitem(last=False)

    def _is_redelivery(self, key: _Key, seq: int, part: tuple[bytes, int], now: float) -> bool:
        """Same bytes as a part of a message completed within ``timeout``."""
        recent = self._recent.get(key)
        if recent is None:
            return False
        done_at, parts = recent
        return now - done_at < self._timeout and parts.get(seq) == part
