"""CJ/T 214 management component (部件) and event (事件) categories.

Pure domain: the catalogue is read from TOML files given as paths, so the staff console,
the phone menu, Open311 and the SMS classifier all share one in-memory, read-only view.
Codes are only meaningful together with their edition, so the catalogue carries it.
"""

from __future__ import annotations

import enum
import functools
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pypinyin import Style, lazy_pinyin

__all__ = [
    "DEFAULT_EDITION",
    "CaseKind",
    "Catalogue",
    "CatalogueError",
    "Category",
    "CategoryCode",
    "InvalidCategoryCode",
    "MajorCategory",
    "UnknownCategory",
]

DEFAULT_EDITION = "CJ/T 214-2005"

_CONFIG_DIR = Path(__file__).resolve().parents[2] / "config" / "catalogue"
_DEFAULT_FILE = _CONFIG_DIR / "cjt214-2005.toml"

# Input quoted in error messages is cut to this many characters, so hostile text cannot flood logs.
_QUOTE_LIMIT = 40


class CatalogueError(ValueError):
    """A catalogue file is missing, malformed or clashes with another file."""


class InvalidCategoryCode(ValueError):
    """Text that is not a category code in any accepted spelling."""


class UnknownCategory(LookupError, ValueError):
    """A well-formed code that the loaded catalogue does not contain.

    Not a KeyError: KeyError repr()s its message, which would garble it in logs and replies.
    """

    def __init__(self, code: CategoryCode, edition: str) -> None:
        super().__init__(f"category {code} is not in the {edition} catalogue")
        self.code = code
        self.edition = edition


class CaseKind(enum.StrEnum):
    """The two case families of CJ/T 214."""

    COMPONENT = "component"  # 部件
    EVENT = "event"  # 事件

    @property
    def prefix(self) -> str:
        """One-letter prefix of the canonical code string (C0101 / E0103)."""
        return "C" if self is CaseKind.COMPONENT else "E"

    @property
    def label_zh(self) -> str:
        """Citizen-facing name of the family."""
        return "部件" if self is CaseKind.COMPONENT else "事件"


_KIND_WORDS: dict[str, CaseKind] = {
    "c": CaseKind.COMPONENT,
    "e": CaseKind.EVENT,
    "component:": CaseKind.COMPONENT,
    "event:": CaseKind.EVENT,
    "部件": CaseKind.COMPONENT,
    "事件": CaseKind.EVENT,
}
_CODE_RE = re.compile(r"(c|e|component:|event:|部件|事件)([0-9]{4})", re.ASCII)
# A code-looking search query: optional kind word and 1-4 leading digits of MMNN.
_CODE_QUERY_RE = re.compile(r"(c|e|component:|event:|部件|事件)?([0-9]{1,4})", re.ASCII)
_MAJOR_RE = re.compile(r"[0-9]{2}", re.ASCII)
_MINOR_RE = re.compile(r"[0-9]{4}", re.ASCII)


def _quote(text: str) -> str:
    """repr() of user input, shortened so that hostile input cannot flood a log line."""
    if len(text) > _QUOTE_LIMIT:
        return repr(text[:_QUOTE_LIMIT]) + f"... ({len(text)} chars)"
    return repr(text)


def _normalise(text: str) -> str:
    """NFKC + casefold, whitespace removed: full-width and case variants compare equal."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def _check_code_digits(code: str) -> str | None:
    """Why a 4-digit MMNN code is invalid, or None when it is valid."""
    if not _MINOR_RE.fullmatch(code):
        return "the code must be exactly 4 digits MMNN"
    if code[:2] == "00":
        return "the major category 00 does not exist"
    if code[2:] == "00":
        return "the minor category 00 does not exist"
    return None


@dataclass(frozen=True, order=True)
class CategoryCode:
    """Kind plus 4-digit code MMNN; str() gives the canonical "C0101"/"E0103"."""

    kind: CaseKind
    code: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, CaseKind):
            raise InvalidCategoryCode(f"category kind must be a CaseKind, got {self.kind!r}")
        if not isinstance(self.code, str):
            raise InvalidCategoryCode(f"category code must be a string, got {self.code!r}")
        problem = _check_code_digits(self.code)
        if problem:
            raise InvalidCategoryCode(f"invalid category code {_quote(self.code)}: {problem}")

    @classmethod
    def parse(cls, text: str) -> CategoryCode:
        """Accept C0101/c0101/E0103, component:0101/event:0103, 部件0101/事件0103.

        Full-width letters and digits are folded (NFKC) and surrounding spaces ignored, so
        codes typed on a phone keyboard work; anything else raises InvalidCategoryCode.
        """
        if not isinstance(text, str):
            raise InvalidCategoryCode(f"category code must be a string, got {type(text).__name__}")
        norm = unicodedata.normalize("NFKC", text).strip().casefold()
        if not norm:
            raise InvalidCategoryCode("empty category code")
        match = _CODE_RE.fullmatch(norm)
        if match is None:
            raise InvalidCategoryCode(
                f"invalid category code {_quote(text)}: expected C or E followed by 4 digits, "
                "e.g. C0101 (部件) or E0103 (事件)"
            )
        kind = _KIND_WORDS[match.group(1)]
        problem = _check_code_digits(match.group(2))
        if problem:
            raise InvalidCategoryCode(f"invalid category code {_quote(text)}: {problem}")
        return cls(kind, match.group(2))

    @property
    def major(self) -> str:
        """The 2-digit major category (大类) code."""
        return self.code[:2]

    @property
    def minor(self) -> str:
        """The 2-digit minor category (小类) code within its major."""
        return self.code[2:]

    def __str__(self) -> str:
        return f"{self.kind.prefix}{self.code}"


@dataclass(frozen=True)
class MajorCategory:
    """A major category (大类)."""

    kind: CaseKind
    code: str
    name: str


@dataclass(frozen=True)
class Category:
    """A minor category (小类), the unit a case is classified under."""

    code: CategoryCode
    name: str
    major_code: str
    major_name: str
    edition: str
    local: bool
    keywords: tuple[str, ...]
    aliases: tuple[str, ...]
    pinyin_initials: str
    # How well the code/name is supported by sources (see the data file's header); None when
    # the file says nothing.
    confidence: str | None = None

    @property
    def kind(self) -> CaseKind:
        """Shortcut for code.kind."""
        return self.code.kind

    def __str__(self) -> str:
        return f"{self.code} {self.name}"


def _strip_parenthetical(name: str) -> str:
    """Drop bracketed parts (通讯（电信）井盖 -> 通讯井盖): the plain form citizens write."""
    return re.sub(r"[（(][^（）()]*[）)]", "", name)


def _pinyin(name: str, style: Style) -> str:
    """Pinyin of the name's letters and digits, lower case, punctuation dropped."""
    syllables = lazy_pinyin(name, style=style)
    return "".join(ch for ch in "".join(syllables).casefold() if ch.isalnum())


# -------------------------------------------------------------------------- loading

_TOP_KEYS_BASE = frozenset({"edition", "title", "majors", "categories"})
_TOP_KEYS_EXT = frozenset({"extends", "title", "majors", "categories"})
_MAJOR_KEYS = frozenset({"kind", "code", "name"})
_CATEGORY_REQUIRED = frozenset({"kind", "code", "name"})
_CATEGORY_KEYS = _CATEGORY_REQUIRED | {"confidence", "aliases", "keywords", "local"}
_MIN_KEYWORD_LEN = 2


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise CatalogueError(f"{path}: cannot read catalogue file: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"{path}: not valid TOML: {exc}") from exc


def _row_label(path: Path, table: str, index: int, row: Mapping[str, Any]) -> str:
    code = row.get("code")
    suffix = f" (code {code!r})" if isinstance(code, str) else ""
    return f"{path}: [[{table}]] row {index}{suffix}"


def _kind_of(value: Any, where: str) -> CaseKind:
    try:
        return CaseKind(value)
    except (ValueError, TypeError):
        raise CatalogueError(
            f"{where}: kind must be 'component' or 'event', got {value!r}"
        ) from None


def _string_list(row: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = row.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise CatalogueError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(v.strip() for v in value)


def _rows(data: Mapping[str, Any], table: str, path: Path) -> list[Mapping[str, Any]]:
    rows = data.get(table, [])
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise CatalogueError(f"{path}: {table} must be an array of tables [[{table}]]")
    return rows


@dataclass
class _Builder:
    """Accumulates majors and minors across files, remembering where each came from."""

    edition: str
    majors: dict[tuple[CaseKind, str], MajorCategory] = field(default_factory=dict)
    major_origin: dict[tuple[CaseKind, str], str] = field(default_factory=dict)
    categories: dict[CategoryCode, Category] = field(default_factory=dict)
    category_origin: dict[CategoryCode, str] = field(default_factory=dict)

    def add_file(self, path: Path, *, is_base: bool) -> None:
        data = _read_toml(path)
        allowed = _TOP_KEYS_BASE if is_base else _TOP_KEYS_EXT
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise CatalogueError(f"{path}: unknown top-level keys {unknown}")
        if is_base:
            declared = data.get("edition")
            if declared != self.edition:
                raise CatalogueError(
                    f"{path}: declares edition {declared!r}, expected {self.edition!r}"
                )
        elif data.get("extends") != self.edition:
            raise CatalogueError(
                f"{path}: an extension file must say extends = {self.edition!r}, "
                f"got {data.get('extends')!r}"
            )
        for index, row in enumerate(_rows(data, "majors", path), start=1):
            self._add_major(row, _row_label(path, "majors", index, row), path)
        for index, row in enumerate(_rows(data, "categories", path), start=1):
            self._add_category(row, _row_label(path, "categories", index, row), is_base=is_base)

    def _add_major(self, row: Mapping[str, Any], where: str, path: Path) -> None:
        unknown = sorted(set(row) - _MAJOR_KEYS)
        missing = sorted(_MAJOR_KEYS - set(row))
        if unknown or missing:
            raise CatalogueError(f"{where}: unknown keys {unknown}, missing keys {missing}")
        kind = _kind_of(row["kind"], where)
        code, name = row["code"], row["name"]
        if not isinstance(code, str) or not _MAJOR_RE.fullmatch(code) or code == "00":
            raise CatalogueError(f"{where}: major code must be 2 digits 01-99, got {code!r}")
        if not isinstance(name, str) or not name.strip():
            raise CatalogueError(f"{where}: name must be a non-empty string")
        key = (kind, code)
        if key in self.majors:
            raise CatalogueError(
                f"{where}: {kind.label_zh} major {code} is already defined in "
                f"{self.major_origin[key]}"
            )
        self.majors[key] = MajorCategory(kind, code, name.strip())
        self.major_origin[key] = str(path)

    def _add_category(self, row: Mapping[str, Any], where: str, *, is_base: bool) -> None:
        unknown = sorted(set(row) - _CATEGORY_KEYS)
        if unknown:
            raise CatalogueError(f"{where}: unknown keys {unknown}")
        missing = sorted(_CATEGORY_REQUIRED - set(row))
        if missing:
            raise CatalogueError(f"{where}: missing keys {missing}")
        kind = _kind_of(row["kind"], where)
        raw_code = row["code"]
        if not isinstance(raw_code, str):
            raise CatalogueError(f"{where}: code must be a string such as \"0101\"")
        try:
            code = CategoryCode(kind, raw_code)
        except InvalidCategoryCode as exc:
            raise CatalogueError(f"{where}: {exc}") from None
        major = self.majors.get((kind, code.major))
        if major is None:
            raise CatalogueError(
                f"{where}: {kind.label_zh} major {code.major} is not defined in this or an "
                "earlier file"
            )
        name = row["name"]
        if not isinstance(name, str) or not name.strip():
            raise CatalogueError(f"{where}: name must be a non-empty string")
        local = row.get("local", not is_base)
        if not isinstance(local, bool) or (not is_base and not local):
            raise CatalogueError(
                f"{where}: local must be a boolean, and true in an extension file"
            )
        confidence = row.get("confidence")
        if confidence is not None and (not isinstance(confidence, str) or not confidence):
            raise CatalogueError(f"{where}: confidence must be a non-empty string")
        keywords = _string_list(row, "keywords", where)
        short = [k for k in keywords if len(_normalise(k)) < _MIN_KEYWORD_LEN]
        if short:
            raise CatalogueError(
                f"{where}: keywords must have at least {_MIN_KEYWORD_LEN} characters: {short}"
            )
        aliases = _string_list(row, "aliases", where)
        if code in self.categories:
            raise CatalogueError(
                f"{where}: category {code} is already defined in {self.category_origin[code]}"
            )
        self.categories[code] = Category(
            code=code,
            name=name.strip(),
            major_code=major.code,
            major_name=major.name,
            edition=self.edition,
            local=local,
            keywords=keywords,
            aliases=aliases,
            pinyin_initials=_pinyin(name, Style.FIRST_LETTER),
            confidence=confidence,
        )
        self.category_origin[code] = where


# -------------------------------------------------------------------------- catalogue


@dataclass(frozen=True)
class _Term:
    """One matchable word of a category, for suggest()."""

    category: Category
    is_name: bool  # name or alias rather than a keyword


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    term: str
    category: Category
    is_name: bool


class Catalogue:
    """Read-only set of major and minor categories of one edition, plus local extensions."""

    # suggest() scoring constants, explained in its docstring.
    _NAME_BONUS = 1.0
    _HALF_STRENGTH = 4.0

    def __init__(
        self,
        edition: str,
        majors: Iterable[MajorCategory],
        categories: Iterable[Category],
    ) -> None:
        self.edition = edition
        self._majors: dict[tuple[CaseKind, str], MajorCategory] = {
            (m.kind, m.code): m for m in sorted(majors, key=lambda m: (m.kind, m.code))
        }
        self._categories: dict[CategoryCode, Category] = {
            c.code: c for c in sorted(categories, key=lambda c: c.code)
        }
        self._full_pinyin: dict[CategoryCode, str] = {
            code: _pinyin(c.name, Style.NORMAL) for code, c in self._categories.items()
        }
        # What a search query is matched against: the name, its plain form without the
        # bracketed part, and each alias, each as text, pinyin initials and full pinyin.
        self._forms: dict[CategoryCode, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        for code, c in self._categories.items():
            forms = list(dict.fromkeys([c.name, _strip_parenthetical(c.name), *c.aliases]))
            texts = tuple(dict.fromkeys(_normalise(n) for n in forms))
            spellings = tuple(dict.fromkeys(
                s for n in forms for s in (_pinyin(n, Style.FIRST_LETTER), _pinyin(n, Style.NORMAL)) if s))
            self._forms[code] = (texts, spellings)
        self._terms: dict[str, list[_Term]] = {}
        for category in self._categories.values():
            names = {category.name, _strip_parenthetical(category.name), *category.aliases}
            seen: set[str] = set()
            for word, is_name in [(n, True) for n in names] + [
                (k, False) for k in category.keywords
            ]:
                norm = _normalise(word)
                if len(norm) < _MIN_KEYWORD_LEN or norm in seen:
                    continue
                seen.add(norm)
                self._terms.setdefault(norm, []).append(_Term(category, is_name))
        self._longest_term = max(map(len, self._terms), default=0)
        # Terms by their first character: a text looks only for terms that can start in it.
        self._by_first: dict[str, list[tuple[str, list[_Term]]]] = {}
        for term, entries in self._terms.items():
            self._by_first.setdefault(term[0], []).append((term, entries))

    @classmethod
    def load(cls, files: Sequence[Path], edition: str = DEFAULT_EDITION) -> Catalogue:
        """Load the base edition (first file) and local extensions (later files).

        A code defined twice, in one file or across files, is an error naming both places:
        a silent override would re-route cases to another department.
        """
        if not files:
            raise CatalogueError("no catalogue files given: the base edition file is required")
        builder = _Builder(edition)
        for index, path in enumerate(files):
            builder.add_file(Path(path), is_base=index == 0)
        return cls(edition, builder.majors.values(), builder.categories.values())

    @classmethod
    def default(cls) -> Catalogue:
        """The shipped CJ/T 214-2005 base catalogue, without local extensions (cached)."""
        return _load_default()

    # ------------------------------------------------------------------ lookups

    def _coerce(self, code: CategoryCode | str) -> CategoryCode:
        return code if isinstance(code, CategoryCode) else CategoryCode.parse(code)

    def get(self, code: CategoryCode | str) -> Category | None:
        """The category, or None if absent; a malformed string raises InvalidCategoryCode."""
        return self._categories.get(self._coerce(code))

    def require(self, code: CategoryCode | str) -> Category:
        """The category, or UnknownCategory naming the code and edition."""
        parsed = self._coerce(code)
        category = self._categories.get(parsed)
        if category is None:
            raise UnknownCategory(parsed, self.edition)
        return category

    def majors(self, kind: CaseKind) -> list[MajorCategory]:
        """Major categories of a kind, ordered by code."""
        return [m for (k, _), m in self._majors.items() if k is kind]

    def minors(self, kind: CaseKind, major: str) -> list[Category]:
        """Minor categories of one major, ordered by code; [] for an unknown major."""
        return [c for c in self._categories.values() if c.kind is kind and c.major_code == major]

    def major_by_digit(self, kind: CaseKind, digit: int) -> MajorCategory | None:
        """Phone-menu key 1-9 to major "01".."09" (部件 1-6, 事件 1-5 in the base edition)."""
        if not 1 <= digit <= 9:
            return None
        return self._majors.get((kind, f"{digit:02d}"))

    def all(self) -> list[Category]:
        """Every minor category: components then events, by code."""
        return list(self._categories.values())

    def __len__(self) -> int:
        return len(self._categories)

    # ------------------------------------------------------------------ search

    def search(self, query: str, limit: int = 20) -> list[Category]:
        """Staff-console lookup by code, Chinese name or alias, or pinyin.

        Accepts a code or its prefix ("0101", "C0101", "c01", "部件01"), a Chinese name or
        alias or part of one, pinyin initials ("jg") or full pinyin ("ludeng"), or a citizen
        keyword. Case- and width-insensitive. Best first, because Enter takes the first hit:
        exact code, code prefix; then a name, alias or its pinyin (initials or full) that is
        exactly the query ("ld" → 路灯, not 路灯井盖); that ends with it after a modifier of two
        or more (the head noun: "jg" → 上水井盖 before 景观灯); that starts with it; that contains it; a keyword.
        Ties go by code.
        """
        q = _normalise(query)
        if not q or limit <= 0:
            return []
        ranked: list[tuple[int, CategoryCode]] = []
        code_query = _CODE_QUERY_RE.fullmatch(q)
        is_letters = q.isascii() and q.isalpha()
        for code, category in self._categories.items():
            rank = self._search_rank(q, code_query, is_letters, category)
            if rank is not None:
                ranked.append((rank, code))
        ranked.sort()
        return [self._categories[code] for _, code in ranked[:limit]]

    def _search_rank(
        self,
        q: str,
        code_query: re.Match[str] | None,
        is_letters: bool,
        category: Category,
    ) -> int | None:
        code = category.code
        if code_query is not None:
            kind_word, digits = code_query.groups()
            if kind_word is not None and _KIND_WORDS[kind_word] is not code.kind:
                return None
            if code.code == digits:
                return 0
            if code.code.startswith(digits):
                return 1
            return None
        texts, spellings = self._forms[code]
        forms = spellings if is_letters else texts
        if q in forms:
            return 2
        # The head noun comes last in Chinese (上水|井盖); a modifier of one character is no
        # word boundary to trust (景观灯 "jgd" does not end in a word "gd").
        if any(form.endswith(q) and len(form) - len(q) >= 2 for form in forms):
            return 3
        if any(form.startswith(q) for form in forms):
            return 4
        if any(q in form for form in forms):
            return 5
        if any(q in _normalise(k) for k in category.keywords):
            return 6
        return None

    # ------------------------------------------------------------------ suggest

    def suggest(self, text: str, limit: int = 5) -> list[tuple[Category, float]]:
        """Rank categories for a citizen's free text (SMS body or call transcription).

        Scoring:
        1. The text is NFKC-folded, lower-cased and stripped of whitespace; every name,
           alias (parenthetical parts of names dropped) and keyword is looked for in it.
        2. A hit inside a longer hit of a *different* category is dropped, so "污水井盖"
           counts for 污水井盖 and not also for the bare "井盖" of 无主井盖.
        3. A category's raw score is the number of text characters its remaining hits
           cover (overlaps and repeats count once), plus 1 per distinct name or alias hit.
        4. strength = raw / (raw + 4): one 2-character keyword gives 0.33, a 4-character
           one 0.5, a text explained by many hits approaches 1.
        5. share = raw / (sum of raw over all hit categories); confidence =
           strength * (0.5 + 0.5 * share), so a text that fits two rows equally well is
           less certain than one that fits a single row.
        Best first (ties by code); at most `limit` results; [] when nothing matches.
        """
        norm = _normalise(text)
        if not norm or limit <= 0:
            return []
        hits = self._hits(norm)
        by_start: dict[int, list[_Hit]] = {}
        for hit in hits:
            by_start.setdefault(hit.start, []).append(hit)
        kept = [h for h in hits if not self._inside_other(h, by_start)]
        covered: dict[CategoryCode, set[int]] = {}
        names_hit: dict[CategoryCode, set[str]] = {}
        for hit in kept:
            covered.setdefault(hit.category.code, set()).update(range(hit.start, hit.end))
            if hit.is_name:
                names_hit.setdefault(hit.category.code, set()).add(hit.term)
        raw = {
            code: len(chars) + self._NAME_BONUS * len(names_hit.get(code, ()))
            for code, chars in covered.items()
        }
        if not raw:
            return []
        total = sum(raw.values())
        scored: list[tuple[float, float, CategoryCode]] = []
        for code, score in raw.items():
            strength = score / (score + self._HALF_STRENGTH)
            confidence = strength * (0.5 + 0.5 * score / total)
            scored.append((-round(confidence, 4), -score, code))
        scored.sort()
        return [(self._categories[code], -neg) for neg, _, code in scored[:limit]]

    def _inside_other(self, hit: _Hit, by_start: Mapping[int, list[_Hit]]) -> bool:
        """Whether a longer hit of another category covers this one (looks back only as far
        as the longest term reaches, so long texts stay linear)."""
        length = hit.end - hit.start
        for start in range(max(0, hit.end - self._longest_term), hit.start + 1):
            for other in by_start.get(start, ()):
                if (
                    other.end >= hit.end
                    and other.end - other.start > length
                    and other.category.code != hit.category.code
                ):
                    return True
        return False

    def _hits(self, norm: str) -> list[_Hit]:
        hits: list[_Hit] = []
        for term, entries in (t for first in dict.fromkeys(norm) for t in self._by_first.get(first, ())):
            start = norm.find(term)
            while start != -1:
                for entry in entries:
                    hits.append(_Hit(start, start + len(term), term, entry.category, entry.is_name))
                start = norm.find(term, start + 1)
        return hits


@functools.cache
def _load_default() -> Catalogue:
    return Catalogue.load([_DEFAULT_FILE], DEFAULT_EDITION)
