"""IVR flows as data (ivr_scripts/*.toml) and the one pure engine that runs them.

`load_flows()` validates every flow at start-up; `FlowRunner(flow)` turns events into
actions for a runtime (FastAGI or the classic AGI script) to execute; `BusinessHours`
answers the `check_hours` action.
"""

from callcenter.ivr.engine import (
    Action,
    ActionResult,
    CollectDigits,
    Digits,
    Event,
    FlowRunner,
    HangUp,
    Hangup,
    Invoke,
    Play,
    Record,
    RecordingDone,
    RunnerError,
    SayDigits,
    Timeout,
    Transfer,
    UnexpectedEvent,
    WaitDigit,
)
from callcenter.ivr.flow import ACTIONS, ActionSpec, Flow
from callcenter.ivr.hours import BusinessHours, HoursError
from callcenter.ivr.loader import FLOWS_DIR, PROMPTS_DIR, FlowError, load_flow, load_flows

__all__ = [
    "ACTIONS",
    "FLOWS_DIR",
    "PROMPTS_DIR",
    "Action",
    "ActionResult",
    "ActionSpec",
    "BusinessHours",
    "CollectDigits",
    "Digits",
    "Event",
    "Flow",
    "FlowError",
    "FlowRunner",
    "HangUp",
    "Hangup",
    "HoursError",
    "Invoke",
    "Play",
    "Record",
    "RecordingDone",
    "RunnerError",
    "SayDigits",
    "Timeout",
    "Transfer",
    "UnexpectedEvent",
    "WaitDigit",
    "load_flow",
    "load_flows",
]
