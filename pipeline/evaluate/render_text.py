"""Render a report for the terminal (rich), as markdown, or as JSON."""

from __future__ import annotations

import json
import math

from rich.console import Console
from rich.table import Table as RichTable

from .report import Report
from .tables import Table, all_tables, numeric_columns, statements


def _rich_table(t: Table) -> RichTable:
    table = RichTable(title=t.title, caption=t.caption or None, title_justify="left", show_lines=False)
    for header, numeric in zip(t.headers, numeric_columns(t)):
        table.add_column(header, overflow="fold", justify="right" if numeric else "left")
    for row in t.rows:
        table.add_row(*row)
    return table


def print_rich(report: Report, console: Console | None = None) -> None:
    console = console or Console()
    for t in all_tables(report):
        console.print(_rich_table(t))
        for note in t.notes:
            console.print(f"  [yellow]note[/yellow] {note}", highlight=False, markup=True)
        console.print()
    for note in statements(report):
        console.print(f"[yellow]note[/yellow] {note}", highlight=False)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    out: list[str] = []
    for t in all_tables(report):
        out.append(f"### {t.title}\n")
        if t.caption:
            out.append(f"{t.caption}\n")
        out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
        out.append("|" + "|".join("---:" if numeric else "---" for numeric in numeric_columns(t)) + "|")
        for row in t.rows:
            out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
        out.append("")
        out += [f"> note: {n}" for n in t.notes]
        if t.notes:
            out.append("")
    notes = statements(report)
    if notes:
        out.append("### Notes\n")
        out += [f"- {n}" for n in notes]
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
