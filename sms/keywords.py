"""SMS keyword commands (短信指令) from citizens and supervisors (监督员).

Conservative by design: the whole message must be a command, otherwise it is
`FreeText` and becomes a report.  "我想查询一下路灯" or "查询241124000123 路灯还没修"
are reports, not queries; losing a report to a misread command is worse than
answering a command attempt with the help text.

Accepted forms, after NFKC (full-width letters, digits, spaces and punctuation
become ASCII) and in any letter case:

=====================  ==========================================  ====================
command                keywords (pinyin initials, pinyin, 简/繁)     arguments
=====================  ==========================================  ====================
`QueryStatus`          CX, CHAXUN, 查询, 查詢                        number
`Rate`                 PJ, PINGJIA, 评价, 評價                       number, score 1-5
`OptOut`               TD, TUIDING, 退订, 退訂                       -
`Help`                 BZ, BANGZHU, 帮助, 幫助                       -
`TaskReply` confirmed  1, 属实, 屬實                                 optional task code
`TaskReply` rejected   2, 不属实, 不屬實                              optional task code
=====================  ==========================================  ====================

* Separators between keyword and arguments: space, "+", ":", "：", ",", "，",
  "、", optional between keyword and number.  The score needs a separator
  (``PJ 241124000123 5``; "5分" is accepted) because digits would run together.
* The number is 1-12 ASCII digits after NFKC; its check digit is validated by
  the case layer, not here.
* A task code is "T" followed by 1-12 digits (``T1234``), before or after the
  answer: ``1 T1234``, ``T1234 属实``, ``属实T1234``.  A bare digit answer after a
  code needs a separator (``T1234 1``), since ``T12341`` is ambiguous.
* Trailing "。", ".", "!" and "?" are ignored.
* A keyword (or task code) followed by nothing but digits and separators that fits none
  of the forms (``CX 261203 000019``: a space inside the number; ``PJ <number> 6``: out
  of range) is `Malformed`: a command attempt, answered with the help text, never a report.

"1" and "2" alone are also what a citizen answers to "满意回复1，不满意回复2";
the caller decides by who sent it which meaning applies.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Command",
    "FreeText",
    "Help",
    "Malformed",
    "OptOut",
    "QueryStatus",
    "Rate",
    "TaskAnswer",
    "TaskReply",
    "parse_command",
]


class TaskAnswer(enum.StrEnum):
    """A supervisor's verdict on a verification task (核实任务)."""

    CONFIRMED = "confirmed"  # 属实
    NOT_CONFIRMED = "not_confirmed"  # 不属实


@dataclass(frozen=True, slots=True)
class QueryStatus:
    """Ask for the status of case ``number`` (查询)."""

    number: str


@dataclass(frozen=True, slots=True)
class Rate:
    """Rate the handling of case ``number`` from 1 to 5 (评价)."""

    number: str
    score: int


@dataclass(frozen=True, slots=True)
class OptOut:
    """Stop sending SMS to this number (退订)."""


@dataclass(frozen=True, slots=True)
class Help:
    """Send the command list (帮助)."""


@dataclass(frozen=True, slots=True)
class TaskReply:
    """A supervisor's 属实/不属实 answer, optionally naming the task."""

    answer: TaskAnswer
    task_code: str | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """Starts like a command but does not parse (``CX 261203 000019``, ``PJ <number> 6``).

    Only a keyword followed by nothing but digits and separators counts: such a text is a
    command attempt, never a report, and is answered with the help text.
    """

    keyword: str
    text: str


@dataclass(frozen=True, slots=True)
class FreeText:
    """Anything that is not a command; ``text`` is exactly what was received."""

    text: str


Command = QueryStatus | Rate | OptOut | Help | TaskReply | Malformed | FreeText

_SEP: Final = r"[\s+:,、]"
_NUMBER: Final = r"([0-9]{1,12})"
_TASK: Final = r"(T[0-9]{1,12})"
_QUERY: Final = r"(?:CX|CHAXUN|查询|查詢)"
_RATE: Final = r"(?:PJ|PINGJIA|评价|評價)"
_OPT_OUT: Final = r"(?:TD|TUIDING|退订|退訂)"
_HELP: Final = r"(?:BZ|BANGZHU|帮助|幫助)"
_YES_WORDS: Final = ("属实", "屬實")
_NO_WORDS: Final = ("不属实", "不屬實")
_ANSWER_WORD: Final = "(" + "|".join((*_NO_WORDS, *_YES_WORDS)) + ")"
_ANSWER: Final = "(" + "|".join((*_NO_WORDS, *_YES_WORDS, "1", "2")) + ")"


def _full(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.ASCII)


_QUERY_RE: Final = _full(rf"{_QUERY}{_SEP}*{_NUMBER}")
_RATE_RE: Final = _full(rf"{_RATE}{_SEP}*{_NUMBER}{_SEP}+([1-5])(?:分|星)?")
_OPT_OUT_RE: Final = _full(_OPT_OUT)
_HELP_RE: Final = _full(_HELP)
_ANSWER_ONLY_RE: Final = _full(_ANSWER)
_ANSWER_CODE_RE: Final = _full(rf"{_ANSWER}{_SEP}*{_TASK}")
_CODE_WORD_RE: Final = _full(rf"{_TASK}{_SEP}*{_ANSWER_WORD}")
_CODE_DIGIT_RE: Final = _full(rf"{_TASK}{_SEP}+([12])")

# A keyword (or a task code) followed only by digits, separators, dashes and a score suffix.
_ATTEMPT_RE: Final = _full(rf"({_QUERY}|{_RATE}|{_OPT_OUT}|{_HELP}|T[0-9]+)(?:{_SEP}|[0-9#*-]|分|星)*")

_TRAILING: Final = "。.!?"


def _normalise(text: str) -> str:
    """NFKC, trim white space and invisible format characters, upper case."""
    folded = unicodedata.normalize("NFKC", text)
    chars = list(folded)
    while chars and (chars[-1].isspace() or unicodedata.category(chars[-1]) == "Cf"):
        chars.pop()
    while chars and (chars[0].isspace() or unicodedata.category(chars[0]) == "Cf"):
        chars.pop(0)
    trimmed = "".join(chars).rstrip(_TRAILING).rstrip()
    return trimmed.upper()


def _answer(word: str) -> TaskAnswer:
    return TaskAnswer.NOT_CONFIRMED if word == "2" or word in _NO_WORDS else TaskAnswer.CONFIRMED


def parse_command(text: str) -> Command:
    """Parse one SMS body into a command, or `FreeText` when unsure.

    >>> parse_command("ｃｘ２４１１２４０００１２３")
    QueryStatus(number='241124000123')
    >>> parse_command("我想查询一下路灯")
    FreeText(text='我想查询一下路灯')
    """
    norm = _normalise(text)
    if match := _QUERY_RE.fullmatch(norm):
        return QueryStatus(match.group(1))
    if match := _RATE_RE.fullmatch(norm):
        return Rate(match.group(1), int(match.group(2)))
    if _OPT_OUT_RE.fullmatch(norm):
        return OptOut()
    if _HELP_RE.fullmatch(norm):
        return Help()
    if match := _ANSWER_ONLY_RE.fullmatch(norm):
        return TaskReply(_answer(match.group(1)))
    if match := _ANSWER_CODE_RE.fullmatch(norm):
        return TaskReply(_answer(match.group(1)), match.group(2))
    if match := _CODE_WORD_RE.fullmatch(norm) or _CODE_DIGIT_RE.fullmatch(norm):
        return TaskReply(_answer(match.group(2)), match.group(1))
    if match := _ATTEMPT_RE.fullmatch(norm):
        return Malformed(match.group(1), text)
    return FreeText(text)
