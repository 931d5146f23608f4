"""UDH/SAR parsing and reassembly of long MO messages (sms.concat)."""

from __future__ import annotations

import random

import pytest

from sms.concat import (
    CompleteMessage,
    ConcatError,
    ConcatInfo,
    InformationElement,
    PartialMessage,
    Reassembler,
    Segment,
    UdhError,
    concat_from_sar,
    extract_segment,
    parse_udh,
)
from sms.parts import split_text

CITIZEN = "8613800138000"
OTHER_CITIZEN = "8613900139000"
SERVICE = "1065712319"
EMOJI = "😀"
EXT_B = "\U00020000"


def ucs2(text: str) -> bytes:
    return text.encode("utf-16-be")


def udh8(ref: int, total: int, seq: int) -> bytes:
    return bytes([5, 0, 3, ref, total, seq])


def udh16(ref: int, total: int, seq: int) -> bytes:
    return bytes([6, 8, 4, ref >> 8, ref & 0xFF, total, seq])


def feed(
    r: Reassembler,
    short_message: bytes,
    *,
    sender: str = CITIZEN,
    now: float = 0.0,
    coding: int = 8,
    esm_class: int = 0x40,
) -> list[CompleteMessage | PartialMessage]:
    segment = extract_segment(short_message, esm_class)
    return r.add(sender=sender, destination=SERVICE, segment=segment, data_coding=coding, now=now)


# --- UDH ---------------------------------------------------------------------------------------


def test_parse_udh_8bit_reference() -> None:
    udh, body = parse_udh(udh8(0xA4, 3, 2) + ucs2("你好"))
    assert udh.concat == ConcatInfo(ref=0xA4, total=3, seq=2, ref_bits=8)
    assert udh.length == 6
    assert body == ucs2("你好")


def test_parse_udh_16bit_reference() -> None:
    udh, body = parse_udh(udh16(0xBEEF, 2, 1) + b"xy")
    assert udh.concat == ConcatInfo(ref=0xBEEF, total=2, seq=1, ref_bits=16)
    assert body == b"xy"


def test_other_information_elements_are_skipped() -> None:
    """A port-addressing IE (0x05) before the concatenation IE."""
    data = bytes([11, 0x05, 4, 0x0B, 0x84, 0x23, 0xF0, 0x00, 3, 7, 2, 2]) + b"body"
    udh, body = parse_udh(data)
    assert udh.elements[0] == InformationElement(0x05, bytes([0x0B, 0x84, 0x23, 0xF0]))
    assert udh.concat == ConcatInfo(ref=7, total=2, seq=2)
    assert body == b"body"


def test_last_concatenation_element_wins() -> None:
    data = bytes([10, 0, 3, 1, 2, 1, 0, 3, 9, 4, 3]) + b"z"
    assert parse_udh(data)[0].concat == ConcatInfo(ref=9, total=4, seq=3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (bytes([5, 0, 3, 1]), "exceeds"),
        (bytes([3, 0, 3, 1]), "runs past"),
        (bytes([1, 0]), "truncated"),
        (bytes([4, 0, 2, 1, 2]), "3 octets"),
        (bytes([5, 8, 3, 1, 2, 1]), "4 octets"),
    ],
)
def test_malformed_udh_is_an_error_not_a_crash(data: bytes, message: str) -> None:
    with pytest.raises(UdhError, match=message):
        parse_udh(data)


@pytest.mark.parametrize(("total", "seq"), [(0, 1), (2, 0), (2, 3)])
def test_out_of_range_concat_values_are_ignored_so_the_text_is_kept(total: int, seq: int) -> None:
    segment = extract_segment(udh8(1, total, seq) + b"text", 0x40)
    assert segment.concat is None
    assert segment.payload == b"text"


def test_without_udhi_the_payload_is_untouched() -> None:
    data = udh8(1, 2, 1) + b"x"
    assert extract_segment(data, 0) == Segment(concat=None, payload=data, udh=None)


# --- SAR ----------------------------------------------------------------------------------------


def test_sar_tlvs() -> None:
    assert concat_from_sar(513, 3, 2) == ConcatInfo(ref=513, total=3, seq=2, ref_bits=16)
    assert concat_from_sar(None, None, None) is None


@pytest.mark.parametrize(
    ("ref", "total", "seq", "message"),
    [
        (1, None, 1, "incomplete"),
        (70000, 2, 1, "65535"),
        (1, 0, 1, "1..255"),
        (1, 2, 3, r"1\.\.2"),
    ],
)
def test_bad_sar_tlvs(ref: int | None, total: int | None, seq: int | None, message: str) -> None:
    with pytest.raises(ConcatError, match=message):
        concat_from_sar(ref, total, seq)


def test_udh_takes_precedence_over_sar() -> None:
    segment = extract_segment(
        udh8(4, 2, 2) + b"b", 0x40, sar_msg_ref_num=9, sar_total_segments=3, sar_segment_seqnum=1
    )
    assert segment.concat == ConcatInfo(ref=4, total=2, seq=2)


# --- reassembly -----------------------------------------------------------------------------------


def test_single_part_passes_straight_through() -> None:
    r = Reassembler()
    out = feed(r, ucs2("路灯坏了"), esm_class=0)
    assert out == [CompleteMessage(CITIZEN, SERVICE, "路灯坏了", False, None, 1)]
    assert r.pending_count == 0


def test_parts_in_any_order() -> None:
    r = Reassembler()
    assert feed(r, udh8(7, 3, 3) + ucs2("丙")) == []
    assert feed(r, udh8(7, 3, 1) + ucs2("甲")) == []
    assert r.pending_count == 1
    out = feed(r, udh8(7, 3, 2) + ucs2("乙"))
    assert out == [CompleteMessage(CITIZEN, SERVICE, "甲乙丙", False, 7, 3)]
    assert r.pending_count == 0


def test_duplicated_part_is_ignored() -> None:
    r = Reassembler()
    feed(r, udh8(7, 2, 1) + ucs2("甲"))
    assert feed(r, udh8(7, 2, 1) + ucs2("甲")) == []
    assert feed(r, udh8(7, 2, 1) + ucs2("X")) == []  # the first copy wins
    (done,) = feed(r, udh8(7, 2, 2) + ucs2("乙"))
    assert isinstance(done, CompleteMessage)
    assert done.text == "甲乙"


def test_redelivery_after_completion_does_not_start_a_ghost_partial() -> None:
    r = Reassembler(timeout=300)
    feed(r, udh8(7, 2, 1) + ucs2("甲"), now=0)
    feed(r, udh8(7, 2, 2) + ucs2("乙"), now=1)
    assert feed(r, udh8(7, 2, 2) + ucs2("乙"), now=5) == []
    assert r.pending_count == 0
    assert r.expire(now=1000) == []


def test_same_reference_with_new_content_after_completion_is_a_new_message() -> None:
    r = Reassembler()
    feed(r, udh8(7, 2, 1) + ucs2("甲"), now=0)
    feed(r, udh8(7, 2, 2) + ucs2("乙"), now=0)
    assert feed(r, udh8(7, 2, 1) + ucs2("丙"), now=1) == []
    (done,) = feed(r, udh8(7, 2, 2) + ucs2("丁"), now=2)
    assert isinstance(done, CompleteMessage)
    assert done.text == "丙丁"


def test_same_reference_from_two_senders_is_not_mixed() -> None:
    r = Reassembler()
    feed(r, udh8(7, 2, 1) + ucs2("甲"), sender=CITIZEN)
    feed(r, udh8(7, 2, 1) + ucs2("子"), sender=OTHER_CITIZEN)
    (a,) = feed(r, udh8(7, 2, 2) + ucs2("乙"), sender=CITIZEN)
    (b,) = feed(r, udh8(7, 2, 2) + ucs2("丑"), sender=OTHER_CITIZEN)
    assert (a.sender, a.text) == (CITIZEN, "甲乙")
    assert (b.sender, b.text) == (OTHER_CITIZEN, "子丑")


def test_sixteen_bit_references() -> None:
    r = Reassembler()
    feed(r, udh16(0x1234, 2, 2) + ucs2("界"))
    feed(r, udh16(0x1235, 2, 2) + ucs2("X"))  # a different message
    (done,) = feed(r, udh16(0x1234, 2, 1) + ucs2("世"))
    assert (done.text, done.ref) == ("世界", 0x1234)
    assert r.pending_count == 1


def test_sar_reassembly() -> None:
    r = Reassembler()
    sar = {"sar_msg_ref_num": 300, "sar_total_segments": 2}
    second = extract_segment(ucs2("桥梁"), 0, sar_segment_seqnum=2, **sar)
    first = extract_segment(ucs2("人民路"), 0, sar_segment_seqnum=1, **sar)
    assert r.add(sender=CITIZEN, destination=SERVICE, segment=second, data_coding=8, now=0) == []
    (done,) = r.add(sender=CITIZEN, destination=SERVICE, segment=first, data_coding=8, now=0)
    assert done == CompleteMessage(CITIZEN, SERVICE, "人民路桥梁", False, 300, 2)


def test_surrogate_pair_cut_across_parts_still_decodes() -> None:
    """A sender that splits by bytes (as smpplib does) cuts an emoji in two."""
    raw = ucs2("中" * 66 + EMOJI + "尾")
    r = Reassembler()
    feed(r, udh8(1, 2, 2) + raw[134:])
    (done,) = feed(r, udh8(1, 2, 1) + raw[:134])
    assert done == CompleteMessage(CITIZEN, SERVICE, "中" * 66 + EMOJI + "尾", False, 1, 2)


def test_gsm_escape_cut_across_parts_still_decodes() -> None:
    r = Reassembler()
    feed(r, udh8(2, 2, 1) + b"ab\x1b", coding=0)
    (done,) = feed(r, udh8(2, 2, 2) + b"\x65c", coding=0)
    assert (done.text, done.lossy) == ("ab€c", False)


def test_invalid_ucs2_in_a_part_is_flagged_lossy() -> None:
    r = Reassembler()
    feed(r, udh8(3, 2, 1) + ucs2("甲") + b"\xdc\x00")
    (done,) = feed(r, udh8(3, 2, 2) + ucs2("乙"))
    assert (done.text, done.lossy) == ("甲\ufffd乙", True)


# --- timeouts and memory bounds -------------------------------------------------------------------


def test_timeout_returns_partial_with_gaps_marked() -> None:
    r = Reassembler(timeout=300)
    feed(r, udh8(9, 4, 1) + ucs2("人民路"), now=100)
    feed(r, udh8(9, 4, 3) + ucs2("井盖"), now=150)
    assert r.expire(now=399) == []
    (partial,) = r.expire(now=400)
    assert partial == PartialMessage(
        sender=CITIZEN,
        destination=SERVICE,
        ref=9,
        total=4,
        text="人民路[第2/4段缺失]井盖[第4/4段缺失]",
        parts_present=(1, 3),
        reason="timeout",
        lossy=True,
    )
    assert r.pending_count == 0
    assert r.expire(now=10_000) == []


def test_late_part_after_expiry_becomes_its_own_partial() -> None:
    r = Reassembler(timeout=10)
    feed(r, udh8(9, 2, 1) + ucs2("甲"), now=0)
    (first,) = r.expire(now=10)
    feed(r, udh8(9, 2, 2) + ucs2("乙"), now=11)
    (second,) = r.expire(now=21)
    assert (first.text, second.text) == ("甲[第2/2段缺失]", "[第1/2段缺失]乙")


def test_gap_marker_is_configurable() -> None:
    r = Reassembler(timeout=1, gap_marker=lambda seq, total: f"<{seq}?>")
    feed(r, udh8(1, 3, 2) + ucs2("中"), now=0)
    assert r.expire(now=1)[0].text == "<1?>中<3?>"


def test_per_sender_bound_flushes_the_oldest_as_partial() -> None:
    r = Reassembler(max_pending_per_sender=2)
    feed(r, udh8(1, 2, 1) + ucs2("一"), now=0)
    feed(r, udh8(2, 2, 1) + ucs2("二"), now=1)
    feed(r, udh8(5, 2, 1) + ucs2("他"), sender=OTHER_CITIZEN, now=2)
    out = feed(r, udh8(3, 2, 1) + ucs2("三"), now=3)
    assert len(out) == 1
    assert isinstance(out[0], PartialMessage)
    assert (out[0].ref, out[0].text, out[0].reason) == (1, "一[第2/2段缺失]", "evicted")
    assert r.pending_count == 3


def test_total_bound_flushes_the_oldest_overall() -> None:
    r = Reassembler(max_pending_total=2)
    feed(r, udh8(1, 2, 1) + ucs2("一"), sender="a", now=0)
    feed(r, udh8(1, 2, 1) + ucs2("二"), sender="b", now=1)
    out = feed(r, udh8(1, 2, 1) + ucs2("三"), sender="c", now=2)
    assert [(p.sender, p.reason) for p in out if isinstance(p, PartialMessage)] == [
        ("a", "evicted")
    ]
    assert r.pending_count == 2


def test_flush_all_keeps_everything() -> None:
    r = Reassembler()
    feed(r, udh8(1, 2, 1) + ucs2("一"), sender="a")
    feed(r, udh8(1, 3, 3) + ucs2("二"), sender="b")
    flushed = r.flush_all()
    assert [(p.sender, p.text, p.reason) for p in flushed] == [
        ("a", "一[第2/2段缺失]", "flushed"),
        ("b", "[第1/3段缺失][第2/3段缺失]二", "flushed"),
    ]
    assert r.pending_count == 0


def test_constructor_rejects_nonsense_bounds() -> None:
    with pytest.raises(ValueError, match="positive"):
        Reassembler(max_pending_per_sender=0)


# --- round trips through parts.split_text ---------------------------------------------------------


@pytest.mark.parametrize("ref_bits", [8, 16])
def test_emoji_and_ext_b_round_trip_through_split_and_reassemble(ref_bits: int) -> None:
    text = ("请处理人民路" + EMOJI + EXT_B + "的积水问题，") * 12
    parts = split_text(text, reference=200, ref_bits=ref_bits)  # type: ignore[arg-type]
    assert len(parts) > 2
    r = Reassembler()
    results = []
    for part in reversed(parts):
        results += feed(r, part.payload, esm_class=part.esm_class, coding=part.data_coding)
    assert results == [CompleteMessage(CITIZEN, SERVICE, text, False, 200, len(parts))]


def test_random_texts_round_trip_shuffled_with_duplicates() -> None:
    rng = random.Random(20241124)
    alphabet = ["中", "a", EMOJI, EXT_B, "{", "€", "。", " "]
    r = Reassembler()
    for n in range(150):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 600)))
        parts = split_text(text, reference=n % 256, ref_bits=rng.choice((8, 16)))
        # A single part has no reference to recognise a redelivery by; that is
        # the caller's idempotency, so only long messages get duplicates here.
        dupes = rng.sample(parts, k=min(2, len(parts))) if len(parts) > 1 else []
        deliveries = parts + dupes
        rng.shuffle(deliveries)
        completed = [
            m
            for p in deliveries
            for m in feed(r, p.payload, esm_class=p.esm_class, coding=p.data_coding, now=n)
        ]
        assert [(m.text, m.lossy) for m in completed] == [(text, False)], n
    assert r.pending_count == 0
