"""SmppClient against the node-smpp SMSC simulator over real loopback sockets.

Everything runs on the session event loop because the Twisted asyncio reactor
is bound to the loop it was installed on. Timers are short (tens of ms) so
back-off and dead-link detection are observable within a fast suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from sms.smpp.client import (
    BindError,
    BindState,
    ClientStopped,
    SmppClient,
    SubmitInDoubt,
    SubmitResult,
    SubmitTimeout,
)
from sms.smpp.session import DeliverSm, Status, SubmitRequest
from tests.support.smsc import SmscSimulator

pytestmark = pytest.mark.asyncio(loop_scope="session")

UCS2 = 8


def client_for(smsc: SmscSimulator, reactor: Any, **overrides: Any) -> SmppClient:
    settings: dict[str, Any] = {
        "host": smsc.host,
        "port": smsc.port,
        "system_id": "callcenter",
        "password": "secret",
        "system_type": "CC",
        "enquire_link_interval": 5.0,
        "enquire_link_timeout": 2.0,
        "response_timeout": 5.0,
        "bind_timeout": 3.0,
        "window": 10,
        "max_parts_per_second": 1000.0,
        "reconnect_min": 0.05,
        "reconnect_max": 0.4,
        "reactor": reactor,
        "rng": random.Random(7),
    }
    settings.update(overrides)
    return SmppClient(**settings)


@contextlib.asynccontextmanager
async def running(
    smsc: SmscSimulator, reactor: Any, *, bound: bool = True, **overrides: Any
) -> AsyncIterator[SmppClient]:
    client = client_for(smsc, reactor, **overrides)
    await client.start()
    try:
        if bound:
            await client.wait_bound(5)
        yield client
    finally:
        await client.stop(timeout=2)


def part(text: str = "您的案件已受理", **overrides: Any) -> SubmitRequest:
    fields: dict[str, Any] = {
        "source_addr": "12319",
        "destination_addr": "13800138000",
        "short_message": text.encode("utf-16-be"),
        "data_coding": UCS2,
        "registered_delivery": 1,
    }
    fields.update(overrides)
    return SubmitRequest(**fields)


class Inbox:
    """A deliver handler that records events and can hold the ack back."""

    def __init__(self, status: int = Status.ROK) -> None:
        self.events: list[DeliverSm] = []
        self.status = status
        self.gate = asyncio.Event()
        self.gate.set()
        self.arrived = asyncio.Event()

    async def __call__(self, event: DeliverSm) -> int:
        self.events.append(event)
        self.arrived.set()
        await self.gate.wait()
        return self.status

    async def wait(self, count: int, timeout: float = 5.0) -> list[DeliverSm]:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events


# ------------------------------------------------------------------ bind


async def test_bind_then_submit_gets_message_id(smsc: SmscSimulator, reactor: Any) -> None:
    """A transceiver bind carries our credentials; submit_sm_resp's message_id comes back."""
    async with running(smsc, reactor) as client:
        assert client.bind_state is BindState.BOUND
        (bind,) = await smsc.events("bind")
        assert (bind["mode"], bind["system_id"], bind["password"], bind["system_type"]) == (
            "transceiver",
            "callcenter",
            "secret",
            "CC",
        )
        assert bind["interface_version"] == 0x34

        udh = bytes([0x05, 0x00, 0x03, 0x2A, 0x02, 0x01])
        result = await client.submit(
            part(
                short_message=udh + "您的案件已受理".encode("utf-16-be"),
                esm_class=0x40,
                validity_period=dt.timedelta(hours=24),
                tlvs={"user_message_reference": 42, 0x1401: b"\xca\xfe"},
            )
        )
        (resp,) = await smsc.events("submit_sm_resp")
        assert result == SubmitResult(resp["message_id"], 0)
        assert result.ok
        (submit,) = await smsc.events("submit_sm")
        assert submit["destination_addr"] == "13800138000"
        assert submit["source_addr"] == "12319"
        assert submit["esm_class"] == 0x40
        assert submit["data_coding"] == UCS2
        assert submit["registered_delivery"] == 1
        assert submit["validity_period"] == "000001000000000R"
        assert submit["udh_hex"] == udh.hex()
        assert submit["text"] == "您的案件已受理"
        assert {(t["tag"], t["hex"]) for t in submit["tlvs"]} == {
            (0x0204, "002a"),
            (0x1401, "cafe"),
        }


@pytest.mark.parametrize(
    ("credentials", "status"),
    [({"password": "wrong"}, Status.RINVPASWD), ({"system_id": "intruder"}, Status.RINVSYSID)],
)
async def test_refused_bind_is_reported_and_retried_with_backoff(
    smsc: SmscSimulator, reactor: Any, credentials: dict[str, str], status: int
) -> None:
    """Wrong credentials: BindError with the SMSC's status, then retries spaced by back-off."""
    async with running(smsc, reactor, bound=False, **credentials) as client:
        with pytest.raises(BindError) as caught:
            await client.wait_bound(5)
        assert caught.value.status == status
        assert client.last_bind_error == status
        binds = await smsc.wait_for("bind", count=3, timeout=5)
        assert all(b["status"] == status for b in binds)
        assert binds[2]["t"] - binds[1]["t"] >= 0.1 * 1000 * 0.9  # second retry waits >= 2 x 50 ms
        assert client.bind_state is not BindState.BOUND
        assert client.stats.bind_failures >= 3


async def test_submit_waits_for_bind(smsc: SmscSimulator, reactor: Any) -> None:
    """A submit made while the SMSC refuses connections goes out once bound."""
    await smsc.configure(refuse_connections=True)
    async with running(smsc, reactor, bound=False) as client:
        pending = asyncio.create_task(client.submit(part()))
        await smsc.wait_for("refused", count=2)
        assert not pending.done()
        await smsc.configure(refuse_connections=False)
        result = await asyncio.wait_for(pending, 5)
        assert result.ok


# ------------------------------------------------------------------ deliver_sm


async def test_deliver_acked_only_after_handler_returns(smsc: SmscSimulator, reactor: Any) -> None:
    """The deliver_sm_resp is written after on_deliver returns, with its status."""
    inbox = Inbox()
    inbox.gate.clear()
    async with running(smsc, reactor, on_deliver=inbox):
        seq = await smsc.deliver(
            source_addr="13912345678", destination_addr="12319", data_coding=UCS2, text="路灯坏了"
        )
        (event,) = await inbox.wait(1)
        assert event.short_message.decode("utf-16-be") == "路灯坏了"
        assert event.source_addr == "13912345678"
        assert not event.is_receipt
        await asyncio.sleep(0.1)
        assert await smsc.events("deliver_sm_resp") == []
        inbox.gate.set()
        (resp,) = await smsc.wait_for("deliver_sm_resp")
        assert (resp["sequence"], resp["status"]) == (seq, 0)


async def test_handler_status_and_failure_reach_the_smsc(smsc: SmscSimulator, reactor: Any) -> None:
    """A returned temporary error is sent as is; a raising handler answers ESME_RX_T_APPN."""
    calls = 0

    async def handler(event: DeliverSm) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return Status.RX_P_APPN
        raise RuntimeError("database down")

    async with running(smsc, reactor, on_deliver=handler):
        first = await smsc.deliver(source_addr="13900000001", text="a")
        second = await smsc.deliver(source_addr="13900000002", text="b")
        resps = {
            r["sequence"]: r["status"] for r in await smsc.wait_for("deliver_sm_resp", count=2)
        }
        assert resps == {first: Status.RX_P_APPN, second: Status.RX_T_APPN}


async def test_deliver_with_unusual_tlvs_is_surfaced(smsc: SmscSimulator, reactor: Any) -> None:
    """ussd_service_op and a vendor TLV (smpplib's poison deliver_sm) reach the handler and get ROK."""
    inbox = Inbox()
    async with running(smsc, reactor, on_deliver=inbox):
        seq = await smsc.deliver(
            source_addr="13800000000",
            text="hi",
            tlvs={"ussd_service_op": 0x12},
            raw_tlvs=[{"tag": 0x1401, "hex": "0102"}],
        )
        (event,) = await inbox.wait(1)
        assert event.tlv("ussd_service_op") == 0x12
        assert event.tlv(0x1401) == b"\x01\x02"
        (resp,) = await smsc.wait_for("deliver_sm_resp")
        assert (resp["sequence"], resp["status"]) == (seq, 0)


@pytest.mark.parametrize("form", ["tlv", "text", "both"])
async def test_delivery_receipt_forms(smsc: SmscSimulator, reactor: Any, form: str) -> None:
    """Receipts arrive as deliver_sm with esm_class 0x04, carrying TLVs and/or the id: text."""
    inbox = Inbox()
    async with running(smsc, reactor, on_deliver=inbox):
        await smsc.receipt(
            "5F3A00AB", stat="UNDELIV", err="001", form=form, source_addr="13800138000"
        )
        (event,) = await inbox.wait(1)
        assert event.is_receipt
        if form == "text":
            assert event.tlv("receipted_message_id") is None
        else:
            assert event.tlv("receipted_message_id") == "5F3A00AB"
            assert event.tlv("message_state") == 5
        if form == "tlv":
            assert event.short_message == b""
        else:
            assert event.short_message.startswith(b"id:5F3A00AB ")
            assert b"stat:UNDELIV err:001" in event.short_message


async def test_receipt_before_submit_resp_is_surfaced_first(
    smsc: SmscSimulator, reactor: Any
) -> None:
    """A DLR racing ahead of its submit_sm_resp reaches the handler before submit() returns."""
    order: list[str] = []

    async def handler(event: DeliverSm) -> int:
        order.append("receipt:" + str(event.tlv("receipted_message_id")))
        return Status.ROK

    async with running(smsc, reactor, on_deliver=handler) as client:
        await smsc.script_submits(
            {
                "message_id": "EARLY01",
                "receipt": {"stat": "DELIVRD"},
                "receipt_before_resp": True,
                "delay_ms": 150,
            }
        )
        result = await client.submit(part())
        order.append(f"resp:{result.message_id}")
        assert order == ["receipt:EARLY01", "resp:EARLY01"]
        (resp,) = await smsc.wait_for("deliver_sm_resp")
        assert resp["status"] == 0


async def test_burst_of_mo_messages_all_acked(smsc: SmscSimulator, reactor: Any) -> None:
    """2000 deliver_sm pushed at once are all surfaced and acknowledged."""
    inbox = Inbox()
    async with running(smsc, reactor, on_deliver=inbox) as client:
        result = await smsc.acall("deliver_burst", count=2000, source_addr="13800000000", text="mo")
        await smsc.wait_for("deliver_sm_resp", count=2000, timeout=20)
        assert len(inbox.events) == 2000
        assert {e.sequence for e in inbox.events} == set(result["sequences"])
        assert client.stats.delivers == 2000


async def test_ack_is_not_sent_on_a_new_connection(smsc: SmscSimulator, reactor: Any) -> None:
    """A deliver_sm whose connection died before the handler finished is left for redelivery."""
    inbox = Inbox()
    inbox.gate.clear()
    async with running(smsc, reactor, on_deliver=inbox) as client:
        await smsc.deliver(source_addr="13800000000", text="x")
        await inbox.wait(1)
        await smsc.drop()
        await smsc.wait_for("bind", count=2)
        await client.wait_bound(5)
        inbox.gate.set()
        await asyncio.sleep(0.1)
        assert await smsc.events("deliver_sm_resp") == []


async def test_malformed_deliver_is_rejected_and_the_link_stays(
    smsc: SmscSimulator, reactor: Any
) -> None:
    """A deliver_sm whose TLV overruns the PDU is refused (0xC0), not redelivered forever."""
    inbox = Inbox()
    async with running(smsc, reactor, on_deliver=inbox) as client:
        bad = await smsc.deliver(
            source_addr="13800000000",
            text="x",
            raw_tlvs=[{"tag": 0x1401, "hex": "01", "length": 9}],
        )
        good = await smsc.deliver(source_addr="13800000000", text="y")
        resps = {
            r["sequence"]: r["status"] for r in await smsc.wait_for("deliver_sm_resp", count=2)
        }
        assert resps == {bad: Status.RINVOPTPARSTREAM, good: Status.ROK}
        assert [e.sequence for e in inbox.events] == [good]
        assert client.bind_state is BindState.BOUND


async def test_auto_receipt_carries_the_submit_message_id(
    smsc: SmscSimulator, reactor: Any
) -> None:
    """With auto_receipt on, each accepted submit is followed by its DLR, matched by id."""
    inbox = Inbox()
    async with running(smsc, reactor, on_deliver=inbox) as client:
        await smsc.configure(auto_receipt={"stat": "DELIVRD", "delay_ms": 20})
        result = await client.submit(part())
        (receipt,) = await inbox.wait(1)
        assert receipt.tlv("receipted_message_id") == result.message_id
        assert receipt.source_addr == "13800138000"
        assert client.stats.receipts == 1


# ------------------------------------------------------------------ link health


async def test_enquire_link_both_directions(smsc: SmscSimulator, reactor: Any) -> None:
    """The client probes an idle link and answers the SMSC's own enquire_link."""
    async with running(smsc, reactor, enquire_link_interval=0.1):
        probes = await smsc.wait_for("enquire_link", count=3, timeout=3)
        assert all(p["answered"] for p in probes)
        seq = await smsc.enquire_link()
        (resp,) = await smsc.wait_for("enquire_link_resp_received")
        assert resp["sequence"] == seq


async def test_unanswered_enquire_link_means_rebind(smsc: SmscSimulator, reactor: Any) -> None:
    """A black-hole SMSC (enquire_link never answered) is detected; the client binds again."""
    async with running(
        smsc, reactor, enquire_link_interval=0.1, enquire_link_timeout=0.2
    ) as client:
        await smsc.configure(answer_enquire_link=False)
        await smsc.wait_for("close", count=1, timeout=3)
        await smsc.configure(answer_enquire_link=True)
        await smsc.wait_for("bind", count=2, timeout=3)
        await client.wait_bound(3)
        assert client.stats.links_dead >= 1
        assert (await client.submit(part())).ok


async def test_unanswered_bind_times_out_and_retries(smsc: SmscSimulator, reactor: Any) -> None:
    """A bind_resp that never comes ends the attempt after bind_timeout; the next one binds."""
    await smsc.configure(withhold_bind=True)
    async with running(smsc, reactor, bound=False, bind_timeout=0.2) as client:
        await smsc.wait_for("close", count=1, timeout=3)
        await smsc.configure(withhold_bind=False)
        await client.wait_bound(5)
        binds = await smsc.events("bind")
        assert binds[0]["withheld"]
        assert not binds[-1]["withheld"]
        assert client.stats.links_dead >= 1


async def test_smsc_unbind_is_answered_then_rebound(smsc: SmscSimulator, reactor: Any) -> None:
    """SMSC-initiated unbind gets unbind_resp (smpplib never sends it); then a new bind."""
    async with running(smsc, reactor) as client:
        seq = await smsc.unbind()
        (resp,) = await smsc.wait_for("unbind_resp_received")
        assert resp["sequence"] == seq
        await smsc.wait_for("bind", count=2, timeout=3)
        await client.wait_bound(3)
        assert client.stats.unbinds_received == 1


async def test_reconnect_back_off_grows(smsc: SmscSimulator, reactor: Any) -> None:
    """After a drop, refused reconnects are spaced further and further apart, then it binds."""
    async with running(smsc, reactor, reconnect_min=0.04, reconnect_max=1.0) as client:
        await smsc.configure(refuse_connections=True)
        await smsc.drop()
        refused = await smsc.wait_for("refused", count=4, timeout=5)
        gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(refused)]
        assert gaps[0] >= 80 * 0.9  # 2nd attempt: >= 2 x 40 ms
        assert gaps[2] >= 320 * 0.9  # 4th attempt: >= 8 x 40 ms
        assert gaps[2] > gaps[0]
        await smsc.configure(refuse_connections=False)
        await client.wait_bound(5)
        assert (await client.submit(part())).ok


async def test_garbage_on_the_socket_leads_to_rebind(smsc: SmscSimulator, reactor: Any) -> None:
    """Bytes that are not SMPP: generic_nack, connection dropped, fresh bind, traffic flows."""
    async with running(smsc, reactor) as client:
        await smsc.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (nack,) = await smsc.wait_for("generic_nack")
        assert nack["status"] == Status.RINVCMDLEN
        await smsc.wait_for("bind", count=2, timeout=3)
        await client.wait_bound(3)
        assert client.stats.protocol_errors >= 1
        assert (await client.submit(part())).ok


# ------------------------------------------------------------------ submit flow control


@pytest.mark.parametrize("status", [Status.RTHROTTLED, Status.RMSGQFUL, Status.RSYSERR])
async def test_error_status_is_surfaced(smsc: SmscSimulator, reactor: Any, status: int) -> None:
    """Error submit_sm_resp statuses come back as results, without message_id."""
    async with running(smsc, reactor) as client:
        await smsc.script_submits({"status": status})
        result = await client.submit(part())
        assert result == SubmitResult(None, status)
        assert (await client.submit(part())).ok


async def test_throttled_pauses_sending(smsc: SmscSimulator, reactor: Any) -> None:
    """After ESME_RTHROTTLED the next part waits for throttle_pause."""
    async with running(smsc, reactor, throttle_pause=0.3) as client:
        await smsc.script_submits({"status": Status.RTHROTTLED})
        assert (await client.submit(part())).status == Status.RTHROTTLED
        assert (await client.submit(part())).ok
        first, second = await smsc.events("submit_sm")
        assert second["t"] - first["t"] >= 300 * 0.9
        assert client.stats.throttled == 1


async def test_parts_per_second_limit(smsc: SmscSimulator, reactor: Any) -> None:
    """Eleven parts at 20 parts/s take at least half a second on the wire."""
    async with running(smsc, reactor, max_parts_per_second=20.0) as client:
        results = await asyncio.gather(*(client.submit(part(f"第{i}条")) for i in range(11)))
        assert all(r.ok for r in results)
        submits = await smsc.events("submit_sm")
        assert submits[-1]["t"] - submits[0]["t"] >= 500 * 0.9


async def test_window_holds_back_extra_submits(smsc: SmscSimulator, reactor: Any) -> None:
    """With window 2 and answers withheld, the third part waits for a free slot."""
    async with running(smsc, reactor, window=2) as client:
        await smsc.configure(default_submit={"withhold": True})
        tasks = [asyncio.create_task(client.submit(part(str(i)))) for i in range(3)]
        await smsc.wait_for("submit_sm", count=2)
        await asyncio.sleep(0.15)
        assert len(await smsc.events("submit_sm")) == 2
        assert client.outstanding == 2
        await smsc.release_withheld(1)
        await smsc.wait_for("submit_sm", count=3)
        await smsc.release_withheld()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert all(r.ok for r in results)
        assert len({r.message_id for r in results}) == 3


async def test_missing_response_is_in_doubt(smsc: SmscSimulator, reactor: Any) -> None:
    """No submit_sm_resp within response_timeout: SubmitTimeout; a late resp changes nothing."""
    async with running(smsc, reactor, response_timeout=0.2) as client:
        await smsc.script_submits({"withhold": True})
        with pytest.raises(SubmitTimeout):
            await client.submit(part())
        assert client.outstanding == 0
        await smsc.release_withheld()
        assert (await client.submit(part())).ok
        assert client.bind_state is BindState.BOUND


async def test_drop_in_the_middle_of_a_long_message(smsc: SmscSimulator, reactor: Any) -> None:
    """Part 1 accepted, the link drops on part 2 (in doubt), part 3 goes out after the rebind."""
    async with running(smsc, reactor) as client:
        await smsc.script_submits({}, {"drop": True})
        ref = 0x2A
        parts = [
            part(
                esm_class=0x40,
                short_message=bytes([5, 0, 3, ref, 3, n]) + f"第{n}段".encode("utf-16-be"),
            )
            for n in (1, 2, 3)
        ]
        first = await client.submit(parts[0])
        assert first.ok
        with pytest.raises(SubmitInDoubt):
            await client.submit(parts[1])
        third = await asyncio.wait_for(client.submit(parts[2]), 5)
        assert third.ok
        submits = await smsc.events("submit_sm")
        assert [s["udh_hex"][-2:] for s in submits] == ["01", "02", "03"]
        assert len({s["session"] for s in submits}) == 2


# ------------------------------------------------------------------ modes, TLS, shutdown


async def test_transmitter_plus_receiver_mode(smsc: SmscSimulator, reactor: Any) -> None:
    """bind_mode tx+rx: a transmitter link submits, a receiver link takes deliver_sm."""
    inbox = Inbox()
    async with running(smsc, reactor, bind_mode="tx+rx", on_deliver=inbox) as client:
        binds = {b["mode"]: b["session"] for b in await smsc.events("bind")}
        assert set(binds) == {"transmitter", "receiver"}
        assert client.bind_states == {"tx": BindState.BOUND, "rx": BindState.BOUND}
        assert (await client.submit(part())).ok
        (submit,) = await smsc.events("submit_sm")
        assert submit["session"] == binds["transmitter"]
        await smsc.deliver(source_addr="13800000000", data_coding=UCS2, text="收到")
        (event,) = await inbox.wait(1)
        (resp,) = await smsc.wait_for("deliver_sm_resp")
        assert resp["session"] == binds["receiver"]
        await smsc.acall("drop", session=binds["receiver"])
        receivers = await smsc.wait_for("bind", count=2, timeout=3, mode="receiver")
        assert len(receivers) == 2
        await client.wait_bound(3)
        assert event.short_message.decode("utf-16-be") == "收到"


async def test_stop_unbinds_after_running_handlers(smsc: SmscSimulator, reactor: Any) -> None:
    """stop() lets a running handler ack, then unbinds; later submits raise ClientStopped."""
    inbox = Inbox()
    inbox.gate.clear()
    client = client_for(smsc, reactor, on_deliver=inbox)
    await client.start()
    await client.wait_bound(5)
    await smsc.deliver(source_addr="13800000000", text="late")
    await inbox.wait(1)
    stopping = asyncio.create_task(client.stop(timeout=2))
    await asyncio.sleep(0.05)
    inbox.gate.set()
    await stopping
    kinds = [e["kind"] for e in await smsc.events() if e["kind"] in ("deliver_sm_resp", "unbind")]
    assert kinds == ["deliver_sm_resp", "unbind"]
    assert client.bind_state is BindState.STOPPED
    with pytest.raises(ClientStopped):
        await client.submit(part())


@pytest.fixture(scope="module")
def tls_smsc(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second simulator speaking SMPP over TLS with a throwaway certificate."""
    cert_pem, key_pem = _self_signed_certificate()
    directory: Path = tmp_path_factory.mktemp("smsc-tls")
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    simulator = SmscSimulator(
        tls_cert=directory / "cert.pem",
        tls_key=directory / "key.pem",
        log_path=directory / "simulator.log",
    )
    simulator.start()
    try:
        yield simulator, cert_pem
    finally:
        simulator.stop()


async def test_tls_bind_and_submit(tls_smsc: tuple[SmscSimulator, bytes], reactor: Any) -> None:
    """With a TLS connection creator the client binds and submits over TLS."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    simulator, cert_pem = tls_smsc
    await simulator.acall("reset")
    creator = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(cert_pem))
    async with running(simulator, reactor, tls=creator) as client:
        assert (await client.submit(part())).ok
        (bind,) = await simulator.events("bind")
        assert bind["password"] == "secret"


async def test_tls_with_untrusted_certificate_never_binds(
    tls_smsc: tuple[SmscSimulator, bytes], reactor: Any
) -> None:
    """tls=True verifies against the system roots: a self-signed SMSC is refused."""
    simulator, _ = tls_smsc
    await simulator.acall("reset")
    async with running(simulator, reactor, bound=False, tls=True, host="localhost") as client:
        with pytest.raises(TimeoutError):
            await client.wait_bound(0.5)
        assert await simulator.events("bind") == []
        assert client.stats.connects >= 1


def _self_signed_certificate() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
