"""Hypothesis strategies: Chinese phone numbers as people write them, and a leak detector.

A number is drawn as its national digits (mobile `13912345678`, fixed line `075512345678`)
and then spelled: +86 / 0086 / 86 / (+86) or nothing, groups split by spaces, hyphens,
dots or their full-width forms, the area code in brackets, digits full-width or not.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import phonenumbers
from hypothesis import strategies as st

AREA_CODES = ["010", "020", "021", "022", "023", "024", "025", "027", "028", "029", "0755", "0571", "0851",
              "0311", "0991", "0898"]
SEPARATORS = ["", " ", "-", ".", "－", "　", " - ", "．"]
PREFIXES = ["", "+86", "+86 ", "0086", "0086-", "86", "(+86)", "+86-", "＋86"]
FILLERS = ["市民反映", "龙岗大道井盖丢失，", "联系电话：", "电话", "请回电", "（受理编号261124000421）", "地址：人民路12号",
           "网格44030710200101", "", " ", "，谢谢", "14:30来电"]


@dataclass(frozen=True)
class Spelled:
    national: str  # 13912345678 or 075512345678
    text: str  # as written
    e164: str  # +8613912345678 or +8675512345678

    @property
    def api_form(self) -> str:
        """How an API client sends it (the document's pattern)."""
        return self.national


def _full_width(text: str) -> str:
    return "".join(chr(ord(ch) - 0x30 + 0xFF10) if ch.isdigit() else ch for ch in text)


def _valid(national: str) -> bool:
    return phonenumbers.is_valid_number(phonenumbers.parse(national, "CN"))


@st.composite
def _national_numbers(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return "1" + draw(st.sampled_from("3456789")) + draw(st.text("0123456789", min_size=9, max_size=9))
    area = draw(st.sampled_from(AREA_CODES))
    local_len = 8 if len(area) == 3 else draw(st.sampled_from([7, 8]))
    return area + draw(st.sampled_from("2345678")) + draw(st.text("0123456789", min_size=local_len - 1,
                                                                   max_size=local_len - 1))


def national_numbers() -> st.SearchStrategy[str]:
    """Numbers that exist in the mainland number plan (the service refuses the others)."""
    return _national_numbers().filter(_valid)


@st.composite
def spellings(draw: st.DrawFn) -> Spelled:
    national = draw(national_numbers())
    sep = draw(st.sampled_from(SEPARATORS))
    prefix = draw(st.sampled_from(PREFIXES))
    mobile = national.startswith("1")
    if mobile:
        groups = draw(st.sampled_from([[national], [national[:3], national[3:7], national[7:]],
                                       [national[:3], national[3:]]]))
        body = sep.join(groups)
    else:
        area_len = 3 if national[:3] in AREA_CODES else 4
        area, local = national[:area_len], national[area_len:]
        if prefix and draw(st.booleans()):
            area = area[1:]  # +86 755 ...: the trunk 0 dropped after the country code
        elif prefix and not draw(st.booleans()):
            prefix = ""
        if len(local) == 8 and draw(st.booleans()):
            local = local[:4] + sep + local[4:]
        body = f"({area}){local}" if draw(st.booleans()) else area + sep + local
    text = prefix + body
    if draw(st.booleans()):
        text = _full_width(text).replace("(", "（").replace(")", "）")
    e164 = "+86" + national[1:] if not mobile else "+86" + national
    return Spelled(national=national, text=text, e164=e164)


@st.composite
def texts_with(draw: st.DrawFn, spelled: Spelled) -> str:
    """Free text with the number somewhere in it.

    Never glued to other digits: `网格44030710200101` + `13912345678` is one 25-digit run, which
    is no phone number, so the policy (docs/privacy.md) does not claim to find one there.
    """
    before, after = draw(st.sampled_from(FILLERS)), draw(st.sampled_from(FILLERS))
    if before[-1:].isdigit():
        before += "，"
    if after[:1].isdigit():
        after = "，" + after
    return before + spelled.text + after


_RUN = re.compile(r"[0-9][0-9 .\-()+]*")


def leaks(output: str, national: str) -> bool:
    """Whether `output` still carries the whole number in any spelling."""
    folded = unicodedata.normalize("NFKC", output).replace("\u3000", " ")
    digits_only = national.lstrip("0")
    for run in _RUN.findall(folded):
        digits = "".join(ch for ch in run if ch.isdigit())
        if digits_only in digits:
            return True
    return False
