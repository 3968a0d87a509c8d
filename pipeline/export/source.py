"""The runs an export reads: each RUN's results through the run-folder reader (results.reader), checked, streamed
as Arrow record batches. Only a complete run's results are exported: an unfinished run (interrupted, failed, still
running) is refused with what to do, and an earlier run's results.parquet is never taken for the folder's."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..results import ResultsError, RunResults, open_results
from . import ExportError

REQUIRED = ("id", "status", "pred_text", "audio_filepath", "offset", "duration_s")

RunSource = RunResults  # what the export modules stream rows from (path, results, columns, n_rows, batches())


def open_run(path: str | Path) -> RunSource:
    try:
        source = open_results(path)
        source.require(REQUIRED)
    except ResultsError as e:
        raise ExportError(str(e)) from None
    return source


def open_runs(paths: Sequence[str | Path]) -> list[RunSource]:
    if not paths:
        raise ExportError("no RUN given")
    sources = [open_run(p) for p in paths]
    seen: dict[Path, Path] = {}
    for s in sources:
        key = s.results.resolve()
        if key in seen:
            raise ExportError(f"{s.path}: given twice (also as {seen[key]})")
        seen[key] = s.path
    return sources
