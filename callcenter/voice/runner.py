"""The asyncio FastAGI driver of the IVR executor: one socket, one call.

`callcenter.ivr.executor.CallExecutor` decides every AGI command (see its docstring for
what each engine action becomes); this driver only performs its requests: the command on
the FastAGI connection, the service call through `VoiceActions`, a recording path from
`RecordingStore`, the speech check of a recording (in a thread: it reads the file). It
also keeps what belongs to the service around a call: metrics, the screen pop for the
staff console, the call record, logs keyed by call id.

The classic stdin/stdout driver (ivr_scripts/agi_classic.py) runs the same executor.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from callcenter.agi.errors import AgiHangup
from callcenter.agi.server import AgiCall
from callcenter.ivr import Flow
from callcenter.ivr.executor import (
    Audio,
    CallEnv,
    CallExecutor,
    CheckSpeech,
    Command,
    ExecutorHooks,
    NewRecording,
    RecordingTarget,
    Request,
    Service,
)
from callcenter.ivr.prompt_ids import sound_name
from callcenter.voice import records
from callcenter.voice.actions import CallInfo, VoiceActions
from callcenter.voice.metrics import VoiceMetrics
from callcenter.voice.recordings import RecordingStore
from sms.privacy import mask_number

log = structlog.get_logger(__name__)

# 20 s of 8 kHz 16-bit audio: measured on the event loop below this, in a thread above.
_INLINE_SPEECH_BYTES = 20 * 8000 * 2


class EventSink(Protocol):
    def publish(self, event_type: str, data: Mapping[str, Any]) -> object: ...


@dataclass(frozen=True)
class RunnerDeps:
    """What every call shares: the service actions, where recordings go, prompts, metrics."""

    actions: VoiceActions
    recordings: RecordingStore
    metrics: VoiceMetrics
    events: EventSink | None
    sounds_dir: str
    region: str = "CN"
    # True once calls must be handed to a person at their next step (end of a drain).
    draining: Callable[[], bool] = lambda: False
    call_records: records.CallRecords | None = None
    # This node's id, set on the channel as CALLCENTER_NODE first thing on every call.
    node: str | None = None


class _Hooks(ExecutorHooks):
    """Metrics and the screen pop, as the executor reports them."""

    def __init__(self, runner: CallRunner) -> None:
        self.runner = runner

    def answered(self) -> None:
        runner = self.runner
        runner.answered_at = runner.deps.actions.now()
        runner.deps.metrics.answered.inc(route=runner.route)

    def abandoned(self, state: str) -> None:
        self.runner.deps.metrics.abandoned.inc(flow=self.runner.flow.name, state=state)

    def transferred(self, target: str, case_number: str | None) -> None:
        runner = self.runner
        runner.deps.metrics.transfers.inc(flow=runner.flow.name, target=target)
        if target == "agent" and runner.deps.events is not None:
            runner.deps.events.publish("screen_pop", {
                "agent": None, "phone": runner.info.caller or "", "call_id": runner.call.call_id,
                "case_number": case_number})

    def failed(self, kind: str) -> None:
        self.runner.deps.metrics.agi_errors.inc(route=self.runner.route, error=kind)


class CallRunner:
    """One call through one flow. Create per call; `await run()` once."""

    def __init__(self, call: AgiCall, flow: Flow, deps: RunnerDeps, route: str) -> None:
        self.call = call
        self.flow = flow
        self.deps = deps
        self.route = route
        request = call.request
        self.executor = CallExecutor(
            flow, CallEnv(call.call_id, request.callerid, tuple(request.args)), route=route,
            sound=lambda prompt_id: sound_name(prompt_id, deps.sounds_dir), region=deps.region,
            draining=deps.draining, hooks=_Hooks(self), node=deps.node)
        self.engine = self.executor.engine
        self.info = CallInfo(call_id=call.call_id, route=route, caller=self.executor.caller)
        self.log = log.bind(call_id=call.call_id, flow=flow.name)
        self.answered_at: dt.datetime | None = None

    @property
    def gone(self) -> bool:
        return self.executor.gone

    @property
    def draft_number(self) -> str | None:
        return self.executor.draft_number

    # ---- entry

    async def run(self) -> None:
        metrics = self.deps.metrics
        started = time.monotonic()
        started_at = self.deps.actions.now()
        metrics.calls.inc(route=self.route)
        self.log.info("voice.call", route=self.route, caller=mask_number(self.info.caller))
        try:
            step = self.executor.start()
            while step is not None:
                try:
                    answer = await self._perform(step)
                except Exception as exc:  # noqa: BLE001 - the executor decides what it means
                    step = self.executor.throw(exc)
                else:
                    step = self.executor.send(answer)
        finally:
            metrics.call_seconds.observe(time.monotonic() - started)
            engine = self.engine
            self.log.info("voice.call_ended", state=engine.state, settled=engine.settled,
                          hung_up=self.gone or engine.hung_up,
                          case_number=engine.variables.get("case_number"),
                          ending=type(engine.ending).__name__ if engine.ending else None)
            await self._record_call(started_at)

    async def _perform(self, step: Request) -> Any:
        match step:
            case Command():
                if step.live_only and self.call.hung_up:
                    raise AgiHangup("the caller hung up")
                return await self.call.command(step.line)
            case Service():
                return await self.deps.actions.invoke(step.invoke, self.info)
            case NewRecording():
                target = self.deps.recordings.new_target(step.name, self.call.call_id)
                return RecordingTarget(target.asterisk_path, target.ref)
            case CheckSpeech():
                speech = await self._speech(step.ref)
                if speech is None:
                    check = self.deps.recordings.check(step.ref)
                    return Audio(check.duration_ms if check.frames else None, None)
                return Audio(speech.duration_ms, speech.speech_ms)
        raise TypeError(f"unknown executor request {step!r}")  # pragma: no cover

    async def _speech(self, ref: str) -> Any:
        """Short takes (most silent tries, a quick report) are measured inline: ~1 ms per
        second of audio, less than a thread hop costs under load (a 300-call burst through
        the default executor stalled callers for >10 s). Long ones go to a thread."""
        path = self.deps.recordings.service_path(ref)
        try:
            size = path.stat().st_size if path is not None else 0
        except OSError:
            size = 0
        if size <= _INLINE_SPEECH_BYTES:
            return self.deps.recordings.speech(ref)
        return await asyncio.to_thread(self.deps.recordings.speech, ref)

    def outcome(self) -> str:
        """How the call ended, for its call record (docs/voice.md, Call records)."""
        executor = self.executor
        if executor.failed:
            return records.ERROR
        if executor.transferred_to is not None:
            return records.TRANSFERRED
        if self.engine.settled:
            return records.SETTLED
        if executor.gone or self.engine.hung_up or self.answered_at is None:
            return records.ABANDONED
        return records.ERROR  # cut off (shutdown) with the caller still in the flow

    async def _record_call(self, started_at: dt.datetime) -> None:
        """The one place a call finishes: one call_records row, whatever happened."""
        store = self.deps.call_records
        if store is None:
            return
        try:
            record = records.CallRecord(
                call_id=self.call.call_id, route=self.route, caller=self.info.caller, started_at=started_at,
                answered_at=self.answered_at, ended_at=self.deps.actions.now(),
                last_state=self.engine.state if self.answered_at is not None else None, outcome=self.outcome(),
                case_number=self.draft_number)
        except Exception:  # noqa: BLE001 - a lost record must not break the call
            self.log.exception("voice.call_record_failed")
            return
        await store.write(record)
