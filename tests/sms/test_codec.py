"""Decoding and encoding of short_message bodies (sms.codec)."""

from __future__ import annotations

import random

import pytest

from sms.codec import (
    DataCoding,
    DecodedText,
    DecodeError,
    EncodeError,
    decode_short_message,
    encode_text,
    gsm7_decode,
    gsm7_encode,
    gsm7_fits,
    gsm7_pack,
    gsm7_septet_count,
    gsm7_unpack,
    ucs2_decode,
)

GSM_BASIC_SAMPLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡AZÄÖÑÜ§¿azäöñüà"
)
GSM_EXTENSION = "\x0c^{}\\[~]|€"
EXT_B = "\U00020000\U0002a6d6"  # CJK Extension B, outside the BMP
EMOJI = "😀🚧"


# --- GSM 03.38 ---------------------------------------------------------------------------


def test_gsm_unpacked_decodes_ascii_overlap() -> None:
    assert decode_short_message(b"Hello 123", 0) == DecodedText("Hello 123", lossy=False)


def test_gsm_code_points_that_differ_from_ascii() -> None:
    """0x00 is '@', 0x02 '$', 0x11 '_', 0x24 '¤', 0x40 '¡', 0x5F '§' in GSM 03.38."""
    decoded = decode_short_message(bytes([0x00, 0x02, 0x11, 0x24, 0x40, 0x5F]), 0)
    assert decoded.text == "@$_¤¡§"


def test_gsm_escape_table_decodes() -> None:
    payload = bytes([0x1B, 0x28, 0x61, 0x1B, 0x29, 0x1B, 0x65, 0x1B, 0x0A])
    assert decode_short_message(payload, 0) == DecodedText("{a}€\x0c", lossy=False)


def test_gsm_round_trip_of_every_character() -> None:
    text = GSM_BASIC_SAMPLE + GSM_EXTENSION
    assert gsm7_decode(gsm7_encode(text)) == DecodedText(text, lossy=False)


def test_gsm_escape_characters_count_two_septets() -> None:
    assert gsm7_septet_count("a{") == 3
    assert len(gsm7_encode("€")) == 2
    assert gsm7_septet_count("中") is None


def test_backtick_is_not_gsm() -> None:
    """smpplib's table maps '`' onto the code of '§'; it is not in the alphabet at all."""
    assert not gsm7_fits("`")
    with pytest.raises(EncodeError, match=r"U\+0060 at position 1"):
        gsm7_encode("a`b")


def test_gsm_unknown_escape_shows_base_character_and_is_lossy() -> None:
    assert gsm7_decode(bytes([0x41, 0x1B, 0x41])) == DecodedText("AA", lossy=True)


def test_gsm_dangling_escape_is_lossy() -> None:
    assert gsm7_decode(bytes([0x41, 0x1B])) == DecodedText("A\ufffd", lossy=True)


def test_gsm_high_octet_is_lossy_not_an_exception() -> None:
    assert decode_short_message(b"A\xc4B", 0) == DecodedText("A\ufffdB", lossy=True)


def test_gsm_strict_mode_raises() -> None:
    with pytest.raises(DecodeError, match="0xC4"):
        decode_short_message(b"A\xc4B", 0, strict=True)
    with pytest.raises(DecodeError, match="escape"):
        gsm7_decode(b"A\x1b", strict=True)


def test_gsm_packed_known_vector() -> None:
    """'hellohello' packed, the example in 3GPP TS 23.038."""
    packed = bytes.fromhex("E8329BFD4697D9EC37")
    assert gsm7_pack(gsm7_encode("hellohello")) == packed
    assert decode_short_message(packed, 0, gsm_packed=True).text == "hellohello"


def test_gsm_packed_seven_characters_drop_padding() -> None:
    """Seven septets leave 7 spare bits in the 7th octet; they are not an '@'."""
    packed = gsm7_pack(gsm7_encode("1234567"))
    assert len(packed) == 7
    assert decode_short_message(packed, 0, gsm_packed=True).text == "1234567"


def test_gsm_unpack_with_fill_bits_and_count() -> None:
    septets = gsm7_encode("Report: pothole")
    packed = gsm7_pack(septets, fill_bits=1)
    assert gsm7_unpack(packed, septets=len(septets), fill_bits=1) == septets


def test_gsm_unpack_rejects_impossible_count() -> None:
    with pytest.raises(ValueError, match="at most"):
        gsm7_unpack(b"\x00\x00", septets=3)


def test_gsm_pack_round_trip_random() -> None:
    rng = random.Random(2411)
    for _ in range(300):
        septets = bytes(rng.randrange(128) for _ in range(rng.randrange(1, 200)))
        fill = rng.randrange(7)
        packed = gsm7_pack(septets, fill_bits=fill)
        assert gsm7_unpack(packed, septets=len(septets), fill_bits=fill) == septets


# --- UCS-2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["你好，我想咨询一下社保缴费的问题。", EMOJI, EXT_B, "路灯" + EMOJI + EXT_B + "坏了", ""],
)
def test_ucs2_round_trip(text: str) -> None:
    assert decode_short_message(text.encode("utf-16-be"), 8) == DecodedText(text, lossy=False)


def test_ucs2_surrogate_pair_is_one_character() -> None:
    decoded = decode_short_message(b"\xd8\x40\xdc\x00", 8)
    assert decoded.text == "\U00020000"
    assert len(decoded.text) == 1


def test_ucs2_odd_length_keeps_text_and_flags_lossy() -> None:
    payload = "井盖丢了".encode("utf-16-be") + b"\x4e"
    assert decode_short_message(payload, 8) == DecodedText("井盖丢了\ufffd", lossy=True)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x4e\x95\xd8\x3d", "井\ufffd"),  # high surrogate at the end
        (b"\xd8\x3d\x4e\x95", "\ufffd井"),  # high surrogate not followed by a low one
        (b"\xdc\x00\x4e\x95", "\ufffd井"),  # low surrogate alone
    ],
)
def test_ucs2_lone_surrogate_is_replaced(payload: bytes, expected: str) -> None:
    assert decode_short_message(payload, 8) == DecodedText(expected, lossy=True)


def test_ucs2_strict_mode_names_the_problem() -> None:
    with pytest.raises(DecodeError, match="odd number of bytes"):
        ucs2_decode(b"\x4e\x95\x4e", strict=True)
    with pytest.raises(DecodeError, match="lone surrogate"):
        ucs2_decode(b"\xdc\x00\x4e\x95", strict=True)


def test_ucs2_byte_order_marks() -> None:
    assert ucs2_decode(b"\xff\xfe" + "路灯".encode("utf-16-le")).text == "路灯"
    assert ucs2_decode(b"\xfe\xff" + "路灯".encode("utf-16-be")).text == "路灯"


def test_ucs2_random_text_round_trip() -> None:
    rng = random.Random(8)
    ranges = [(0x20, 0x7E), (0x4E00, 0x9FFF), (0x1F300, 0x1F6FF), (0x20000, 0x2A6DF)]
    for _ in range(200):
        chars = []
        for _ in range(rng.randrange(0, 80)):
            lo, hi = rng.choice(ranges)
            chars.append(chr(rng.randint(lo, hi)))
        text = "".join(chars)
        assert decode_short_message(text.encode("utf-16-be"), 8) == DecodedText(text)


# --- other alphabets -------------------------------------------------------------------------


def test_latin1() -> None:
    assert decode_short_message(b"caf\xe9", 3) == DecodedText("café", lossy=False)


def test_gbk_under_data_coding_15_by_default() -> None:
    payload = "路灯不亮了，在人民路".encode("gbk")
    assert decode_short_message(payload, 15) == DecodedText("路灯不亮了，在人民路", lossy=False)


def test_gbk_under_data_coding_0_when_configured() -> None:
    payload = "井盖丢失".encode("gb2312")
    default = decode_short_message(payload, 0)
    assert default.lossy  # read as GSM it is garbage, and says so
    configured = decode_short_message(payload, 0, gbk_codings=frozenset({0, 15}))
    assert configured == DecodedText("井盖丢失", lossy=False)


def test_invalid_gbk_is_lossy() -> None:
    payload = "路灯".encode("gbk") + b"\x81"
    decoded = decode_short_message(payload, 15)
    assert decoded.lossy
    assert decoded.text.startswith("路灯")


def test_dcs_message_class_groups() -> None:
    """0x18 is UCS-2 flash (class 0) and 0xF0 GSM flash in the GSM DCS groups."""
    assert decode_short_message("救命".encode("utf-16-be"), 0x18).text == "救命"
    assert decode_short_message(b"Help", 0xF0).text == "Help"


def test_binary_data_coding_is_kept_but_lossy() -> None:
    decoded = decode_short_message(b"\x01\x02abc", 4)
    assert decoded.lossy
    assert "abc" in decoded.text
    with pytest.raises(DecodeError, match="0x04"):
        decode_short_message(b"abc", 4, strict=True)


def test_empty_payload_for_every_common_coding() -> None:
    for coding in (0, 1, 3, 8, 15):
        assert decode_short_message(b"", coding) == DecodedText("", lossy=False)


# --- encoding for MT ------------------------------------------------------------------------


def test_encode_prefers_gsm7_when_everything_fits() -> None:
    encoded = encode_text("Case 241124000123 closed {ok}")
    assert encoded.data_coding == DataCoding.GSM7
    assert decode_short_message(encoded.payload, encoded.data_coding).text == (
        "Case 241124000123 closed {ok}"
    )


def test_encode_falls_back_to_ucs2() -> None:
    encoded = encode_text("您反映的问题已受理")
    assert encoded.data_coding == DataCoding.UCS2
    assert encoded.payload == "您反映的问题已受理".encode("utf-16-be")


def test_encode_gsm7_can_be_disabled() -> None:
    assert encode_text("OK", allow_gsm7=False).data_coding == DataCoding.UCS2


def test_encode_rejects_lone_surrogate() -> None:
    with pytest.raises(EncodeError, match="lone surrogate"):
        encode_text("中\ud83d")
