"""SMPP 3.4 ESME: a sans-I/O session core and its Twisted transport.

`session` has no I/O and is importable anywhere; `client` needs Twisted's
asyncio reactor installed on the running loop.
"""

from __future__ import annotations

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
    SmppError,
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

__all__ = [
    "BindComplete",
    "BindFailed",
    "BindMode",
    "CommandId",
    "DeliverSm",
    "Event",
    "GenericNack",
    "LinkDead",
    "LocalProtocolError",
    "ProtocolError",
    "ResponseTimeout",
    "SessionState",
    "SmppError",
    "SmppSession",
    "Status",
    "SubmitRequest",
    "SubmitResponse",
    "Tlv",
    "UnbindRequested",
    "Unbound",
    "WindowFullError",
    "encode_tlv",
    "relative_time",
    "status_name",
]
