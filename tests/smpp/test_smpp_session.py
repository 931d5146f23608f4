"""The sans-I/O SMPP session, driven by byte transcripts and a hand-set clock.

Expected bytes are written out field by field from SMPP 3.4 section 4/5, not
produced by the code under test. Every inbound transcript is replayed whole,
byte by byte and in odd-sized chunks, because TCP may split a PDU anywhere.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterator

import pytest
import smpplib.smpp

from sms.smpp.session import (
    BindComplete,
    BindFailed,
    BindMode,
    CommandId,
    DeliverSm,
    Event,
    GenericNack,
    LinkDead,
    LocalProtocolError,
    ProtocolError,
    ResponseTimeout,
    SessionState,
    SmppSession,
    Status,
    SubmitRequest,
    SubmitResponse,
    Tlv,
    UnbindRequested,
    Unbound,
    WindowFullError,
    encode_tlv,
    relative_time,
    status_name,
)


class SmpplibSequences:
    """smpplib's codec needs a client with next_sequence() even to parse (smpp.md item 9)."""

    sequence = 0

    def next_sequence(self) -> int:
        return 0


class FakeClock:
    """Seconds that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pdu(command_id: int, sequence: int, body: bytes = b"", status: int = 0) -> bytes:
    return struct.pack(">LLLL", 16 + len(body), command_id, status, sequence) + body


def c(text: str) -> bytes:
    return text.encode("latin-1") + b"\0"


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def deliver_body(
    *,
    source: str = "13800138000",
    dest: str = "12345",
    esm_class: int = 0,
    data_coding: int = 8,
    short_message: bytes = "你好".encode("utf-16-be"),
    tlvs: bytes = b"",
) -> bytes:
    return (
        c("")  # service_type
        + bytes([1, 1])
        + c(source)
        + bytes([0, 0])
        + c(dest)
        + bytes([esm_class, 0, 0])
        + c("")  # schedule_delivery_time
        + c("")  # validity_period
        + bytes([0, 0, data_coding, 0, len(short_message)])
        + short_message
        + tlvs
    )


def chunkings(data: bytes) -> Iterator[list[bytes]]:
    """The same stream whole, byte by byte, and in chunks of 3, 7 and 13."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for size in (3, 7, 13):
        yield [data[i : i + size] for i in range(0, len(data), size)]


def feed(session: SmppSession, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events.extend(session.receive_data(chunk))
    return events


def bound(clock: FakeClock, mode: BindMode = BindMode.TRANSCEIVER, **kwargs: float) -> SmppSession:
    session = SmppSession(clock=clock, **kwargs)  # type: ignore[arg-type]
    seq = session.bind(mode, system_id="callcenter", password="secret")
    session.data_to_send()
    resp_id = {
        BindMode.TRANSCEIVER: CommandId.BIND_TRANSCEIVER_RESP,
        BindMode.TRANSMITTER: CommandId.BIND_TRANSMITTER_RESP,
        BindMode.RECEIVER: CommandId.BIND_RECEIVER_RESP,
    }[mode]
    events = session.receive_data(pdu(resp_id, seq, c("SMSC")))
    assert isinstance(events[0], BindComplete)
    return session


def request(**overrides: object) -> SubmitRequest:
    fields: dict[str, object] = {
        "source_addr": "12319",
        "destination_addr": "13800138000",
        "short_message": b"hello",
    }
    fields.update(overrides)
    return SubmitRequest(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------ bind


def test_bind_transceiver_bytes() -> None:
    """bind_transceiver carries system_id, password, system_type and version 0x34."""
    session = SmppSession(clock=FakeClock())
    seq = session.bind(
        BindMode.TRANSCEIVER, system_id="callcenter", password="secret", system_type="CC"
    )
    body = c("callcenter") + c("secret") + c("CC") + bytes([0x34, 0, 0]) + c("")
    assert seq == 1
    assert session.data_to_send() == pdu(0x00000009, 1, body)
    assert session.state is SessionState.BINDING
    assert session.data_to_send() == b""


@pytest.mark.parametrize(
    ("mode", "command_id"),
    [
        (BindMode.TRANSMITTER, 0x00000002),
        (BindMode.RECEIVER, 0x00000001),
        (BindMode.TRANSCEIVER, 0x00000009),
    ],
)
def test_bind_mode_selects_command(mode: BindMode, command_id: int) -> None:
    """Each bind mode sends its own command_id."""
    session = SmppSession(clock=FakeClock())
    session.bind(mode, system_id="a", password="b")
    assert struct.unpack(">L", session.data_to_send()[4:8])[0] == command_id


@pytest.mark.parametrize(
    "chunks", list(chunkings(pdu(0x80000009, 1, c("SIMSMSC") + tlv(0x0210, b"\x34"))))
)
def test_bind_response_in_any_chunking(chunks: list[bytes]) -> None:
    """bind_transceiver_resp completes the bind however the bytes are split."""
    session = SmppSession(clock=FakeClock())
    session.bind(BindMode.TRANSCEIVER, system_id="callcenter", password="secret")
    events = feed(session, chunks)
    assert events == [BindComplete(BindMode.TRANSCEIVER, "SIMSMSC", 0x34)]
    assert session.state is SessionState.BOUND
    assert session.can_submit


def test_bind_refused_returns_to_open() -> None:
    """An error bind_resp (header only, as node-smpp sends it) is BindFailed; a rebind is allowed."""
    session = SmppSession(clock=FakeClock())
    seq = session.bind(BindMode.TRANSCEIVER, system_id="callcenter", password="wrong")
    events = session.receive_data(pdu(0x80000009, seq, status=Status.RINVPASWD))
    assert events == [BindFailed(BindMode.TRANSCEIVER, 0x0E)]
    assert session.state is SessionState.OPEN
    assert not session.can_submit
    session.bind(BindMode.TRANSCEIVER, system_id="callcenter", password="secret")
    assert session.state is SessionState.BINDING


def test_bind_timeout_is_link_dead() -> None:
    """No bind_resp within bind_timeout kills the session."""
    clock = FakeClock()
    session = SmppSession(clock=clock, bind_timeout=5)
    session.bind(BindMode.TRANSCEIVER, system_id="a", password="b")
    assert session.next_deadline() == clock.now + 5
    assert session.tick(clock.now + 4.9) == []
    events = session.tick(clock.now + 5)
    assert events == [LinkDead("no bind response within the timeout")]
    assert session.state is SessionState.CLOSED
    assert session.next_deadline() is None


def test_bind_twice_is_refused_locally() -> None:
    """Binding an already bound session is a caller error."""
    session = bound(FakeClock())
    with pytest.raises(LocalProtocolError):
        session.bind(BindMode.TRANSCEIVER, system_id="a", password="b")


def test_bind_rejects_what_smpplib_would_truncate() -> None:
    """A 9-character password would be cut to 8 by smpplib; we refuse instead."""
    session = SmppSession(clock=FakeClock())
    with pytest.raises(ValueError, match="password"):
        session.bind(BindMode.TRANSCEIVER, system_id="callcenter", password="123456789")
    assert session.state is SessionState.OPEN
    assert session.next_sequence == 1


# ------------------------------------------------------------------ submit


def test_submit_sm_bytes_with_udh_validity_and_tlvs() -> None:
    """Every submit_sm field lands where SMPP 3.4 5.2 puts it; TLVs follow the body."""
    session = bound(FakeClock())
    udh = bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x01])
    text = "市民热线".encode("utf-16-be")
    seq = session.submit(
        request(
            short_message=udh + text,
            data_coding=8,
            esm_class=0x40,
            registered_delivery=1,
            validity_period=dt.timedelta(hours=2, minutes=30),
            source_addr_ton=5,
            dest_addr_ton=1,
            dest_addr_npi=1,
            tlvs={"user_message_reference": 7, 0x1401: b"\xbe\xef"},
        )
    )
    body = (
        c("")
        + bytes([5, 0])
        + c("12319")
        + bytes([1, 1])
        + c("13800138000")
        + bytes([0x40, 0, 0])
        + c("")
        + c("000000023000000R")
        + bytes([1, 0, 8, 0, len(udh + text)])
        + udh
        + text
        + tlv(0x0204, b"\x00\x07")
        + tlv(0x1401, b"\xbe\xef")
    )
    assert session.data_to_send() == pdu(0x00000004, seq, body)
    assert session.outstanding_submits == 1


def test_submit_sm_is_readable_by_smpplib() -> None:
    """smpplib's own parser reads back what we built with its encoder plus our TLVs."""
    session = bound(FakeClock())
    seq = session.submit(
        request(short_message=b"abc", registered_delivery=1, tlvs={"sar_msg_ref_num": 513})
    )
    parsed = smpplib.smpp.parse_pdu(session.data_to_send(), client=SmpplibSequences())
    assert parsed.command == "submit_sm"
    assert parsed.sequence == seq
    assert parsed.destination_addr == b"13800138000"
    assert parsed.short_message == b"abc"
    assert parsed.registered_delivery == 1
    assert parsed.sar_msg_ref_num == 513


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"source_addr": "市民热线"}, ValueError),
        ({"destination_addr": "1" * 21}, ValueError),
        ({"short_message": b"x" * 255}, ValueError),
        ({"short_message": "text"}, TypeError),
        ({"data_coding": 256}, ValueError),
        ({"validity_period": "2h"}, ValueError),
        ({"tlvs": {"no_such_tlv": 1}}, ValueError),
        ({"tlvs": {0x1401: "vendor"}}, TypeError),
    ],
)
def test_submit_refuses_bad_fields_without_spending_a_sequence(
    overrides: dict[str, object], error: type
) -> None:
    """Fields smpplib would mangle are refused before anything is queued."""
    session = bound(FakeClock())
    before = session.next_sequence
    with pytest.raises(error):
        session.submit(request(**overrides))
    assert session.next_sequence == before
    assert session.data_to_send() == b""
    assert session.outstanding_submits == 0


def test_submit_resp_matched_by_sequence() -> None:
    """Responses may come back in any order; each resolves its own sequence."""
    session = bound(FakeClock())
    first = session.submit(request())
    second = session.submit(request())
    events = session.receive_data(
        pdu(0x80000004, second, c("5F3A0002")) + pdu(0x80000004, first, c("5F3A0001"))
    )
    assert events == [SubmitResponse(second, 0, "5F3A0002"), SubmitResponse(first, 0, "5F3A0001")]
    assert session.outstanding_submits == 0


@pytest.mark.parametrize("status", [Status.RTHROTTLED, Status.RMSGQFUL, Status.RSYSERR])
def test_submit_error_status_surfaces_without_message_id(status: int) -> None:
    """A header-only error resp gives the status and no message_id."""
    session = bound(FakeClock())
    seq = session.submit(request())
    events = session.receive_data(pdu(0x80000004, seq, status=status))
    assert events == [SubmitResponse(seq, status, None)]
    assert not events[0].ok  # type: ignore[union-attr]


def test_generic_nack_answers_a_submit() -> None:
    """generic_nack with our sequence resolves that submit as a nack."""
    session = bound(FakeClock())
    seq = session.submit(request())
    events = session.receive_data(pdu(0x80000000, seq, status=Status.RSYSERR))
    assert events == [SubmitResponse(seq, Status.RSYSERR, None, nack=True)]
    other = session.submit(request())
    (odd,) = session.receive_data(pdu(0x80000000, other, status=0))
    assert isinstance(odd, SubmitResponse)
    assert not odd.ok  # a nack is never a success, even with status 0


def test_generic_nack_for_nothing_is_reported() -> None:
    """A generic_nack that matches no request is surfaced, not fatal."""
    session = bound(FakeClock())
    assert session.receive_data(pdu(0x80000000, 77, status=3)) == [GenericNack(77, 3)]
    assert session.state is SessionState.BOUND


def test_window_limits_outstanding_submits() -> None:
    """`can_submit` turns false at the window; a response frees a slot."""
    session = bound(FakeClock(), window=2)
    first = session.submit(request())
    session.submit(request())
    assert not session.can_submit
    with pytest.raises(WindowFullError):
        session.submit(request())
    session.receive_data(pdu(0x80000004, first, c("1")))
    assert session.can_submit


def test_submit_response_timeout_frees_the_window() -> None:
    """No submit_sm_resp in time: ResponseTimeout, and the slot is free again."""
    clock = FakeClock()
    session = bound(clock, window=1, response_timeout=30, enquire_link_interval=1000)
    seq = session.submit(request())
    assert session.next_deadline() == clock.now + 30
    events = session.tick(clock.now + 30)
    assert events == [ResponseTimeout(seq, CommandId.SUBMIT_SM)]
    assert session.can_submit
    late = session.receive_data(pdu(0x80000004, seq, c("X")))
    assert isinstance(late[0], ProtocolError)
    assert not late[0].fatal


def test_submit_needs_a_sending_bind() -> None:
    """Submitting before bind, or on a receiver bind, is a caller error."""
    with pytest.raises(LocalProtocolError):
        SmppSession(clock=FakeClock()).submit(request())
    receiver = bound(FakeClock(), BindMode.RECEIVER)
    assert not receiver.can_submit
    with pytest.raises(LocalProtocolError):
        receiver.submit(request())


def test_mismatched_response_is_not_accepted() -> None:
    """enquire_link_resp carrying a submit's sequence does not resolve the submit."""
    session = bound(FakeClock())
    seq = session.submit(request())
    events = session.receive_data(pdu(0x80000015, seq))
    assert isinstance(events[0], ProtocolError)
    assert session.outstanding_submits == 1


# ------------------------------------------------------------------ sequences


def test_sequence_can_be_seeded_and_wraps() -> None:
    """The first sequence comes from the caller; after 0x7FFFFFFF comes 1."""
    session = SmppSession(clock=FakeClock(), first_sequence=0x7FFFFFFF)
    assert session.bind(BindMode.TRANSCEIVER, system_id="a", password="b") == 0x7FFFFFFF
    session.receive_data(pdu(0x80000009, 0x7FFFFFFF, c("S")))
    assert session.next_sequence == 1
    assert session.submit(request()) == 1
    assert session.next_sequence == 2


def test_inbound_requests_do_not_consume_sequences() -> None:
    """Unlike smpplib's parser, reading deliver_sm and enquire_link takes no number."""
    session = bound(FakeClock())
    before = session.next_sequence
    session.receive_data(pdu(0x00000005, 500, deliver_body()) + pdu(0x00000015, 501))
    assert session.next_sequence == before


def test_seed_outside_range_is_refused() -> None:
    with pytest.raises(ValueError):
        SmppSession(clock=FakeClock(), first_sequence=0)


# ------------------------------------------------------------------ deliver_sm


@pytest.mark.parametrize(
    "chunks",
    list(
        chunkings(
            pdu(0x00000005, 41, deliver_body())
            + pdu(0x00000005, 42, deliver_body(short_message=b"", tlvs=tlv(0x0424, b"\x00A")))
            + pdu(0x00000015, 43)[:9]
        )
    ),
)
def test_deliver_sm_surfaced_in_any_chunking(chunks: list[bytes]) -> None:
    """Two deliver_sm and half a PDU: two events, and the half waits for more."""
    session = bound(FakeClock())
    events = feed(session, chunks)
    assert [type(e) for e in events] == [DeliverSm, DeliverSm]
    first, second = events
    assert isinstance(first, DeliverSm)
    assert isinstance(second, DeliverSm)
    assert first.sequence == 41
    assert first.source_addr == "13800138000"
    assert first.source_addr_ton == 1
    assert first.destination_addr == "12345"
    assert first.data_coding == 8
    assert first.short_message.decode("utf-16-be") == "你好"
    assert second.payload == b"\x00A"
    assert session.pending_delivers == {41, 42}


def test_deliver_sm_acked_only_when_the_caller_says() -> None:
    """No deliver_sm_resp until ack_deliver; then with the caller's status."""
    session = bound(FakeClock())
    session.receive_data(pdu(0x00000005, 7, deliver_body()) + pdu(0x00000005, 8, deliver_body()))
    assert session.data_to_send() == b""
    session.ack_deliver(8, Status.RX_T_APPN)
    session.ack_deliver(7)
    assert session.data_to_send() == pdu(0x80000005, 8, b"\0", status=0x64) + pdu(
        0x80000005, 7, b"\0"
    )
    with pytest.raises(LocalProtocolError):
        session.ack_deliver(7)
    with pytest.raises(LocalProtocolError):
        session.ack_deliver(99)


def test_deliver_sm_keeps_every_tlv_known_or_not() -> None:
    """Vendor tags and TLVs smpplib cannot parse in deliver_sm (ussd_service_op) survive."""
    session = bound(FakeClock())
    tlvs = (
        tlv(0x001E, c("5F3A0001"))  # receipted_message_id
        + tlv(0x0427, b"\x02")  # message_state DELIVERED
        + tlv(0x0501, b"\x12")  # ussd_service_op: KeyError in smpplib's DeliverSM
        + tlv(0x1401, b"vendor")  # vendor tag: UnknownCommandError in smpplib
        + tlv(0x0423, b"\x03\x00\x01")  # network_error_code
        + tlv(0x020C, b"\x01")  # sar_msg_ref_num with a wrong length: kept as bytes
    )
    (event,) = session.receive_data(pdu(0x00000005, 9, deliver_body(esm_class=0x04, tlvs=tlvs)))
    assert isinstance(event, DeliverSm)
    assert event.is_receipt
    assert event.tlv("receipted_message_id") == "5F3A0001"
    assert event.tlv(0x0427) == 2
    assert event.tlv("ussd_service_op") == 0x12
    assert event.tlv_values["0x1401"] == b"vendor"
    assert event.tlv("network_error_code") == b"\x03\x00\x01"
    assert event.tlv("sar_msg_ref_num") == b"\x01"
    assert event.tlv("message_payload") is None
    assert [t.tag for t in event.tlvs] == [0x001E, 0x0427, 0x0501, 0x1401, 0x0423, 0x020C]


def test_deliver_sm_built_by_smpplib_decodes_the_same() -> None:
    """Our decoder agrees with smpplib's encoder on a plain deliver_sm."""
    built = smpplib.smpp.make_pdu(
        "deliver_sm",
        client=SmpplibSequences(),
        source_addr="13900001111",
        destination_addr="12319",
        esm_class=0x40,
        data_coding=8,
        short_message=b"\x05\x00\x03\x01\x02\x01" + "第一段".encode("utf-16-be"),
    )
    built.sequence = 314
    session = bound(FakeClock())
    (event,) = session.receive_data(built.generate())
    assert isinstance(event, DeliverSm)
    assert event.sequence == 314
    assert event.has_udh
    assert event.source_addr == "13900001111"
    assert event.short_message[6:].decode("utf-16-be") == "第一段"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (c("") + bytes([1, 1]) + b"13800138000", Status.RINVMSGLEN, "no NUL"),
        (deliver_body(short_message=b"abcdef")[:-3], Status.RINVMSGLEN, "short_message"),
        (
            deliver_body(tlvs=struct.pack(">HH", 0x0427, 5) + b"\x02"),
            Status.RINVOPTPARSTREAM,
            "runs past",
        ),
        (deliver_body(tlvs=b"\x04\x27\x00"), Status.RINVOPTPARSTREAM, "truncated TLV"),
        (b"", Status.RINVMSGLEN, "service_type"),
    ],
)
def test_malformed_deliver_sm_is_rejected_and_the_stream_goes_on(
    body: bytes, status: int, reason: str
) -> None:
    """A deliver_sm we cannot read is answered with an error; the next PDU still works."""
    session = bound(FakeClock())
    events = session.receive_data(pdu(0x00000005, 5, body) + pdu(0x00000005, 6, deliver_body()))
    assert isinstance(events[0], ProtocolError)
    assert not events[0].fatal
    assert reason in events[0].reason
    assert isinstance(events[1], DeliverSm)
    assert session.data_to_send() == pdu(0x80000005, 5, b"\0", status=status)
    assert session.state is SessionState.BOUND
    assert session.pending_delivers == {6}


def test_deliver_sm_on_transmitter_bind_is_refused() -> None:
    """A transmitter-only bind answers deliver_sm with ESME_RINVBNDSTS."""
    session = bound(FakeClock(), BindMode.TRANSMITTER)
    events = session.receive_data(pdu(0x00000005, 3, deliver_body()))
    assert isinstance(events[0], ProtocolError)
    assert session.data_to_send() == pdu(0x80000005, 3, b"\0", status=Status.RINVBNDSTS)


# ------------------------------------------------------------------ link control


def test_smsc_enquire_link_is_answered() -> None:
    """enquire_link from the SMSC gets enquire_link_resp with its sequence, no event."""
    session = bound(FakeClock())
    for chunks in chunkings(pdu(0x00000015, 0x1234)):
        assert feed(session, chunks) == []
        assert session.data_to_send() == pdu(0x80000015, 0x1234)


def test_smsc_unbind_is_answered_and_closes() -> None:
    """unbind from the SMSC: unbind_resp queued, event, session closed, later bytes ignored."""
    session = bound(FakeClock())
    session.receive_data(pdu(0x00000005, 1, deliver_body()))
    events = session.receive_data(pdu(0x00000006, 88) + pdu(0x00000005, 2, deliver_body()))
    assert events == [UnbindRequested()]
    assert session.data_to_send() == pdu(0x80000006, 88)
    assert session.state is SessionState.CLOSED
    assert session.receive_data(pdu(0x00000015, 3)) == []
    assert session.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        session.ack_deliver(1)


def test_our_unbind_completes_or_times_out() -> None:
    """unbind_resp gives Unbound; silence gives LinkDead after unbind_timeout."""
    clock = FakeClock()
    session = bound(clock)
    seq = session.unbind()
    assert session.data_to_send() == pdu(0x00000006, seq)
    assert session.receive_data(pdu(0x80000006, seq)) == [Unbound()]
    assert session.state is SessionState.CLOSED

    silent = bound(clock, unbind_timeout=2)
    silent.unbind()
    assert silent.tick(clock.now + 2) == [LinkDead("no unbind response within the timeout")]


def test_enquire_link_after_idle_interval_and_dead_without_answer() -> None:
    """Idle for the interval: enquire_link goes out; unanswered past the timeout: LinkDead."""
    clock = FakeClock()
    session = bound(clock, enquire_link_interval=30, enquire_link_timeout=10)
    assert session.next_deadline() == clock.now + 30
    assert session.tick(clock.now + 29) == []
    assert session.data_to_send() == b""
    clock.now += 30
    assert session.tick(clock.now) == []
    elink = session.data_to_send()
    assert elink[4:8] == struct.pack(">L", 0x15)
    assert session.next_deadline() == clock.now + 10
    assert session.tick(clock.now + 9.9) == []
    assert session.tick(clock.now + 10) == [LinkDead("enquire_link not answered")]
    assert session.state is SessionState.CLOSED


def test_answered_enquire_link_keeps_the_link() -> None:
    """enquire_link_resp clears the deadline; the next probe is an interval later."""
    clock = FakeClock()
    session = bound(clock, enquire_link_interval=30, enquire_link_timeout=10)
    clock.now += 30
    session.tick(clock.now)
    (seq,) = struct.unpack(">L", session.data_to_send()[12:16])
    clock.now += 1
    assert session.receive_data(pdu(0x80000015, seq)) == []
    assert session.next_deadline() == clock.now + 30
    assert session.tick(clock.now + 15) == []
    assert session.state is SessionState.BOUND


def test_inbound_traffic_postpones_enquire_link() -> None:
    """Any PDU from the SMSC proves the link; the probe waits for real silence."""
    clock = FakeClock()
    session = bound(clock, enquire_link_interval=30)
    clock.now += 20
    session.receive_data(pdu(0x00000005, 1, deliver_body()))
    assert session.next_deadline() == clock.now + 30


def test_stalled_partial_pdu_is_link_dead() -> None:
    """Half a PDU that never completes ends the link instead of desynchronising it."""
    clock = FakeClock()
    session = bound(clock, pdu_read_timeout=10, enquire_link_interval=1000)
    session.receive_data(pdu(0x00000005, 1, deliver_body())[:20])
    assert session.next_deadline() == clock.now + 10
    clock.now += 5
    session.receive_data(b"\x00")  # more bytes do not restart the clock
    assert session.tick(clock.now + 5) == [
        LinkDead("incomplete PDU not finished within the read timeout")
    ]


# ------------------------------------------------------------------ hostile input


@pytest.mark.parametrize(
    ("data", "nack_sequence"),
    [
        (struct.pack(">LLLL", 15, 0x00000015, 0, 9), 9),
        (struct.pack(">LLLL", 0, 0x00000015, 0, 9), 9),
        (struct.pack(">L", 70_000), 0),
        (b"GARBAGE GARBAGE GARBAGE", struct.unpack(">L", b"AGE ")[0]),
        (b"\xff\xff\xff\xff", 0),
    ],
)
def test_bad_command_length_is_fatal(data: bytes, nack_sequence: int) -> None:
    """command_length < 16 or > 64 KiB: generic_nack ESME_RINVCMDLEN, session closed."""
    session = bound(FakeClock())
    events = session.receive_data(data)
    assert len(events) == 1
    assert isinstance(events[0], ProtocolError)
    assert events[0].fatal
    assert session.data_to_send() == pdu(0x80000000, nack_sequence, status=Status.RINVCMDLEN)
    assert session.state is SessionState.CLOSED
    assert session.receive_data(b"\x00" * 100_000) == []
    assert session.next_deadline() is None


def test_large_declared_length_never_buffers_more_than_max() -> None:
    """A PDU bigger than max_pdu_size is refused before its body is buffered."""
    session = bound(FakeClock(), max_pdu_size=1024)
    events = session.receive_data(struct.pack(">LLLL", 1025, 5, 0, 1))
    assert isinstance(events[0], ProtocolError)
    assert events[0].fatal


@pytest.mark.parametrize("command_id", [0x00000099, 0x00000103, 0x00000004, 0x00000001])
def test_unknown_or_unsupported_command_gets_generic_nack(command_id: int) -> None:
    """Unknown ids and requests an ESME does not take (data_sm, submit_sm, bind) get generic_nack."""
    session = bound(FakeClock())
    events = session.receive_data(pdu(command_id, 21, b"whatever") + pdu(0x00000015, 22))
    assert isinstance(events[0], ProtocolError)
    assert not events[0].fatal
    assert session.data_to_send() == pdu(0x80000000, 21, status=Status.RINVCMDID) + pdu(
        0x80000015, 22
    )
    assert session.state is SessionState.BOUND


def test_alert_notification_needs_no_answer() -> None:
    """alert_notification has no response PDU; nothing is sent back."""
    session = bound(FakeClock())
    body = bytes([1, 1]) + c("13800138000") + bytes([1, 1]) + c("12319")
    assert session.receive_data(pdu(0x00000102, 4, body)) == []
    assert session.data_to_send() == b""


def test_response_to_unknown_sequence_is_reported_not_fatal() -> None:
    """A submit_sm_resp nobody asked for is reported; the session stays bound."""
    session = bound(FakeClock())
    events = session.receive_data(pdu(0x80000004, 12345, c("X")))
    assert isinstance(events[0], ProtocolError)
    assert session.state is SessionState.BOUND


# ------------------------------------------------------------------ helpers


def test_tlv_encoding_by_name_and_tag() -> None:
    """Sizes come from the SMPP tables: 1-octet message_state, 2-octet sar_msg_ref_num, C-strings."""
    assert encode_tlv("message_state", 2) == tlv(0x0427, b"\x02")
    assert encode_tlv("sar_msg_ref_num", 300) == tlv(0x020C, b"\x01\x2c")
    assert encode_tlv("receipted_message_id", "ab") == tlv(0x001E, b"ab\0")
    assert encode_tlv(0x1401, b"\x01") == tlv(0x1401, b"\x01")
    assert Tlv(0x1401, b"x").name == "0x1401"
    assert Tlv(0x0427, b"\x00\x02").decoded() == b"\x00\x02"


def test_relative_validity_period() -> None:
    """Relative SMPP time: days, hours, minutes, seconds, then 000R."""
    assert relative_time(dt.timedelta(days=2, hours=3, minutes=4, seconds=5)) == "000002030405000R"
    with pytest.raises(ValueError):
        relative_time(dt.timedelta(days=100))
    with pytest.raises(ValueError):
        relative_time(dt.timedelta(0))


def test_status_names() -> None:
    assert status_name(0x58) == "ESME_RTHROTTLED"
    assert status_name(0x1234) == "0x00001234"
