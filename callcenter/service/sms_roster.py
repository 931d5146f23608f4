"""Supervisor roster (监督员名册) and SMS blocklist files, read once at start-up.

Roster format (`config/roster.toml`)::

    [shift_leader]                      # 值班长: gets escalations of unanswered tasks
    name = "值班长"
    phone = "13800000000"

    [[supervisor]]
    name = "张伟"
    phone = "13900000001"
    grids = ["440307001001", "44030700200101"]

A `grids` entry is a full unit-grid code (14 or 15 digits) or a prefix of one: a street
(9 digits) or a community (12 digits). For a task's grid the most specific entry wins;
between equally specific entries, the first in the file. A bad file stops start-up.

Blocklist format: one number per line, `#` starts a comment. A missing file is an empty list.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from callcenter.cases.phones import InvalidPhoneNumber, normalise_phone


class RosterError(ValueError):
    """The roster or blocklist file cannot be used; the message names file and entry."""


@dataclass(frozen=True)
class Supervisor:
    name: str
    phone: str
    grids: tuple[str, ...]


@dataclass(frozen=True)
class Roster:
    supervisors: tuple[Supervisor, ...] = ()
    shift_leader_name: str | None = None
    shift_leader_phone: str | None = None

    @classmethod
    def load(cls, path: Path, region: str = "CN") -> Roster:
        if not path.exists():
            return cls()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RosterError(f"{path}: {exc}") from exc
        supervisors: list[Supervisor] = []
        for i, entry in enumerate(data.get("supervisor", []), start=1):
            where = f"{path}: supervisor #{i}"
            if not isinstance(entry, dict):
                raise RosterError(f"{where}: must be a table")
            name = str(entry.get("name", "")).strip()
            if not name:
                raise RosterError(f"{where}: name is missing")
            phone = _phone(entry.get("phone"), region, where)
            grids = entry.get("grids", [])
            if not isinstance(grids, list) or not grids:
                raise RosterError(f"{where}: grids must be a non-empty list")
            for grid in grids:
                if not isinstance(grid, str) or not grid.isdigit() or len(grid) not in (6, 9, 12, 14, 15):
                    raise RosterError(f"{where}: {grid!r} is not a grid code or a 6/9/12-digit prefix")
            supervisors.append(Supervisor(name=name, phone=phone, grids=tuple(grids)))
        leader = data.get("shift_leader") or {}
        leader_phone = _phone(leader["phone"], region, f"{path}: shift_leader") if leader.get("phone") else None
        return cls(supervisors=tuple(supervisors), shift_leader_name=leader.get("name"),
                   shift_leader_phone=leader_phone)

    def supervisor_for(self, grid: str) -> Supervisor | None:
        """The supervisor whose entry matches `grid` most specifically."""
        best: tuple[int, Supervisor] | None = None
        for supervisor in self.supervisors:
            for entry in supervisor.grids:
                if grid.startswith(entry) and (best is None or len(entry) > best[0]):
                    best = (len(entry), supervisor)
        return best[1] if best else None

    def is_supervisor(self, phone: str) -> bool:
        return any(s.phone == phone for s in self.supervisors)


def _phone(raw: object, region: str, where: str) -> str:
    if not isinstance(raw, str):
        raise RosterError(f"{where}: phone must be a string")
    try:
        return normalise_phone(raw, region)
    except InvalidPhoneNumber as exc:
        raise RosterError(f"{where}: {exc}") from exc


def load_blocklist(path: Path, region: str = "CN") -> frozenset[str]:
    """Numbers from the blocklist file, normalised like senders are."""
    if not path.exists():
        return frozenset()
    numbers: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        numbers.add(normalise_sender(entry, region))
        if len(entry) > 32:
            raise RosterError(f"{path}:{lineno}: entry too long")
    return frozenset(numbers)


def normalise_sender(raw: str, region: str = "CN") -> str:
    """E.164 for phone numbers; other senders (short codes, names) trimmed as they are."""
    try:
        return normalise_phone(raw, region)
    except InvalidPhoneNumber:
        return raw.strip()[:32]
