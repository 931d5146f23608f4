"""The seam between the SMS transport and the service: plain inbound events, one submit call.

`SmsGateway` is what the outbox sender and the intake pipeline see. `SmppGateway` adapts
the Twisted SMPP client (`sms.smpp.client.SmppClient`); `ConsoleGateway` logs outgoing
texts (numbers masked, bodies reduced to their length) and reports them sent, so the
service runs on a machine with no SMSC. Both hand inbound texts and delivery receipts to
the handlers given to `start`, and answer the SMSC with the status those return, so a
message is stored before its deliver_sm_resp leaves.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import hashlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import structlog

from sms.dlr import DeliveryReceipt, ReceiptError, is_delivery_receipt, parse_receipt
from sms.privacy import mask_number
from sms.smpp.client import DELIVER_ORIGIN, ClientStopped, SmppClient, SubmitInDoubt
from sms.smpp.session import DeliverSm, Status, SubmitRequest, TlvValue, status_name

__all__ = [
    "ConsoleGateway",
    "InboundMessage",
    "InboundReceipt",
    "MoHandler",
    "MoVerdict",
    "OutboundPart",
    "ReceiptHandler",
    "SmppGateway",
    "SmsGateway",
    "SubmitOutcome",
]

log = structlog.get_logger("sms.gateway")


class MoVerdict(enum.Enum):
    """What the service made of an inbound text; each transport turns it into its own answer."""

    STORED = "stored"            # committed: SMPP ESME_ROK, HTTP 200
    RETRY_LATER = "retry_later"  # not stored now (store failure): ESME_RX_T_APPN / HTTP 503, delivered again
    REFUSED = "refused"          # can never be stored (no sender): ESME_RX_P_APPN / HTTP 422, not again


#: SMPP command_status for each verdict (deliver_sm_resp).
SMPP_STATUS = {MoVerdict.STORED: Status.ROK, MoVerdict.RETRY_LATER: Status.RX_T_APPN,
               MoVerdict.REFUSED: Status.RX_P_APPN}


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One received text (or one part of a long one), before any decoding decision.

    SMPP gives `short_message` bytes with `data_coding`, `esm_class` and maybe SAR values;
    an HTTP gateway may give `text` already decoded instead. `message_id` is the
    gateway's own id when it has one, which makes de-duplication exact.
    """

    sender: str
    destination: str
    short_message: bytes = b""
    data_coding: int = 0
    esm_class: int = 0
    sar_msg_ref_num: int | None = None
    sar_total_segments: int | None = None
    sar_segment_seqnum: int | None = None
    text: str | None = None
    message_id: str | None = None
    source: str = "smpp"
    # How it came: the connection ("trx#2@<client>") and its sequence number, and a digest of the
    # optional parameters (TLVs) as the SMSC sent them. An SMSC redelivers byte for byte; see
    # `SmsIntakeService` for how a redelivery is told from a citizen sending the same again.
    connection: str | None = None
    sequence: int | None = None
    tlv_digest: str | None = None


@dataclass(frozen=True, slots=True)
class InboundReceipt:
    """A delivery receipt (状态报告) with the addresses it came with.

    `source_addr` is the handset the original message went to; it lets an in-doubt
    submit (no message id known) be matched by recipient.
    """

    receipt: DeliveryReceipt
    source_addr: str
    destination_addr: str
    user_message_reference: int | None = None


@dataclass(frozen=True, slots=True)
class OutboundPart:
    """One submit_sm worth of an outgoing text: UDH already in `short_message`."""

    destination: str
    short_message: bytes
    data_coding: int
    esm_class: int = 0
    registered_delivery: int = 1
    validity: dt.timedelta | None = None
    reference: int | None = None


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    """What became of one part: accepted (with the SMSC's id), refused, or in doubt."""

    status: int
    message_id: str | None = None
    in_doubt: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.in_doubt and self.status == Status.ROK

    @property
    def status_name(self) -> str:
        return "in_doubt" if self.in_doubt else status_name(self.status)


MoHandler = Callable[[InboundMessage], Awaitable[MoVerdict]]
ReceiptHandler = Callable[[InboundReceipt], Awaitable[int]]


@runtime_checkable
class SmsGateway(Protocol):
    """What the service needs from an SMS transport."""

    name: str

    @property
    def ready(self) -> bool:
        """Whether a submit can go out now (bound, for SMPP)."""
        ...

    def bind_states(self) -> dict[str, int]:
        """Link role -> state number, for metrics (5 = bound for SMPP)."""
        ...

    async def start(self, on_message: MoHandler, on_receipt: ReceiptHandler) -> None: ...

    async def stop(self) -> None: ...

    async def submit(self, part: OutboundPart) -> SubmitOutcome: ...


# ------------------------------------------------------------------ console


class ConsoleGateway:
    """No SMSC: log each outgoing part (masked) and report it accepted."""

    name = "console"

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.started = False

    @property
    def ready(self) -> bool:
        return self.started

    def bind_states(self) -> dict[str, int]:
        return {"console": 5 if self.started else 0}

    async def start(self, on_message: MoHandler, on_receipt: ReceiptHandler) -> None:
        self.started = True
        log.warning("sms.console_gateway", note="smpp.host is empty: outgoing SMS are logged, not sent")

    async def stop(self) -> None:
        self.started = False

    async def submit(self, part: OutboundPart) -> SubmitOutcome:
        message_id = f"CONSOLE{next(self._ids)}"
        log.info("sms.console_mt", message_id=message_id, to=mask_number(part.destination),
                 octets=len(part.short_message), dcs=part.data_coding, esm_class=part.esm_class)
        return SubmitOutcome(status=Status.ROK, message_id=message_id)


# ------------------------------------------------------------------ SMPP


def _int_tlv(value: TlvValue | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, bytes) and 0 < len(value) <= 4:
        return int.from_bytes(value, "big")
    return None


def _str_tlv(value: TlvValue | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("latin-1")
    return str(value)


def _tlv_digest(event: DeliverSm) -> str | None:
    """The optional parameters exactly as sent (vendor message ids, timestamps, references), or None."""
    if not event.tlvs:
        return None
    digest = hashlib.sha256()
    for item in event.tlvs:
        digest.update(item.tag.to_bytes(2, "big") + len(item.value).to_bytes(2, "big") + item.value)
    return digest.hexdigest()[:32]


def _sender(address: str, ton: int) -> str:
    """An international (ton 1) digit string gets its plus sign back."""
    address = address.strip()
    if ton == 1 and address.isdigit() and not address.startswith("+"):
        return "+" + address
    return address


class SmppGateway:
    """`SmsGateway` over `SmppClient`: SMPP addressing, receipts told apart from texts."""

    name = "smpp"

    def __init__(
        self,
        client: SmppClient,
        *,
        source_addr: str,
        source_ton: int = 0,
        source_npi: int = 0,
        dest_format: Literal["international", "national"] = "international",
        national_prefix: str = "+86",
    ) -> None:
        self.client = client
        self.source_addr = source_addr
        self.source_ton = source_ton
        self.source_npi = source_npi
        self.dest_format = dest_format
        self.national_prefix = national_prefix
        self._on_message: MoHandler | None = None
        self._on_receipt: ReceiptHandler | None = None

    @property
    def ready(self) -> bool:
        return self.client.is_bound

    @property
    def parts_per_second(self) -> float:
        """The rate submits are paced at (this node's share of the account's cap)."""
        return self.client.rate

    def bind_states(self) -> dict[str, int]:
        return {role: int(state) for role, state in self.client.bind_states.items()}

    async def start(self, on_message: MoHandler, on_receipt: ReceiptHandler) -> None:
        self._on_message = on_message
        self._on_receipt = on_receipt
        self.client.on_deliver = self._on_deliver
        await self.client.start()

    async def stop(self) -> None:
        await self.client.stop()

    def destination(self, e164: str) -> tuple[str, int, int]:
        """(address, ton, npi) for a recipient in E.164."""
        if self.dest_format == "national" and e164.startswith(self.national_prefix):
            return e164[len(self.national_prefix):], 2, 1
        return e164.lstrip("+"), 1, 1

    async def submit(self, part: OutboundPart) -> SubmitOutcome:
        address, ton, npi = self.destination(part.destination)
        tlvs: dict[str | int, TlvValue] = {}
        if part.reference is not None:
            tlvs["user_message_reference"] = part.reference & 0xFFFF
        request = SubmitRequest(
            source_addr=self.source_addr, source_addr_ton=self.source_ton, source_addr_npi=self.source_npi,
            destination_addr=address, dest_addr_ton=ton, dest_addr_npi=npi,
            short_message=part.short_message, data_coding=part.data_coding, esm_class=part.esm_class,
            registered_delivery=part.registered_delivery, validity_period=part.validity, tlvs=tlvs,
        )
        try:
            result = await self.client.submit(request)
        except SubmitInDoubt as exc:
            return SubmitOutcome(status=Status.RUNKNOWNERR, in_doubt=True, error=str(exc))
        except ClientStopped as exc:
            # Stopping fails sent-but-unanswered submits with this too: treat as in doubt.
            return SubmitOutcome(status=Status.RUNKNOWNERR, in_doubt=True, error=str(exc))
        return SubmitOutcome(status=result.status, message_id=result.message_id,
                             error=None if result.ok else result.status_name)

    async def _on_deliver(self, event: DeliverSm) -> int:
        receipted_id = _str_tlv(event.tlv("receipted_message_id"))
        payload = event.payload
        if event.is_receipt or is_delivery_receipt(event.esm_class, receipted_id, payload):
            return await self._receipt(event, receipted_id, payload)
        handler = self._on_message
        if handler is None:
            return Status.RX_T_APPN
        origin = DELIVER_ORIGIN.get()
        message = InboundMessage(
            sender=_sender(event.source_addr, event.source_addr_ton),
            destination=event.destination_addr.strip(),
            short_message=payload,
            data_coding=event.data_coding,
            esm_class=event.esm_class,
            sar_msg_ref_num=_int_tlv(event.tlv("sar_msg_ref_num")),
            sar_total_segments=_int_tlv(event.tlv("sar_total_segments")),
            sar_segment_seqnum=_int_tlv(event.tlv("sar_segment_seqnum")),
            source="smpp",
            connection=origin[0] if origin else None,
            sequence=origin[1] if origin else event.sequence,
            tlv_digest=_tlv_digest(event),
        )
        return SMPP_STATUS[await handler(message)]

    async def _receipt(self, event: DeliverSm, receipted_id: str | None, payload: bytes) -> int:
        handler = self._on_receipt
        if handler is None:
            return Status.RX_T_APPN
        try:
            receipt = parse_receipt(
                payload, esm_class=event.esm_class, receipted_message_id=receipted_id,
                message_state=_int_tlv(event.tlv("message_state")),
                network_error_code=event.tlv("network_error_code"),  # type: ignore[arg-type]
                data_coding=event.data_coding,
            )
        except ReceiptError as exc:
            # Nothing to correlate it with; answering an error would only make it come back.
            log.warning("sms.receipt_without_id", seq=event.sequence, error=str(exc))
            return Status.ROK
        if receipt is None:  # pragma: no cover - is_delivery_receipt said it was one
            return Status.ROK
        return await handler(InboundReceipt(
            receipt=receipt,
            source_addr=_sender(event.source_addr, event.source_addr_ton),
            destination_addr=event.destination_addr.strip(),
            user_message_reference=_int_tlv(event.tlv("user_message_reference")),
        ))


async def wait_ready(gateway: SmsGateway, timeout: float) -> bool:
    """Poll `ready` until true or `timeout`; for tests and start-up logs."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not gateway.ready:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True
