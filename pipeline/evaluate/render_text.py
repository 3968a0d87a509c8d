"""Render a report for the terminal (rich), as markdown, or as JSON."""

from __future__ import annotations

import json
import math
import re

from rich.console import Console
from rich.markup import escape
from rich.table import Table as RichTable
from rich.text import Text

from .report import Report
from .table import Table, numeric_columns
from .tables import all_tables, statements


MAX_CELL_WORD = 12  # a cell word longer than this may be folded rather than widen its column


def _words(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


def column_widths(headers: list[str], rows: list[list[str]], width: int) -> list[int] | None:
    """Content widths for a table that is too wide for `width` columns, such that no header word is split (rich
    shares the width out by itself and folds words, e.g. "latenc/y"): each column gets its longest header word (and
    its cells' longest word, up to MAX_CELL_WORD), the rest is shared by what each column would still use.
    None: the table fits as it is, or not even that fits (then rich folds)."""
    n = len(headers)
    room = width - (3 * n + 1)  # a rich box table: "│ " + cell + " " per column, and the last "│"
    lo = [max(_words(h), min(MAX_CELL_WORD, max((_words(r[i]) for r in rows), default=0)))
          for i, h in enumerate(headers)]
    hi = [max(lo[i], len(h), max((len(r[i]) for r in rows), default=0)) for i, h in enumerate(headers)]
    if sum(hi) <= room or sum(lo) > room:
        return None
    want = [h - low for h, low in zip(hi, lo)]
    extra, total = room - sum(lo), sum(want)
    widths = [low + w * extra // total for low, w in zip(lo, want)]
    for i in sorted(range(n), key=lambda i: hi[i] - widths[i], reverse=True)[:room - sum(widths)]:
        widths[i] += 1  # the rounding's remainder
    return widths


def _rich_table(t: Table, width: int) -> RichTable:
    """Every string is plain text (a transcript or id holding `[/noise]` is shown as is, never read as markup)."""
    table = RichTable(title=Text(t.title), caption=Text(t.caption) if t.caption else None, title_justify="left",
                      show_lines=False)
    widths = column_widths(t.headers, t.rows, width) or [None] * len(t.headers)
    for header, numeric, w in zip(t.headers, numeric_columns(t), widths):
        table.add_column(Text(header), overflow="fold", justify="right" if numeric else "left", width=w)
    for row in t.rows:
        table.add_row(*(Text(cell) for cell in row))
    return table


def print_rich(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    for t in all_tables(report):
        console.print(_rich_table(t, console.width))
        for note in t.notes:
            console.print(f"  [yellow]note[/yellow] {escape(note)}", highlight=False)
        console.print()
    for note in statements(report):
        console.print(f"[yellow]note[/yellow] {escape(note)}", highlight=False)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~#])")


def _md(text: str) -> str:
    """Text as markdown shows it literally: a transcript's `*`, `<b>`, `[x](y)` or `|` is never markup."""
    return _MD_SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def to_markdown(report: Report) -> str:
    out: list[str] = []
    for t in all_tables(report):
        out.append(f"### {_md(t.title)}\n")
        if t.caption:
            out.append(f"{_md(t.caption)}\n")
        out.append("| " + " | ".join(_md(h) for h in t.headers) + " |")
        out.append("|" + "|".join("---:" if numeric else "---" for numeric in numeric_columns(t)) + "|")
        for row in t.rows:
            out.append("| " + " | ".join(_md(c) for c in row) + " |")
        out.append("")
        out += [f"> note: {_md(n)}" for n in t.notes]
        if t.notes:
            out.append("")
    notes = statements(report)
    if notes:
        out.append("### Notes\n")
        out += [f"- {_md(n)}" for n in notes]
        out.append("")
    return "\n".join(out)


def _clean(value):
    """JSON without NaN/inf (undefined figures are null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(report: Report) -> str:
    """Rates are fractions (0.0523 = 5.23 %); undefined figures are null."""
    return json.dumps(_clean(report.to_dict()), indent=2, default=str, allow_nan=False)
