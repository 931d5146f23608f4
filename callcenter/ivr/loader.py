"""Load `ivr_scripts/*.toml` into `Flow` objects and prove them sound before any call.

Checked here, so a broken flow stops start-up instead of stranding a caller: unknown
state types and keys, dangling transitions, prompt ids without a prompt file, unknown
service actions and unmapped outcomes, unreachable states, states from which no transfer
or hangup can be reached, loops that never wait for the caller, input states without
on_fail or with tries < 1, and any hangup reachable without passing a `settled` state
(the service must not hang up on a caller whose business is not concluded).
Every message names the file, the state and the key.
"""

from __future__ import annotations

import re
import tomllib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from callcenter.cases.lifecycle import CaseStatus
from callcenter.ivr.flow import (
    ACTIONS,
    CHANNEL_VARIABLES,
    DTMF_KEYS,
    INPUT_TYPES,
    PASS_THROUGH_TYPES,
    TERMINAL_TYPES,
    TRANSFER_TARGETS,
    VALIDATORS,
    ActionState,
    DigitsState,
    Flow,
    HangupState,
    MenuState,
    PlayState,
    RecordState,
    SayDigitsState,
    SayStatusState,
    State,
    StateType,
    TransferState,
    Transition,
    transitions,
)
from callcenter.ivr.prompt_ids import prompt_ids

__all__ = ["FLOWS_DIR", "PROMPTS_DIR", "FlowError", "load_flow", "load_flows", "parse_flow"]

FLOWS_DIR = Path(__file__).resolve().parents[2] / "ivr_scripts"
PROMPTS_DIR = FLOWS_DIR / "prompts" / "zh"

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_TOP_KEYS = frozenset({"flow", "defaults", "states"})
_FLOW_KEYS = frozenset({"name", "description", "start", "requires", "from_channel"})
_DEFAULT_KEYS = frozenset({"timeout", "tries", "no_input", "invalid", "too_short",
                           "max_seconds", "silence_seconds", "min_seconds"})
# (low, high) bounds of the numeric settings.
_TIMEOUT = (0.5, 120.0)
_TRIES = (1, 20)
_MAX_SECONDS = (1, 3600)
_SILENCE_SECONDS = (1, 60)
_MIN_SECONDS = (0.0, 60.0)


@dataclass(frozen=True)
class _Defaults:
    """[defaults] of a flow file; the values here apply when a file says nothing."""

    timeout: float = 6.0
    tries: int = 3
    no_input: tuple[str, ...] = ("no_input",)
    invalid: tuple[str, ...] = ("invalid_input",)
    too_short: tuple[str, ...] = ("record_too_short",)
    max_seconds: int = 120
    silence_seconds: int = 5
    min_seconds: float = 1.0

_COMMON = frozenset({"type", "on_hangup", "settled", "note"})
_KEYS: dict[StateType, frozenset[str]] = {
    StateType.PLAY: frozenset({"prompts", "next", "interruptible"}),
    StateType.MENU: frozenset({"prompts", "keys", "on_fail", "timeout", "tries", "no_input",
                               "invalid", "store"}),
    StateType.DIGITS: frozenset({"prompts", "next", "on_fail", "store", "max_digits",
                                 "timeout", "tries", "no_input", "invalid", "validator"}),
    StateType.RECORD: frozenset({"prompts", "next", "on_fail", "store", "file", "max_seconds",
                                 "silence_seconds", "min_seconds", "beep", "tries",
                                 "too_short"}),
    StateType.ACTION: frozenset({"call", "args", "outcomes"}),
    StateType.SAY_DIGITS: frozenset({"prompts", "var", "next", "interruptible"}),
    StateType.SAY_STATUS: frozenset({"prompts", "var", "next", "on_unknown"}),
    StateType.TRANSFER: frozenset({"prompts", "to", "variables"}),
    StateType.HANGUP: frozenset({"prompts"}),
}
_REQUIRED: dict[StateType, frozenset[str]] = {
    StateType.PLAY: frozenset({"prompts", "next"}),
    StateType.MENU: frozenset({"prompts", "keys", "on_fail"}),
    StateType.DIGITS: frozenset({"prompts", "next", "on_fail", "store", "max_digits"}),
    StateType.RECORD: frozenset({"prompts", "next", "on_fail"}),
    StateType.ACTION: frozenset({"call", "outcomes"}),
    StateType.SAY_DIGITS: frozenset({"var", "next"}),
    StateType.SAY_STATUS: frozenset({"next", "on_unknown"}),
    StateType.TRANSFER: frozenset({"to"}),
    StateType.HANGUP: frozenset(),
}
_TRANSITION_KEYS = frozenset({"next", "set", "play", "fail"})


class FlowError(ValueError):
    """A flow file is unusable; `problems` lists every finding as `file: state 'x': key: ...`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            super().__init__(f"{source}: {len(problems)} problem(s) in IVR flow\n  "
                             + "\n  ".join(problems))


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, message: str, state: str | None = None, key: str | None = None) -> None:
        where = self.source
        if state is not None:
            where += f": state {state!r}"
        if key is not None:
            where += f": {key}"
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise FlowError(self.source, self.items)


class _Reader:
    """Typed access to one state's table, recording problems instead of raising."""

    def __init__(self, problems: _Problems, state: str | None, table: Mapping[str, Any],
                 prefix: str = "") -> None:
        self.problems, self.state, self.table, self.prefix = problems, state, table, prefix

    def bad(self, key: str, message: str) -> None:
        self.problems.add(message, self.state, self.prefix + key)

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self.table.get(key, default)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.bad(key, f"must be a non-empty string, got {value!r}")
            return None
        return value

    def name(self, key: str, default: str | None = None) -> str | None:
        value = self.string(key, default)
        if value is not None and not _NAME.fullmatch(value):
            self.bad(key, f"{value!r} is not a name (lower-case letters, digits, _)")
            return None
        return value

    def names(self, key: str, default: list[str] | None = None) -> tuple[str, ...]:
        value = self.table.get(key, default if default is not None else [])
        if not isinstance(value, list) or not all(isinstance(v, str) and _NAME.fullmatch(v)
                                                  for v in value):
            self.bad(key, f"must be a list of names, got {value!r}")
            return ()
        return tuple(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            self.bad(key, f"must be true or false, got {value!r}")
            return default
        return value

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not low <= value <= high:
            self.bad(key, f"must be a number from {low:g} to {high:g}, got {value!r}")
            return default
        return float(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(key, f"must be a whole number from {low} to {high}, got {value!r}")
            return default
        return value

    def transition(self, key: str, value: Any = None) -> Transition | None:
        """`"state"` or `{ next = "state", set = {var = "value"}, play = [...], fail = true }`."""
        raw = self.table.get(key) if value is None else value
        if isinstance(raw, str):
            return Transition(raw) if raw else self._bad_transition(key, raw)
        if not isinstance(raw, dict):
            return self._bad_transition(key, raw)
        unknown = sorted(set(raw) - _TRANSITION_KEYS)
        if unknown:
            self.bad(key, f"unknown transition key(s) {unknown}; "
                          f"allowed: {sorted(_TRANSITION_KEYS)}")
        target = raw.get("next")
        if not isinstance(target, str) or not target:
            self.bad(key, "a transition table needs next = \"<state>\"")
            return None
        assign = raw.get("set", {})
        if not isinstance(assign, dict) or not all(
                isinstance(k, str) and _NAME.fullmatch(k) and isinstance(v, str)
                for k, v in assign.items()):
            self.bad(key, f"set must map variable names to strings, got {assign!r}")
            assign = {}
        prompts = raw.get("play", [])
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            self.bad(key, f"play must be a list of prompt ids, got {prompts!r}")
            prompts = []
        fail = raw.get("fail", False)
        if not isinstance(fail, bool):
            self.bad(key, f"fail must be true or false, got {fail!r}")
            fail = False
        return Transition(target, MappingProxyType(dict(assign)), tuple(prompts), fail)

    def _bad_transition(self, key: str, raw: Any) -> None:
        self.bad(key, f"must be a state name or a transition table, got {raw!r}")
        return None

    def prompts(self, key: str, default: Iterable[str] = ()) -> tuple[str, ...]:
        if key not in self.table:
            return tuple(default)
        value = self.table[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.bad(key, f"must be a list of prompt ids, got {value!r}")
            return ()
        return tuple(value)


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        message = f"{path}: cannot read IVR flow: {exc.strerror or exc}"
        raise FlowError(str(path), [message]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise FlowError(str(path), [f"{path}: not valid TOML: {exc}"]) from exc


def load_flow(path: Path | str, prompt_dir: Path | str | None = PROMPTS_DIR) -> Flow:
    """Load and validate one flow file; prompt ids are checked against prompt_dir (None: skip)."""
    path = Path(path)
    known = set(prompt_ids(prompt_dir)) if prompt_dir is not None else None
    if prompt_dir is not None and not Path(prompt_dir).is_dir():
        raise FlowError(str(path), [f"{path}: prompt directory {prompt_dir} not found"])
    return parse_flow(_read(path), source=str(path), default_name=path.stem, known_prompts=known)


def load_flows(directory: Path | str = FLOWS_DIR,
               prompt_dir: Path | str | None = PROMPTS_DIR) -> dict[str, Flow]:
    """Every `*.toml` flow in a directory, by flow name (duplicate names are an error)."""
    flows: dict[str, Flow] = {}
    for path in sorted(Path(directory).glob("*.toml")):
        flow = load_flow(path, prompt_dir)
        if flow.name in flows:
            raise FlowError(str(path), [f"{path}: flow name {flow.name!r} is also used by "
                                        f"{flows[flow.name].source}"])
        flows[flow.name] = flow
    return flows


def parse_flow(data: Mapping[str, Any], *, source: str = "<memory>", default_name: str = "flow",
               known_prompts: Iterable[str] | None = None) -> Flow:
    """Build a Flow from parsed TOML and validate it (see the module docstring)."""
    problems = _Problems(source)
    for key in sorted(set(data) - _TOP_KEYS):
        problems.add(f"unknown top-level table; allowed: {sorted(_TOP_KEYS)}", key=key)
    header = data.get("flow", {})
    defaults_raw = data.get("defaults", {})
    states_raw = data.get("states")
    if not isinstance(header, dict):
        problems.add("must be a table", key="[flow]")
        header = {}
    if not isinstance(defaults_raw, dict):
        problems.add("must be a table", key="[defaults]")
        defaults_raw = {}
    if not isinstance(states_raw, dict) or not states_raw:
        problems.add("a flow needs at least one [states.<name>] table", key="[states]")
        problems.raise_if_any()
        states_raw = {}
    for key in sorted(set(header) - _FLOW_KEYS):
        problems.add(f"unknown key; allowed: {sorted(_FLOW_KEYS)}", key=f"[flow] {key}")
    for key in sorted(set(defaults_raw) - _DEFAULT_KEYS):
        problems.add(f"unknown key; allowed: {sorted(_DEFAULT_KEYS)}", key=f"[defaults] {key}")

    flow_reader = _Reader(problems, None, header, prefix="[flow] ")
    name = flow_reader.name("name", default_name) or default_name
    start = flow_reader.string("start")
    if "start" not in header:
        problems.add("missing; say which state the call begins in", key="[flow] start")
    requires = flow_reader.names("requires")
    from_channel = flow_reader.names("from_channel")
    for variable in from_channel:
        if variable not in CHANNEL_VARIABLES:
            problems.add(f"unknown channel context {variable!r}; one of {sorted(CHANNEL_VARIABLES)}",
                         key="[flow] from_channel")
    description = flow_reader.string("description") if "description" in header else ""
    defaults = _read_defaults(_Reader(problems, None, defaults_raw, prefix="[defaults] "))

    states: dict[str, State] = {}
    for state_name, table in states_raw.items():
        if not _NAME.fullmatch(state_name):
            problems.add("state names are lower-case letters, digits and _", state=state_name)
            continue
        if not isinstance(table, dict):
            problems.add("must be a table", state=state_name)
            continue
        state = _build_state(problems, state_name, table, defaults)
        if state is not None:
            states[state_name] = state
    problems.raise_if_any()

    flow = Flow(name=name, start=start or "", states=MappingProxyType(states), source=source,
                description=description or "", requires=requires, from_channel=from_channel)
    _check_references(problems, flow, known_prompts)
    problems.raise_if_any()
    _check_graph(problems, flow)
    problems.raise_if_any()
    return flow


def _read_defaults(r: _Reader) -> _Defaults:
    built = _Defaults()
    return _Defaults(
        timeout=r.number("timeout", built.timeout, *_TIMEOUT),
        tries=r.integer("tries", built.tries, *_TRIES),
        no_input=r.prompts("no_input", built.no_input),
        invalid=r.prompts("invalid", built.invalid),
        too_short=r.prompts("too_short", built.too_short),
        max_seconds=r.integer("max_seconds", built.max_seconds, *_MAX_SECONDS),
        silence_seconds=r.integer("silence_seconds", built.silence_seconds, *_SILENCE_SECONDS),
        min_seconds=r.number("min_seconds", built.min_seconds, *_MIN_SECONDS),
    )


def _build_state(problems: _Problems, name: str, table: Mapping[str, Any],
                 defaults: _Defaults) -> State | None:
    raw_type = table.get("type")
    try:
        kind = StateType(raw_type)
    except ValueError:
        problems.add(f"unknown state type {raw_type!r}; one of: "
                     f"{', '.join(t.value for t in StateType)}", name, "type")
        return None
    allowed = _KEYS[kind] | _COMMON
    for key in sorted(set(table) - allowed):
        problems.add(f"unknown key for a {kind.value} state; allowed: {sorted(allowed)}", name, key)
    for key in sorted(_REQUIRED[kind] - set(table)):
        problems.add(f"missing (required for a {kind.value} state)", name, key)
    if _REQUIRED[kind] - set(table):
        return None

    r = _Reader(problems, name, table)
    common: dict[str, Any] = {"name": name, "on_hangup": r.name("on_hangup"),
                              "settled": r.boolean("settled", False),
                              "note": (r.string("note") or "") if "note" in table else ""}
    d = defaults

    def tries() -> int:
        return r.integer("tries", d.tries, *_TRIES)

    def timeout_ms() -> int:
        return int(r.number("timeout", d.timeout, *_TIMEOUT) * 1000)

    def transition(key: str) -> Transition:
        return r.transition(key) or Transition("")

    match kind:
        case StateType.PLAY:
            return PlayState(**common, prompts=r.prompts("prompts"), next=transition("next"),
                             interruptible=r.boolean("interruptible", True))
        case StateType.MENU:
            keys_raw = table["keys"]
            keys: dict[str, Transition] = {}
            if not isinstance(keys_raw, dict) or not keys_raw:
                r.bad("keys", "must be a table of key = transition with at least one key")
            else:
                for key, value in keys_raw.items():
                    if len(key) != 1 or key not in DTMF_KEYS:
                        r.bad(f"keys.{key}", f"{key!r} is not a phone key (one of {DTMF_KEYS})")
                        continue
                    keys[key] = r.transition(f"keys.{key}", value) or Transition("")
            return MenuState(**common, prompts=r.prompts("prompts"), keys=MappingProxyType(keys),
                             on_fail=transition("on_fail"), timeout_ms=timeout_ms(), tries=tries(),
                             no_input=r.prompts("no_input", d.no_input),
                             invalid=r.prompts("invalid", d.invalid), store=r.name("store"))
        case StateType.DIGITS:
            validator = r.string("validator")
            if validator is not None and validator not in VALIDATORS:
                r.bad("validator", f"unknown validator {validator!r}; one of {sorted(VALIDATORS)}")
            return DigitsState(**common, prompts=r.prompts("prompts"), next=transition("next"),
                               on_fail=transition("on_fail"), store=r.name("store") or "digits",
                               max_digits=r.integer("max_digits", 1, 1, 32),
                               timeout_ms=timeout_ms(), tries=tries(),
                               no_input=r.prompts("no_input", d.no_input),
                               invalid=r.prompts("invalid", d.invalid), validator=validator)
        case StateType.RECORD:
            max_seconds = r.integer("max_seconds", d.max_seconds, *_MAX_SECONDS)
            min_seconds = r.number("min_seconds", d.min_seconds, *_MIN_SECONDS)
            if min_seconds >= max_seconds:
                r.bad("min_seconds", f"must be below max_seconds ({max_seconds})")
            return RecordState(**common, prompts=r.prompts("prompts"), next=transition("next"),
                               on_fail=transition("on_fail"),
                               store=r.name("store", "recording") or "recording",
                               file_hint=r.name("file", "recording") or "recording",
                               max_seconds=max_seconds,
                               silence_seconds=r.integer("silence_seconds", d.silence_seconds,
                                                         *_SILENCE_SECONDS),
                               min_ms=int(min_seconds * 1000), beep=r.boolean("beep", True),
                               tries=tries(),
                               too_short=r.prompts("too_short", d.too_short))
        case StateType.ACTION:
            call = r.string("call") or ""
            spec = ACTIONS.get(call)
            if spec is None:
                r.bad("call", f"unknown service action {call!r}; one of {sorted(ACTIONS)}")
            outcomes_raw = table["outcomes"]
            outcomes: dict[str, Transition] = {}
            if not isinstance(outcomes_raw, dict):
                r.bad("outcomes", "must be a table of outcome = transition")
            else:
                for outcome, value in outcomes_raw.items():
                    outcomes[outcome] = r.transition(f"outcomes.{outcome}", value) or Transition("")
                if spec is not None:
                    for outcome in sorted(set(outcomes) - spec.outcomes):
                        r.bad(f"outcomes.{outcome}", f"{call} has no outcome {outcome!r}; "
                                                     f"its outcomes: {sorted(spec.outcomes)}")
                    missing = sorted(spec.outcomes - set(outcomes))
                    if missing:
                        r.bad("outcomes", f"{call} can answer {missing}: say where each goes")
            return ActionState(**common, call=call, args=r.names("args"),
                               outcomes=MappingProxyType(outcomes))
        case StateType.SAY_DIGITS:
            return SayDigitsState(**common, prompts=r.prompts("prompts"), var=r.name("var") or "",
                                  next=transition("next"),
                                  interruptible=r.boolean("interruptible", False))
        case StateType.SAY_STATUS:
            return SayStatusState(**common, prompts=r.prompts("prompts", ("status_is",)),
                                  var=r.name("var", "status") or "status", next=transition("next"),
                                  on_unknown=transition("on_unknown"))
        case StateType.TRANSFER:
            to = r.string("to") or ""
            if to not in TRANSFER_TARGETS:
                r.bad("to", f"unknown transfer target {to!r}; one of {sorted(TRANSFER_TARGETS)}")
            return TransferState(**common, prompts=r.prompts("prompts"), to=to,
                                 variables=r.names("variables"))
        case StateType.HANGUP:
            return HangupState(**common, prompts=r.prompts("prompts"))
    return None  # pragma: no cover


def _prompts_of(state: State) -> Iterable[tuple[str, str]]:
    """(key, prompt id) pairs a state may play, implicit ones included."""
    for key in ("prompts", "no_input", "invalid", "too_short"):
        for prompt in getattr(state, key, ()):
            yield key, prompt
    for label, transition in transitions(state):
        for prompt in transition.prompts:
            yield f"{label}.play", prompt
    if isinstance(state, SayDigitsState):
        for digit in "0123456789":
            yield "var", f"digit_{digit}"
    if isinstance(state, SayStatusState):
        for status in CaseStatus:
            yield "var", f"status_{status.value}"
    if isinstance(state, RecordState) and state.beep:
        yield "beep", "beep"


def _check_references(problems: _Problems, flow: Flow, known_prompts: Iterable[str] | None) -> None:
    known = set(known_prompts) if known_prompts is not None else None
    if flow.start not in flow.states:
        problems.add(f"start state {flow.start!r} does not exist", key="[flow] start")
    for state in flow.states.values():
        for label, transition in transitions(state):
            target = flow.states.get(transition.target)
            if target is None:
                problems.add(f"goes to {transition.target!r}, which is not a state",
                             state.name, label)
            elif transition.counts_as_try and not isinstance(target, INPUT_TYPES):
                problems.add(f"fail = true needs a menu, digits or record target, not "
                             f"{transition.target!r}", state.name, label)
        if state.on_hangup is not None:
            target = flow.states.get(state.on_hangup)
            if target is None:
                problems.add(f"{state.on_hangup!r} is not a state", state.name, "on_hangup")
            elif not isinstance(target, ActionState):
                problems.add(f"must name an action state (work owed once the caller is gone), "
                             f"{state.on_hangup!r} is not one", state.name, "on_hangup")
        if known is not None:
            for key, prompt in _prompts_of(state):
                if prompt not in known:
                    problems.add(f"unknown prompt id {prompt!r} (no {prompt}.txt in the prompt "
                                 "directory)", state.name, key)


def _edges(flow: Flow, name: str) -> list[str]:
    return [t.target for _, t in transitions(flow.states[name])]


def _check_graph(problems: _Problems, flow: Flow) -> None:
    names = list(flow.states)
    # Reachable from start (on_hangup links count: owed work is part of the flow).
    seen = {flow.start}
    queue = deque([flow.start])
    while queue:
        current = queue.popleft()
        targets = _edges(flow, current)
        hangup_link = flow.states[current].on_hangup
        if hangup_link:
            targets.append(hangup_link)
        for target in targets:
            if target not in seen:
                seen.add(target)
                queue.append(target)
    for name in names:
        if name not in seen:
            problems.add(f"unreachable from start {flow.start!r}", name)

    # Every state can still end in a transfer or a hangup.
    incoming: dict[str, set[str]] = {name: set() for name in names}
    for name in names:
        for target in _edges(flow, name):
            incoming[target].add(name)
    ends = {name for name, state in flow.states.items() if isinstance(state, TERMINAL_TYPES)}
    can_end = set(ends)
    queue = deque(ends)
    while queue:
        current = queue.popleft()
        for source in incoming[current]:
            if source not in can_end:
                can_end.add(source)
                queue.append(source)
    for name in names:
        if name not in can_end:
            problems.add("no transfer or hangup state can be reached from here: a call "
                         "entering it never ends", name)

    # Pass-through states must not loop among themselves: the engine would never wait.
    passing = {n for n, s in flow.states.items() if isinstance(s, PASS_THROUGH_TYPES)}
    colour: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        colour[node] = 1
        for target in _edges(flow, node):
            if target not in passing:
                continue
            if colour.get(target) == 1:
                cycle = path[path.index(target):] + [target] if target in path else [node, target]
                problems.add(f"loop without waiting for the caller: {' -> '.join(cycle)}", target)
            elif target not in colour:
                visit(target, [*path, target])
        colour[node] = 2

    for name in sorted(passing):
        if name not in colour:
            visit(name, [name])

    # No hangup before a settled state: walk from start without entering settled states.
    parent: dict[str, str | None] = {flow.start: None}
    queue = deque([flow.start])
    while queue:
        current = queue.popleft()
        state = flow.states[current]
        if isinstance(state, HangupState):
            path = [current]
            while parent[path[-1]] is not None:
                path.append(parent[path[-1]])  # type: ignore[arg-type]
            problems.add("hangs up on a caller whose business is not concluded: reachable via "
                         f"{' -> '.join(reversed(path))} without a settled state", current)
            continue
        if state.settled:
            continue
        for target in _edges(flow, current):
            if target not in parent:
                parent[target] = current
                queue.append(target)
