"""Delivery receipts (状态报告) and message-id matching, pure functions.

A receipt is a deliver_sm whose esm_class has the SMSC-delivery-receipt bit
(0x04) or the intermediate-notification bit (0x20), or that carries the
``receipted_message_id`` TLV.  TLVs are read first; the conventional receipt
text ``id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…``
fills whatever the TLVs did not give.  A few SMSCs send receipts with esm_class
0 and no TLVs; text that starts with ``id:`` and has a ``stat:`` field is taken
as a receipt too, since no citizen writes that.

Message ids
-----------
SMSCs disagree with themselves: the id in submit_sm_resp may be hex while the
receipt gives it in decimal (or the reverse), with different case, leading
zeros or a C-string NUL.  The rule here:

* `normalise_message_id` is the canonical form to store: NULs and surrounding
  white space removed (a NUL inside ends the id, C-string style), upper case,
  leading zeros removed ("0" stays "0").  "00000a1b" and "0A1B" both become "A1B".
* Base conversion is not part of the canonical form because "1234" is a valid
  id in both bases.  `message_id_keys` gives the canonical forms a receipt id
  may have been stored under, for a configured `IdBases` relation (as Jasmin's
  ``dlr_msg_id_bases`` does) or, with ``IdBases.AUTO``, under every plausible
  one.  `message_ids_match` compares with the same rule.

Settling exactly one part
-------------------------
`match_receipt` decides which stored part (if any) a receipt settles.  It reads
the receipt id strictly under each relation still possible for the SMSC link
(`submit_id_for`), keeps only parts of the handset the receipt names, and
settles a part only when exactly one is left; otherwise it says why not
(``no_part``, ``other_handset``, ``ambiguous``) and the caller stores the
receipt unmatched.  A match whose id pair fits exactly one relation is an
unambiguous pair: `decide_bases` turns enough agreeing pairs (and no
contradicting one) into the link's relation, after which only that reading is
tried.  In ``AUTO`` mode with nothing learned yet, "10" may stand for the
parts "10", "A" or "16", but only one of them went to the handset named.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sms.codec import DataCoding

__all__ = [
    "CONCRETE_BASES",
    "DeliveryReceipt",
    "DeliveryState",
    "IdBases",
    "NetworkError",
    "PartRef",
    "ReceiptError",
    "ReceiptMatch",
    "ReceiptText",
    "decide_bases",
    "is_delivery_receipt",
    "match_receipt",
    "message_id_keys",
    "message_ids_match",
    "normalise_message_id",
    "parse_receipt",
    "parse_receipt_text",
    "receipt_id_for",
    "relations_between",
    "submit_id_for",
]

ESM_DELIVERY_RECEIPT: Final = 0x04
ESM_INTERMEDIATE: Final = 0x20

_MAX_ID_LENGTH: Final = 65


class ReceiptError(ValueError):
    """A receipt we recognise as one but cannot correlate (no message id)."""


class DeliveryState(enum.StrEnum):
    """Our delivery states; values are what we store."""

    ENROUTE = "enroute"
    DELIVERED = "delivered"
    EXPIRED = "expired"
    DELETED = "deleted"
    UNDELIVERABLE = "undeliverable"
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        """Only ENROUTE promises a later receipt."""
        return self is not DeliveryState.ENROUTE


# SMPP 3.4 §5.2.28 message_state values.
_TLV_STATES: Final[dict[int, DeliveryState]] = {
    1: DeliveryState.ENROUTE,
    2: DeliveryState.DELIVERED,
    3: DeliveryState.EXPIRED,
    4: DeliveryState.DELETED,
    5: DeliveryState.UNDELIVERABLE,
    6: DeliveryState.ACCEPTED,
    7: DeliveryState.UNKNOWN,
    8: DeliveryState.REJECTED,
}

# The seven-letter receipt words (SMPP 3.4 Appendix B, the same words CMPP uses),
# plus spelled-out variants some gateways write.
_TEXT_STATES: Final[dict[str, DeliveryState]] = {
    "ENROUTE": DeliveryState.ENROUTE,
    "DELIVRD": DeliveryState.DELIVERED,
    "DELIVERED": DeliveryState.DELIVERED,
    "EXPIRED": DeliveryState.EXPIRED,
    "DELETED": DeliveryState.DELETED,
    "UNDELIV": DeliveryState.UNDELIVERABLE,
    "UNDELIVERABLE": DeliveryState.UNDELIVERABLE,
    "UNDELIVERED": DeliveryState.UNDELIVERABLE,
    "FAILED": DeliveryState.UNDELIVERABLE,
    "ACCEPTD": DeliveryState.ACCEPTED,
    "ACCEPTED": DeliveryState.ACCEPTED,
    "UNKNOWN": DeliveryState.UNKNOWN,
    "REJECTD": DeliveryState.REJECTED,
    "REJECTED": DeliveryState.REJECTED,
}


class IdBases(enum.Enum):
    """How the submit_sm_resp id relates to the id in this SMSC's receipts."""

    SAME = "same"
    SUBMIT_HEX_RECEIPT_DEC = "submit_hex_receipt_dec"
    SUBMIT_DEC_RECEIPT_HEX = "submit_dec_receipt_hex"
    AUTO = "auto"


@dataclass(frozen=True, slots=True)
class NetworkError:
    """The network_error_code TLV: network type (1 ANSI-136, 2 IS-95, 3 GSM…) and code."""

    network_type: int
    code: int


@dataclass(frozen=True, slots=True)
class ReceiptText:
    """The fields of a receipt text; any may be missing."""

    message_id: str | None = None
    submitted: int | None = None
    delivered: int | None = None
    submit_date: datetime | None = None
    done_date: datetime | None = None
    stat: str | None = None
    error: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryReceipt:
    """A parsed delivery receipt.

    ``message_id`` is canonical (`normalise_message_id`); ``raw_message_id`` is
    as received.  ``stat`` and ``error`` are the raw text fields, kept because
    Chinese gateways put operator codes there (e.g. a CMPP failure code as
    stat) that map to UNKNOWN.  Dates are naive, in the SMSC's local time.
    """

    message_id: str
    raw_message_id: str
    state: DeliveryState
    stat: str | None = None
    error: str | None = None
    network_error: NetworkError | None = None
    submitted: int | None = None
    delivered: int | None = None
    submit_date: datetime | None = None
    done_date: datetime | None = None
    text: str | None = None
    from_tlv: bool = False
    from_text: bool = False
    intermediate: bool = False


# --- message ids --------------------------------------------------------------------


def _as_str(raw: str | bytes) -> str:
    return raw.decode("latin-1") if isinstance(raw, bytes) else raw


def normalise_message_id(raw: str | bytes) -> str:
    """Canonical message id: trimmed, NUL-terminated, upper case, no leading zeros.

    >>> normalise_message_id(b"00000a1b\\x00")
    'A1B'
    """
    text = _as_str(raw).strip("\x00 \t\r\n")
    text = text.split("\x00", 1)[0].strip().upper()
    if not text:
        return ""
    return text.lstrip("0") or "0"


def _hex_to_dec(canonical: str) -> str | None:
    if not canonical or len(canonical) > _MAX_ID_LENGTH:
        return None
    try:
        return str(int(canonical, 16))
    except ValueError:
        return None


def _dec_to_hex(canonical: str) -> str | None:
    if not canonical.isascii() or not canonical.isdigit() or len(canonical) > _MAX_ID_LENGTH:
        return None
    return format(int(canonical), "X")


def message_id_keys(receipt_id: str | bytes, bases: IdBases = IdBases.AUTO) -> tuple[str, ...]:
    """Canonical submit ids a receipt id may correspond to, most likely first.

    Look these up in the store of `normalise_message_id` (submit_sm_resp) ids.
    """
    canonical = normalise_message_id(receipt_id)
    if not canonical:
        return ()
    if bases is IdBases.SAME:
        return (canonical,)
    if bases is IdBases.SUBMIT_HEX_RECEIPT_DEC:
        converted = _dec_to_hex(canonical)
        return (converted,) if converted is not None else (canonical,)
    if bases is IdBases.SUBMIT_DEC_RECEIPT_HEX:
        converted = _hex_to_dec(canonical)
        return (converted,) if converted is not None else (canonical,)
    keys = [canonical]
    for converted in (_dec_to_hex(canonical), _hex_to_dec(canonical)):
        if converted is not None and converted not in keys:
            keys.append(converted)
    return tuple(keys)


def message_ids_match(
    submit_id: str | bytes, receipt_id: str | bytes, *, bases: IdBases = IdBases.AUTO
) -> bool:
    """Whether a receipt id refers to the id from submit_sm_resp (see the module doc)."""
    canonical = normalise_message_id(submit_id)
    return bool(canonical) and canonical in message_id_keys(receipt_id, bases)


CONCRETE_BASES: Final = (IdBases.SAME, IdBases.SUBMIT_HEX_RECEIPT_DEC, IdBases.SUBMIT_DEC_RECEIPT_HEX)


def _relations(bases: IdBases | None) -> tuple[IdBases, ...]:
    return CONCRETE_BASES if bases is None or bases is IdBases.AUTO else (bases,)


def submit_id_for(receipt_id: str | bytes, relation: IdBases) -> str | None:
    """The submit id a receipt id stands for under one concrete relation; None if it cannot.

    Strict, unlike `message_id_keys`: a receipt id with hex letters has no decimal reading.
    """
    return _translate(receipt_id, relation, to_submit=True)


def receipt_id_for(submit_id: str | bytes, relation: IdBases) -> str | None:
    """The inverse of `submit_id_for`: how a receipt would write this submit id."""
    return _translate(submit_id, relation, to_submit=False)


def _translate(message_id: str | bytes, relation: IdBases, *, to_submit: bool) -> str | None:
    """One id rewritten across a concrete relation, in either direction; None if it cannot be."""
    canonical = normalise_message_id(message_id)
    if not canonical:
        return None
    if relation is IdBases.SAME:
        return canonical
    if relation in (IdBases.SUBMIT_HEX_RECEIPT_DEC, IdBases.SUBMIT_DEC_RECEIPT_HEX):
        receipt_is_dec = relation is IdBases.SUBMIT_HEX_RECEIPT_DEC
        return _dec_to_hex(canonical) if receipt_is_dec == to_submit else _hex_to_dec(canonical)
    raise ValueError("a concrete relation is needed, not AUTO")


def relations_between(submit_id: str | bytes, receipt_id: str | bytes) -> tuple[IdBases, ...]:
    """Every concrete relation under which the two ids are the same message.

    >>> relations_between("A", "10")
    (<IdBases.SUBMIT_HEX_RECEIPT_DEC: 'submit_hex_receipt_dec'>,)
    """
    canonical = normalise_message_id(submit_id)
    return tuple(r for r in CONCRETE_BASES if canonical and submit_id_for(receipt_id, r) == canonical)


def decide_bases(pairs: dict[IdBases, int], needed: int) -> IdBases | None:
    """The link's relation once `needed` unambiguous pairs agree and none contradicts."""
    seen = {relation: count for relation, count in pairs.items() if count > 0}
    if len(seen) != 1:
        return None
    ((relation, count),) = seen.items()
    return relation if count >= needed else None


@dataclass(frozen=True, slots=True)
class PartRef:
    """A stored part a receipt might settle: its canonical submit id and recipient."""

    part_id: int
    message_id: str
    recipient: str | None


@dataclass(frozen=True, slots=True)
class ReceiptMatch:
    """The one part a receipt settles, or why none; `pair` is the relation an unambiguous pair shows."""

    part_id: int | None
    reason: str | None = None
    pair: IdBases | None = None


def match_receipt(
    receipt_id: str | bytes,
    handset: str | None,
    parts: Sequence[PartRef],
    bases: IdBases | None = None,
) -> ReceiptMatch:
    """Pick the single part a receipt settles among `parts` (those of the receipt's SMSC link).

    ``bases`` is the link's relation (configured or learned); None or AUTO tries all three.
    When the receipt names the handset, only that handset's parts count.  Zero or several
    candidates settle nothing: the reason is returned, the caller stores the receipt.
    """
    wanted = {r: submit_id_for(receipt_id, r) for r in _relations(bases)}
    hits: dict[int, tuple[PartRef, set[IdBases]]] = {}
    for part in parts:
        for relation, key in wanted.items():
            if key is not None and part.message_id == key:
                hits.setdefault(part.part_id, (part, set()))[1].add(relation)
    if handset:
        own = {pid: hit for pid, hit in hits.items() if hit[0].recipient == handset}
        if not own:
            return ReceiptMatch(None, "other_handset" if hits else "no_part")
    else:
        own = hits
        if not own:
            return ReceiptMatch(None, "no_part")
    if len(own) > 1:
        return ReceiptMatch(None, f"ambiguous: {len(own)} parts")
    ((part_id, (part, _)),) = own.items()
    pair = None
    if handset:
        # Unambiguous pair: the handset pins the part and only one reading joins the ids.
        fits = relations_between(part.message_id, receipt_id)
        pair = fits[0] if len(fits) == 1 else None
    return ReceiptMatch(part_id, None, pair)


# --- receipt text -------------------------------------------------------------------

_KEY_RE: Final = re.compile(
    r"(?<![A-Za-z_])(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:",
    re.IGNORECASE,
)
_LOOKS_LIKE_RECEIPT: Final = re.compile(r"^\s*id\s*:\s*\S.*?\bstat\s*:", re.IGNORECASE | re.DOTALL)


def _parse_int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isascii() and value.isdigit() else None


def _parse_date(value: str | None) -> datetime | None:
    """YYMMDDhhmm, optionally followed by ss; anything else is None."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    fmt = {10: "%y%m%d%H%M", 12: "%y%m%d%H%M%S"}.get(len(value))
    if fmt is None:
        return None
    try:
        return datetime.strptime(value, fmt)  # SMSC local time, zone unknown
    except ValueError:
        return None


def parse_receipt_text(text: str) -> ReceiptText:
    """Read the ``id:… stat:…`` fields; tolerant of case, order, spacing, gaps.

    ``text:`` is always last and takes the rest of the string, so words like
    "stat:" inside the quoted original message are not read as fields.

    >>> parse_receipt_text("id:5F3A0001 sub:001 dlvrd:001 stat:DELIVRD err:000").stat
    'DELIVRD'
    """
    fields: dict[str, str] = {}
    matches = list(_KEY_RE.finditer(text))
    for i, match in enumerate(matches):
        name = match.group(1).lower().replace(" ", "").replace("_", "")
        if name == "text":
            fields.setdefault(name, text[match.end() :].strip())
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        fields.setdefault(name, text[match.end() : end].strip())
    message_id = (fields.get("id") or "").split()
    stat = (fields.get("stat") or "").split()
    error = (fields.get("err") or "").split()
    return ReceiptText(
        message_id=message_id[0] if message_id else None,
        submitted=_parse_int(fields.get("sub")),
        delivered=_parse_int(fields.get("dlvrd")),
        submit_date=_parse_date(fields.get("submitdate")),
        done_date=_parse_date(fields.get("donedate")),
        stat=stat[0].upper() if stat else None,
        error=error[0] if error else None,
        text=fields.get("text"),
    )


# --- detection and parsing -----------------------------------------------------------


def _text_of(short_message: bytes | str) -> str:
    # Receipt texts are ASCII; Latin-1 never fails, so a stray byte cannot lose one.
    return short_message.decode("latin-1") if isinstance(short_message, bytes) else short_message


def _present(value: str | bytes | None) -> bool:
    return value is not None and bool(normalise_message_id(value))


def is_delivery_receipt(
    esm_class: int,
    receipted_message_id: str | bytes | None = None,
    short_message: bytes | str = b"",
) -> bool:
    """True for a receipt, so that it is never taken for a citizen's message."""
    if esm_class & (ESM_DELIVERY_RECEIPT | ESM_INTERMEDIATE):
        return True
    if _present(receipted_message_id):
        return True
    return bool(_LOOKS_LIKE_RECEIPT.match(_text_of(short_message)))


def _network_error(value: bytes | int | None) -> NetworkError | None:
    if value is None:
        return None
    if isinstance(value, int):
        return NetworkError((value >> 16) & 0xFF, value & 0xFFFF)
    if len(value) != 3:  # the TLV is exactly three octets
        return None
    return NetworkError(value[0], int.from_bytes(value[1:], "big"))


def parse_receipt(
    short_message: bytes | str = b"",
    *,
    esm_class: int = 0,
    receipted_message_id: str | bytes | None = None,
    message_state: int | None = None,
    network_error_code: bytes | int | None = None,
    data_coding: int = DataCoding.GSM7,
) -> DeliveryReceipt | None:
    """Parse a deliver_sm as a receipt; None when it is not one.

    TLV values win over the text.  Raises `ReceiptError` when it is a receipt
    but neither the TLV nor the text gives a message id.  ``data_coding`` is
    only used to read a UCS-2 receipt text, which a few gateways send.
    """
    if not is_delivery_receipt(esm_class, receipted_message_id, short_message):
        return None
    if isinstance(short_message, bytes) and data_coding == DataCoding.UCS2:
        short_message = short_message.decode("utf-16-be", errors="replace")
    body = _text_of(short_message)
    parsed = parse_receipt_text(body) if _KEY_RE.search(body) else ReceiptText()
    from_text = parsed != ReceiptText()

    tlv_id = (
        _as_str(receipted_message_id)
        if receipted_message_id is not None and _present(receipted_message_id)
        else None
    )
    raw_id = tlv_id if tlv_id is not None else parsed.message_id
    if raw_id is None:
        msg = "delivery receipt without a message id in the TLV or the text"
        raise ReceiptError(msg)

    state: DeliveryState | None = None
    if message_state is not None:
        state = _TLV_STATES.get(message_state, DeliveryState.UNKNOWN)
    elif parsed.stat is not None:
        state = _TEXT_STATES.get(parsed.stat, DeliveryState.UNKNOWN)
    network_error = _network_error(network_error_code)

    return DeliveryReceipt(
        message_id=normalise_message_id(raw_id),
        raw_message_id=raw_id.strip("\x00 \t\r\n"),
        state=state if state is not None else DeliveryState.UNKNOWN,
        stat=parsed.stat,
        error=parsed.error,
        network_error=network_error,
        submitted=parsed.submitted,
        delivered=parsed.delivered,
        submit_date=parsed.submit_date,
        done_date=parsed.done_date,
        text=parsed.text,
        from_tlv=tlv_id is not None or message_state is not None or network_error is not None,
        from_text=from_text,
        intermediate=bool(esm_class & ESM_INTERMEDIATE),
    )
