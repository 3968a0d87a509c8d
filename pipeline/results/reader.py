"""The one reader of run folders (eval and export use it): a RUN's results, never an earlier run's read as current.

`open_results(RUN)` says what it read (`RunResults.state`):
- COMPLETE: results.parquet of the folder's latest run, which ended complete. The file must carry that run's
  `run_id` (results.parquet schema metadata, written by the merge; run.json `run_id`). A folder written before run
  ids existed (neither has one) is taken when run.json says complete.
- UNFINISHED: the latest run did not complete (interrupted, failed, killed, or still running: .lock held by a live
  process). A results.parquet left by an earlier run is never read. With `allow_unfinished` (eval), the rows that
  have a result are merged from parts/ for the manifest as it is now, exactly as the run's own merge would
  (`merge.merge_results`, into a temporary folder: nothing is written into RUN); unreadable parts are named and
  skipped. Without it (export), UNFINISHED is refused with what to do.
- FILE: a results file that is not a run folder's (no run.json of a run beside it, or a .parquet given directly):
  read as it is, and said so.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from transcribe_batch.workers.record import PART_SCHEMA

from .folder import RunFolder, lock_holder
from .parts import INPUT_DIGEST, latest_rows, read_part, read_parts
from .run_json import RESULTS_RUN_ID, NotARunJson

COMPLETE, UNFINISHED, FILE = "complete", "unfinished", "file"
BATCH_ROWS = 8192


class ResultsError(ValueError):
    """A RUN that cannot be read as results; the message names the path, what is wrong and what to do."""


@dataclass(frozen=True)
class RunResults:
    path: Path  # the RUN as given (a run folder, or a .parquet file)
    folder: Path  # the run folder (a FILE's own folder)
    state: str  # COMPLETE, UNFINISHED or FILE (see the module's docstring)
    meta: dict  # the folder's run.json when it is a run's, else {}
    results: Path  # the results file read (COMPLETE, FILE); for UNFINISHED the folder's parts/
    schema: pa.Schema
    n_rows: int
    notes: tuple[str, ...] = ()  # what was read and why (unfinished, a results file not read, skipped parts)
    _file: pq.ParquetFile | None = field(default=None, repr=False)  # opened once (a run starting later deletes
    # the name, not the open file)
    _table: pa.Table | None = field(default=None, repr=False)  # UNFINISHED: the merged rows, in memory

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def require(self, columns: Sequence[str]) -> None:
        """ResultsError naming the columns the results lack."""
        missing = [c for c in columns if c not in self.schema.names]
        if missing:
            raise ResultsError(f"{self.results}: lacks column(s) {', '.join(missing)} (not a transcribe-batch run?)")

    def batches(self, columns: Sequence[str] | None = None, batch_rows: int | None = None) -> Iterator[pa.Table]:
        """The rows in result order (manifest line order for a run), `batch_rows` (default BATCH_ROWS) at a time;
        columns the results lack come back as nulls (of the results schema's type, float64 for unknown names)."""
        batch_rows = batch_rows or BATCH_ROWS
        columns = list(self.schema.names if columns is None else columns)
        present = [c for c in columns if c in self.schema.names]
        missing = [c for c in columns if c not in self.schema.names]
        if self._table is not None:
            chunks: Iterator = iter(self._table.select(present).to_batches(max_chunksize=batch_rows))
        else:
            chunks = self._file.iter_batches(batch_size=batch_rows, columns=present)
        for batch in chunks:
            table = pa.Table.from_batches([batch])
            for name in missing:
                t = PART_SCHEMA.field(name).type if name in PART_SCHEMA.names else pa.float64()
                table = table.append_column(name, pa.nulls(table.num_rows, t))
            yield table.select(columns)

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows at once (eval)."""
        if self._table is not None and columns is None:
            return self._table
        tables = list(self.batches(columns))
        return pa.concat_tables(tables) if tables else self.schema.empty_table()


def open_results(path: str | Path, *, allow_unfinished: bool = False) -> RunResults:
    """Open RUN (a run folder, its results.parquet, or another results .parquet file); ResultsError if it cannot be
    read, or if it is UNFINISHED and not `allow_unfinished`."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        if path.name == "results.parquet" and (path.parent / "run.json").exists():
            return _open_folder(path, path.parent, allow_unfinished)
        return _open_file(path, path, path.parent, {}, [])
    if path.is_dir():
        return _open_folder(path, path, allow_unfinished)
    raise ResultsError(f"{path}: no such run folder or .parquet file")


def _open_file(given: Path, results: Path, folder: Path, meta: dict, notes: list[str], state: str = FILE
               ) -> RunResults:
    try:
        pf = pq.ParquetFile(results, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        again = ("; run the same `run` command again to rewrite it from parts/" if state == COMPLETE else "")
        raise ResultsError(f"{results}: unreadable Parquet ({reason}){again}") from None
    return RunResults(given, folder, state, meta, results, pf.schema_arrow, pf.metadata.num_rows, tuple(notes),
                      _file=pf)


def _open_folder(given: Path, folder_path: Path, allow_unfinished: bool) -> RunResults:
    folder = RunFolder(folder_path)
    has_results = folder.results.is_file()
    try:
        meta = folder.read_run_json()
        unchecked = f"no run.json in {folder.path}"
    except NotARunJson as e:
        meta, unchecked = None, str(e)
    if meta is None:  # no run of this folder to check what it holds against
        if has_results:
            return _open_file(given, folder.results, folder.path, {},
                              [f"{unchecked}: results.parquet read as it is, unchecked"])
        return _unfinished(given, folder, {}, allow_unfinished, [unchecked] if folder.run_json.exists() else [])
    run_id, file_id = meta.get("run_id"), None
    if has_results:
        out = _open_file(given, folder.results, folder.path, meta, [], COMPLETE)
        file_id = (out.schema.metadata or {}).get(RESULTS_RUN_ID.encode())
        file_id = file_id.decode(errors="replace") if file_id else None
        if meta["status"] == "complete" and file_id == run_id:
            return replace(out, notes=tuple(_manifest_changed(meta, "the results answer it as it was when the run "
                                                                    "planned it")))
    notes = []
    if has_results:
        whose = ("the latest run's merge, but that run did not complete" if file_id == run_id
                 else "an earlier run's results, not the folder's latest run's")
        notes.append(f"{folder.results} is {whose} ({meta['status']}, started {meta['started_at']}): not read")
    return _unfinished(given, folder, meta, allow_unfinished, notes, stale=has_results)


def _manifest_changed(meta: dict, consequence: str) -> list[str]:
    """A note if the run's manifest is no longer as the run planned it (size or modification time; stat only)."""
    fp, manifest = meta.get("manifest_fingerprint"), meta.get("manifest")
    if not fp or not manifest:
        return []
    try:
        st = os.stat(manifest)
    except OSError:
        return [f"the run's manifest {manifest} is gone; {consequence}"]
    if (st.st_size, st.st_mtime_ns) != (fp.get("size"), fp.get("mtime_ns")):
        return [f"the run's manifest {manifest} changed after the run planned it; {consequence}"]
    return []


def _what_to_do(folder: RunFolder, meta: dict) -> str:
    holder = lock_holder(folder) if meta.get("status", "running") == "running" else None
    if holder:
        return f"a run is writing {folder.path} now ({holder}): wait for it to finish"
    counts = meta.get("counts") or {}
    done = f", {counts['rows']} of {counts['total']} rows have a result" if {"rows", "total"} <= counts.keys() else ""
    status = meta.get("status")
    how = {"running": "stopped without a word (killed?)"}.get(status, status) if status else "unfinished"
    return (f"the folder's latest run is {how}{done}: run the same `transcribe-batch run … -o {folder.path}` command "
            "again to finish it")


def _unfinished(given: Path, folder: RunFolder, meta: dict, allow: bool, notes: list[str], *, stale: bool = False
                ) -> RunResults:
    parts = folder.part_files()
    if not allow:
        if not meta and not folder.parts.is_dir():
            raise ResultsError(f"{folder.path}: not a run folder (no results.parquet)")
        what = ("its results.parquet is not the results of its latest run (which has not finished)" if stale
                else "no results.parquet (the run has not finished)")
        raise ResultsError(f"{folder.path}: {what}: {_what_to_do(folder, meta)}")
    if not parts:
        if not meta:
            raise ResultsError(f"{folder.path}: not a run folder (no results.parquet and no parts/*.parquet)")
        raise ResultsError(f"{folder.path}: no result yet ({_what_to_do(folder, meta)})")
    notes.append(f"unfinished run ({_what_to_do(folder, meta)})")
    table = _merge_unfinished(folder, meta, parts, notes)
    if table is None:
        table = _all_records(folder, parts, notes)
    return RunResults(given, folder.path, UNFINISHED, meta, folder.parts, table.schema, table.num_rows,
                      tuple(notes), _table=table)


def _merge_unfinished(folder: RunFolder, meta: dict, parts: list[Path], notes: list[str]) -> pa.Table | None:
    """The rows of the run's manifest (as it is now) that have a result, as the run's merge would write them; None
    if the manifest cannot be planned (notes say why)."""
    from transcribe_batch.manifests.reader import ManifestError

    from ..plan import build_plan
    from .merge import merge_results

    manifest = meta.get("manifest")
    if not manifest:
        return None
    skip_bad_lines = bool((meta.get("config") or {}).get("skip_bad_lines", False))
    range_s = (meta.get("config") or {}).get("range_s")  # long rows' ranges: planned from the headers, as the run did
    try:
        plan = build_plan(manifest, skip_bad_lines=skip_bad_lines, read_headers=range_s is not None, range_s=range_s)
    except (ManifestError, OSError) as e:
        notes.append(f"its manifest cannot be read ({e})")
        return None
    notes += _manifest_changed(meta, "the rows it has now are shown")
    readable = []
    for f in parts:
        try:
            read_part(f)  # every page: the merge must not meet a damaged part
        except OSError as e:
            notes.append(f"{e}; skipped (the next `run` of this folder sets it aside and redoes its rows)")
            continue
        readable.append(f)
    with tempfile.TemporaryDirectory(prefix="transcribe-batch-read-") as tmp:
        target = Path(tmp) / "results.parquet"
        try:
            merged = merge_results(folder, plan, files=readable, target=target, workdir=Path(tmp))
        except (ManifestError, OSError) as e:
            notes.append(f"its parts could not be merged with its manifest ({e})")
            return None
        table = pq.read_table(target)
    notes.append(f"read the {merged.n_rows} of {plan.n_rows} manifest rows that have a result, from "
                 f"{len(readable)} part file(s)")
    return table


def _all_records(folder: RunFolder, parts: list[Path], notes: list[str]) -> pa.Table:
    """Every record in parts/, the latest per id: for a folder whose manifest is unknown."""
    notes.append(f"no results.parquet: read {len(parts)} part files from {folder.parts}, every recorded result "
                 "(the latest per id; rows the manifest no longer has may be among them)")
    table, _, skipped = read_parts(parts)
    notes.extend(f"{s}; skipped" for s in skipped)
    if table is None:
        raise ResultsError(f"{folder.path}: no readable part file in {folder.parts} ({'; '.join(skipped)})")
    table = table.drop_columns([c for c in ("_part", INPUT_DIGEST) if c in table.column_names])
    deduped = latest_rows(table)  # a row redone after a crash or --retry-failed: its latest record counts
    if deduped.num_rows != table.num_rows:
        notes.append(f"{table.num_rows - deduped.num_rows} duplicate id rows dropped (kept the latest result per id)")
    return deduped
