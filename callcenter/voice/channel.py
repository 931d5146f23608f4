"""The voice channel wired together: flows, actions, recordings, routes, AMI, metrics.

Built once in the composition root from `Services`; `callcenter serve` (Runtime) starts
the FastAGI listener with `routes` and, when `[ami] enabled`, the AMI client. On shutdown
it drains: the listener closes first (Asterisk's dialplan then starts new calls on another
node), calls in progress go on normally for `[voice] drain_seconds`, then callers still in
the IVR are handed to a person at their next step (owed work done), and after
`drain_handover_seconds` the rest are cut like a hang-up (owed work done; the dialplan
sends them to the staff queue). A process that has drained its calls exits at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.interfaces import IListeningPort

from callcenter import jobs
from callcenter.agi.server import AgiHandler, AgiServerFactory, start_agi_server
from callcenter.ivr import BusinessHours, Flow, HoursError, load_flows
from callcenter.settings import Settings
from callcenter.voice.actions import VoiceActions, utcnow
from callcenter.voice.ami import AmiClient
from callcenter.voice.callbacks import CallbackService
from callcenter.voice.metrics import VoiceMetrics
from callcenter.voice.recordings import RecordingStore, check_recording_dirs
from callcenter.voice.queue_follow import QueueFollower
from callcenter.voice.staff_dial import StaffDialer
from callcenter.voice.records import CallRecords
from callcenter.voice.routes import apply_overrides, build_routes
from callcenter.voice.runner import RunnerDeps

if TYPE_CHECKING:
    from callcenter.app import Services

log = structlog.get_logger(__name__)


def load_hours(settings: Settings) -> BusinessHours | None:
    """The staff-hours calendar; without one, every call may try a person (the queue's
    own fallback is voicemail), which beats refusing to start the hotline."""
    path = settings.path(settings.voice.hours_file)
    try:
        return BusinessHours.load(path)
    except HoursError as exc:
        log.error("voice.no_hours", error=str(exc))
        return None


class VoiceChannel:
    def __init__(self, services: Services, *, now: Callable[[], dt.datetime] = utcnow,
                 flows: dict[str, Flow] | None = None, hours: BusinessHours | None = None) -> None:
        settings = services.settings
        self.settings = settings
        self.cluster = services.cluster
        self._jobs: list[str] = []
        self.metrics = VoiceMetrics.register(services.metrics)
        self.recordings = RecordingStore.from_settings(settings)
        loaded = flows if flows is not None else load_flows(
            settings.path(settings.voice.flows_dir), settings.path(settings.prompts.source))
        self.flows = {name: apply_overrides(flow, settings.voice) for name, flow in loaded.items()}
        self.hours = hours if hours is not None else load_hours(settings)
        # Requests are taken whenever call-backs are on; the calls are placed through AMI.
        self.callbacks: CallbackService | None = None
        if settings.callback.enabled:
            self.callbacks = CallbackService(services.sessions, settings.callback, ami=None,
                                             timezone=settings.cases.timezone,
                                             region=settings.cases.default_region, metrics=self.metrics)
        self.actions = VoiceActions(
            cases=services.cases, engine=services.engine, sessions=services.sessions,
            templates=services.templates, catalogue=services.catalogue, recordings=self.recordings,
            metrics=self.metrics, hours=self.hours, region=settings.cases.default_region, now=now,
            callbacks=self.callbacks)
        self._draining = False
        self._handing_over = False
        self._active = 0
        self.call_records = CallRecords(services.sessions, services.engine.dialect.name,
                                        region=settings.cases.default_region)
        self.deps = RunnerDeps(
            actions=self.actions, recordings=self.recordings, metrics=self.metrics,
            # With AMI the screen-pop waits for AgentConnect and goes to the agent who answered;
            # without it the IVR's transfer pops every console, as before.
            events=None if settings.ami.enabled else services.events,
            sounds_dir=settings.prompts.asterisk_sounds_dir, region=settings.cases.default_region,
            draining=lambda: self._handing_over, call_records=self.call_records,
            node=services.cluster.node_id if services.cluster is not None else settings.node_id())
        self.routes: dict[str, AgiHandler] = build_routes(self.flows, self.deps, self._track)
        self.ami: AmiClient | None = None
        self.queue_follower: QueueFollower | None = None
        self.staff_dialer: StaffDialer | None = None
        if settings.ami.enabled:
            self.ami = AmiClient(settings.ami, queue=settings.voice.queue, metrics=self.metrics,
                                 region=settings.cases.default_region)
            services.metrics.on_refresh(self.ami.refresh_metrics)
            self.queue_follower = QueueFollower(self.call_records, services.sessions, services.events,
                                                queues={settings.voice.queue}, metrics=self.metrics)
            self.ami.on_event(self.queue_follower)
            self.staff_dialer = StaffDialer(services.sessions, self.ami, settings.ami,
                                            region=settings.cases.default_region, events=services.events)
            self.ami.on_event(self.staff_dialer.on_event)
            services.staff_dialer = self.staff_dialer
            if self.callbacks is not None:
                self.callbacks.ami = self.ami
                self.ami.on_event(self.callbacks.on_event)
        elif self.callbacks is not None:
            log.error("voice.callbacks_without_ami",
                      problem="[callback] enabled needs [ami] enabled: requests are kept, no call is placed")
        self.factory: AgiServerFactory | None = None
        self._listening: IListeningPort | None = None
        # Said once at start-up, in words: a recording folder that is wrong loses every report.
        self.recording_problems = check_recording_dirs(settings)
        for problem in self.recording_problems:
            log.error("voice.recordings_problem", problem=problem)

    def _track(self, delta: int) -> None:
        self._active += delta
        self.metrics.active.set(self._active)

    @property
    def active_calls(self) -> int:
        return self._active

    @property
    def draining(self) -> bool:
        """True from the start of `stop()`: no new calls; those in progress are finishing."""
        return self._draining

    def listen(self, reactor: AsyncioSelectorReactor, host: str, port: int) -> IListeningPort:
        """Start the FastAGI listener (port 0 picks a free one)."""
        self._listening = start_agi_server(reactor, host, port, self.routes)
        self.factory = self._listening.factory  # type: ignore[attr-defined]
        return self._listening

    async def start_ami(self) -> None:
        if self.ami is not None:
            await self.ami.start()
        if self.callbacks is not None and self.ami is not None:
            if self.cluster is not None and self.cluster.running:
                # Once across the nodes, on one whose AMI link is up.
                self._jobs = jobs.register(self.cluster, jobs.voice_jobs(self.settings, self.callbacks))
            else:
                self.callbacks.start()

    async def stop(self) -> None:
        """Stop taking calls, drain the ones in progress, stop AMI."""
        loop = asyncio.get_running_loop()
        self._draining = True
        if self._listening is not None:
            from twisted.internet.defer import Deferred

            stopped = self._listening.stopListening()
            if isinstance(stopped, Deferred):
                await stopped.asFuture(loop)
            self._listening = None
        voice = self.settings.voice
        await self.drain(voice.drain_seconds, voice.drain_handover_seconds)
        if self.cluster is not None and self._jobs:
            await jobs.unregister(self.cluster, self._jobs)
            self._jobs = []
        if self.callbacks is not None:
            await self.callbacks.stop()
        if self.ami is not None:
            await self.ami.stop()
        if self.staff_dialer is not None:
            await self.staff_dialer.drain()
        if self.queue_follower is not None:
            await self.queue_follower.stop()

    def hand_over_calls(self) -> None:
        """From now on a caller reaching their next step is handed to a person (owed work done)."""
        self._handing_over = True

    async def drain(self, seconds: float, handover_seconds: float = 0.0) -> None:
        """Let calls go on for `seconds`; then hand callers to a person at their next step;
        after `handover_seconds` more, cut the rest (as a hang-up: owed work is done)."""
        self._draining = True
        factory = self.factory
        if factory is None or factory.active_calls == 0:
            return
        log.info("voice.draining", calls=factory.active_calls, seconds=seconds)
        if await factory.drain(seconds):
            log.info("voice.drained")
            return
        log.warning("voice.drain_hand_over", calls=factory.active_calls, seconds=handover_seconds)
        self.hand_over_calls()
        if await factory.drain(handover_seconds):
            return
        log.warning("voice.drain_cut", calls=factory.cut_all())
        # Owed work after a cut is a few statements; give it the hand-over time again.
        if await factory.drain(max(handover_seconds, 5.0)):
            return
        tasks = factory.cancel_all()
        log.warning("voice.drain_timeout", cancelled=len(tasks))
        await asyncio.gather(*tasks, return_exceptions=True)
