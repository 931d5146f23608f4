"""The FastAGI route table: `agi_network_script` -> the IVR flow of the same name.

`agi://callcenter:4573/hotline` runs `ivr_scripts/hotline.toml`, likewise `status`,
`voicemail`, `callback` and `recover` (config/asterisk/extensions.conf). A query string is ignored
for routing (`hotline?x=1` is `hotline`). A script with no flow is answered by the AGI
core's unknown-route handler: a warning in our log, a VERBOSE line in Asterisk's, and the
session ends cleanly so the dialplan goes on; other calls are not affected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

from callcenter.agi.server import AgiCall, AgiHandler
from callcenter.ivr import Flow
from callcenter.ivr.flow import DigitsState, MenuState, RecordState, State
from callcenter.settings import VoiceSettings
from callcenter.voice.runner import CallRunner, RunnerDeps

# The routes the dialplan uses; each must have a flow, or start-up fails.
REQUIRED_ROUTES: tuple[str, ...] = ("hotline", "status", "voicemail", "callback", "recover")


def apply_overrides(flow: Flow, voice: VoiceSettings) -> Flow:
    """The flow with the [voice] overrides applied (recording limits, digit timeout, tries).

    States that deliberately allow a single try (the menu after the number has been read
    out: no key means goodbye) keep it.
    """
    def adjust(state: State) -> State:
        changes: dict[str, object] = {}
        if isinstance(state, RecordState):
            if voice.record_max_seconds is not None:
                changes["max_seconds"] = voice.record_max_seconds
            if voice.record_silence_seconds is not None:
                changes["silence_seconds"] = voice.record_silence_seconds
        if isinstance(state, (MenuState, DigitsState)) and voice.digit_timeout_seconds is not None:
            changes["timeout_ms"] = int(voice.digit_timeout_seconds * 1000)
        if isinstance(state, (MenuState, DigitsState, RecordState)) and voice.retries is not None \
                and state.tries > 1:
            changes["tries"] = voice.retries
        return dataclasses.replace(state, **changes) if changes else state  # type: ignore[arg-type]

    states = {name: adjust(state) for name, state in flow.states.items()}
    return dataclasses.replace(flow, states=states)


def call_handler(flow: Flow, deps: RunnerDeps, route: str,
                 track: Callable[[int], None] | None = None) -> AgiHandler:
    """An AgiServerFactory handler that runs `flow` for each call on `route`."""

    async def handle(call: AgiCall) -> None:
        if track is not None:
            track(+1)
        try:
            await CallRunner(call, flow, deps, route).run()
        finally:
            if track is not None:
                track(-1)

    handle.__name__ = f"ivr_{route}"
    return handle


def build_routes(flows: Mapping[str, Flow], deps: RunnerDeps,
                 track: Callable[[int], None] | None = None) -> dict[str, AgiHandler]:
    """One route per flow, named like the flow; the dialplan's five routes must be there."""
    missing = [route for route in REQUIRED_ROUTES if route not in flows]
    if missing:
        raise ValueError(f"no IVR flow for FastAGI route(s) {missing}; flows found: {sorted(flows)}")
    return {name: call_handler(flow, deps, name, track) for name, flow in flows.items()}
