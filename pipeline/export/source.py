"""The runs an export reads: each RUN's results.parquet, checked, streamed as Arrow record batches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from . import ExportError

BATCH_ROWS = 8192
REQUIRED = ("id", "status", "pred_text", "audio_filepath", "offset", "duration_s")


@dataclass
class RunSource:
    path: Path  # as given
    results: Path  # its results.parquet
    schema: pa.Schema
    n_rows: int

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def batches(self, columns: Sequence[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
        """The run's rows in file order, `batch_rows` at a time; columns the run lacks come back as nulls."""
        present = [c for c in columns if c in self.schema.names]
        missing = [c for c in columns if c not in self.schema.names]
        pf = pq.ParquetFile(self.results)
        for batch in pf.iter_batches(batch_size=batch_rows, columns=present):
            table = pa.Table.from_batches([batch])
            for name in missing:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.float64()))
            yield table.select(list(columns))


def open_run(path: str | Path) -> RunSource:
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        results = path
    elif path.is_dir():
        results = path / "results.parquet"
        if not results.is_file():
            if (path / "parts").is_dir():
                raise ExportError(f"{path}: no results.parquet (the run has not finished): run the same "
                                  "`transcribe-batch run … -o` command again to finish it and merge its parts")
            raise ExportError(f"{path}: not a run folder (no results.parquet)")
    else:
        raise ExportError(f"{path}: no such run folder or .parquet file")
    try:
        pf = pq.ParquetFile(results)
    except (OSError, pa.ArrowInvalid) as e:
        raise ExportError(f"{results}: unreadable Parquet ({e})") from None
    schema = pf.schema_arrow
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise ExportError(f"{results}: lacks column(s) {', '.join(missing)} (not a transcribe-batch run?)")
    return RunSource(path, results, schema, pf.metadata.num_rows)


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
