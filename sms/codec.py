"""Text codecs for SMPP short messages (短信编码), pure functions without I/O.

Decoding never raises by default: a citizen's report (市民上报) must never be lost
because one byte is wrong.  Bytes that cannot be decoded become U+FFFD and the
result carries ``lossy=True`` so the caller can keep the report as a flagged draft
(草稿案卷) instead of dropping it.  ``strict=True`` turns the same conditions into a
`DecodeError` for callers (tests, tooling) that prefer to fail.

data_coding values handled:

* 0 - GSM 03.38 default alphabet with the escape (extension) table.  In SMPP the
  SMSC sends one septet per octet ("unpacked"); ``gsm_packed=True`` decodes the
  packed 7-bit form instead (only for a payload without a UDH).
* 1 - IA5 / ASCII.
* 3 - Latin-1.
* 8 - UCS-2 big-endian; surrogate pairs become real characters (UTF-16).
* 6, 7, 10, 14 - Cyrillic, Hebrew, ISO-2022-JP, KS C 5601 via Python codecs.
* 0x10-0xFF - the GSM DCS coding groups (message class / flash / message waiting),
  reduced to their alphabet (GSM 7-bit, 8-bit data or UCS-2).
* Any value listed in ``gbk_codings`` - GBK/GB2312 (decoded as GB18030, a superset).
  Chinese gateways translating CMPP ``Msg_Fmt=15`` send data_coding 15; some send
  GBK bytes under 0, in which case configure ``frozenset({0, 15})``.

Anything else (binary 2/4, JIS 5, compressed text) is decoded as UTF-8 when valid,
otherwise as Latin-1, and always flagged lossy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_GBK_CODINGS",
    "DataCoding",
    "DecodeError",
    "DecodedText",
    "EncodeError",
    "EncodedText",
    "decode_short_message",
    "encode_text",
    "gsm7_decode",
    "gsm7_encode",
    "gsm7_fits",
    "gsm7_pack",
    "gsm7_septet_count",
    "gsm7_unpack",
    "ucs2_decode",
    "ucs2_encode",
]


class DataCoding(enum.IntEnum):
    """The SMPP 3.4 data_coding values this package produces or names."""

    GSM7 = 0x00
    IA5 = 0x01
    BINARY = 0x02
    LATIN1 = 0x03
    UCS2 = 0x08
    GBK = 0x0F


DEFAULT_GBK_CODINGS: Final[frozenset[int]] = frozenset({DataCoding.GBK})

REPLACEMENT: Final = "\ufffd"


class DecodeError(ValueError):
    """Raised only in strict mode; the default is to replace and flag ``lossy``."""


class EncodeError(ValueError):
    """The text cannot be represented in the requested alphabet."""


@dataclass(frozen=True, slots=True)
class DecodedText:
    """Decoded message text; ``lossy`` means at least one character was replaced."""

    text: str
    lossy: bool = False


@dataclass(frozen=True, slots=True)
class EncodedText:
    """An encoded MT body (without UDH) and the data_coding that goes with it."""

    payload: bytes
    data_coding: int


# --- GSM 03.38 ------------------------------------------------------------------

_ESC: Final = 0x1B

# 3GPP TS 23.038 §6.2.1, default alphabet, one row of 16 code points per line.
# 0x1B is the escape to the extension table and is replaced by U+FFFD here so
# it never maps to a real character.
_GSM_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\ufffdÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# 3GPP TS 23.038 §6.2.1.1, default extension table (after ESC).
_GSM_EXTENSION: Final[dict[int, str]] = {
    0x0A: "\x0c",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
_GSM_ENCODE: Final[dict[str, bytes]] = {
    **{ch: bytes([i]) for i, ch in enumerate(_GSM_BASIC) if i != _ESC},
    **{ch: bytes([_ESC, code]) for code, ch in _GSM_EXTENSION.items()},
}

assert len(_GSM_BASIC) == 128  # table shape guard at import time


def gsm7_septet_count(text: str) -> int | None:
    """Septets needed for ``text`` (escaped characters count 2), None if it does not fit."""
    total = 0
    for ch in text:
        encoded = _GSM_ENCODE.get(ch)
        if encoded is None:
            return None
        total += len(encoded)
    return total


def gsm7_fits(text: str) -> bool:
    """True when every character is in the GSM default alphabet or its extension."""
    return gsm7_septet_count(text) is not None


def gsm7_encode(text: str) -> bytes:
    """Encode to unpacked septets, one per octet, the form SMPP carries."""
    out = bytearray()
    for pos, ch in enumerate(text):
        encoded = _GSM_ENCODE.get(ch)
        if encoded is None:
            msg = f"character U+{ord(ch):04X} at position {pos} is not in the GSM 7-bit alphabet"
            raise EncodeError(msg)
        out += encoded
    return bytes(out)


def gsm7_decode(septets: bytes, *, strict: bool = False) -> DecodedText:
    """Decode unpacked septets, applying the escape table.

    An unknown escape sequence shows the base character as 23.038 asks, and a
    dangling ESC or an octet above 0x7F becomes U+FFFD; all of these set ``lossy``.
    """
    out: list[str] = []
    lossy = False
    i = 0
    n = len(septets)
    while i < n:
        code = septets[i]
        if code > 0x7F:
            if strict:
                msg = f"octet 0x{code:02X} at offset {i} is not a GSM 7-bit septet"
                raise DecodeError(msg)
            out.append(REPLACEMENT)
            lossy = True
        elif code == _ESC:
            if i + 1 >= n:
                if strict:
                    msg = f"escape character at offset {i} has nothing after it"
                    raise DecodeError(msg)
                out.append(REPLACEMENT)
                lossy = True
            else:
                i += 1
                ext = septets[i]
                mapped = _GSM_EXTENSION.get(ext)
                if mapped is None:
                    if strict:
                        msg = f"unknown GSM escape sequence 1B {ext:02X} at offset {i - 1}"
                        raise DecodeError(msg)
                    out.append(_GSM_BASIC[ext] if ext <= 0x7F and ext != _ESC else REPLACEMENT)
                    lossy = True
                else:
                    out.append(mapped)
        else:
            out.append(_GSM_BASIC[code])
        i += 1
    return DecodedText("".join(out), lossy)


def gsm7_pack(septets: bytes, *, fill_bits: int = 0) -> bytes:
    """Pack septets into octets, least significant bit first (23.038 §6.1.2.1.1)."""
    if not 0 <= fill_bits <= 6:  # fill is at most 6 bits
        msg = f"fill_bits must be 0..6, got {fill_bits}"
        raise ValueError(msg)
    acc = 0
    nbits = fill_bits
    out = bytearray()
    for septet in septets:
        if septet > 0x7F:
            msg = f"0x{septet:02X} is not a septet"
            raise ValueError(msg)
        acc |= septet << nbits
        nbits += 7
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        out.append(acc & 0xFF)
    return bytes(out)


def gsm7_unpack(data: bytes, *, septets: int | None = None, fill_bits: int = 0) -> bytes:
    """Unpack packed 7-bit data into one septet per octet.

    Without ``septets`` the count is inferred from the length; when the last
    septet exactly fills the final octet and is 0x00 or CR it is taken as the
    padding 23.038 §6.1.2.3.1 describes and dropped (a real trailing "@" is lost,
    which is the ambiguity of the packed form itself).
    """
    if not 0 <= fill_bits <= 6:
        msg = f"fill_bits must be 0..6, got {fill_bits}"
        raise ValueError(msg)
    available = (len(data) * 8 - fill_bits) // 7
    count = available if septets is None else septets
    if count > available:
        msg = f"{len(data)} octets hold at most {available} septets, {count} requested"
        raise ValueError(msg)
    value = int.from_bytes(data, "little") >> fill_bits
    out = bytes((value >> (7 * k)) & 0x7F for k in range(count))
    exact_fit = (len(data) * 8 - fill_bits) % 7 == 0
    if septets is None and exact_fit and out and out[-1] in (0x00, 0x0D):
        out = out[:-1]
    return out


# --- UCS-2 / UTF-16 ----------------------------------------------------------------


def ucs2_encode(text: str) -> bytes:
    """UTF-16 big-endian, so characters outside the BMP become surrogate pairs."""
    try:
        return text.encode("utf-16-be")
    except UnicodeEncodeError as exc:
        msg = f"text has a lone surrogate U+{ord(text[exc.start]):04X} at position {exc.start}"
        raise EncodeError(msg) from exc


def ucs2_decode(payload: bytes, *, strict: bool = False) -> DecodedText:
    """Decode big-endian UCS-2/UTF-16, joining surrogate pairs.

    A trailing odd byte or a lone surrogate becomes U+FFFD with ``lossy=True``.
    A little-endian byte-order mark (FF FE), which a few handsets send, switches
    to little-endian; a leading big-endian BOM is dropped.
    """
    codec = "utf-16-be"
    body = payload
    if body[:2] == b"\xff\xfe":
        codec, body = "utf-16-le", body[2:]
    elif body[:2] == b"\xfe\xff":
        body = body[2:]
    try:
        return DecodedText(body.decode(codec), lossy=False)
    except UnicodeDecodeError as exc:
        if strict:
            reason = "odd number of bytes" if len(body) % 2 else "lone surrogate"
            msg = f"invalid UCS-2 at byte {exc.start} of {len(body)}: {reason}"
            raise DecodeError(msg) from exc
        return DecodedText(body.decode(codec, errors="replace"), lossy=True)


# --- dispatch ------------------------------------------------------------------------


def _decode_with(payload: bytes, codec: str, *, strict: bool) -> DecodedText:
    try:
        return DecodedText(payload.decode(codec), lossy=False)
    except UnicodeDecodeError as exc:
        if strict:
            msg = f"invalid {codec} byte 0x{payload[exc.start]:02X} at offset {exc.start}"
            raise DecodeError(msg) from exc
        return DecodedText(payload.decode(codec, errors="replace"), lossy=True)


def _decode_gsm(payload: bytes, *, packed: bool, strict: bool) -> DecodedText:
    septets = gsm7_unpack(payload) if packed else payload
    return gsm7_decode(septets, strict=strict)


def _decode_unknown(payload: bytes, data_coding: int, *, strict: bool) -> DecodedText:
    if strict:
        msg = f"data_coding 0x{data_coding:02X} is not a text alphabet this decoder knows"
        raise DecodeError(msg)
    try:
        return DecodedText(payload.decode("utf-8"), lossy=True)
    except UnicodeDecodeError:
        return DecodedText(payload.decode("latin-1"), lossy=True)


_PYTHON_CODECS: Final[dict[int, str]] = {
    0x01: "ascii",
    0x03: "latin-1",
    0x06: "iso8859_5",
    0x07: "iso8859_8",
    0x0A: "iso2022_jp",
    0x0E: "euc_kr",
}

_ALPHABET_GSM: Final = 0
_ALPHABET_8BIT: Final = 1
_ALPHABET_UCS2: Final = 2


def _dcs_alphabet(data_coding: int) -> int | None:
    """The alphabet of a GSM DCS coding group (23.038 §4), None for compressed/reserved."""
    group = data_coding & 0xF0
    if group in (0x00, 0x10, 0x40, 0x50):  # general data coding, uncompressed
        return (data_coding >> 2) & 0x03
    if group in (0xC0, 0xD0):  # message waiting, GSM default alphabet
        return _ALPHABET_GSM
    if group == 0xE0:  # message waiting, UCS-2
        return _ALPHABET_UCS2
    if group == 0xF0:  # data coding / message class
        return _ALPHABET_8BIT if data_coding & 0x04 else _ALPHABET_GSM
    return None


def decode_short_message(
    payload: bytes,
    data_coding: int,
    *,
    gbk_codings: frozenset[int] = DEFAULT_GBK_CODINGS,
    gsm_packed: bool = False,
    strict: bool = False,
) -> DecodedText:
    """Decode a short_message (UDH already removed) according to its data_coding.

    ``gbk_codings`` is checked first so a gateway that puts GBK under data_coding
    0 can be configured without code changes.  Never raises unless ``strict``.
    """
    if data_coding in gbk_codings:
        # GB18030 is a superset of GBK and GB2312 and also accepts the 0x80 euro.
        return _decode_with(payload, "gb18030", strict=strict)
    if data_coding == DataCoding.GSM7:
        return _decode_gsm(payload, packed=gsm_packed, strict=strict)
    if data_coding == DataCoding.UCS2:
        return ucs2_decode(payload, strict=strict)
    codec = _PYTHON_CODECS.get(data_coding)
    if codec is not None:
        return _decode_with(payload, codec, strict=strict)
    if data_coding >= 0x10:  # values below 0x10 are SMPP's own table
        alphabet = _dcs_alphabet(data_coding)
        if alphabet == _ALPHABET_GSM:
            return _decode_gsm(payload, packed=gsm_packed, strict=strict)
        if alphabet == _ALPHABET_UCS2:
            return ucs2_decode(payload, strict=strict)
    return _decode_unknown(payload, data_coding, strict=strict)


def encode_text(text: str, *, allow_gsm7: bool = True) -> EncodedText:
    """Encode an MT body: GSM 7-bit when every character fits, otherwise UCS-2."""
    if allow_gsm7 and gsm7_fits(text):
        return EncodedText(gsm7_encode(text), DataCoding.GSM7)
    return EncodedText(ucs2_encode(text), DataCoding.UCS2)
