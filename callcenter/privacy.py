"""Who may see a reporter's phone number, and every output's way of showing it (docs/privacy.md).

The rule in one line: a reader sees a number unmasked only if the reader's role may see
numbers at all *and* the reporter did not ask for anonymity (匿名) or confidentiality (保密).
Everything else gets the masked form from `sms.privacy`, the one masking implementation:
the reporter's number field, numbers typed into descriptions and notes, and the case log.
The public (Open311) never sees a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from sms.privacy import find_numbers, mask_number, mask_numbers_in_text, mask_text

__all__ = [
    "PHONE_FIELDS", "find_numbers", "mask_number", "mask_numbers_in_text", "mask_text", "may_see_number",
    "phone_for", "text_for", "changes_for", "log_changes", "is_number_search", "restore_masked",
]

# Keys whose values are phone numbers wherever they appear (log lines, case-log changes, events).
PHONE_FIELDS = frozenset({"phone", "reporter_phone", "reporter", "caller", "recipient", "sender",
                          "callerid", "msisdn", "to", "from_number", "supervisor_phone"})


class _Reported(Protocol):
    anonymous: bool
    confidential: bool


def may_see_number(role_sees_numbers: bool, case: _Reported | None = None) -> bool:
    """Whether a reader whose role may (or may not) see numbers sees this case's numbers."""
    if not role_sees_numbers:
        return False
    return case is None or not (case.anonymous or case.confidential)


def phone_for(phone: str | None, visible: bool) -> str | None:
    """A number field: as it is, or masked (`+86139****5678`); None stays None."""
    if not phone:
        return None
    return phone if visible else mask_number(phone)


def text_for(text: str | None, visible: bool) -> str | None:
    """Free text (description, note, reason): numbers typed into it masked unless visible."""
    if text is None or visible:
        return text
    return mask_numbers_in_text(text)


def changes_for(changes: Mapping[str, Any], visible: bool) -> dict[str, Any]:
    """A case-log entry's changes as this reader may see them (also masks entries written
    before numbers were masked at write time)."""
    return {key: _value_for(key, value, visible) for key, value in changes.items()}


def _value_for(key: str, value: Any, visible: bool) -> Any:
    if isinstance(value, Mapping):
        return {k: _value_for(key if k in ("from", "to") else k, v, visible) for k, v in value.items()}
    if isinstance(value, list):
        return [_value_for(key, v, visible) for v in value]
    if isinstance(value, str):
        if key in PHONE_FIELDS and not visible and "****" not in value:
            return mask_number(value)
        return text_for(value, visible)
    return value


def log_changes(key: str, old: Any, new: Any) -> dict[str, Any]:
    """A change as the case log stores it: a number is written masked, never in full."""
    if key in PHONE_FIELDS:
        return {"from": mask_number(old) if old else None, "to": mask_number(new) if new else None}
    return {"from": old, "to": new}


def is_number_search(text: str | None) -> bool:
    """Whether a free-text query could find a case by a phone number (or part of one).

    Five digits in a row already go past what a masked number shows, so such a search must
    not match cases whose numbers the reader may not see.
    """
    if not text:
        return False
    run = 0
    for ch in text:
        if ch.isdecimal():
            run += 1
            if run >= 5:
                return True
        elif ch not in " -.\u3000\uff0d\uff0e()\uff08\uff09+":
            run = 0
    return bool(find_numbers(text))


def restore_masked(original: str, edited: str) -> str:
    """An edit of text a reader saw masked: each masked number still in it, unchanged, gets its
    original back, so saving a masked description does not overwrite what the citizen wrote."""
    for start, end, national in find_numbers(original):
        masked = mask_number(national)
        if masked in edited:
            edited = edited.replace(masked, original[start:end], 1)
    return edited
