"""CJ/T 213 unit grids: code parsing, the Longgang sample, CSV validation, search, neighbours."""

from __future__ import annotations

from pathlib import Path

import pytest

from callcenter.cases.grids import (
    COLUMNS,
    GridCode,
    GridFileError,
    GridIndex,
    InvalidGridCode,
    UnknownGrid,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "config" / "grids" / "440307-longgang-sample.csv"
HEADER = ",".join(COLUMNS)


@pytest.fixture(scope="module")
def grids() -> GridIndex:
    return GridIndex.default()


# ---------------------------------------------------------------- GridCode


def test_parse_14_digits() -> None:
    code = GridCode.parse("44030700100102")
    parts = (code.county, code.street, code.community, code.serial)
    assert parts == ("440307", "001", "001", "02")
    assert code.street_code == "440307001"
    assert code.community_code == "440307001001"
    assert not code.is_community_grid
    assert str(code) == "44030700100102"


def test_parse_15_digits() -> None:
    code = GridCode.parse("320582110152102")
    parts = (code.county, code.street, code.community, code.serial)
    assert parts == ("320582", "110", "152", "102")


def test_community_grid() -> None:
    assert GridCode.parse("44030700100100").is_community_grid
    assert GridCode.parse("440307001001000").is_community_grid
    assert not GridCode.parse("440307001001010").is_community_grid


@pytest.mark.parametrize(
    "text",
    ["４４０３０７００１００１０２", " 440307 001 001 02 ", "440307\u3000001001\t02"],
)
def test_parse_folds_width_and_spaces(text: str) -> None:
    assert GridCode.parse(text).value == "44030700100102"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("4403070010010", "14 or 15 digits, got 13"),
        ("4403070010010201", "14 or 15 digits, got 16"),
        ("44030700100A02", "only the digits"),
        ("44030700100-02", "only the digits"),
        ("٤٤٠٣٠٧٠٠١٠٠١٠٢", "only the digits"),  # Arabic-Indic digits are not ours
        ("4403070010010½", "only the digits"),  # NFKC makes it "1⁄2"
        ("", "empty"),
        ("   ", "empty"),
        ("x" * 10_000, "only the digits"),
    ],
)
def test_parse_rejects(text: str, fragment: str) -> None:
    with pytest.raises(InvalidGridCode) as info:
        GridCode.parse(text)
    assert isinstance(info.value, ValueError)
    assert fragment in str(info.value)
    assert len(str(info.value)) < 200


def test_constructor_validates() -> None:
    with pytest.raises(InvalidGridCode):
        GridCode("4403")
    with pytest.raises(InvalidGridCode):
        GridCode.parse(44030700100102)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the Longgang sample


def test_sample_loads(grids: GridIndex) -> None:
    assert len(grids) == 24
    assert {g.code.county for g in grids} == {"440307"}
    streets = {g.street_name for g in grids}
    assert streets == {"布吉街道", "坂田街道", "龙城街道", "横岗街道", "平湖街道"}
    assert {len(g.code.value) for g in grids} == {14, 15}
    for grid in grids:
        assert grid.lon is not None and grid.lat is not None
        assert 114.0 < grid.lon < 114.4 and 22.55 < grid.lat < 22.8


def test_sample_neighbours_are_symmetric(grids: GridIndex) -> None:
    for grid in grids:
        for other in grid.neighbours:
            assert grid.code in grids.require(other).neighbours, (grid.code, other)


def test_get_and_require(grids: GridIndex) -> None:
    grid = grids.require("44030700100201")
    assert (grid.street_name, grid.community_name) == ("布吉街道", "大芬社区")
    assert grids.get(GridCode.parse("４４０３０７００１００２０１")) is grid
    assert grids.get("44030799999901") is None
    with pytest.raises(UnknownGrid, match="44030799999901") as info:
        grids.require("44030799999901")
    assert isinstance(info.value, LookupError)
    with pytest.raises(InvalidGridCode):
        grids.get("abc")


def test_search(grids: GridIndex) -> None:
    buji = grids.search("布吉")
    assert len(buji) == 7 and all(g.street_name == "布吉街道" for g in buji)
    dafen = [g.name for g in grids.search("大芬")]
    assert dafen == ["大芬社区第01网格（大芬油画村）", "大芬社区第02网格"]
    shanxia = [g.code.value for g in grids.search("山厦社区")]
    assert shanxia == ["440307005002001", "440307005002002"]
    assert [g.code.value for g in grids.search("油画村")] == ["44030700100201"]
    assert len(grids.search("4403070020")) == 4
    assert len(grids.search("４４０３０７００３")) == 5
    assert len(grids.search("440307", limit=3)) == 3
    assert grids.search("") == []
    assert grids.search("福田") == []


def test_neighbours_listed(grids: GridIndex) -> None:
    names = [g.name for g in grids.neighbours("44030700100101")]
    assert names == ["布吉圩社区第02网格", "大芬社区第01网格（大芬油画村）"]
    # Across the 14/15-digit boundary.
    assert [g.code.value for g in grids.neighbours("44030700500102")] == [
        "44030700500101",
        "440307005002001",
    ]


def test_neighbours_fall_back_to_the_community(grids: GridIndex) -> None:
    assert [g.code.value for g in grids.neighbours("44030700300103")] == [
        "44030700300101",
        "44030700300102",
    ]
    with pytest.raises(UnknownGrid):
        grids.neighbours("44030700300199")


# ---------------------------------------------------------------- CSV validation


def write(tmp_path: Path, name: str, *rows: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(["# test file", HEADER, *rows]) + "\n", encoding="utf-8")
    return path


ROW_A = "44030700100101,440307001,布吉街道,440307001001,布吉圩社区,甲,,114.12,22.60"
ROW_B = "44030700100102,440307001,布吉街道,440307001001,布吉圩社区,乙,,,"
ROW_C = "44030700100100,440307001,布吉街道,440307001001,布吉圩社区,社区网格,,,"


def test_fallback_skips_community_grid(tmp_path: Path) -> None:
    index = GridIndex.load([write(tmp_path, "g.csv", ROW_A, ROW_B, ROW_C)])
    assert [g.name for g in index.neighbours("44030700100101")] == ["乙"]
    assert index.require("44030700100102").lon is None


def test_several_files_and_cross_file_neighbours(tmp_path: Path) -> None:
    first = write(tmp_path, "a.csv", ROW_A.replace(",,114.12", ",44030700200101,114.12"))
    row = "44030700200101,440307002,坂田街道,440307002001,岗头社区,丙,,114.06,22.64"
    second = write(tmp_path, "b.csv", row)
    index = GridIndex.load([first, second])
    assert len(index) == 2
    assert [g.name for g in index.neighbours("44030700100101")] == ["丙"]


def test_bom_and_column_order(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    header = ",".join(reversed(COLUMNS))
    row = ",".join(reversed(ROW_A.split(",")))
    path.write_text("\ufeff" + header + "\n" + row + "\n", encoding="utf-8")
    assert GridIndex.load([path]).require("44030700100101").name == "甲"


@pytest.mark.parametrize(
    ("row", "fragment"),
    [
        (ROW_A.replace("44030700100101,", "4403070010010,", 1), "14 or 15 digits"),
        (ROW_A.replace(",440307001,", ",440307002,"), "street_code 440307002 does not match"),
        (ROW_A.replace(",440307001001,", ",440307001009,"), "community_code"),
        (ROW_A.replace(",甲,", ",,"), "name is empty"),
        (ROW_A.replace("114.12", "east"), "lon is not a number"),
        (ROW_A.replace("22.60", "95"), "lat 95 is outside"),
        (ROW_A.replace("22.60", "nan"), "outside"),
        (ROW_A.replace(",22.60", ","), "given together"),
        (ROW_A.replace(",,114", ",4403070010010X,114"), "neighbours"),
        (ROW_A.replace(",,114", ",44030700100101,114"), "itself"),
        (ROW_A + ",extra", "expected 9 fields"),
        ('44030700100101,"unclosed', "malformed CSV"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path: Path, row: str, fragment: str) -> None:
    path = write(tmp_path, "bad.csv", ROW_B, row)
    with pytest.raises(GridFileError) as info:
        GridIndex.load([path])
    message = str(info.value)
    assert f"{path}:4:" in message  # comment, header, ROW_B, then the bad row
    assert fragment in message


def test_duplicate_and_dangling(tmp_path: Path) -> None:
    a = write(tmp_path, "a.csv", ROW_A)
    b = write(tmp_path, "b.csv", ROW_A)
    clash = r"b\.csv:3: grid 44030700100101 is already defined at .*a\.csv:3"
    with pytest.raises(GridFileError, match=clash):
        GridIndex.load([a, b])
    dangling = write(tmp_path, "d.csv", ROW_A.replace(",,114", ",44030700100199,114"))
    with pytest.raises(GridFileError, match=r"d\.csv:3: neighbours not found.*44030700100199"):
        GridIndex.load([dangling])


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(GridFileError, match="cannot read"):
        GridIndex.load([tmp_path / "missing.csv"])
    with pytest.raises(GridFileError, match="no grid files"):
        GridIndex.load([])
    wrong_header = tmp_path / "h.csv"
    wrong_header.write_text("code,name\n44030700100101,甲\n", encoding="utf-8")
    with pytest.raises(GridFileError, match=r"h\.csv:1: header must have"):
        GridIndex.load([wrong_header])
    empty = tmp_path / "e.csv"
    empty.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(GridFileError, match="no header"):
        GridIndex.load([empty])
    binary = tmp_path / "b.csv"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(GridFileError, match="not UTF-8"):
        GridIndex.load([binary])
