"""CJ/T 214 catalogue: the shipped data, code parsing, extension loading, search, suggest."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from callcenter.cases.catalogue import (
    DEFAULT_EDITION,
    CaseKind,
    Catalogue,
    CatalogueError,
    Category,
    CategoryCode,
    InvalidCategoryCode,
    UnknownCategory,
)

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "config" / "catalogue" / "cjt214-2005.toml"
SHENZHEN = REPO / "config" / "catalogue" / "shenzhen-extensions.toml"


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue.default()


def codes(categories: Iterable[Category]) -> list[str]:
    return [str(c.code) for c in categories]


# ---------------------------------------------------------------- CaseKind / CategoryCode


def test_case_kind_prefix_and_label() -> None:
    assert CaseKind.COMPONENT.prefix == "C"
    assert CaseKind.EVENT.prefix == "E"
    assert CaseKind.COMPONENT.label_zh == "部件"
    assert CaseKind.EVENT.label_zh == "事件"
    assert CaseKind("event") is CaseKind.EVENT


@pytest.mark.parametrize(
    ("text", "kind", "code"),
    [
        ("C0101", CaseKind.COMPONENT, "0101"),
        ("c0101", CaseKind.COMPONENT, "0101"),
        ("E0103", CaseKind.EVENT, "0103"),
        ("e0599", CaseKind.EVENT, "0599"),
        ("component:0101", CaseKind.COMPONENT, "0101"),
        ("EVENT:0103", CaseKind.EVENT, "0103"),
        ("部件0101", CaseKind.COMPONENT, "0101"),
        ("事件0103", CaseKind.EVENT, "0103"),
        ("  E0103\n", CaseKind.EVENT, "0103"),
        ("Ｅ０１０３", CaseKind.EVENT, "0103"),  # full-width, as typed on a phone keyboard
    ],
)
def test_parse_accepts(text: str, kind: CaseKind, code: str) -> None:
    parsed = CategoryCode.parse(text)
    assert parsed == CategoryCode(kind, code)
    assert parsed.major == code[:2]
    assert parsed.minor == code[2:]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "C01",
        "X0101",
        "C01011",
        "0101",  # kind is required: 0101 exists as both 部件 and 事件
        "C 0101",
        "C0000",
        "E0100",
        "E0001",
        "C01O1",
        "C٠١٠١",  # Arabic-Indic digits survive NFKC and must not pass as 0-9
        "C0101; DROP TABLE cases",
        "C0101\x00",
        "<script>E0103</script>",
        "component0101",
        "部件:0101",
        "E" + "1" * 5000,
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidCategoryCode) as info:
        CategoryCode.parse(text)
    assert isinstance(info.value, ValueError)
    # Messages stay short even for hostile input, so they are safe to log and return.
    assert len(str(info.value)) < 200


def test_parse_rejects_non_string() -> None:
    with pytest.raises(InvalidCategoryCode):
        CategoryCode.parse(101)  # type: ignore[arg-type]


def test_constructor_validates() -> None:
    with pytest.raises(InvalidCategoryCode):
        CategoryCode(CaseKind.EVENT, "103")
    with pytest.raises(InvalidCategoryCode):
        CategoryCode("event", "0103")  # type: ignore[arg-type]


def test_str_is_canonical_and_round_trips() -> None:
    for text in ("component:0118", "事件0505"):
        code = CategoryCode.parse(text)
        assert CategoryCode.parse(str(code)) == code
    assert str(CategoryCode(CaseKind.COMPONENT, "0118")) == "C0118"
    assert str(CategoryCode(CaseKind.EVENT, "0505")) == "E0505"


# ---------------------------------------------------------------- the shipped base data


def test_default_loads_the_base_edition(cat: Catalogue) -> None:
    assert cat.edition == DEFAULT_EDITION == "CJ/T 214-2005"
    assert [m.code for m in cat.majors(CaseKind.COMPONENT)] == ["01", "02", "03", "04", "05", "06"]
    assert [m.name for m in cat.majors(CaseKind.EVENT)] == [
        "市容环境",
        "宣传广告",
        "施工管理",
        "突发事件",
        "街面秩序",
    ]
    assert all(not c.local for c in cat.all())
    assert all(c.edition == "CJ/T 214-2005" for c in cat.all())


def test_every_minor_belongs_to_an_existing_major(cat: Catalogue) -> None:
    majors = {(m.kind, m.code): m.name for k in CaseKind for m in cat.majors(k)}
    for category in cat.all():
        assert category.major_code == category.code.major
        assert majors[(category.kind, category.major_code)] == category.major_name


def test_codes_are_unique_and_complete(cat: Catalogue) -> None:
    all_codes = codes(cat.all())
    assert len(all_codes) == len(set(all_codes)) == len(cat)
    # The rows of standards.md §2.3/2.4 (including 0199/0599 其他).
    counts = {
        (kind, m.code): len(cat.minors(kind, m.code)) for kind in CaseKind for m in cat.majors(kind)
    }
    assert counts == {
        (CaseKind.COMPONENT, "01"): 38,
        (CaseKind.COMPONENT, "02"): 17,
        (CaseKind.COMPONENT, "03"): 11,
        (CaseKind.COMPONENT, "04"): 10,
        (CaseKind.COMPONENT, "05"): 3,
        (CaseKind.COMPONENT, "06"): 6,
        (CaseKind.EVENT, "01"): 18,
        (CaseKind.EVENT, "02"): 5,
        (CaseKind.EVENT, "03"): 5,
        (CaseKind.EVENT, "04"): 9,
        (CaseKind.EVENT, "05"): 13,
    }


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("C0101", "上水井盖"),
        ("C0102", "污水井盖"),
        ("C0114", "无主井盖"),
        ("C0118", "路灯"),
        ("C0305", "垃圾箱"),
        ("C0602", "工地"),
        ("E0101", "私搭乱建"),
        ("E0103", "积存垃圾渣土"),
        ("E0401", "路面塌陷"),
        ("E0505", "机动车乱停放"),
        ("E0599", "其他"),
    ],
)
def test_known_rows(cat: Catalogue, code: str, name: str) -> None:
    assert cat.require(code).name == name


def test_rows_carry_confidence_aliases_and_keywords(cat: Catalogue) -> None:
    e0101 = cat.require("E0101")
    assert e0101.confidence == "synonym-both-lists"
    assert "新增建筑" in e0101.aliases
    assert cat.require("E0102").confidence == "verified-both-lists"
    assert "井盖" in cat.require("C0114").keywords
    # Every keyword is at least two characters, or suggest() would fire on single characters.
    assert all(len(k) >= 2 for c in cat.all() for k in c.keywords)


def test_pinyin_initials(cat: Catalogue) -> None:
    assert cat.require("C0101").pinyin_initials == "ssjg"
    assert cat.require("C0118").pinyin_initials == "ld"
    assert cat.require("C0402").pinyin_initials == "xds"  # 行道树: xíng, not háng
    # Parentheses are dropped, the words inside kept.
    assert cat.require("C0107").pinyin_initials == "txdxjg"


def test_get_require_and_lookup_errors(cat: Catalogue) -> None:
    code = CategoryCode(CaseKind.COMPONENT, "0118")
    assert cat.get(code) is cat.get("c0118") is cat.require("部件0118")
    assert cat.get("C0199") is None  # well-formed, not in the edition
    with pytest.raises(UnknownCategory, match="C0199 is not in the CJ/T 214-2005 catalogue"):
        cat.require("C0199")
    with pytest.raises(LookupError):
        cat.require("E0699")
    with pytest.raises(InvalidCategoryCode):
        cat.get("not a code")


def test_major_by_digit_for_the_phone_menu(cat: Catalogue) -> None:
    menu = [cat.major_by_digit(CaseKind.COMPONENT, d) for d in range(1, 7)]
    assert [m.name if m else None for m in menu] == [
        "公用设施类",
        "道路交通类",
        "市容环境类",
        "园林绿化类",
        "房屋土地类",
        "其他设施类",
    ]
    street_order = cat.major_by_digit(CaseKind.EVENT, 5)
    assert street_order is not None and street_order.name == "街面秩序"
    assert cat.major_by_digit(CaseKind.EVENT, 6) is None
    assert cat.major_by_digit(CaseKind.COMPONENT, 7) is None
    assert cat.major_by_digit(CaseKind.COMPONENT, 0) is None
    assert cat.major_by_digit(CaseKind.COMPONENT, 10) is None


def test_minors_are_ordered_and_scoped(cat: Catalogue) -> None:
    minors = cat.minors(CaseKind.EVENT, "02")
    assert codes(minors) == ["E0201", "E0202", "E0203", "E0204", "E0205"]
    assert cat.minors(CaseKind.EVENT, "09") == []


# ---------------------------------------------------------------- extensions


def test_shenzhen_extension_loads_on_top(cat: Catalogue) -> None:
    both = Catalogue.load([BASE, SHENZHEN])
    assert len(both) > len(cat)
    assert [m.code for m in both.majors(CaseKind.COMPONENT)][-1] == "07"
    assert [m.code for m in both.majors(CaseKind.EVENT)][-1] == "21"
    pole = both.require("C0701")
    assert (pole.name, pole.major_name, pole.local) == ("高杆灯", "扩展部件类", True)
    assert all(c.local for c in both.all() if c.code.major in {"07", "21"})
    assert not any(c.local for c in both.all() if c.code.major not in {"07", "21"})
    # Base rows are the same, and the extension is not part of the default.
    assert both.require("C0118") == cat.require("C0118")
    assert cat.get("C0701") is None
    # The more specific local row wins over the base 路灯 once loaded.
    assert str(cat.suggest("高杆灯不亮了")[0][0].code) == "C0118"
    assert str(both.suggest("高杆灯不亮了")[0][0].code) == "C0701"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


BASE_MINI = """
edition = "CJ/T 214-2005"
[[majors]]
kind = "component"
code = "01"
name = "公用设施类"
[[categories]]
kind = "component"
code = "0101"
name = "上水井盖"
keywords = ["自来水井盖"]
"""


def test_clash_between_files_names_both(tmp_path: Path) -> None:
    base = write(tmp_path, "base.toml", BASE_MINI)
    ext = write(
        tmp_path,
        "local.toml",
        """
extends = "CJ/T 214-2005"
[[categories]]
kind = "component"
code = "0101"
name = "本地井盖"
local = true
""",
    )
    with pytest.raises(CatalogueError) as info:
        Catalogue.load([base, ext])
    message = str(info.value)
    assert "base.toml" in message and "local.toml" in message and "C0101" in message


def test_major_clash_between_files_names_both(tmp_path: Path) -> None:
    base = write(tmp_path, "base.toml", BASE_MINI)
    ext = write(
        tmp_path,
        "ext.toml",
        """
extends = "CJ/T 214-2005"
[[majors]]
kind = "component"
code = "01"
name = "别的大类"
""",
    )
    with pytest.raises(CatalogueError, match=r"ext\.toml.*major 01.*base\.toml"):
        Catalogue.load([base, ext])


def test_extension_may_add_to_a_base_major(tmp_path: Path) -> None:
    base = write(tmp_path, "base.toml", BASE_MINI)
    ext = write(
        tmp_path,
        "ext.toml",
        """
extends = "CJ/T 214-2005"
[[categories]]
kind = "component"
code = "0150"
name = "高杆灯"
keywords = ["高杆灯"]
""",
    )
    loaded = Catalogue.load([base, ext])
    row = loaded.require("C0150")
    assert row.local is True  # rows of an extension file are local even when not marked
    assert row.major_name == "公用设施类"
    assert loaded.require("C0101").local is False


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('kind = "component"\ncode = "0101"\nname = "再来一次"', "already defined"),
        ('kind = "component"\ncode = "0201"\nname = "停车场"', "major 02 is not defined"),
        ('kind = "thing"\ncode = "0102"\nname = "x"', "kind must be"),
        ('kind = "component"\ncode = "102"\nname = "x"', "4 digits"),
        ('kind = "component"\ncode = 102\nname = "x"', "code must be a string"),
        ('kind = "component"\ncode = "0102"', "missing keys ['name']"),
        ('kind = "component"\ncode = "0102"\nname = "x"\nkeyword = ["a"]', "unknown keys"),
        ('kind = "component"\ncode = "0102"\nname = "x"\nkeywords = ["井"]', "at least 2"),
        ('kind = "component"\ncode = "0102"\nname = "x"\nkeywords = "井盖"', "list of"),
        ('kind = "component"\ncode = "0102"\nname = ""', "name must be"),
        ('kind = "component"\ncode = "0102"\nname = "x"\nlocal = "yes"', "local must be"),
    ],
)
def test_malformed_rows_name_file_and_row(tmp_path: Path, body: str, fragment: str) -> None:
    path = write(tmp_path, "bad.toml", BASE_MINI + "[[categories]]\n" + body + "\n")
    with pytest.raises(CatalogueError) as info:
        Catalogue.load([path])
    message = str(info.value)
    assert "bad.toml" in message
    assert "[[categories]] row 2" in message
    assert fragment in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("edition = [unclosed", "not valid TOML"),
        ('edition = "CJ/T 214-2007"', "expected 'CJ/T 214-2005'"),
        ('edition = "CJ/T 214-2005"\ncolour = "red"', "unknown top-level keys"),
        ('edition = "CJ/T 214-2005"\nmajors = 3', "array of tables"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, "broken.toml", text)
    with pytest.raises(CatalogueError, match="broken.toml") as info:
        Catalogue.load([path])
    assert fragment in str(info.value)


def test_extension_rules(tmp_path: Path) -> None:
    base = write(tmp_path, "base.toml", BASE_MINI)
    wrong_edition = write(tmp_path, "e1.toml", 'extends = "CJ/T 214-2007"\n')
    with pytest.raises(CatalogueError, match="e1.toml.*extends"):
        Catalogue.load([base, wrong_edition])
    not_local = write(
        tmp_path,
        "e2.toml",
        'extends = "CJ/T 214-2005"\n[[categories]]\nkind = "component"\ncode = "0160"\n'
        'name = "x"\nlocal = false\n',
    )
    with pytest.raises(CatalogueError, match="e2.toml.*true in an extension"):
        Catalogue.load([base, not_local])


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="nope.toml.*cannot read"):
        Catalogue.load([tmp_path / "nope.toml"])
    with pytest.raises(CatalogueError, match="base edition file is required"):
        Catalogue.load([])


# ---------------------------------------------------------------- search


def test_search_by_name_and_alias(cat: Catalogue) -> None:
    found = codes(cat.search("井盖", limit=100))
    assert {"C0101", "C0102", "C0114", "C0127"} <= set(found)
    assert all(c.startswith("C01") for c in found)
    assert codes(cat.search("新增建筑")) == ["E0101"]  # alias
    assert codes(cat.search("路灯"))[:2] == ["C0118", "C0106"]  # exact name before prefix
    assert cat.search("") == []
    assert cat.search("井盖", limit=0) == []
    assert len(cat.search("井盖", limit=3)) == 3


def test_search_by_code(cat: Catalogue) -> None:
    assert codes(cat.search("0101")) == ["C0101", "E0101"]
    assert codes(cat.search("C0101")) == ["C0101"]
    assert codes(cat.search("ｅ０５０５")) == ["E0505"]
    prefix = codes(cat.search("C02", limit=100))
    assert prefix == [f"C02{n:02d}" for n in range(1, 18)]
    assert codes(cat.search("事件04", limit=100))[0] == "E0401"
    assert cat.search("C9999") == []


def test_search_by_pinyin(cat: Catalogue) -> None:
    assert codes(cat.search("ssjg")) == ["C0101"]
    assert "C0118" in codes(cat.search("LD"))
    initials = cat.search("jg", limit=100)
    assert {"C0101", "C0102", "C0114"} <= set(codes(initials))
    assert codes(cat.search("ludeng")) == ["C0118", "C0106"]  # exact full pinyin first
    assert cat.search("zzzzqqq") == []


# Real queries typed by call-station staff, and what Enter (the first hit) must take. The
# console files the first hit on Enter, so a 路灯不亮 call filed as 路灯井盖 came from here.
SEARCH_TABLE = [
    # query, first hit, hits that must come after every hit whose name ends like the first
    ("ld", "C0118", ["C0106"]),            # 路灯 (initials exactly) before 路灯井盖
    ("LD", "C0118", ["C0106"]),
    ("ｌｄ", "C0118", ["C0106"]),           # full-width from a Chinese IME
    ("路灯", "C0118", ["C0106"]),
    ("ludeng", "C0118", ["C0106"]),
    ("ldjg", "C0106", []),
    ("jg", "C0101", ["C0120"]),            # every 井盖 before 景观灯
    ("井盖", "C0101", []),
    ("jinggai", "C0101", []),
    ("jgd", "C0120", []),                  # 景观灯 by its own initials
    ("景观灯", "C0120", []),
    ("gd", "C0602", ["C0120"]),            # 工地 exactly; 景观灯 does not end in a word "gd"
    ("ljx", "C0305", []),
    ("垃圾", "E0102", []),                  # 暴露垃圾: the head noun, before 垃圾箱
    ("txjg", "C0107", []),                 # by an alias's initials (通讯井盖)
    ("通讯井盖", "C0107", []),
    ("ysbz", "C0104", []),
    ("雨水篦子", "C0104", []),              # the common misspelling, an alias
    ("新增建筑", "E0101", []),
    ("xfs", "C0113", []),
    ("红绿灯", "C0210", []),                # a keyword
    ("C0101", "C0101", []),
    ("c0118", "C0118", []),
    ("0118", "C0118", []),
    ("事件0103", "E0103", []),
]


@pytest.mark.parametrize(("query", "first", "later"), SEARCH_TABLE, ids=[row[0] for row in SEARCH_TABLE])
def test_search_ranking_on_real_queries(cat: Catalogue, query: str, first: str, later: list[str]) -> None:
    found = codes(cat.search(query, limit=100))
    assert found and found[0] == first, found[:5]
    same_head = [code for code in found if cat.get(code).name.endswith(cat.get(first).name[-2:])]
    for code in later:
        assert code in found and found.index(code) > max(found.index(c) for c in same_head if c != code), (
            code, found[:10])


# ---------------------------------------------------------------- suggest


def best(cat: Catalogue, text: str) -> str:
    ranked = cat.suggest(text)
    assert ranked, text
    return str(ranked[0][0].code)


def test_suggest_manhole_cover(cat: Catalogue) -> None:
    ranked = cat.suggest("人行道上井盖丢了很危险")
    assert ranked[0][0].code == CategoryCode.parse("C0114")
    assert "井盖" in ranked[0][0].name
    assert 0.0 < ranked[0][1] <= 1.0


def test_suggest_street_light(cat: Catalogue) -> None:
    assert best(cat, "路灯不亮") == "C0118"


def test_suggest_nothing(cat: Catalogue) -> None:
    assert cat.suggest("今天天气不错") == []
    assert cat.suggest("") == []
    assert cat.suggest("   ") == []


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("污水井盖坏了", "C0102"),  # the longer keyword beats the bare 井盖 of 0114
        ("路灯井盖丢了", "C0106"),
        ("小区门口有人派发小广告", "E0204"),
        ("电线杆上贴满了小广告", "E0201"),
        ("工地晚上施工很吵", "E0301"),
        ("路边有人摆摊占道经营", "E0504"),
        ("共享单车乱停放堵住了人行道", "E0506"),
        ("下水道堵了，污水冒出来", "E0404"),
        ("有泥头车在偷倒建筑垃圾", "E0103"),
        ("ＬＥＤ路灯不亮", "C0118"),  # full width folded
    ],
)
def test_suggest_examples(cat: Catalogue, text: str, code: str) -> None:
    assert best(cat, text) == code


def test_suggest_confidence_orders_and_bounds(cat: Catalogue) -> None:
    ranked = cat.suggest("垃圾")  # 暴露垃圾 and 积存垃圾渣土 tie: both offered, equally unsure
    assert codes(c for c, _ in ranked) == ["E0102", "E0103"]
    assert ranked[0][1] == ranked[1][1]
    sure = dict((str(c.code), s) for c, s in cat.suggest("路灯不亮，路灯坏了"))["C0118"]
    assert sure > ranked[0][1]
    for text in ("井盖", "路灯不亮路灯坏了街灯灯不亮" * 20, "垃圾 渣土 乱扔垃圾"):
        scores = [s for _, s in cat.suggest(text)]
        assert all(0.0 < s <= 1.0 for s in scores)
        assert scores == sorted(scores, reverse=True)


def test_suggest_limit(cat: Catalogue) -> None:
    text = "井盖 路灯 垃圾 小广告 摆摊 积水 违停"
    assert len(cat.suggest(text, limit=3)) == 3
    assert len(cat.suggest(text)) == 5
    assert len(cat.suggest(text, limit=50)) >= 7


def test_suggest_longer_hit_shadows_a_shorter_one(cat: Catalogue) -> None:
    # "井盖" (无主井盖) lies inside "污水井盖": only the specific row is offered.
    assert codes(c for c, _ in cat.suggest("污水井盖坏了")) == ["C0102"]
    # Without the specific word, the owner-unknown row takes the bare 井盖.
    assert codes(c for c, _ in cat.suggest("井盖坏了")) == ["C0114"]


def test_suggest_handles_long_hostile_text(cat: Catalogue) -> None:
    text = "路灯不亮井盖垃圾小广告" * 2000  # 22,000 characters, tens of thousands of hits
    ranked = cat.suggest(text)
    assert ranked and all(0.0 < s <= 1.0 for _, s in ranked)
    assert {"C0118", "C0114"} <= {str(c.code) for c, _ in ranked}
