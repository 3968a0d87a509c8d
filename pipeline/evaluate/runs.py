"""Load a run folder (results.parquet + run.json, contract 5) into columns the evaluators read."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..results import ResultsError, open_results

REQUIRED_COLUMNS = ("id", "status")


class RunError(ValueError):
    """A run folder that cannot be evaluated; the message names the path and what is wrong."""


@dataclass
class Run:
    name: str  # label shown in reports (the folder name, made unique among the runs compared)
    path: Path
    columns: dict[str, list[Any]]  # column name -> values, one per result row, in the run's order
    meta: dict[str, Any] = field(default_factory=dict)  # run.json, or {} when absent
    notes: list[str] = field(default_factory=list)  # statements about what was read (partial run, duplicates …)

    @property
    def n(self) -> int:
        return len(self.columns["id"])

    def col(self, name: str, default: Any = None) -> list[Any]:
        """A column's values, or `default` repeated when the run lacks that column."""
        values = self.columns.get(name)
        return list(values) if values is not None else [default] * self.n

    def has(self, name: str) -> bool:
        return name in self.columns

    def subset(self, ids: list[str]) -> "Run":
        """The rows with these ids, in this order (ids must exist in the run)."""
        index = {row_id: i for i, row_id in enumerate(self.columns["id"])}
        picks = [index[row_id] for row_id in ids]
        columns = {name: [values[i] for i in picks] for name, values in self.columns.items()}
        return Run(self.name, self.path, columns, self.meta, list(self.notes))


def _to_seconds(array: pa.ChunkedArray) -> list[float | None]:
    """Timestamps (Arrow timestamp, epoch float, or ISO string) as epoch seconds."""
    typ = array.type
    if pa.types.is_timestamp(typ):
        return [v.timestamp() if v is not None else None for v in array.to_pylist()]
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return [float(v) if v is not None else None for v in array.to_pylist()]
    out: list[float | None] = []
    for v in array.to_pylist():
        if v in (None, ""):
            out.append(None)
            continue
        when = dt.datetime.fromisoformat(str(v))
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        out.append(when.timestamp())
    return out


TIME_COLUMNS = ("queued_at", "started_at", "finished_at")


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run folder (or a results .parquet file) with the run-folder reader (results.reader.open_results): a
    complete run's results.parquet, or, for a run that has not finished, the rows that have a result so far (the
    notes say so); never an earlier run's results as the folder's."""
    path = Path(path)
    try:
        results = open_results(path, allow_unfinished=True)
        results.require(REQUIRED_COLUMNS)
        table = results.read()
    except ResultsError as e:
        raise RunError(str(e)) from None
    columns: dict[str, list[Any]] = {}
    for column_name in table.column_names:
        array = table.column(column_name)
        columns[column_name] = _to_seconds(array) if column_name in TIME_COLUMNS else array.to_pylist()
    columns["id"] = [str(v) for v in columns["id"]]
    folder = results.folder
    return Run(name or folder.name or str(folder), folder, columns, results.meta, list(results.notes))


def unique_names(paths: list[str | Path]) -> list[str]:
    """Short labels for runs: folder names, widened with parent folders where two collide."""
    paths = [Path(p).resolve() for p in paths]
    paths = [p.parent if p.name == "results.parquet" else p for p in paths]
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > max(len(p.parts) for p in paths):
            break
        depth += 1
    seen: dict[str, int] = {}
    out = []
    for label in names:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out
