"""Parsing citizen and supervisor SMS commands (sms.keywords)."""

from __future__ import annotations

import random

import pytest

from sms.keywords import (
    FreeText,
    Help,
    Malformed,
    OptOut,
    QueryStatus,
    Rate,
    TaskAnswer,
    TaskReply,
    parse_command,
)

NUMBER = "241124000123"
CONFIRMED = TaskAnswer.CONFIRMED
NOT_CONFIRMED = TaskAnswer.NOT_CONFIRMED


@pytest.mark.parametrize(
    "text",
    [
        f"CX {NUMBER}",
        f"cx{NUMBER}",
        f"Cx+{NUMBER}",
        f"cx:{NUMBER}",
        f"CX：{NUMBER}",
        f"CX，{NUMBER}",
        "ｃｘ２４１１２４０００１２３",
        "ＣＸ　２４１１２４０００１２３",
        f"查询{NUMBER}",
        f"查询：{NUMBER}",
        f"查询 {NUMBER}",
        f"查詢{NUMBER}",
        f"chaxun {NUMBER}",
        f"  CX {NUMBER}  \n",
        f"CX {NUMBER}。",
        f"\ufeffCX {NUMBER}",
    ],
)
def test_query_status(text: str) -> None:
    assert parse_command(text) == QueryStatus(NUMBER)


def test_query_keeps_short_numbers_and_leading_zeros() -> None:
    assert parse_command("CX 0012") == QueryStatus("0012")


@pytest.mark.parametrize(
    ("text", "score"),
    [
        (f"PJ {NUMBER} 5", 5),
        (f"pj{NUMBER} 1", 1),
        (f"PJ+{NUMBER}+3", 3),
        (f"评价 {NUMBER} 4", 4),
        (f"评价：{NUMBER}，5分", 5),
        (f"評價{NUMBER} 2", 2),
        ("ｐｊ　２４１１２４０００１２３　５", 5),
        (f"pingjia {NUMBER} 3", 3),
    ],
)
def test_rate(text: str, score: int) -> None:
    assert parse_command(text) == Rate(NUMBER, score)


@pytest.mark.parametrize(
    "text", ["TD", "td", "Td", "ＴＤ", "退订", "退訂", "退订。", " td ", "tuiding"]
)
def test_opt_out(text: str) -> None:
    assert parse_command(text) == OptOut()


@pytest.mark.parametrize("text", ["BZ", "bz", "ｂｚ", "帮助", "幫助", "帮助？", "BANGZHU"])
def test_help(text: str) -> None:
    assert parse_command(text) == Help()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", TaskReply(CONFIRMED)),
        ("１", TaskReply(CONFIRMED)),
        ("属实", TaskReply(CONFIRMED)),
        ("屬實", TaskReply(CONFIRMED)),
        ("2", TaskReply(NOT_CONFIRMED)),
        ("不属实", TaskReply(NOT_CONFIRMED)),
        ("不属实。", TaskReply(NOT_CONFIRMED)),
        ("1 T1234", TaskReply(CONFIRMED, "T1234")),
        ("1T1234", TaskReply(CONFIRMED, "T1234")),
        ("2 t1234", TaskReply(NOT_CONFIRMED, "T1234")),
        ("T1234 属实", TaskReply(CONFIRMED, "T1234")),
        ("T1234属实", TaskReply(CONFIRMED, "T1234")),
        ("t1234 不属实", TaskReply(NOT_CONFIRMED, "T1234")),
        ("属实 T1234", TaskReply(CONFIRMED, "T1234")),
        ("不属实：T1234", TaskReply(NOT_CONFIRMED, "T1234")),
        ("T1234 1", TaskReply(CONFIRMED, "T1234")),
        ("T1234，2", TaskReply(NOT_CONFIRMED, "T1234")),
        ("ｔ１２３４　属实", TaskReply(CONFIRMED, "T1234")),
    ],
)
def test_task_reply(text: str, expected: TaskReply) -> None:
    assert parse_command(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "我想查询一下路灯",
        "查询一下",
        f"请帮我查询{NUMBER}",
        f"查询{NUMBER} 路灯还没修好",
        "CX E0103200608150001",  # letters are not part of the number here
        "TD 我不想收到短信了但是路灯还是坏的",
        "帮助我们修一下人民路的井盖",
        "12",
        "3",
        "属实啊",
        "我觉得不属实",
        "",
        "   ",
        "人民路与解放路交叉口东北角井盖丢失，很危险",
        "😀",
    ],
)
def test_free_text(text: str) -> None:
    assert parse_command(text) == FreeText(text)


def test_free_text_keeps_the_original_characters() -> None:
    """The report text is what the citizen typed, not the normalised form."""
    original = "  ｃｘ 路灯 坏了！ "
    assert parse_command(original) == FreeText(original)


def test_results_are_frozen() -> None:
    result = parse_command(f"CX {NUMBER}")
    with pytest.raises(AttributeError):
        result.number = "1"  # type: ignore[misc,union-attr]


def test_any_message_with_report_content_is_free_text() -> None:
    """Keywords mixed with report words never turn a report into a command."""
    rng = random.Random(12319)
    keywords = [
        "查询",
        "CX",
        "评价",
        "PJ",
        "退订",
        "TD",
        "帮助",
        "属实",
        "不属实",
        "1",
        "T1234",
        NUMBER,
    ]
    report_words = ["路灯", "井盖", "人民路", "坏了", "垃圾"]
    fillers = ["，", "。", " ", "+", ":"]
    for _ in range(3000):
        pieces = [rng.choice(keywords + fillers) for _ in range(rng.randrange(0, 5))]
        pieces.insert(rng.randrange(len(pieces) + 1), rng.choice(report_words))
        text = "".join(pieces)
        assert parse_command(text) == FreeText(text), text


@pytest.mark.parametrize(("text", "keyword"), [
    ("CX 261203 000019", "CX"),          # a space inside the number
    (f"PJ {NUMBER} 6", "PJ"),            # score out of range
    (f"PJ {NUMBER}", "PJ"),              # no score
    ("查询", "查询"),                      # the keyword alone
    ("cx 2611-2400-0123", "CX"),         # dashes
    (f"评价 {NUMBER} 0分", "评价"),
    ("TD 1", "TD"),
    ("T12 7", "T12"),                    # a task code with an answer that is not 1 or 2
    ("CX", "CX"),
    (f"CX {NUMBER}0", "CX"),             # 13 digits is not an intake number
    (f"PJ {NUMBER} 0", "PJ"),
    (f"PJ {NUMBER}5", "PJ"),             # score run into the number
    ("T12341", "T12341"),                # ambiguous: code T1234 + 1, or code T12341?
    ("T1234", "T1234"),
    ("td1", "TD"),
])
def test_a_command_attempt_that_does_not_parse_is_malformed(text: str, keyword: str) -> None:
    assert parse_command(text) == Malformed(keyword, text)


@pytest.mark.parametrize("text", ["CX 2612 路灯坏了", "查询一下路灯", "PJ这个事情怎么处理", "TD路口积水", "12345 路灯"])
def test_a_keyword_with_words_after_it_stays_a_report(text: str) -> None:
    assert parse_command(text) == FreeText(text)
