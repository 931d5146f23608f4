"""Sans-I/O SMPP 3.4 ESME session: bytes in -> events, calls -> bytes out.

Theory of operation
-------------------
`SmppSession` owns everything that decides what goes on the wire: framing,
the bind state, sequence numbers, the table of requests awaiting a response,
the window, enquire_link keepalive and every deadline. It never touches a
socket, a timer or a thread. A transport feeds it `receive_data(bytes)`, sends
whatever `data_to_send()` returns, calls `tick(now)` no later than
`next_deadline()`, and closes the connection once `state` is CLOSED.

Inbound deliver_sm is surfaced as a `DeliverSm` event and is *not*
acknowledged until the caller calls `ack_deliver(seq, status)`, so the caller
can persist the message first (or answer ESME_RX_T_APPN to get it redelivered).

smpplib is used as the PDU codec where it is correct, and worked around where
it is not:

* Outbound PDUs are built with `smpplib.smpp.make_pdu(...).generate()` for the
  mandatory fields only. `make_pdu` ignores `sequence=` (its `_set_vars` does
  not overwrite the property) and calls `client.next_sequence()`, so a shim
  client is passed and `pdu.sequence` is set afterwards. smpplib silently
  truncates over-long C-strings and encodes them as latin-1, so fields are
  validated here first and refused instead. Its string-TLV encoder counts the
  `str` length but appends UTF-8, and it cannot emit vendor tags, so TLVs are
  encoded here and appended to its output.
* Inbound PDUs are *not* parsed with `PDU.parse()`: it mis-reads a C-string
  with no NUL terminator, silently truncates a short_message whose sm_length
  runs past the PDU, trusts its table size of an integer TLV over the length on
  the wire, raises KeyError for standard TLVs missing from `DeliverSM.params`
  (ussd_service_op, qos_time_to_live...) and UnknownCommandError for vendor
  tags, and takes a number from the sequence generator for every inbound
  request. The field layout still comes from smpplib's command classes
  (`params` / `params_order`); the walk over the bytes is bounds-checked here
  and every TLV is kept, known or not.
"""

from __future__ import annotations

import datetime as dt
import enum
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from smpplib import command as smpp_command
from smpplib import consts as smpp_consts
from smpplib import smpp as smpp_codec
from smpplib.ptypes import ostr

HEADER_SIZE: Final = 16
DEFAULT_MAX_PDU_SIZE: Final = 64 * 1024
MAX_SEQUENCE: Final = 0x7FFFFFFF
MAX_SHORT_MESSAGE: Final = 254
INTERFACE_VERSION_34: Final = 0x34


class CommandId(enum.IntEnum):
    """SMPP 3.4 command_id values this session sends or understands."""

    GENERIC_NACK = 0x80000000
    BIND_RECEIVER = 0x00000001
    BIND_RECEIVER_RESP = 0x80000001
    BIND_TRANSMITTER = 0x00000002
    BIND_TRANSMITTER_RESP = 0x80000002
    QUERY_SM = 0x00000003
    QUERY_SM_RESP = 0x80000003
    SUBMIT_SM = 0x00000004
    SUBMIT_SM_RESP = 0x80000004
    DELIVER_SM = 0x00000005
    DELIVER_SM_RESP = 0x80000005
    UNBIND = 0x00000006
    UNBIND_RESP = 0x80000006
    REPLACE_SM = 0x00000007
    CANCEL_SM = 0x00000008
    BIND_TRANSCEIVER = 0x00000009
    BIND_TRANSCEIVER_RESP = 0x80000009
    OUTBIND = 0x0000000B
    ENQUIRE_LINK = 0x00000015
    ENQUIRE_LINK_RESP = 0x80000015
    SUBMIT_MULTI = 0x00000021
    ALERT_NOTIFICATION = 0x00000102
    DATA_SM = 0x00000103
    DATA_SM_RESP = 0x80000103


class Status(enum.IntEnum):
    """The command_status values this package acts on (SMPP 3.4 table 5-2)."""

    ROK = smpp_consts.SMPP_ESME_ROK
    RINVMSGLEN = smpp_consts.SMPP_ESME_RINVMSGLEN
    RINVCMDLEN = smpp_consts.SMPP_ESME_RINVCMDLEN
    RINVCMDID = smpp_consts.SMPP_ESME_RINVCMDID
    RINVBNDSTS = smpp_consts.SMPP_ESME_RINVBNDSTS
    RALYBND = smpp_consts.SMPP_ESME_RALYBND
    RSYSERR = smpp_consts.SMPP_ESME_RSYSERR
    RBINDFAIL = smpp_consts.SMPP_ESME_RBINDFAIL
    RINVPASWD = smpp_consts.SMPP_ESME_RINVPASWD
    RINVSYSID = smpp_consts.SMPP_ESME_RINVSYSID
    RMSGQFUL = smpp_consts.SMPP_ESME_RMSGQFUL
    RTHROTTLED = smpp_consts.SMPP_ESME_RTHROTTLED
    RX_T_APPN = smpp_consts.SMPP_ESME_RX_T_APPN
    RX_P_APPN = smpp_consts.SMPP_ESME_RX_P_APPN
    RX_R_APPN = smpp_consts.SMPP_ESME_RX_R_APPN
    RINVOPTPARSTREAM = smpp_consts.SMPP_ESME_RINVOPTPARSTREAM
    RUNKNOWNERR = smpp_consts.SMPP_ESME_RUNKNOWNERR


def status_name(status: int) -> str:
    """`ESME_RTHROTTLED` for 0x58, `0x0000ABCD` for anything unnamed."""
    try:
        return f"ESME_{Status(status).name}"
    except ValueError:
        return f"0x{status:08X}"


class BindMode(enum.Enum):
    """Which bind operation a session performs."""

    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"
    TRANSCEIVER = "transceiver"

    @property
    def can_submit(self) -> bool:
        """Whether this bind may send submit_sm."""
        return self is not BindMode.RECEIVER

    @property
    def can_receive(self) -> bool:
        """Whether this bind gets deliver_sm."""
        return self is not BindMode.TRANSMITTER


_BIND_COMMANDS: Final = {
    BindMode.TRANSMITTER: (CommandId.BIND_TRANSMITTER, "bind_transmitter"),
    BindMode.RECEIVER: (CommandId.BIND_RECEIVER, "bind_receiver"),
    BindMode.TRANSCEIVER: (CommandId.BIND_TRANSCEIVER, "bind_transceiver"),
}


class SessionState(enum.Enum):
    """Where one connection is in its life."""

    OPEN = "open"  # connected, not bound
    BINDING = "binding"
    BOUND = "bound"
    UNBINDING = "unbinding"
    CLOSED = "closed"  # nothing more may be sent; the transport closes the socket


class SmppError(Exception):
    """Base of this package's SMPP errors."""


class LocalProtocolError(SmppError):
    """The caller asked for something the session state does not allow."""


class WindowFullError(LocalProtocolError):
    """No free slot in the window of outstanding submit_sm."""


# ------------------------------------------------------------------ TLVs

TlvValue: TypeAlias = int | str | bytes

_TAG_TO_NAME: Final[dict[int, str]] = {
    code: name for name, code in smpp_consts.OPTIONAL_PARAMS.items()
}


def _tlv_params() -> dict[str, smpp_command.Param]:
    """The TLV value types smpplib's command classes declare, merged by name."""
    merged: dict[str, smpp_command.Param] = {}
    for cls in (
        smpp_command.SubmitSM,
        smpp_command.DeliverSM,
        smpp_command.DataSM,
        smpp_command.DataSMResp,
        smpp_command.AlertNotification,
        smpp_command.BindTransmitterResp,
    ):
        for name, param in cls.params.items():
            if name in smpp_consts.OPTIONAL_PARAMS:
                merged.setdefault(name, param)
    return merged


_TLV_PARAMS: Final = _tlv_params()


@dataclass(frozen=True, slots=True)
class Tlv:
    """One optional parameter exactly as it was (or will be) on the wire."""

    tag: int
    value: bytes

    @property
    def name(self) -> str:
        """The SMPP 3.4 name, or `0x1401` for vendor and unknown tags."""
        return _TAG_TO_NAME.get(self.tag, f"0x{self.tag:04x}")

    def decoded(self) -> TlvValue:
        """The value in its natural type where the tag is known and sizes agree.

        Integers whose length on the wire differs from the spec, unknown tags
        and octet strings stay bytes; C-octet strings lose their NUL.
        """
        param = _TLV_PARAMS.get(_TAG_TO_NAME.get(self.tag, ""))
        if param is None:
            return self.value
        if param.type is int and getattr(param, "size", None) == len(self.value):
            return int.from_bytes(self.value, "big")
        if param.type is str:
            return self.value.split(b"\0", 1)[0].decode("latin-1")
        return self.value


def encode_tlv(key: str | int, value: TlvValue) -> bytes:
    """Encode one TLV by SMPP name or numeric tag.

    Integers take the size smpplib declares for the name (2 bytes for unknown
    tags), `str` values of C-string TLVs get their NUL, bytes go as they are.
    """
    if isinstance(key, str):
        try:
            tag = smpp_consts.OPTIONAL_PARAMS[key]
        except KeyError:
            raise ValueError(f"unknown TLV name {key!r}; pass the numeric tag") from None
    else:
        tag = key
    if not 0 <= tag <= 0xFFFF:
        raise ValueError(f"TLV tag out of range: {tag}")
    param = _TLV_PARAMS.get(_TAG_TO_NAME.get(tag, ""))
    if isinstance(value, bool):
        raise TypeError("TLV values are int, str or bytes, not bool")
    if isinstance(value, int):
        size = getattr(param, "size", 2) if param is not None and param.type is int else 2
        raw = value.to_bytes(size, "big")
    elif isinstance(value, str):
        if param is None:
            raise TypeError(f"TLV {key!r} has no known type; pass bytes")
        if not value.isascii():
            raise ValueError(f"TLV {key!r} must be ASCII")
        raw = value.encode("ascii")
        if param.type is str:
            raw += b"\0"
    else:
        raw = bytes(value)
    if len(raw) > 0xFFFF:
        raise ValueError(f"TLV {key!r} is too long")
    return struct.pack(">HH", tag, len(raw)) + raw


# ------------------------------------------------------------------ requests


@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """One submit_sm: a single part, already encoded and split by the caller.

    `short_message` holds the user data, UDH included when `esm_class` has the
    UDHI bit (0x40). `validity_period` is an SMPP time string or a relative
    `timedelta`. `tlvs` maps SMPP names or numeric tags to values.
    """

    source_addr: str
    destination_addr: str
    short_message: bytes
    data_coding: int = 0
    esm_class: int = 0
    registered_delivery: int = 0
    validity_period: str | dt.timedelta | None = None
    schedule_delivery_time: str | None = None
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    replace_if_present_flag: int = 0
    sm_default_msg_id: int = 0
    service_type: str = ""
    tlvs: Mapping[str | int, TlvValue] = field(default_factory=dict)


def relative_time(delta: dt.timedelta) -> str:
    """SMPP relative time `YYMMDDhhmmss000R` for a validity period.

    Months and years are left at zero; days carry up to 99.
    """
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        raise ValueError("validity period must be positive")
    days, rest = divmod(seconds, 86400)
    if days > 99:
        raise ValueError("relative validity period is limited to 99 days")
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"0000{days:02d}{hours:02d}{minutes:02d}{secs:02d}000R"


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class BindComplete:
    """The SMSC accepted our bind."""

    mode: BindMode
    smsc_system_id: str
    sc_interface_version: int | None


@dataclass(frozen=True, slots=True)
class BindFailed:
    """The SMSC refused our bind (ESME_RINVPASWD, ESME_RINVSYSID...)."""

    mode: BindMode
    status: int


@dataclass(frozen=True, slots=True)
class SubmitResponse:
    """submit_sm_resp (or generic_nack) matched to our submit_sm by sequence."""

    sequence: int
    status: int
    message_id: str | None
    nack: bool = False

    @property
    def ok(self) -> bool:
        """Whether the SMSC accepted the part."""
        return self.status == Status.ROK


@dataclass(frozen=True, slots=True)
class ResponseTimeout:
    """A request got no response in time; for a submit the part is in doubt."""

    sequence: int
    command_id: int


@dataclass(frozen=True, slots=True)
class DeliverSm:
    """An inbound deliver_sm (MO message or delivery receipt), not yet acked.

    Strings are decoded as latin-1 so no byte is lost; `short_message` and TLV
    values are the raw bytes. Call `SmppSession.ack_deliver(sequence, status)`.
    """

    sequence: int
    service_type: str
    source_addr_ton: int
    source_addr_npi: int
    source_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    esm_class: int
    protocol_id: int
    priority_flag: int
    schedule_delivery_time: str
    validity_period: str
    registered_delivery: int
    replace_if_present_flag: int
    data_coding: int
    sm_default_msg_id: int
    short_message: bytes
    tlvs: tuple[Tlv, ...] = ()

    @property
    def is_receipt(self) -> bool:
        """esm_class message type 0001xx: SMSC delivery receipt."""
        return self.esm_class & 0x3C == 0x04

    @property
    def has_udh(self) -> bool:
        """UDHI bit: `short_message` starts with a user data header."""
        return bool(self.esm_class & 0x40)

    def tlv(self, key: str | int) -> TlvValue | None:
        """The decoded value of the first TLV with this name or tag."""
        for item in self.tlvs:
            if item.tag == key or item.name == key:
                return item.decoded()
        return None

    @property
    def tlv_values(self) -> dict[str, TlvValue]:
        """All TLVs by name (`0x1401` for vendor tags), decoded."""
        return {item.name: item.decoded() for item in self.tlvs}

    @property
    def payload(self) -> bytes:
        """short_message, or the message_payload TLV when sm_length is 0."""
        if self.short_message:
            return self.short_message
        for item in self.tlvs:
            if item.name == "message_payload":
                return item.value
        return b""


@dataclass(frozen=True, slots=True)
class UnbindRequested:
    """The SMSC sent unbind; unbind_resp is queued and the session is closed."""


@dataclass(frozen=True, slots=True)
class Unbound:
    """Our unbind was answered; the session is closed."""


@dataclass(frozen=True, slots=True)
class GenericNack:
    """A generic_nack that matches none of our requests."""

    sequence: int
    status: int


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """The peer sent something we could not use.

    `fatal` means the byte stream can no longer be trusted: the session is
    closed and the transport must drop the connection and bind again.
    """

    reason: str
    fatal: bool
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class LinkDead:
    """A deadline passed (enquire_link, bind, unbind, PDU read); session closed."""

    reason: str


Event: TypeAlias = (
    BindComplete
    | BindFailed
    | SubmitResponse
    | ResponseTimeout
    | DeliverSm
    | UnbindRequested
    | Unbound
    | GenericNack
    | ProtocolError
    | LinkDead
)


# ------------------------------------------------------------------ codec


class _SequenceShim:
    """Stands in for smpplib's Client so `make_pdu` can run without one.

    smpplib calls `client.next_sequence()` while constructing a request PDU
    and ignores `sequence=`; the real number is assigned afterwards.
    """

    sequence = 0

    def next_sequence(self) -> int:
        return 0


_SHIM: Final = _SequenceShim()


class _MalformedPdu(Exception):
    """A PDU body that cannot be walked; carries the status to answer with."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _check_cstring(name: str, value: str, max_size: int) -> str:
    """Validate a C-octet string before smpplib sees it (it would truncate)."""
    if not value.isascii():
        raise ValueError(f"{name} must be ASCII, got {value!r}")
    if "\0" in value:
        raise ValueError(f"{name} must not contain NUL")
    if len(value) > max_size - 1:
        raise ValueError(f"{name} is longer than {max_size - 1} characters")
    return value


def _check_octet(name: str, value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must fit in one octet, got {value}")
    return value


def _encode(name: str, sequence: int, status: int = 0, **fields: Any) -> bytes:
    """Build a PDU's mandatory part with smpplib; the sequence is set afterwards."""
    pdu = smpp_codec.make_pdu(name, client=_SHIM, status=status, **fields)
    pdu.sequence = sequence
    data: bytes = pdu.generate()
    return data


def _append_tlvs(pdu: bytes, tlvs: Iterable[bytes]) -> bytes:
    """Append encoded TLVs and rewrite command_length."""
    body = pdu + b"".join(tlvs)
    return struct.pack(">L", len(body)) + body[4:]


def encode_submit_sm(sequence: int, request: SubmitRequest) -> bytes:
    """Encode one submit_sm, validating what smpplib would silently mangle."""
    params = smpp_command.SubmitSM.params
    if not isinstance(request.short_message, bytes):
        raise TypeError("short_message must be bytes (encode the text first)")
    if len(request.short_message) > MAX_SHORT_MESSAGE:
        raise ValueError("short_message over 254 octets; split it or use message_payload")
    validity = request.validity_period
    if isinstance(validity, dt.timedelta):
        validity = relative_time(validity)
    for name in ("validity_period", "schedule_delivery_time"):
        value = validity if name == "validity_period" else request.schedule_delivery_time
        if value and len(value) != 16:
            raise ValueError(f"{name} must be a 16-character SMPP time, got {value!r}")
    fields: dict[str, Any] = {
        "service_type": _check_cstring(
            "service_type", request.service_type, params["service_type"].max
        ),
        "source_addr": _check_cstring(
            "source_addr", request.source_addr, params["source_addr"].max
        ),
        "destination_addr": _check_cstring(
            "destination_addr", request.destination_addr, params["destination_addr"].max
        ),
        "schedule_delivery_time": request.schedule_delivery_time or "",
        "validity_period": validity or "",
        "short_message": request.short_message,
    }
    for name in _SUBMIT_OCTETS:
        fields[name] = _check_octet(name, getattr(request, name))
    body = b"".join((
        fields["service_type"].encode("ascii"), b"\0",
        bytes((fields["source_addr_ton"], fields["source_addr_npi"])),
        fields["source_addr"].encode("ascii"), b"\0",
        bytes((fields["dest_addr_ton"], fields["dest_addr_npi"])),
        fields["destination_addr"].encode("ascii"), b"\0",
        bytes((fields["esm_class"], fields["protocol_id"], fields["priority_flag"])),
        fields["schedule_delivery_time"].encode("ascii"), b"\0",
        fields["validity_period"].encode("ascii"), b"\0",
        bytes((fields["registered_delivery"], fields["replace_if_present_flag"], fields["data_coding"],
               fields["sm_default_msg_id"], len(request.short_message))),
        request.short_message,
        *(encode_tlv(key, value) for key, value in request.tlvs.items()),
    ))
    return struct.pack(">LLLL", HEADER_SIZE + len(body), CommandId.SUBMIT_SM, 0, sequence) + body


#: submit_sm's one-octet fields. The PDU is packed here, in the order of SMPP 3.4 section 4.4.1,
#: rather than through smpplib's generic field walk: this is the one request on the hot path,
#: and smpplib took ~80 us to build it. tests/smpp checks the bytes against smpplib's.
_SUBMIT_OCTETS = ("source_addr_ton", "source_addr_npi", "dest_addr_ton", "dest_addr_npi", "esm_class",
                  "protocol_id", "priority_flag", "registered_delivery", "replace_if_present_flag",
                  "data_coding", "sm_default_msg_id")


def encode_bind(
    mode: BindMode,
    sequence: int,
    *,
    system_id: str,
    password: str,
    system_type: str = "",
    addr_ton: int = 0,
    addr_npi: int = 0,
    address_range: str = "",
) -> bytes:
    """Encode bind_transmitter / bind_receiver / bind_transceiver (interface 3.4)."""
    params = smpp_command.BindTransmitter.params
    _, name = _BIND_COMMANDS[mode]
    data = _encode(
        name,
        sequence,
        system_id=_check_cstring("system_id", system_id, params["system_id"].max),
        password=_check_cstring("password", password, params["password"].max),
        system_type=_check_cstring("system_type", system_type, params["system_type"].max),
        addr_ton=_check_octet("addr_ton", addr_ton),
        addr_npi=_check_octet("addr_npi", addr_npi),
        address_range=_check_cstring("address_range", address_range, params["address_range"].max),
    )
    return data


def encode_deliver_sm_resp(sequence: int, status: int) -> bytes:
    """deliver_sm_resp: the header and an empty message_id (sent for every MO and receipt)."""
    return struct.pack(">LLLLB", HEADER_SIZE + 1, CommandId.DELIVER_SM_RESP, status, sequence, 0)


def encode_header_only(command_id: int, sequence: int, status: int = 0) -> bytes:
    """A PDU without body (enquire_link, unbind, their resps, generic_nack)."""
    return struct.pack(">LLLL", HEADER_SIZE, command_id, status, sequence)


class _Reader:
    """Bounds-checked walk over a PDU body."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.body) - self.pos

    def octets(self, size: int, name: str) -> int:
        if self.remaining < size:
            raise _MalformedPdu(f"{name} runs past the end of the PDU", Status.RINVMSGLEN)
        value = int.from_bytes(self.body[self.pos : self.pos + size], "big")
        self.pos += size
        return value

    def cstring(self, name: str) -> str:
        end = self.body.find(b"\0", self.pos)
        if end < 0:
            raise _MalformedPdu(f"{name} has no NUL terminator", Status.RINVMSGLEN)
        value = self.body[self.pos : end].decode("latin-1")
        self.pos = end + 1
        return value

    def raw(self, size: int, name: str) -> bytes:
        if self.remaining < size:
            raise _MalformedPdu(
                f"{name} ({size} octets) runs past the end of the PDU", Status.RINVMSGLEN
            )
        value = self.body[self.pos : self.pos + size]
        self.pos += size
        return value

    def tlvs(self) -> tuple[Tlv, ...]:
        found: list[Tlv] = []
        while self.remaining:
            if self.remaining < 4:
                raise _MalformedPdu("truncated TLV header", Status.RINVOPTPARSTREAM)
            tag, length = struct.unpack_from(">HH", self.body, self.pos)
            self.pos += 4
            if length > self.remaining:
                raise _MalformedPdu(
                    f"TLV 0x{tag:04x} runs past the end of the PDU", Status.RINVOPTPARSTREAM
                )
            found.append(Tlv(tag, self.body[self.pos : self.pos + length]))
            self.pos += length
        return tuple(found)


def _decode_body(
    cls: type[smpp_command.Command], body: bytes
) -> tuple[dict[str, Any], tuple[Tlv, ...]]:
    """Walk the mandatory fields in smpplib's declared order, then the TLVs."""
    reader = _Reader(body)
    values: dict[str, Any] = {}
    probe = object.__new__(cls)  # only for field_is_optional(); no constructor side effects
    for name in cls.params_order:
        if probe.field_is_optional(name):
            break
        param = cls.params[name]
        if param.type is int:
            values[name] = reader.octets(param.size, name)
        elif param.type is str:
            values[name] = reader.cstring(name)
        elif param.type is ostr:
            values[name] = reader.raw(values[param.len_field], name)
    return values, reader.tlvs()


def decode_deliver_sm(sequence: int, body: bytes) -> DeliverSm:
    """Decode a deliver_sm body; raises `_MalformedPdu` on structural damage."""
    values, tlvs = _decode_body(smpp_command.DeliverSM, body)
    values.pop("sm_length")
    return DeliverSm(sequence=sequence, tlvs=tlvs, **values)


# ------------------------------------------------------------------ session


@dataclass(slots=True)
class _Outstanding:
    command_id: CommandId
    deadline: float | None


_RESPONSE_FOR: Final = {
    CommandId.BIND_TRANSMITTER: CommandId.BIND_TRANSMITTER_RESP,
    CommandId.BIND_RECEIVER: CommandId.BIND_RECEIVER_RESP,
    CommandId.BIND_TRANSCEIVER: CommandId.BIND_TRANSCEIVER_RESP,
    CommandId.SUBMIT_SM: CommandId.SUBMIT_SM_RESP,
    CommandId.ENQUIRE_LINK: CommandId.ENQUIRE_LINK_RESP,
    CommandId.UNBIND: CommandId.UNBIND_RESP,
}


class SmppSession:
    """One ESME connection's protocol state, with no I/O and no timers.

    Timing comes from `clock` (seconds, monotonic) for stamping, and from the
    `now` the transport passes to `tick`. Defaults follow common SMSC practice:
    enquire_link after 30 s of silence, 10 s for its answer.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        window: int = 10,
        first_sequence: int = 1,
        enquire_link_interval: float = 30.0,
        enquire_link_timeout: float = 10.0,
        response_timeout: float = 30.0,
        bind_timeout: float = 15.0,
        unbind_timeout: float = 5.0,
        pdu_read_timeout: float = 10.0,
        max_pdu_size: int = DEFAULT_MAX_PDU_SIZE,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        if not 1 <= first_sequence <= MAX_SEQUENCE:
            raise ValueError("first_sequence must be within 1..0x7FFFFFFF")
        if max_pdu_size < HEADER_SIZE:
            raise ValueError("max_pdu_size below the header size")
        self._clock = clock
        self.window = window
        self.enquire_link_interval = enquire_link_interval
        self.enquire_link_timeout = enquire_link_timeout
        self.response_timeout = response_timeout
        self.bind_timeout = bind_timeout
        self.unbind_timeout = unbind_timeout
        self.pdu_read_timeout = pdu_read_timeout
        self.max_pdu_size = max_pdu_size

        self.state = SessionState.OPEN
        self.bind_mode: BindMode | None = None
        self._next_sequence = first_sequence
        self._outstanding: dict[int, _Outstanding] = {}
        self._submits = 0
        self._pending_delivers: set[int] = set()
        self._inbuf = bytearray()
        self._partial_since: float | None = None
        self._outbuf = bytearray()
        self._last_receive = clock()
        self._elink_sequence: int | None = None
        self._elink_deadline: float | None = None
        self._state_deadline: float | None = None  # bind or unbind

    # ------------------------------------------------------------ properties

    @property
    def closed(self) -> bool:
        """Nothing more may be sent; the transport should close the socket."""
        return self.state is SessionState.CLOSED

    @property
    def next_sequence(self) -> int:
        """The number the next request will use (persist it to survive restarts)."""
        return self._next_sequence

    @property
    def outstanding_submits(self) -> int:
        """submit_sm PDUs sent and not yet answered."""
        return self._submits

    @property
    def can_submit(self) -> bool:
        """Bound for sending, and a window slot is free."""
        return (
            self.state is SessionState.BOUND
            and self.bind_mode is not None
            and self.bind_mode.can_submit
            and self._submits < self.window
        )

    @property
    def pending_delivers(self) -> frozenset[int]:
        """Sequences of deliver_sm surfaced and not yet acknowledged."""
        return frozenset(self._pending_delivers)

    def outstanding_sequences(self, command_id: CommandId = CommandId.SUBMIT_SM) -> list[int]:
        """Sequences still awaiting a response; submits are in doubt if the link drops."""
        return [seq for seq, item in self._outstanding.items() if item.command_id is command_id]

    def data_to_send(self) -> bytes:
        """Everything queued for the wire since the last call."""
        data = bytes(self._outbuf)
        self._outbuf.clear()
        return data

    # ------------------------------------------------------------ requests

    def _send_request(
        self, command_id: CommandId, data_for: Callable[[int], bytes], timeout: float | None
    ) -> int:
        """Encode first, then commit the sequence, so a refused field spends no number."""
        seq = self._next_sequence
        while seq in self._outstanding:
            seq = seq % MAX_SEQUENCE + 1
        data = data_for(seq)
        self._next_sequence = seq % MAX_SEQUENCE + 1
        self._outbuf += data
        deadline = None if timeout is None else self._clock() + timeout
        self._outstanding[seq] = _Outstanding(command_id, deadline)
        return seq

    def bind(
        self,
        mode: BindMode,
        *,
        system_id: str,
        password: str,
        system_type: str = "",
        addr_ton: int = 0,
        addr_npi: int = 0,
        address_range: str = "",
    ) -> int:
        """Queue a bind request; `BindComplete` or `BindFailed` follows."""
        if self.state is not SessionState.OPEN:
            raise LocalProtocolError(f"cannot bind in state {self.state.value}")
        command_id, _ = _BIND_COMMANDS[mode]
        seq = self._send_request(
            command_id,
            lambda s: encode_bind(
                mode,
                s,
                system_id=system_id,
                password=password,
                system_type=system_type,
                addr_ton=addr_ton,
                addr_npi=addr_npi,
                address_range=address_range,
            ),
            None,
        )
        self.state = SessionState.BINDING
        self.bind_mode = mode
        self._state_deadline = self._clock() + self.bind_timeout
        return seq

    def submit(self, request: SubmitRequest) -> int:
        """Queue one submit_sm and return its sequence number.

        Raises `WindowFullError` when the window is full and
        `LocalProtocolError` when not bound for sending; `ValueError` for
        fields smpplib would otherwise truncate or mis-encode.
        """
        if (
            self.state is not SessionState.BOUND
            or self.bind_mode is None
            or not self.bind_mode.can_submit
        ):
            raise LocalProtocolError(
                f"cannot submit in state {self.state.value} ({self.bind_mode})"
            )
        if self._submits >= self.window:
            raise WindowFullError(f"{self._submits} submits outstanding (window {self.window})")
        seq = self._send_request(
            CommandId.SUBMIT_SM, lambda s: encode_submit_sm(s, request), self.response_timeout
        )
        self._submits += 1
        return seq

    def ack_deliver(self, sequence: int, status: int = Status.ROK) -> None:
        """Queue deliver_sm_resp for a surfaced deliver_sm.

        Only the caller decides when: after persisting (ROK), or with a
        temporary error such as ESME_RX_T_APPN so the SMSC redelivers.
        """
        if sequence not in self._pending_delivers:
            raise LocalProtocolError(f"no unacknowledged deliver_sm with sequence {sequence}")
        if self.state is SessionState.CLOSED:
            raise LocalProtocolError("session closed; the SMSC will redeliver")
        self._pending_delivers.discard(sequence)
        self._outbuf += encode_deliver_sm_resp(sequence, status)

    def enquire_link(self) -> int:
        """Send enquire_link now and expect its resp within the timeout."""
        if self.state is SessionState.CLOSED:
            raise LocalProtocolError("session closed")
        seq = self._send_request(
            CommandId.ENQUIRE_LINK,
            lambda s: encode_header_only(CommandId.ENQUIRE_LINK, s),
            None,
        )
        self._elink_sequence = seq
        self._elink_deadline = self._clock() + self.enquire_link_timeout
        return seq

    def unbind(self) -> int:
        """Start a clean unbind; `Unbound` follows, or `LinkDead` on timeout."""
        if self.state is not SessionState.BOUND:
            raise LocalProtocolError(f"cannot unbind in state {self.state.value}")
        seq = self._send_request(
            CommandId.UNBIND, lambda s: encode_header_only(CommandId.UNBIND, s), None
        )
        self.state = SessionState.UNBINDING
        self._state_deadline = self._clock() + self.unbind_timeout
        return seq

    def close(self) -> None:
        """Mark the connection gone (the transport lost it); nothing more is sent."""
        self.state = SessionState.CLOSED
        self._outbuf.clear()
        self._inbuf.clear()

    # ------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """The earliest time `tick` has something to do, or None."""
        if self.state is SessionState.CLOSED:
            return None
        candidates: list[float] = []
        if self._state_deadline is not None:
            candidates.append(self._state_deadline)
        if self._partial_since is not None:
            candidates.append(self._partial_since + self.pdu_read_timeout)
        if self.state is SessionState.BOUND:
            if self._elink_deadline is not None:
                candidates.append(self._elink_deadline)
            else:
                candidates.append(self._last_receive + self.enquire_link_interval)
        candidates.extend(
            item.deadline for item in self._outstanding.values() if item.deadline is not None
        )
        return min(candidates) if candidates else None

    def tick(self, now: float) -> list[Event]:
        """Fire every deadline at or before `now`; may queue an enquire_link."""
        if self.state is SessionState.CLOSED:
            return []
        if self._state_deadline is not None and now >= self._state_deadline:
            what = "bind" if self.state is SessionState.BINDING else "unbind"
            return self._die(f"no {what} response within the timeout")
        if self._partial_since is not None and now >= self._partial_since + self.pdu_read_timeout:
            return self._die("incomplete PDU not finished within the read timeout")
        if self._elink_deadline is not None and now >= self._elink_deadline:
            return self._die("enquire_link not answered")
        events: list[Event] = []
        for seq, item in list(self._outstanding.items()):
            if item.deadline is not None and now >= item.deadline:
                del self._outstanding[seq]
                if item.command_id is CommandId.SUBMIT_SM:
                    self._submits -= 1
                events.append(ResponseTimeout(seq, item.command_id))
        if (
            self.state is SessionState.BOUND
            and self._elink_deadline is None
            and now >= self._last_receive + self.enquire_link_interval
        ):
            self.enquire_link()
        return events

    def _die(self, reason: str) -> list[Event]:
        self.close()
        return [LinkDead(reason)]

    # ------------------------------------------------------------ inbound

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the socket; returns the events they complete."""
        if self.state is SessionState.CLOSED or not data:
            return []
        self._inbuf += data
        events: list[Event] = []
        while len(self._inbuf) >= 4 and not self.closed:
            (length,) = struct.unpack_from(">L", self._inbuf, 0)
            if length < HEADER_SIZE or length > self.max_pdu_size:
                sequence = (
                    struct.unpack_from(">L", self._inbuf, 12)[0]
                    if len(self._inbuf) >= HEADER_SIZE
                    else 0
                )
                self._outbuf += encode_header_only(
                    CommandId.GENERIC_NACK, sequence, Status.RINVCMDLEN
                )
                self._inbuf.clear()
                self.state = SessionState.CLOSED
                events.append(ProtocolError(f"invalid command_length {length}", fatal=True))
                break
            if len(self._inbuf) < length:
                break
            pdu = bytes(self._inbuf[:length])
            del self._inbuf[:length]
            self._last_receive = self._clock()
            events.extend(self._handle_pdu(pdu))
        if not self._inbuf:
            self._partial_since = None
        elif self._partial_since is None:
            self._partial_since = self._clock()
        return events

    def _handle_pdu(self, pdu: bytes) -> list[Event]:
        command_id, status, sequence = struct.unpack_from(">LLL", pdu, 4)
        body = pdu[HEADER_SIZE:]
        if command_id & 0x80000000:
            return self._handle_response(command_id, status, sequence, body)
        if command_id == CommandId.ENQUIRE_LINK:
            self._outbuf += encode_header_only(CommandId.ENQUIRE_LINK_RESP, sequence)
            return []
        if command_id == CommandId.UNBIND:
            self._outbuf += encode_header_only(CommandId.UNBIND_RESP, sequence)
            self.state = SessionState.CLOSED
            self._pending_delivers.clear()
            return [UnbindRequested()]
        if command_id == CommandId.DELIVER_SM:
            return self._handle_deliver(sequence, body)
        if command_id == CommandId.ALERT_NOTIFICATION:
            return []  # has no response by definition; nothing here uses it
        # Unknown, or known but not for an ESME to receive: say so and carry on.
        self._outbuf += encode_header_only(CommandId.GENERIC_NACK, sequence, Status.RINVCMDID)
        return [
            ProtocolError(
                f"unsupported command_id 0x{command_id:08x}", fatal=False, sequence=sequence
            )
        ]

    def _handle_deliver(self, sequence: int, body: bytes) -> list[Event]:
        if (
            self.bind_mode is None
            or not self.bind_mode.can_receive
            or self.state is not SessionState.BOUND
        ):
            self._outbuf += _encode("deliver_sm_resp", sequence, status=Status.RINVBNDSTS)
            return [
                ProtocolError(
                    "deliver_sm while not bound to receive", fatal=False, sequence=sequence
                )
            ]
        try:
            event = decode_deliver_sm(sequence, body)
        except _MalformedPdu as exc:
            # Reject it so the SMSC stops redelivering a PDU we can never read.
            self._outbuf += _encode("deliver_sm_resp", sequence, status=exc.status)
            return [
                ProtocolError(f"malformed deliver_sm: {exc.reason}", fatal=False, sequence=sequence)
            ]
        self._pending_delivers.add(sequence)
        return [event]

    def _handle_response(
        self, command_id: int, status: int, sequence: int, body: bytes
    ) -> list[Event]:
        item = self._outstanding.get(sequence)
        if item is None:
            if command_id == CommandId.GENERIC_NACK:
                return [GenericNack(sequence, status)]
            return [
                ProtocolError(
                    f"response 0x{command_id:08x} to unknown sequence",
                    fatal=False,
                    sequence=sequence,
                )
            ]
        nack = command_id == CommandId.GENERIC_NACK
        if not nack and command_id != _RESPONSE_FOR[item.command_id]:
            return [
                ProtocolError(
                    f"response 0x{command_id:08x} does not match request 0x{item.command_id:08x}",
                    fatal=False,
                    sequence=sequence,
                )
            ]
        del self._outstanding[sequence]
        request = item.command_id
        if nack and status == Status.ROK:
            status = Status.RUNKNOWNERR  # a nack is never a success, whatever its status says
        if request is CommandId.SUBMIT_SM:
            self._submits -= 1
            message_id = None if nack or not body else body.split(b"\0", 1)[0].decode("latin-1")
            return [SubmitResponse(sequence, status, message_id or None, nack=nack)]
        if request is CommandId.ENQUIRE_LINK:
            if sequence == self._elink_sequence:
                self._elink_sequence = None
                self._elink_deadline = None
            return []
        if request is CommandId.UNBIND:
            self.state = SessionState.CLOSED
            self._state_deadline = None
            return [Unbound()]
        return self._handle_bind_response(status, body)

    def _handle_bind_response(self, status: int, body: bytes) -> list[Event]:
        mode = self.bind_mode
        assert mode is not None
        self._state_deadline = None
        if status != Status.ROK:
            self.state = SessionState.OPEN
            return [BindFailed(mode, status)]
        smsc_system_id = ""
        version: int | None = None
        try:
            values, tlvs = _decode_body(smpp_command.BindTransmitterResp, body)
            smsc_system_id = values.get("system_id", "")
            for item in tlvs:
                if item.name == "sc_interface_version" and len(item.value) == 1:
                    version = item.value[0]
        except _MalformedPdu:
            pass  # the bind itself succeeded; the SMSC's name is cosmetic
        self.state = SessionState.BOUND
        self._last_receive = self._clock()
        return [BindComplete(mode, smsc_system_id, version)]
