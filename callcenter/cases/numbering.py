"""Intake numbers (受理编号): what citizens key on a phone pad and text back.

Shape: YYMMDD + daily serial (5 digits by default) + one Damm check digit = 12 digits.
Date first so staff can read a number's age at a glance; digits only so it can be keyed
on a phone pad and spoken digit by digit. The Damm check digit catches every single
wrong digit and every swap of two neighbouring digits, the two errors people make when
keying or reading back a number.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass

# The totally anti-symmetric quasigroup of order 10 used by the Damm algorithm.
_DAMM_TABLE = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)

MAX_LENGTH = 12


def damm_check_digit(digits: str) -> str:
    interim = 0
    for char in digits:
        interim = _DAMM_TABLE[interim][ord(char) - 48]
    return str(interim)


def damm_valid(digits: str) -> bool:
    return damm_check_digit(digits) == "0"


class InvalidCaseNumber(ValueError):
    """The text is not an intake number; the message says why, for the citizen or caller."""


@dataclass(frozen=True, order=True)
class CaseNumber:
    value: str

    @classmethod
    def build(cls, day: dt.date, serial: int, serial_digits: int = 5) -> CaseNumber:
        if not 1 <= serial < 10**serial_digits:
            raise ValueError(f"daily serial {serial} does not fit {serial_digits} digits")
        body = f"{day:%y%m%d}{serial:0{serial_digits}d}"
        return cls(body + damm_check_digit(body))

    @classmethod
    def parse(cls, text: str) -> CaseNumber:
        """Accept what a citizen types: full-width digits, spaces and dashes are fine."""
        if not isinstance(text, str):
            raise InvalidCaseNumber("intake number must be a string of digits")
        cleaned = unicodedata.normalize("NFKC", text).replace(" ", "").replace("-", "")
        if not cleaned:
            raise InvalidCaseNumber("intake number is empty")
        if not cleaned.isascii() or not cleaned.isdigit():
            raise InvalidCaseNumber("intake number must contain digits only")
        if not 8 <= len(cleaned) <= MAX_LENGTH:
            raise InvalidCaseNumber(f"intake number must have 8 to {MAX_LENGTH} digits")
        if not damm_valid(cleaned):
            raise InvalidCaseNumber("intake number check digit is wrong")
        return cls(cleaned)

    @property
    def day_prefix(self) -> str:
        return self.value[:6]

    def spoken_digits(self) -> list[str]:
        return list(self.value)

    def __str__(self) -> str:
        return self.value
