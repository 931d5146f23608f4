"""The one place phone numbers are masked: a number field, numbers inside free text, bodies.

Every output (API, Open311, console pages and SSE, logs, exports, the case log) masks
through these functions; `callcenter/privacy.py` decides *who* sees what, this module only
*how* a number looks masked. docs/privacy.md is the policy.

Lives in `sms` because the SMS package must not import `callcenter`; the SMPP client and
the gateways mask their log lines with it too.
"""

from __future__ import annotations

import re
import unicodedata

# Between two digits of a number people type nothing, a space, a hyphen or a dot, in ASCII
# or full-width (IME) forms, sometimes two of them ("139 - 1234"): up to three such marks.
_SEP = r"[ \t\u00a0\u3000.\-\u2010-\u2015\u2212\uff0d\uff0e_/\u30fb\u00b7]{0,3}"
_D = r"\d"  # any Unicode decimal digit: ASCII, full-width (１３９), and the rest
_OPEN = r"[(\uff08\[【]"
_CLOSE = r"[)\uff09\]】]"
# +86, 0086, 86 and (+86), in ASCII or full-width.
_CC = rf"(?:{_OPEN}?(?:[+\uff0b]|[0０]{_SEP}[0０])?{_SEP}[8８]{_SEP}[6６]{_CLOSE}?{_SEP})"


def _digits(count: int) -> str:
    return "".join(rf"{_SEP}{_D}" for _ in range(count))


# Mainland mobile: 1[3-9] + 9 digits.
_MOBILE = rf"{_CC}?[1１]{_SEP}[3-9３-９]{_digits(9)}"
# Fixed line with its trunk 0 and area code (010, 02x: 3 digits; others: 4), area code in
# brackets or not, then a 7 or 8 digit local number: 0755-12345678, (0755)12345678, 010 1234 5678.
_FIXED = (rf"{_CC}?{_OPEN}?[0０]{_SEP}[1-9１-９]{_digits(1)}(?:{_SEP}{_D})?{_CLOSE}?"
          rf"{_digits(7)}(?:{_SEP}{_D})?")
# After +86/0086 the trunk 0 is dropped: +86 755 1234 5678, 0086-10-12345678.
_FIXED_INTL = (rf"{_CC}{_OPEN}?[1-9１-９]{_digits(1)}(?:{_SEP}{_D})?{_CLOSE}?"
               rf"{_digits(7)}(?:{_SEP}{_D})?")
_PHONE_IN_TEXT = re.compile(rf"(?<!\d)(?:{_MOBILE}|{_FIXED}|{_FIXED_INTL})(?!\d)")


def _ascii_digits(text: str) -> str:
    return "".join(str(unicodedata.decimal(ch)) for ch in text if ch.isdecimal())


def _national(digits: str) -> str:
    """The national number, trunk 0 included for fixed lines: 13912345678, 075512345678."""
    for prefix in ("0086", "86"):
        rest = digits[len(prefix):]
        if digits.startswith(prefix) and len(rest) >= 9:
            if rest.startswith("0") or (len(rest) == 11 and rest[0] == "1" and rest[1] in "3456789"):
                return rest
            return "0" + rest  # +86 755 ...: the trunk 0 is dropped after the country code
    return digits


def mask_number(number: str | None) -> str:
    """A number field as it may be shown: first three and last four digits, `+86138****5678`.

    Short or odd values are masked whole, so nothing a caller typed leaks.
    """
    if not number:
        return "-"
    text = str(number)
    if len(text) <= 7:
        return "*" * len(text)
    return text[:-8] + "****" + text[-4:] if len(text) >= 11 else text[:3] + "****" + text[-4:]


def find_numbers(text: str) -> list[tuple[int, int, str]]:
    """Every phone number written in `text`: (start, end, national digits)."""
    return [(m.start(), m.end(), _national(_ascii_digits(m.group(0)))) for m in _PHONE_IN_TEXT.finditer(text)]


def mask_numbers_in_text(text: str, *, whole: bool = False) -> str:
    """`text` with every Chinese phone number in it, however spelled, masked as `139****5678`.

    Mobile and fixed-line numbers, with or without +86/0086/86, area code in brackets or not,
    full-width digits, spaces, hyphens or dots between digits. Intake numbers (12 digits
    from a date), grid codes and coordinates are left alone. `whole` (for the public) hides
    every character of the number instead of keeping the first three and last four digits.
    """
    if not text or not any(ch.isdecimal() for ch in text):
        return text
    if whole:
        return _PHONE_IN_TEXT.sub(lambda m: "*" * len(m.group(0)), text)
    return _PHONE_IN_TEXT.sub(lambda m: mask_number(_national(_ascii_digits(m.group(0)))), text)


def mask_text(text: str | None) -> str:
    """A message body reduced to its length (SMS bodies in logs)."""
    if text is None:
        return "-"
    return f"<{len(text)} chars>"
