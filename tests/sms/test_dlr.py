"""Delivery receipts and message-id matching (sms.dlr)."""

from __future__ import annotations

import random
from datetime import datetime

import pytest

from sms.dlr import (
    CONCRETE_BASES,
    DeliveryReceipt,
    DeliveryState,
    IdBases,
    NetworkError,
    PartRef,
    ReceiptError,
    ReceiptMatch,
    ReceiptText,
    decide_bases,
    is_delivery_receipt,
    match_receipt,
    message_id_keys,
    message_ids_match,
    normalise_message_id,
    parse_receipt,
    parse_receipt_text,
    receipt_id_for,
    relations_between,
    submit_id_for,
)

RECEIPT_TEXT = (
    b"id:5F3A0001 sub:001 dlvrd:001 submit date:2411241203 done date:2411241204 "
    b"stat:DELIVRD err:000 text:\xc4\xfa\xb7\xb4\xd3\xb3"
)


# --- detection -----------------------------------------------------------------------------------


def test_citizen_message_is_not_a_receipt() -> None:
    body = "我的id:abc，路灯坏了".encode("utf-16-be")
    assert not is_delivery_receipt(0, None, body)
    assert parse_receipt(body, esm_class=0, data_coding=8) is None


@pytest.mark.parametrize("esm_class", [0x04, 0x44, 0x20])
def test_esm_class_receipt_bits(esm_class: int) -> None:
    assert is_delivery_receipt(esm_class)


def test_tlv_alone_marks_a_receipt() -> None:
    assert is_delivery_receipt(0, b"5F3A0001")
    assert not is_delivery_receipt(0, b"\x00")


def test_receipt_text_without_esm_class_is_still_a_receipt() -> None:
    assert is_delivery_receipt(0, None, b"id:123 sub:001 dlvrd:001 stat:DELIVRD")


# --- TLVs, text, both ----------------------------------------------------------------------------


def test_receipt_from_tlvs_only() -> None:
    receipt = parse_receipt(
        b"",
        esm_class=0x04,
        receipted_message_id=b"5f3a0001\x00",
        message_state=5,
        network_error_code=b"\x03\x00\x22",
    )
    assert receipt == DeliveryReceipt(
        message_id="5F3A0001",
        raw_message_id="5f3a0001",
        state=DeliveryState.UNDELIVERABLE,
        network_error=NetworkError(network_type=3, code=0x22),
        from_tlv=True,
    )


def test_receipt_from_text_only() -> None:
    receipt = parse_receipt(RECEIPT_TEXT, esm_class=0x04)
    assert receipt is not None
    assert (receipt.message_id, receipt.state, receipt.stat, receipt.error) == (
        "5F3A0001",
        DeliveryState.DELIVERED,
        "DELIVRD",
        "000",
    )
    assert (receipt.submitted, receipt.delivered) == (1, 1)
    assert receipt.submit_date == datetime(2024, 11, 24, 12, 3)
    assert receipt.done_date == datetime(2024, 11, 24, 12, 4)
    assert (receipt.from_tlv, receipt.from_text, receipt.intermediate) == (False, True, False)


def test_receipt_with_both_prefers_tlvs_and_fills_from_text() -> None:
    receipt = parse_receipt(
        b"id:999 sub:001 dlvrd:000 submit date:2411241203 done date:2411241210 "
        b"stat:DELIVRD err:011 text:",
        esm_class=0x04,
        receipted_message_id=b"00000a1b",
        message_state=3,
    )
    assert receipt is not None
    assert receipt.message_id == "A1B"
    assert receipt.state is DeliveryState.EXPIRED
    assert receipt.stat == "DELIVRD"  # the raw text is kept for the record
    assert receipt.error == "011"
    assert receipt.done_date == datetime(2024, 11, 24, 12, 10)
    assert (receipt.from_tlv, receipt.from_text) == (True, True)


def test_state_from_text_when_tlv_state_is_missing() -> None:
    receipt = parse_receipt(b"stat:REJECTD err:045", esm_class=4, receipted_message_id=b"77")
    assert receipt is not None
    assert (receipt.message_id, receipt.state) == ("77", DeliveryState.REJECTED)


def test_intermediate_notification() -> None:
    receipt = parse_receipt(b"id:1 stat:ENROUTE", esm_class=0x20)
    assert receipt is not None
    assert receipt.intermediate
    assert not receipt.state.is_final


def test_ucs2_receipt_text() -> None:
    body = "id:42 stat:UNDELIV err:001".encode("utf-16-be")
    receipt = parse_receipt(body, esm_class=4, data_coding=8)
    assert receipt is not None
    assert (receipt.message_id, receipt.state) == ("42", DeliveryState.UNDELIVERABLE)


def test_receipt_without_any_id_is_an_error() -> None:
    with pytest.raises(ReceiptError, match="without a message id"):
        parse_receipt(b"stat:DELIVRD", esm_class=4)


def test_empty_receipt_with_esm_class_is_an_error_not_a_report() -> None:
    with pytest.raises(ReceiptError):
        parse_receipt(b"", esm_class=4)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (1, DeliveryState.ENROUTE),
        (2, DeliveryState.DELIVERED),
        (3, DeliveryState.EXPIRED),
        (4, DeliveryState.DELETED),
        (5, DeliveryState.UNDELIVERABLE),
        (6, DeliveryState.ACCEPTED),
        (7, DeliveryState.UNKNOWN),
        (8, DeliveryState.REJECTED),
        (9, DeliveryState.UNKNOWN),
    ],
)
def test_tlv_message_state_mapping(state: int, expected: DeliveryState) -> None:
    receipt = parse_receipt(esm_class=4, receipted_message_id="1", message_state=state)
    assert receipt is not None
    assert receipt.state is expected


@pytest.mark.parametrize(
    ("stat", "expected"),
    [
        ("DELIVRD", DeliveryState.DELIVERED),
        ("EXPIRED", DeliveryState.EXPIRED),
        ("DELETED", DeliveryState.DELETED),
        ("UNDELIV", DeliveryState.UNDELIVERABLE),
        ("ACCEPTD", DeliveryState.ACCEPTED),
        ("UNKNOWN", DeliveryState.UNKNOWN),
        ("REJECTD", DeliveryState.REJECTED),
        ("ENROUTE", DeliveryState.ENROUTE),
        ("delivrd", DeliveryState.DELIVERED),
        ("MK:0005", DeliveryState.UNKNOWN),
    ],
)
def test_text_stat_mapping(stat: str, expected: DeliveryState) -> None:
    receipt = parse_receipt(f"id:1 stat:{stat} err:000", esm_class=4)
    assert receipt is not None
    assert receipt.state is expected
    assert receipt.stat == stat.upper()


def test_network_error_code_as_int() -> None:
    receipt = parse_receipt(esm_class=4, receipted_message_id="1", network_error_code=0x030045)
    assert receipt is not None
    assert receipt.network_error == NetworkError(3, 0x45)


def test_malformed_network_error_code_is_ignored() -> None:
    receipt = parse_receipt(esm_class=4, receipted_message_id="1", network_error_code=b"\x03")
    assert receipt is not None
    assert receipt.network_error is None


# --- receipt text tolerance ----------------------------------------------------------------------


def test_text_tolerates_case_spacing_and_underscores() -> None:
    parsed = parse_receipt_text(
        "ID: 0a1b  SUB:001   DLVRD:001 Submit_Date:241124120301 DONE DATE: 2411241204 "
        "Stat: delivrd ERR:000 Text:hi"
    )
    assert parsed == ReceiptText(
        message_id="0a1b",
        submitted=1,
        delivered=1,
        submit_date=datetime(2024, 11, 24, 12, 3, 1),
        done_date=datetime(2024, 11, 24, 12, 4),
        stat="DELIVRD",
        error="000",
        text="hi",
    )


def test_text_with_missing_fields() -> None:
    assert parse_receipt_text("id:123 stat:UNDELIV") == ReceiptText(
        message_id="123", stat="UNDELIV"
    )


def test_empty_field_values_are_none() -> None:
    parsed = parse_receipt_text("id: sub: dlvrd:x submit date:99 stat:EXPIRED")
    assert parsed.message_id is None
    assert parsed.submitted is None
    assert parsed.delivered is None
    assert parsed.submit_date is None
    assert parsed.stat == "EXPIRED"


def test_impossible_date_is_none() -> None:
    assert parse_receipt_text("id:1 done date:2413451299").done_date is None


def test_fields_inside_the_quoted_text_are_not_read() -> None:
    parsed = parse_receipt_text("id:1 stat:DELIVRD text:stat:REJECTD id:2")
    assert (parsed.message_id, parsed.stat, parsed.text) == ("1", "DELIVRD", "stat:REJECTD id:2")


def test_first_occurrence_of_a_field_wins() -> None:
    assert parse_receipt_text("id:1 id:2 stat:DELIVRD").message_id == "1"


# --- message ids ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (b"5F3A0001\x00", "5F3A0001"),
        ("00000a1b", "A1B"),
        ("0A1B", "A1B"),
        ("2587", "2587"),
        ("000", "0"),
        ("0", "0"),
        ("", ""),
        (b"\x00", ""),
        ("  abc\r\n", "ABC"),
        ("12\x00garbage", "12"),
        ("1b4e28ba-2fa1-11d2-883f-0016d3cca427", "1B4E28BA-2FA1-11D2-883F-0016D3CCA427"),
    ],
)
def test_normalise_message_id(raw: str | bytes, canonical: str) -> None:
    assert normalise_message_id(raw) == canonical


def test_hex_decimal_and_padded_forms_match_under_auto() -> None:
    forms: list[str | bytes] = ["0A1B", "2587", "00000a1b", b"0a1b\x00"]
    for a in forms:
        for b in forms:
            assert message_ids_match(a, b), (a, b)


def test_configured_bases_are_strict() -> None:
    assert message_ids_match("0A1B", "2587", bases=IdBases.SUBMIT_HEX_RECEIPT_DEC)
    assert not message_ids_match("2587", "2587", bases=IdBases.SUBMIT_HEX_RECEIPT_DEC)
    assert message_ids_match("2587", "0a1b", bases=IdBases.SUBMIT_DEC_RECEIPT_HEX)
    assert not message_ids_match("0A1B", "2587", bases=IdBases.SAME)
    assert message_ids_match("0a1b", "00000A1B", bases=IdBases.SAME)


def test_non_numeric_ids_match_only_themselves() -> None:
    uuid = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert message_ids_match(uuid, uuid.upper())
    assert not message_ids_match(uuid, "1b4e28ba")
    assert message_id_keys(uuid) == (uuid.upper(),)


def test_empty_ids_never_match() -> None:
    assert not message_ids_match("", "")
    assert not message_ids_match(b"\x00", "0")
    assert message_id_keys("") == ()


def test_lookup_keys_are_ordered_most_likely_first() -> None:
    assert message_id_keys("2587") == ("2587", "A1B", "9607")
    assert message_id_keys("0a1b") == ("A1B", "2587")  # not decimal: no hex reading of it
    assert message_id_keys("2587", IdBases.SUBMIT_HEX_RECEIPT_DEC) == ("A1B",)


def test_auto_matching_is_symmetric_and_agrees_with_int_conversion() -> None:
    rng = random.Random(5)
    for _ in range(500):
        n = rng.randrange(0, 1 << 40)
        hex_id = "0" * rng.randrange(4) + format(n, rng.choice(("x", "X")))
        dec_id = "0" * rng.randrange(4) + str(n)
        assert message_ids_match(hex_id, dec_id)
        assert message_ids_match(dec_id, hex_id)
        other = str(n + 1)
        assert message_ids_match(hex_id, other) == message_ids_match(other, hex_id)


# ---- settling exactly one part (issue 10, Found 1) ---------------------------------------------

A, B, C = "+8613800000001", "+8613800000002", "+8613800000003"
# The case: three handsets whose parts got the hex ids A, 10 and 16.
PARTS = [PartRef(1, "A", A), PartRef(2, "10", B), PartRef(3, "16", C)]


def test_a_receipt_for_10_settles_only_the_part_of_the_handset_it_names() -> None:
    assert match_receipt("10", A, PARTS) == ReceiptMatch(1, None, IdBases.SUBMIT_HEX_RECEIPT_DEC)
    assert match_receipt("10", B, PARTS) == ReceiptMatch(2, None, IdBases.SAME)
    assert match_receipt("10", C, PARTS) == ReceiptMatch(3, None, IdBases.SUBMIT_DEC_RECEIPT_HEX)


def test_a_receipt_naming_a_handset_with_no_such_part_settles_nothing() -> None:
    result = match_receipt("10", "+8613999999999", PARTS)
    assert result.part_id is None and result.reason == "other_handset"
    assert match_receipt("77", A, PARTS).reason == "no_part"


def test_without_a_handset_several_readings_are_ambiguous_and_settle_nothing() -> None:
    result = match_receipt("10", None, PARTS)
    assert result.part_id is None and result.reason == "ambiguous: 3 parts"
    # Once the link's relation is known, the same receipt has one reading.
    assert match_receipt("10", None, PARTS, IdBases.SUBMIT_HEX_RECEIPT_DEC).part_id == 1
    # A pair learned without a handset is no evidence.
    assert match_receipt("10", None, PARTS, IdBases.SAME).pair is None


def test_two_parts_of_one_handset_under_two_readings_are_ambiguous() -> None:
    parts = [PartRef(1, "A", A), PartRef(2, "10", A)]
    assert match_receipt("10", A, parts).reason == "ambiguous: 2 parts"
    assert match_receipt("10", A, parts, IdBases.SAME).part_id == 2


def test_a_known_relation_refuses_the_other_readings() -> None:
    assert match_receipt("10", A, PARTS, IdBases.SAME).reason == "other_handset"
    assert match_receipt("5F3A", A, [PartRef(9, "5F3A", A)], IdBases.SUBMIT_HEX_RECEIPT_DEC).reason == "no_part"


def test_strict_readings_and_their_inverse() -> None:
    assert submit_id_for("10", IdBases.SUBMIT_HEX_RECEIPT_DEC) == "A"
    assert submit_id_for("0A", IdBases.SUBMIT_HEX_RECEIPT_DEC) is None  # no decimal reading of hex letters
    assert submit_id_for("0a", IdBases.SUBMIT_DEC_RECEIPT_HEX) == "10"
    assert submit_id_for("x-1", IdBases.SAME) == "X-1"
    for relation in CONCRETE_BASES:
        for submit in ("A", "10", "5F3A0001", "1597636609"):
            receipt = receipt_id_for(submit, relation)
            if receipt is not None:
                assert submit_id_for(receipt, relation) == normalise_message_id(submit)
    with pytest.raises(ValueError, match="concrete"):
        submit_id_for("1", IdBases.AUTO)


def test_relations_between_pairs() -> None:
    assert relations_between("5F3A0001", "1597636609") == (IdBases.SUBMIT_HEX_RECEIPT_DEC,)
    assert relations_between("7", "7") == CONCRETE_BASES  # a one-digit id shows nothing
    assert relations_between("A", "B") == ()


def test_bases_are_decided_by_agreeing_pairs_and_undone_by_a_contradiction() -> None:
    assert decide_bases({IdBases.SAME: 2}, 3) is None
    assert decide_bases({IdBases.SAME: 3}, 3) is IdBases.SAME
    assert decide_bases({IdBases.SAME: 30, IdBases.SUBMIT_HEX_RECEIPT_DEC: 1}, 3) is None
    assert decide_bases({}, 1) is None
