"""Result tables shared by the benchmarks: aligned text for a terminal, Markdown for the docs."""

from __future__ import annotations

from collections.abc import Sequence


def _width(value: str) -> int:
    """Display width: CJK characters take two columns in a terminal."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in value)


def _pad(value: str, width: int) -> str:
    return value + " " * (width - _width(value))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], legend: str,
                notes: Sequence[str] = ()) -> None:
    cells = [tuple(headers), *[tuple(row) for row in rows]]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(headers))]
    print()
    for index, row in enumerate(cells):
        print("  ".join(_pad(value, widths[i]) for i, value in enumerate(row)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
    print(legend)
    for note in notes:
        print(f"note: {note}")


def print_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[str] = ()) -> None:
    """`numeric` names the columns to right-align."""
    print()
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---:" if h in numeric else "---" for h in headers) + "|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
