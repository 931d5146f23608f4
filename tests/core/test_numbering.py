import datetime as dt
import random

import pytest

from callcenter.cases.numbering import CaseNumber, InvalidCaseNumber, damm_valid

DAY = dt.date(2026, 11, 24)


def sample_numbers(count: int = 300) -> list[str]:
    rng = random.Random(214)
    return [CaseNumber.build(DAY, rng.randrange(1, 100_000)).value for _ in range(count)]


def test_shape_is_date_first_digits_only_at_most_twelve() -> None:
    number = CaseNumber.build(DAY, 42)
    assert number.value == "26112400042" + number.value[-1]
    assert len(number.value) == 12 and number.value.isdigit()
    assert damm_valid(number.value)


@pytest.mark.parametrize("number", sample_numbers())
def test_every_single_digit_error_is_caught(number: str) -> None:
    for position in range(len(number)):
        for digit in "0123456789":
            if digit == number[position]:
                continue
            wrong = number[:position] + digit + number[position + 1:]
            with pytest.raises(InvalidCaseNumber, match="check digit"):
                CaseNumber.parse(wrong)


@pytest.mark.parametrize("number", sample_numbers())
def test_every_neighbour_swap_is_caught(number: str) -> None:
    for position in range(len(number) - 1):
        a, b = number[position], number[position + 1]
        if a == b:
            continue
        swapped = number[:position] + b + a + number[position + 2:]
        with pytest.raises(InvalidCaseNumber):
            CaseNumber.parse(swapped)


def test_citizen_typing_is_accepted() -> None:
    number = CaseNumber.build(DAY, 7).value
    fullwidth = "".join(chr(ord(c) + 0xFEE0) for c in number)
    assert CaseNumber.parse(fullwidth).value == number
    assert CaseNumber.parse(f" {number[:6]}-{number[6:]} ").value == number


@pytest.mark.parametrize("text", ["", "abc", "12345", "1" * 13, "2611240000１x", "26112400001;DROP"])
def test_garbage_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(InvalidCaseNumber):
        CaseNumber.parse(text)


def test_serial_must_fit() -> None:
    with pytest.raises(ValueError):
        CaseNumber.build(DAY, 100_000)
    with pytest.raises(ValueError):
        CaseNumber.build(DAY, 0)
