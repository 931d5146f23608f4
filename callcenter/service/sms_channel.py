"""The SMS channel put together: services built with the others, loops started by `serve`.

`build_sms_services` runs in the composition root (no I/O, no event loop needed), so the
HTTP routes and tests use the same objects. `SmsRuntime` is what `serve` starts and
stops: the gateway (the SMPP client, or the console gateway when `smpp.host` is empty),
the outbox sender loop, a housekeeping loop, and the channel's periodic jobs (supervisor
escalation, the outbox's in-doubt and sweep passes), leased so that they run once across
nodes (overdue partial long messages become drafts in one of them, `sms-reassembly`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from callcenter import jobs
from callcenter.cases.grids import GridIndex
from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone
from callcenter.cluster.smpp import SmppAccountShare
from callcenter.metrics import MetricsRegistry
from callcenter.service.cases import CaseService
from callcenter.service.outbox_sender import OutboxSender
from callcenter.service.sms_intake import SmsIntakeService
from callcenter.service.sms_roster import Roster, RosterError, load_blocklist
from callcenter.service.tasks import TaskService
from callcenter.settings import Settings, SmppSettings
from sms.gateway import ConsoleGateway, SmppGateway, SmsGateway

if TYPE_CHECKING:
    from callcenter.cluster import Cluster

log = structlog.get_logger(__name__)


@dataclass
class SmsServices:
    intake: SmsIntakeService
    outbox: OutboxSender
    tasks: TaskService
    roster: Roster


def build_sms_services(settings: Settings, *, sessions: async_sessionmaker[AsyncSession], cases: CaseService,
                       grids: GridIndex, metrics: MetricsRegistry) -> SmsServices:
    """Read the roster and blocklist (a bad file stops start-up) and wire the SMS services."""
    region = settings.cases.default_region
    roster = Roster.load(settings.path(settings.sms.roster_file), region)
    blocklist = load_blocklist(settings.path(settings.sms.blocklist_file), region)
    leader: str | None = None
    if settings.sms.shift_leader_phone:
        try:
            leader = normalise_phone(settings.sms.shift_leader_phone, region)
        except InvalidPhoneNumber as exc:
            raise RosterError(f"sms.shift_leader_phone: {exc}") from exc
    outbox = OutboxSender(sessions=sessions, smpp=settings.smpp, settings=settings.sms, metrics=metrics,
                          region=region, node=settings.node_id(), dead_after=settings.node.dead_after_seconds)
    cases.on_outbox = outbox.wake
    tasks = TaskService(sessions=sessions, grids=grids, roster=roster,
                        escalation_minutes=settings.sms.task_escalation_minutes, shift_leader_phone=leader,
                        metrics=metrics, on_outbox=outbox.wake)
    intake = SmsIntakeService(sessions=sessions, cases=cases, tasks=tasks, settings=settings.sms, metrics=metrics,
                              gbk_codings=frozenset(settings.smpp.gbk_codings), region=region,
                              timezone=settings.cases.timezone, blocklist=blocklist, on_outbox=outbox.wake)
    return SmsServices(intake=intake, outbox=outbox, tasks=tasks, roster=roster)


def make_gateway(settings: SmppSettings, *, reactor: Any = None) -> SmsGateway:
    """The SMPP client for a configured SMSC; otherwise the console gateway."""
    if not settings.host:
        return ConsoleGateway()
    from sms.smpp.client import SmppClient  # noqa: PLC0415 - needs the asyncio reactor installed

    client = SmppClient(
        host=settings.host, port=settings.port, system_id=settings.system_id, password=settings.password,
        system_type=settings.system_type, bind_mode=settings.bind_mode,
        enquire_link_interval=settings.enquire_link_interval, enquire_link_timeout=settings.enquire_link_timeout,
        response_timeout=settings.response_timeout, window=settings.window,
        max_parts_per_second=settings.max_parts_per_second, throttle_pause=settings.throttle_pause,
        tls=settings.tls, reconnect_min=settings.reconnect_min, reconnect_max=settings.reconnect_max,
        reactor=reactor)
    return SmppGateway(client, source_addr=settings.source_addr, source_ton=settings.source_ton,
                       source_npi=settings.source_npi, dest_format=settings.dest_format)


class SmsRuntime:
    """Starts and stops the SMS gateway and the loops around it.

    With a `cluster` (what `serve` passes), supervisor escalation, the outbox's in-doubt and
    sweep passes and the flood-window pruning run as leased jobs, once across the nodes
    (callcenter/jobs.py); without one (a bare runtime in tests and benchmarks) this
    process runs them itself, as a single node would.
    """

    def __init__(self, sms: SmsServices, settings: Settings, gateway: SmsGateway | None = None, *,
                 cluster: Cluster | None = None) -> None:
        self.sms = sms
        self.settings = settings
        self.gateway = gateway
        self.cluster = cluster
        self._stop = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._jobs: list[str] = []
        self.share: SmppAccountShare | None = None

    async def start(self) -> None:
        gateway = self.gateway or make_gateway(self.settings.smpp)
        self.gateway = gateway
        self.sms.outbox.gateway = gateway
        share = self._account_share(gateway)
        await self.sms.outbox.recover()
        await self.sms.intake.load()
        await gateway.start(self.sms.intake.receive_verdict, self.sms.outbox.handle_receipt)
        if self.cluster is not None:
            self.sms.outbox.leased_sweeps = True
            self._jobs = jobs.register(self.cluster, jobs.sms_jobs(self.settings, self.sms))
        self._loops = [
            asyncio.create_task(self.sms.outbox.run(self._stop), name="sms-outbox"),
            asyncio.create_task(self._housekeeping(), name="sms-housekeeping"),
        ]
        if share is not None:
            self._loops.append(asyncio.create_task(share.run(self._stop), name="smpp-rate-share"))
        smpp = self.settings.smpp
        log.info("sms.started", gateway=gateway.name, smsc=f"{smpp.host}:{smpp.port}" if smpp.host else None,
                 bind_mode=smpp.bind_mode if smpp.host else None)

    async def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._loops:
            _, pending = await asyncio.wait(self._loops, timeout=timeout)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.cluster is not None:
            await jobs.unregister(self.cluster, self._jobs)
            self._jobs = []
        if self.gateway is not None:
            await self.gateway.stop()
        log.info("sms.stopped")

    def _account_share(self, gateway: SmsGateway) -> SmppAccountShare | None:
        """Several nodes on one SMSC account: a bind gate (`smpp.max_binds`) and this node's
        share of `smpp.max_parts_per_second` (callcenter/cluster/smpp.py). SMPP only."""
        client = getattr(gateway, "client", None)
        if not isinstance(gateway, SmppGateway) or client is None:
            return None
        smpp, node = self.settings.smpp, self.settings.node
        share = SmppAccountShare(
            node_id=self.settings.node_id(), engine=self.sms.intake.cases.engine,
            account=f"{smpp.system_id}@{smpp.host}:{smpp.port}"[:128], binds=2 if smpp.bind_mode == "tx+rx" else 1,
            cap=smpp.max_parts_per_second, max_binds=smpp.max_binds, dead_after=node.dead_after_seconds,
            period=node.heartbeat_seconds, on_rate=lambda rate, hold: client.set_rate(rate, hold=hold))
        if share.max_binds and share.binds > share.max_binds:
            log.error("smpp.max_binds_too_low", max_binds=share.max_binds, bind_mode=smpp.bind_mode,
                      hint="tx+rx needs two binds per node; this node will never bind")
        share.register_metrics(self.sms.intake.metrics)
        client.bind_gate = share
        client.gate_retry = node.heartbeat_seconds
        self.share = share
        return share

    async def _housekeeping(self) -> None:
        interval = self.settings.sms.housekeeping_interval
        while not self._stop.is_set():
            try:
                if self.cluster is None:  # otherwise leased jobs (callcenter/jobs.py)
                    await self.sms.tasks.escalate_due()
                    await self.sms.intake.limits.prune()
                    await self.sms.intake.expire_partials()
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                log.error("sms.housekeeping.store_failed", error=str(exc).splitlines()[0][:300])
            except Exception:  # noqa: BLE001 - keep the loop alive
                log.exception("sms.housekeeping.failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._stop.wait()
