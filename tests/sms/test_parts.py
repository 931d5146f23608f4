"""Splitting MT texts into parts and allocating concatenation references (sms.parts)."""

from __future__ import annotations

import random
from typing import Literal

import pytest

from sms.codec import DataCoding, EncodeError, decode_short_message
from sms.concat import parse_udh
from sms.parts import (
    MessagePart,
    MessageTooLong,
    ReferenceAllocator,
    segment_count,
    split_text,
)

EMOJI = "😀"
EXT_B = "\U00020000"


def bodies(parts: list[MessagePart]) -> list[bytes]:
    return [p.payload[len(p.udh) :] if p.udh else p.payload for p in parts]


def strict_texts(parts: list[MessagePart]) -> list[str]:
    """Decode every part on its own, strictly: a cut character would raise."""
    return [
        decode_short_message(body, p.data_coding, strict=True).text
        for p, body in zip(parts, bodies(parts), strict=True)
    ]


def units(text: str) -> int:
    return len(text.encode("utf-16-be")) // 2


# --- single part ---------------------------------------------------------------------------


def test_seventy_cjk_characters_is_one_part() -> None:
    parts = split_text("中" * 70)
    assert parts == [MessagePart("中".encode("utf-16-be") * 70, 8, 0, None, None, 1, 1)]


def test_one_hundred_sixty_gsm_characters_is_one_part() -> None:
    (part,) = split_text("a" * 160)
    assert (part.data_coding, part.esm_class, part.udh, len(part.payload)) == (0, 0, None, 160)


def test_escape_characters_count_two_towards_the_limit() -> None:
    assert segment_count("{" * 80) == 1
    assert segment_count("{" * 81) == 2


def test_empty_text_is_one_empty_part() -> None:
    assert split_text("") == [MessagePart(b"", DataCoding.GSM7, 0, None, None, 1, 1)]


# --- multi part ------------------------------------------------------------------------------


def test_seventy_one_cjk_characters_is_67_plus_4() -> None:
    parts = split_text("中" * 71, reference=0xA4)
    assert [units(t) for t in strict_texts(parts)] == [67, 4]
    assert [p.udh for p in parts] == [bytes.fromhex("050003a40201"), bytes.fromhex("050003a40202")]
    assert all(p.esm_class == 0x40 and p.data_coding == 8 for p in parts)
    assert all(p.payload.startswith(p.udh or b"") for p in parts)
    assert [(p.ref, p.seq, p.total) for p in parts] == [(0xA4, 1, 2), (0xA4, 2, 2)]
    assert all(len(p.payload) <= 140 for p in parts)


def test_sixteen_bit_reference_gives_66_per_part() -> None:
    parts = split_text("中" * 140, reference=0x1234, ref_bits=16)
    assert [units(t) for t in strict_texts(parts)] == [66, 66, 8]
    assert parts[0].udh == bytes.fromhex("06080412340301")
    assert all(len(p.payload) <= 140 for p in parts)


def test_gsm_parts_are_153_septets() -> None:
    parts = split_text("x" * 161, reference=1)
    assert [len(b) for b in bodies(parts)] == [153, 8]
    assert parts[0].data_coding == 0


def test_gsm_escape_pair_is_never_cut() -> None:
    text = "a" * 152 + "{" + "b" * 10  # 165 septets: two parts, "{" straddles 153
    parts = split_text(text, reference=9)
    texts = strict_texts(parts)
    assert texts == ["a" * 152, "{" + "b" * 10]


def test_emoji_at_the_67_unit_boundary_moves_to_the_next_part() -> None:
    """smpplib cuts here (issue #160); we keep the pair together."""
    text = "中" * 66 + EMOJI + "中" * 10
    texts = strict_texts(split_text(text, reference=3))
    assert texts == ["中" * 66, EMOJI + "中" * 10]


def test_ext_b_characters_are_never_cut() -> None:
    text = (EXT_B + "路") * 60
    parts = split_text(text, reference=5)
    texts = strict_texts(parts)
    assert "".join(texts) == text
    assert all(units(t) <= 67 for t in texts)


def test_emoji_counts_two_units_for_the_single_part_limit() -> None:
    assert segment_count(EMOJI * 35) == 1
    assert segment_count(EMOJI * 35 + "a") == 2


def test_random_texts_split_on_character_boundaries() -> None:
    rng = random.Random(67)
    alphabet = ["中", "a", EMOJI, EXT_B, "{", "。"]
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 400)))
        bits: Literal[8, 16] = 8 if rng.random() < 0.5 else 16
        parts = split_text(text, reference=rng.randrange(256), ref_bits=bits)
        texts = strict_texts(parts)
        assert "".join(texts) == text
        assert all(len(p.payload) <= 140 or p.data_coding == 0 for p in parts)
        if len(parts) > 1:
            cap = 67 if bits == 8 else 66
            assert all(units(t) <= cap for t in texts)
            assert [p.seq for p in parts] == list(range(1, len(parts) + 1))
            assert {p.total for p in parts} == {len(parts)}


def test_gsm_payload_fits_140_octets_once_packed() -> None:
    """Unpacked septets plus UDH exceed 140 octets; the SMSC packs them into 140."""
    for part in split_text("y" * 500, reference=2):
        udh_bits = len(part.udh or b"") * 8
        fill = (7 - udh_bits % 7) % 7
        assert (udh_bits + fill + 7 * len(bodies([part])[0]) + 7) // 8 <= 140


# --- limits and errors ------------------------------------------------------------------------


def test_ten_kilobytes_of_chinese_text() -> None:
    parts = split_text("中" * 10240, reference=77)
    assert len(parts) == 153
    assert "".join(strict_texts(parts)) == "中" * 10240


def test_ten_kilobytes_of_ascii() -> None:
    assert len(split_text("a" * 10240, reference=1)) == 67


def test_too_many_parts_is_a_clear_error() -> None:
    with pytest.raises(MessageTooLong, match="needs 299 parts"):
        split_text("中" * 20000, reference=1)


def test_max_parts_can_be_lowered() -> None:
    with pytest.raises(MessageTooLong, match="limit of 3"):
        split_text("中" * 300, reference=1, max_parts=3)


def test_multi_part_needs_a_reference() -> None:
    with pytest.raises(ValueError, match="reference"):
        split_text("中" * 71)


def test_reference_must_fit_its_width() -> None:
    with pytest.raises(ValueError, match="8 bits"):
        split_text("中" * 71, reference=256)
    assert split_text("中" * 71, reference=65535, ref_bits=16)[0].ref == 65535


def test_lone_surrogate_is_rejected() -> None:
    with pytest.raises(EncodeError):
        split_text("中\udc00")


def test_gsm7_can_be_disabled() -> None:
    (part,) = split_text("OK", allow_gsm7=False)
    assert part.data_coding == 8
    assert part.payload == "OK".encode("utf-16-be")


def test_segment_count_agrees_with_split() -> None:
    for text in ["", "a" * 161, "中" * 134, "中" * 135, EMOJI * 100]:
        assert segment_count(text) == len(split_text(text, reference=0))


def test_parts_carry_a_udh_that_parses_back() -> None:
    parts = split_text("中" * 200, reference=300, ref_bits=16)
    assert len(parts) == 4  # 66 + 66 + 66 + 2
    for part in parts:
        udh, _ = parse_udh(part.payload)
        assert udh.concat is not None
        assert (udh.concat.ref, udh.concat.total, udh.concat.seq) == (300, 4, part.seq)


# --- reference allocation ---------------------------------------------------------------------


def test_references_rotate() -> None:
    alloc = ReferenceAllocator()
    assert [alloc.allocate("13800138000") for _ in range(3)] == [0, 1, 2]


def test_in_use_reference_is_skipped_after_wrap() -> None:
    alloc = ReferenceAllocator(state=254)
    held = alloc.allocate("A")  # 254
    for _ in range(255):
        ref = alloc.allocate("B")
        alloc.release("B", ref)
    assert alloc.state == 254  # the counter came round to the held value
    assert alloc.allocate("A") == 255
    assert alloc.allocate("A") == 0
    assert held in alloc.in_use("A")
    assert alloc.allocate("B") == 1


def test_no_collision_among_in_flight_messages_to_one_destination() -> None:
    alloc = ReferenceAllocator()
    rng = random.Random(1)
    in_flight: set[int] = set()
    for _ in range(2000):
        if in_flight and rng.random() < 0.5:
            ref = rng.choice(sorted(in_flight))
            in_flight.discard(ref)
            alloc.release("13800138000", ref)
        elif len(in_flight) < 200:
            ref = alloc.allocate("13800138000")
            assert ref not in in_flight
            in_flight.add(ref)
    assert alloc.in_use("13800138000") == frozenset(in_flight)


def test_state_survives_a_restart() -> None:
    alloc = ReferenceAllocator()
    for _ in range(10):
        alloc.allocate("A")
    restored = ReferenceAllocator(state=alloc.state)
    assert restored.allocate("A") == 10


def test_exhausted_destination_reuses_the_oldest() -> None:
    alloc = ReferenceAllocator()
    refs = [alloc.allocate("A") for _ in range(256)]
    assert sorted(refs) == list(range(256))
    assert alloc.allocate("A") == refs[0]
    assert len(alloc.in_use("A")) == 256


def test_sixteen_bit_allocator() -> None:
    alloc = ReferenceAllocator(bits=16, state=65535)
    assert alloc.bits == 16
    assert [alloc.allocate("A"), alloc.allocate("A")] == [65535, 0]


def test_release_of_unknown_reference_is_harmless() -> None:
    alloc = ReferenceAllocator()
    alloc.release("nobody", 5)
    ref = alloc.allocate("A")
    alloc.release("A", ref)
    alloc.release("A", ref)
    assert alloc.in_use("A") == frozenset()
