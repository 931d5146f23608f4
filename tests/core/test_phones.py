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


# Numbers typed by callers, staff and Open311 clients, and what the region's numbering plan
# makes of them (issue 9: `12345` and a 12-digit mobile were accepted and an SMS was queued).
@pytest.mark.parametrize(("raw", "e164"), [
    ("13900002356", "+8613900002356"),           # mobile, 11 digits
    ("199 1234 5678", "+8619912345678"),         # newer mobile ranges
    ("166-1234-5678", "+8616612345678"),
    ("+86 170 1234 5678", "+8617012345678"),
    ("0086 13812345678", "+8613812345678"),
    ("(0755)28881234", "+8675528881234"),        # Shenzhen fixed line with its area code
    ("010-12345678", "+861012345678"),           # Beijing
    ("02012345678", "+862012345678"),            # Guangzhou
    ("+852 9123 4567", "+85291234567"),          # a Hong Kong mobile stays itself
])
def test_valid_numbers_of_the_region_are_kept(raw: str, e164: str) -> None:
    assert normalise_phone(raw) == e164


@pytest.mark.parametrize("raw", [
    "12345",             # the government hotline's short number, not a subscriber
    "12319",             # the urban-management hotline itself
    "10086",             # a carrier service number
    "139000023568",      # a mobile with one digit too many
    "1390000235",        # and one too few
    "+86139000023568",   # the number the SMS was queued to
    "11012345678",       # 110 is not a mobile prefix
    "0501234567",        # 050 is no area code
    "+8610000000000",
])
def test_numbers_that_cannot_exist_in_the_region_are_refused(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        normalise_phone(raw)
