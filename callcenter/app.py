"""Composition root: settings in, wired services out. The one place that builds things."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from callcenter.cases.catalogue import Catalogue
from callcenter.cases.grids import GridIndex
from callcenter.cases.messages import MessageTemplates
from callcenter.cluster import Cluster
from callcenter.db.engine import create_engine, make_sessionmaker
from callcenter.events import EventHub
from callcenter.metrics import MetricsRegistry
from callcenter.service.cases import CaseService
from callcenter.service.sms_channel import SmsServices, build_sms_services
from callcenter.service.tokens import TokenStore
from callcenter.settings import Settings

if TYPE_CHECKING:
    from callcenter.voice.staff_dial import StaffDialer

log = structlog.get_logger(__name__)


@dataclass
class NodeState:
    """Where this process is in its life; `draining` from the moment `serve` was asked to
    stop until it exits (/healthz says so, so a load balancer stops sending new work)."""

    draining: bool = False


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    catalogue: Catalogue
    grids: GridIndex
    templates: MessageTemplates
    cases: CaseService
    tokens: TokenStore
    events: EventHub = field(default_factory=EventHub)
    metrics: MetricsRegistry = field(default_factory=MetricsRegistry)
    sms: SmsServices | None = None
    cluster: Cluster | None = None
    state: NodeState = field(default_factory=NodeState)
    # Set by the voice channel when AMI is on: the console's 回拨市民 places calls through it.
    staff_dialer: StaffDialer | None = None

    async def check_database(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def load_reference_data(settings: Settings) -> tuple[Catalogue, GridIndex, MessageTemplates]:
    """Catalogue, grids and templates: read once at start-up; a bad file stops start-up."""
    catalogue = Catalogue.load(
        [settings.path(p) for p in [*settings.catalogue.files, *settings.catalogue.extensions]],
        edition=settings.catalogue.edition,
    )
    grids = GridIndex.load([settings.path(p) for p in settings.grids.files])
    templates = MessageTemplates.load(settings.path(settings.messages.templates),
                                      signature=settings.messages.signature)
    return catalogue, grids, templates


def build_services(settings: Settings) -> Services:
    catalogue, grids, templates = load_reference_data(settings)
    engine = create_engine(settings.database)
    sessions = make_sessionmaker(engine)
    cases = CaseService(
        engine=engine, sessions=sessions, catalogue=catalogue, grids=grids, templates=templates,
        timezone=settings.cases.timezone, region=settings.cases.default_region,
        serial_digits=settings.cases.serial_digits,
    )
    events = EventHub()
    cases.on_draft_created = lambda view: events.publish(
        "draft_created", {"number": view.number, "channel": view.channel})
    metrics = MetricsRegistry()
    sms = build_sms_services(settings, sessions=sessions, cases=cases, grids=grids, metrics=metrics)
    tokens = TokenStore(sessions, origin=settings.node_id())
    cluster = Cluster.build(settings, engine, events, tokens, metrics)
    return Services(settings=settings, engine=engine, sessions=sessions, catalogue=catalogue, grids=grids,
                    templates=templates, cases=cases, tokens=tokens, metrics=metrics, sms=sms,
                    events=events, cluster=cluster)
