"""One report table as plain strings (the model every renderer draws), and the cell formats."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NA = "—"


@dataclass
class Table:
    title: str
    headers: list[str]  # one per column
    rows: list[list[str]]  # one string per column each; plain text (renderers escape it)
    caption: str = ""
    key: str = ""  # stable identifier (HTML id, tests)
    notes: list[str] = field(default_factory=list)  # statements shown under the table


def pct(x: float | None) -> str:
    return NA if x is None else f"{100 * x:.2f}"


def num(x: float | None, digits: int = 3) -> str:
    if x is None:
        return NA
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}" if abs(x) < 1 else f"{x:.{max(1, digits - len(str(int(abs(x)))))}f}"


def hours(seconds: float | None) -> str:
    return NA if seconds is None else f"{seconds / 3600:.3f}"


_NUMERIC = re.compile(r"^(—|-?[\d,.]+( \(\d+\))?|[\d.]+( / [\d.—]+)+)$")


def numeric_columns(t: Table) -> list[bool]:
    """Columns whose every cell is a number (or n/a): right-aligned by the renderers."""
    if t.key in ("accuracy", "speed"):  # metric name, then one column of figures per run
        return [i > 0 for i in range(len(t.headers))]
    return [i > 0 and bool(t.rows) and all(_NUMERIC.match(row[i]) for row in t.rows) for i in range(len(t.headers))]
