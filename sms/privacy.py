"""Masking of phone numbers and message bodies for logs.

Lives in `sms` because the SMS package must not import `callcenter`; the case
service and the voice channel import it from here.
"""

from __future__ import annotations


def mask_number(number: str | None) -> str:
    """Keep the first three and last four digits: `+86138****5678`.

    Short or odd values are masked whole, so nothing a caller typed leaks.
    """
    if not number:
        return "-"
    text = str(number)
    if len(text) <= 7:
        return "*" * len(text)
    return text[:-8] + "****" + text[-4:] if len(text) >= 11 else text[:3] + "****" + text[-4:]


def mask_text(text: str | None) -> str:
    """A message body reduced to its length."""
    if text is None:
        return "-"
    return f"<{len(text)} chars>"
