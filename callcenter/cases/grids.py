"""CJ/T 213 unit grids (单元网格): codes and a read-only index loaded from CSV.

Pure domain: the index is read from files given as paths. A case is located by the grid its
address falls in; the grid code carries county, street (街道) and community (社区).
"""

from __future__ import annotations

import csv
import functools
import math
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COLUMNS",
    "Grid",
    "GridCode",
    "GridFileError",
    "GridIndex",
    "InvalidGridCode",
    "UnknownGrid",
]

_DEFAULT_FILE = (
    Path(__file__).resolve().parents[2] / "config" / "grids" / "440307-longgang-sample.csv"
)
_QUOTE_LIMIT = 40
_LENGTHS = (14, 15)  # CJ/T 213-2005 form (2-digit serial) and the later 3-digit-serial form
COLUMNS = (
    "code",
    "street_code",
    "street_name",
    "community_code",
    "community_name",
    "name",
    "neighbours",
    "lon",
    "lat",
)


class GridFileError(ValueError):
    """A grid file is unreadable or has a malformed row; the message names file and line."""


class InvalidGridCode(ValueError):
    """Text that is not a 14- or 15-digit grid code."""


class UnknownGrid(LookupError, ValueError):
    """A well-formed grid code that is not in the index."""

    def __init__(self, code: GridCode) -> None:
        super().__init__(f"grid {code} is not in the grid index")
        self.code = code


def _quote(text: str) -> str:
    if len(text) > _QUOTE_LIMIT:
        return repr(text[:_QUOTE_LIMIT]) + f"... ({len(text)} chars)"
    return repr(text)


def _is_ascii_digits(text: str) -> bool:
    # str.isdigit() also accepts superscripts and other scripts' digits.
    return text.isascii() and text.isdigit()


@dataclass(frozen=True, order=True)
class GridCode:
    """County (6) + street (3) + community (3) + grid serial (2, or 3 in the later form)."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise InvalidGridCode(f"grid code must be a string, got {type(self.value).__name__}")
        if not _is_ascii_digits(self.value):
            raise InvalidGridCode(
                f"invalid grid code {_quote(self.value)}: only the digits 0-9 are allowed"
            )
        if len(self.value) not in _LENGTHS:
            raise InvalidGridCode(
                f"invalid grid code {_quote(self.value)}: must be 14 or 15 digits, "
                f"got {len(self.value)}"
            )

    @classmethod
    def parse(cls, text: str) -> GridCode:
        """Fold full-width digits (NFKC) and drop spaces, then validate."""
        if not isinstance(text, str):
            raise InvalidGridCode(f"grid code must be a string, got {type(text).__name__}")
        value = "".join(unicodedata.normalize("NFKC", text).split())
        if not value:
            raise InvalidGridCode("empty grid code")
        return cls(value)

    @property
    def county(self) -> str:
        """6-digit county-level administrative code (GB/T 2260)."""
        return self.value[:6]

    @property
    def street(self) -> str:
        """3-digit street (街道/乡镇) code within the county."""
        return self.value[6:9]

    @property
    def community(self) -> str:
        """3-digit community (社区) code within the street."""
        return self.value[9:12]

    @property
    def serial(self) -> str:
        """Grid serial within the community: 2 digits, or 3 in the 15-digit form."""
        return self.value[12:]

    @property
    def street_code(self) -> str:
        """Full 9-digit street code (county + street)."""
        return self.value[:9]

    @property
    def community_code(self) -> str:
        """Full 12-digit community code (county + street + community)."""
        return self.value[:12]

    @property
    def is_community_grid(self) -> bool:
        """A zero serial denotes the community as a whole rather than one unit grid."""
        return set(self.serial) == {"0"}

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Grid:
    """One unit grid with its administrative names and optional centre point."""

    code: GridCode
    street_name: str
    community_name: str
    name: str
    neighbours: tuple[GridCode, ...]
    lon: float | None
    lat: float | None


# -------------------------------------------------------------------------- loading


class _Row:
    """Parses one CSV record, raising GridFileError that names file and line."""

    def __init__(self, path: Path, line: int, record: dict[str, str]) -> None:
        self.where = f"{path}:{line}"
        self.record = record

    def fail(self, problem: str) -> GridFileError:
        return GridFileError(f"{self.where}: {problem}")

    def text(self, column: str) -> str:
        value = self.record[column].strip()
        if not value:
            raise self.fail(f"{column} is empty")
        return value

    def code(self, column: str, text: str) -> GridCode:
        try:
            return GridCode.parse(text)
        except InvalidGridCode as exc:
            raise self.fail(f"{column}: {exc}") from None

    def coordinate(self, column: str, limit: float) -> float | None:
        raw = self.record[column].strip()
        if not raw:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(f"{column} is not a number: {_quote(raw)}") from None
        if not math.isfinite(value) or abs(value) > limit:
            raise self.fail(f"{column} {raw} is outside -{limit:g}..{limit:g}")
        return value

    def grid(self) -> Grid:
        code = self.code("code", self.text("code"))
        street_code = self.text("street_code")
        if street_code != code.street_code:
            raise self.fail(f"street_code {street_code} does not match grid code {code}")
        community_code = self.text("community_code")
        if community_code != code.community_code:
            raise self.fail(f"community_code {community_code} does not match grid code {code}")
        neighbours = tuple(self.code("neighbours", n) for n in self.record["neighbours"].split())
        if code in neighbours:
            raise self.fail(f"grid {code} lists itself as a neighbour")
        lon = self.coordinate("lon", 180.0)
        lat = self.coordinate("lat", 90.0)
        if (lon is None) != (lat is None):
            raise self.fail("lon and lat must be given together or both left empty")
        return Grid(
            code=code,
            street_name=self.text("street_name"),
            community_name=self.text("community_name"),
            name=self.text("name"),
            neighbours=neighbours,
            lon=lon,
            lat=lat,
        )


def _read_grid_file(path: Path) -> Iterator[tuple[str, Grid]]:
    """Yield (file:line, grid) for each data line; '#' lines and blank lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise GridFileError(f"{path}: cannot read grid file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise GridFileError(f"{path}: not UTF-8 text: {exc}") from exc
    header: list[str] | None = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            raise GridFileError(f"{path}:{line_no}: malformed CSV: {exc}") from None
        if header is None:
            header = [f.strip() for f in fields]
            if sorted(header) != sorted(COLUMNS):
                raise GridFileError(
                    f"{path}:{line_no}: header must have the columns {', '.join(COLUMNS)}; "
                    f"got {', '.join(header)}"
                )
            continue
        if len(fields) != len(header):
            raise GridFileError(
                f"{path}:{line_no}: expected {len(header)} fields, got {len(fields)}"
            )
        row = _Row(path, line_no, dict(zip(header, fields, strict=True)))
        yield row.where, row.grid()
    if header is None:
        raise GridFileError(f"{path}: no header line")


# -------------------------------------------------------------------------- index


class GridIndex:
    """Read-only lookup of unit grids by code, name and neighbourhood."""

    def __init__(self, grids: Iterable[Grid]) -> None:
        self._grids: dict[GridCode, Grid] = {g.code: g for g in sorted(grids, key=lambda g: g.code)}

    @classmethod
    def load(cls, files: Sequence[Path]) -> GridIndex:
        """Load grid CSV files; duplicates and dangling neighbour codes are errors.

        Neighbours are checked after all files are read, so one file may refer to grids of
        another (grids on a district border).
        """
        if not files:
            raise GridFileError("no grid files given")
        grids: dict[GridCode, Grid] = {}
        origin: dict[GridCode, str] = {}
        for path in files:
            for where, grid in _read_grid_file(Path(path)):
                if grid.code in grids:
                    raise GridFileError(
                        f"{where}: grid {grid.code} is already defined at {origin[grid.code]}"
                    )
                grids[grid.code] = grid
                origin[grid.code] = where
        for code, grid in grids.items():
            missing = [str(n) for n in grid.neighbours if n not in grids]
            if missing:
                raise GridFileError(
                    f"{origin[code]}: neighbours not found in the loaded grid files: "
                    f"{' '.join(missing)}"
                )
        return cls(grids.values())

    @classmethod
    def default(cls) -> GridIndex:
        """The shipped Longgang sample (illustrative codes), cached."""
        return _load_default()

    def _coerce(self, code: GridCode | str) -> GridCode:
        return code if isinstance(code, GridCode) else GridCode.parse(code)

    def get(self, code: GridCode | str) -> Grid | None:
        """The grid, or None if absent; a malformed string raises InvalidGridCode."""
        return self._grids.get(self._coerce(code))

    def require(self, code: GridCode | str) -> Grid:
        """The grid, or UnknownGrid."""
        parsed = self._coerce(code)
        grid = self._grids.get(parsed)
        if grid is None:
            raise UnknownGrid(parsed)
        return grid

    def search(self, query: str, limit: int = 20) -> list[Grid]:
        """Grids whose code starts with the digits given, or whose street, community or grid
        name contains the text; ordered by code."""
        q = "".join(unicodedata.normalize("NFKC", query).casefold().split())
        if not q or limit <= 0:
            return []
        if _is_ascii_digits(q):
            found = [g for c, g in self._grids.items() if c.value.startswith(q)]
        else:
            found = [
                g
                for g in self._grids.values()
                if any(
                    q in unicodedata.normalize("NFKC", text).casefold()
                    for text in (g.street_name, g.community_name, g.name)
                )
            ]
        return found[:limit]

    def neighbours(self, code: GridCode | str) -> list[Grid]:
        """The listed neighbours; without a list, the other unit grids of the same community,
        which is where a supervisor (监督员) would look next."""
        grid = self.require(code)
        if grid.neighbours:
            return [self._grids[n] for n in grid.neighbours if n in self._grids]
        return [
            g
            for c, g in self._grids.items()
            if c.community_code == grid.code.community_code
            and c != grid.code
            and not c.is_community_grid
        ]

    def __len__(self) -> int:
        return len(self._grids)

    def __iter__(self) -> Iterator[Grid]:
        return iter(self._grids.values())


@functools.cache
def _load_default() -> GridIndex:
    return GridIndex.load([_DEFAULT_FILE])
