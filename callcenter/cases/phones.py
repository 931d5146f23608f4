"""Reporter phone numbers: normalised to E.164 once, at the edge."""

from __future__ import annotations

import re
import unicodedata

import phonenumbers

# The common case, checked without phonenumbers' full parse (a third of an SMS's intake CPU):
# a Chinese mobile as +86..., 86... or, in region CN, national, valid by libphonenumber's own
# mobile pattern for CN (so exactly what is_valid_number accepts as a mobile).
_CN_MOBILE = re.compile(r"(\+86|86)?(1[0-9]{10})", re.ASCII)
_CN_MOBILE_PLAN = re.compile(phonenumbers.PhoneMetadata.metadata_for_region("CN").mobile.national_number_pattern)


class InvalidPhoneNumber(ValueError):
    pass


def normalise_phone(raw: str, region: str = "CN") -> str:
    """Return E.164 (`+8613812345678`) or raise InvalidPhoneNumber.

    Accepts what SMSCs and Asterisk hand us: `13812345678`, `8613812345678`,
    `+86 138-1234-5678`, `075512345678`, full-width digits. The number must be valid for its
    region (number plan, not only length): `12345`, a 12-digit mobile or an unknown area
    code are refused, so no receipt SMS is queued to a number that cannot exist.
    """
    if not isinstance(raw, str):
        raise InvalidPhoneNumber("phone number must be a string")
    fast = _CN_MOBILE.fullmatch(raw)
    if fast and (fast.group(1) or region == "CN") and _CN_MOBILE_PLAN.fullmatch(fast.group(2)):
        return "+86" + fast.group(2)
    text = unicodedata.normalize("NFKC", raw).strip()
    if not text or len(text) > 32:
        raise InvalidPhoneNumber("phone number is empty or too long")
    if any(ch not in "+0123456789 -()" for ch in text):
        raise InvalidPhoneNumber("phone number has characters other than digits")
    digits = "".join(ch for ch in text if ch.isdigit())
    # SMSCs often send Chinese mobiles as 86XXXXXXXXXXX without the plus sign.
    if not text.startswith("+") and digits.startswith("86") and len(digits) == 13:
        text = "+" + digits
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"not a phone number: {exc}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidPhoneNumber("not a possible phone number")
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber("not a valid number in its region's numbering plan")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def is_mobile(e164: str) -> bool:
    """Whether an SMS to this number can reach a handset (mobile, or unknown fixed/mobile)."""
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.number_type(parsed) in (
        phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)
