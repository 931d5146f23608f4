import pytest

from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone


@pytest.mark.parametrize(("raw", "e164"), [
    ("13812345678", "+8613812345678"),
    ("8613812345678", "+8613812345678"),
    ("+86 138-1234-5678", "+8613812345678"),
    ("１３８１２３４５６７８", "+8613812345678"),
    ("075512345678", "+8675512345678"),
])
def test_forms_seen_from_smscs_and_asterisk(raw: str, e164: str) -> None:
    assert normalise_phone(raw) == e164


@pytest.mark.parametrize("raw", ["", "abc", "123", "1381234567x", "13812345678\nHANGUP", "9" * 40,
                                 "<script>", "' OR 1=1 --"])
def test_hostile_or_broken_numbers_are_refused(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        normalise_phone(raw)
