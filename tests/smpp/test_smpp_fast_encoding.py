"""The hand-packed submit_sm and deliver_sm_resp give the bytes smpplib's codec gives.

`encode_submit_sm` packs the PDU itself (it is the one request on the hot path); smpplib's
generic field walk stays the reference for the layout, so every generated request is encoded
both ways and compared.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from sms.smpp.session import (
    _SUBMIT_OCTETS,
    SubmitRequest,
    _append_tlvs,
    _encode,
    encode_deliver_sm_resp,
    encode_submit_sm,
    encode_tlv,
    relative_time,
)

ascii_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)
octet = st.integers(0, 255)
smpp_time = st.one_of(st.just(None), st.just("261203120000000+"), st.builds(
    lambda s: dt.timedelta(seconds=s), st.integers(60, 7 * 86400)))
tlvs = st.dictionaries(st.sampled_from(["user_message_reference", "sar_msg_ref_num"]), st.integers(0, 0xFFFF),
                       max_size=2)


def smpplib_submit_sm(sequence: int, request: SubmitRequest) -> bytes:
    validity = request.validity_period
    if isinstance(validity, dt.timedelta):
        validity = relative_time(validity)
    fields = {name: getattr(request, name) for name in _SUBMIT_OCTETS}
    pdu = _encode("submit_sm", sequence, service_type=request.service_type, source_addr=request.source_addr,
                  destination_addr=request.destination_addr,
                  schedule_delivery_time=request.schedule_delivery_time or "", validity_period=validity or "",
                  short_message=request.short_message, **fields)
    return _append_tlvs(pdu, (encode_tlv(k, v) for k, v in request.tlvs.items()))


@settings(max_examples=300, deadline=None)
@given(sequence=st.integers(1, 0x7FFFFFFF), service_type=st.text("ABCDEFGHIJ", max_size=5),
       source=ascii_text, destination=ascii_text, message=st.binary(max_size=254), octets=st.lists(
           octet, min_size=len(_SUBMIT_OCTETS), max_size=len(_SUBMIT_OCTETS)),
       validity=smpp_time, schedule=st.sampled_from([None, "261204080000000+"]), extra=tlvs)
def test_submit_sm_bytes_match_smpplib(sequence: int, service_type: str, source: str, destination: str,
                                       message: bytes, octets: list[int], validity: object,
                                       schedule: str | None, extra: dict[str, int]) -> None:
    request = SubmitRequest(source_addr=source, destination_addr=destination, short_message=message,
                            validity_period=validity, schedule_delivery_time=schedule,  # type: ignore[arg-type]
                            service_type=service_type, tlvs=extra,
                            **dict(zip(_SUBMIT_OCTETS, octets, strict=True)))
    assert encode_submit_sm(sequence, request) == smpplib_submit_sm(sequence, request)


@given(sequence=st.integers(1, 0x7FFFFFFF), status=st.sampled_from([0, 0x08, 0x45, 0x58, 0x64]))
def test_deliver_sm_resp_bytes_match_smpplib(sequence: int, status: int) -> None:
    assert encode_deliver_sm_resp(sequence, status) == _encode("deliver_sm_resp", sequence, status=status)
