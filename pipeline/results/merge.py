"""The merge: parts + the current manifest's plan -> results.parquet, exactly the plan's rows in line order.

Each result row is the latest record answering the row's exact input (its input digest), with the manifest's
current line number, reference text and other fields (as columns); a long row planned in time ranges
(pipeline/plan.py) is the join of its ranges' latest records, in range order (workers/assemble.py join_ranges).
Records of rows the manifest no longer has (or has changed) stay in parts/ but never reach the results. Streaming: a
few numbers per record plus one bucket of rows in memory, whatever the run's size.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transcribe_batch.workers.assemble import join_ranges
from transcribe_batch.workers.record import COLUMNS, PART_SCHEMA, conform, records_of, to_table

from .atomic import temp_path
from .folder import RunFolder
from .parts import INPUT_DIGEST, PartUnreadable, last_of_each, read_part
from .run_json import RESULTS_RUN_ID

MERGE_BUCKET_ROWS = 32_768  # rows sorted in memory at once by the merge (at least; see MERGE_MAX_BUCKETS)
MERGE_MAX_BUCKETS = 256  # temporary bucket files open at once


@dataclass(frozen=True)
class MergeSummary:
    n_rows: int  # result rows written (plan rows with a record, plus bad lines)
    n_ok: int
    n_failed: int
    audio_s: float  # Σ duration_s of the rows written


def _digests(path: Path) -> pa.ChunkedArray | None:
    """A part's INPUT_DIGEST column (None: a part written before records carried input digests)."""
    try:
        if INPUT_DIGEST not in pq.read_schema(path).names:
            return None
        return pq.read_table(path, columns=[INPUT_DIGEST])[INPUT_DIGEST]
    except (pa.ArrowException, OSError) as e:
        raise PartUnreadable(f"{path}: unreadable ({str(e).strip().splitlines()[0] if str(e).strip() else e})"
                             ) from None


def _match(digests: np.ndarray, valid: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """For each digest, the index in `keys` of an equal key (-1: none, or not valid)."""
    if not len(keys):
        return np.full(len(digests), -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    at = np.minimum(np.searchsorted(sorted_keys, digests), len(sorted_keys) - 1)
    return np.where(valid & (sorted_keys[at] == digests), order[at], -1).astype(np.int64)


def _output_positions(files: list[Path], plan) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray],
                                                         np.ndarray, int]:
    """Where each record of each part goes in results.parquet (-1: left out), which plan row it answers and which
    range of it (-1: the whole row), and where each bad line's record goes, from the parts' input digests only (a
    few 8-byte numbers a record at the peak, never the rows). A record goes in when its input digest is that of a
    current manifest row (or of a range of a long row: pipeline/plan.py) and it is the latest record for that
    input; a long row goes in once every one of its ranges has a record (its ranges share its position and are
    joined in the last pass). Output order is the manifest's line order."""
    long_row = np.zeros(len(plan.inputs), bool)
    long_row[plan.long_rows] = True
    range_row, range_k = plan.range_rows()
    n_rows = len(plan.inputs)
    units, sizes = [], []  # unit: a plan row (whole), or n_rows + a range's index in plan.range_inputs
    for f in files:
        d = _digests(f)
        if d is not None and (n_rows or len(plan.range_inputs)):
            valid = pc.is_valid(d).to_numpy(zero_copy_only=False)
            d = pc.fill_null(d, 0).to_numpy().astype(np.int64, copy=False)
            whole = _match(d, valid, plan.inputs)
            whole[whole >= 0] = np.where(long_row[whole[whole >= 0]], -1, whole[whole >= 0])
            ranged = _match(d, valid, plan.range_inputs)
            unit = np.where(ranged >= 0, n_rows + ranged, whole)
        else:  # no input digests (parts of an older version: never reused), or an empty plan
            unit = np.full(pq.read_metadata(f).num_rows, -1, dtype=np.int64)
        units.append(unit.astype(np.int64, copy=False))
        sizes.append(len(unit))
    unit_all = np.concatenate(units) if units else np.zeros(0, np.int64)
    matched = np.flatnonzero(unit_all >= 0)
    chosen = matched[last_of_each(unit_all[matched])]  # record numbers, one per answered row or range
    chosen_unit = unit_all[chosen]
    is_range = chosen_unit >= n_rows
    row_of = np.where(is_range, range_row[np.maximum(chosen_unit - n_rows, 0)] if len(range_row) else -1,
                      chosen_unit)
    if len(plan.long_rows):  # a long row is answered when every one of its ranges is
        have = np.bincount(row_of[is_range], minlength=n_rows)
        need = np.zeros(n_rows, np.int64)
        need[plan.long_rows] = np.diff(plan.range_first)
        complete = have == need
        keep = ~is_range | complete[row_of]
        chosen, chosen_unit, is_range, row_of = chosen[keep], chosen_unit[keep], is_range[keep], row_of[keep]
    rows = np.unique(row_of)
    bad_lines = np.array([e.line for e in plan.bad], dtype=np.int64)
    lines = np.concatenate([plan.lines[rows], bad_lines])
    rank = np.empty(len(lines), dtype=np.int64)
    rank[np.argsort(lines, kind="stable")] = np.arange(len(lines), dtype=np.int64)
    row_rank = np.full(n_rows, -1, dtype=np.int64)
    row_rank[rows] = rank[:len(rows)]
    pos = np.full(len(unit_all), -1, dtype=np.int64)
    pos[chosen] = row_rank[row_of]
    idx_all = np.full(len(unit_all), -1, dtype=np.int64)
    idx_all[chosen] = row_of
    k_all = np.full(len(unit_all), -1, dtype=np.int64)
    k_all[chosen[is_range]] = range_k[chosen_unit[is_range] - n_rows]
    split = np.cumsum(sizes)[:-1] if sizes else []
    parts = (lambda a: np.split(a, split) if sizes else [])
    return parts(pos), parts(idx_all), parts(k_all), rank[len(rows):], len(lines)


class _ExtraFields:
    """Manifest fields carried in `manifest_extra` (JSON): their order of first appearance in the output and one
    Arrow type each (inferred per part, unified across parts; mixed types become JSON text)."""

    def __init__(self):
        self.first: dict[str, tuple[int, int]] = {}
        self.types: dict[str, set] = {}
        self.mixed: set[str] = set()

    def observe(self, extra: pa.ChunkedArray, pos: np.ndarray) -> None:
        if extra.null_count == len(extra):
            return
        columns: dict[str, list] = {}
        for p, v in zip(pos.tolist(), extra.to_pylist()):
            if v is None:
                continue
            for i, (k, value) in enumerate(json.loads(v).items()):
                if k not in self.first or (p, i) < self.first[k]:
                    self.first[k] = (p, i)
                columns.setdefault(k, []).append(value)
        for k, values in columns.items():
            try:
                self.types.setdefault(k, set()).add(pa.array(values).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                self.mixed.add(k)

    def fields(self) -> list[tuple[str, str, pa.DataType | None]]:
        """(manifest key, column name, type; None: mixed types, kept as JSON text) in order of first appearance."""
        out = []
        for k in sorted(self.first, key=self.first.get):
            name = k if k not in COLUMNS else f"manifest_{k}"
            out.append((k, name, self._type(k)))
        return out

    def _type(self, k: str) -> pa.DataType | None:
        if k in self.mixed:
            return None
        types = self.types.get(k, set())
        try:
            unified = pa.unify_schemas([pa.schema([("x", t)]) for t in types], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        t = unified.field("x").type if types else pa.null()
        return pa.string() if pa.types.is_null(t) else t

    @staticmethod
    def columns(extra: pa.ChunkedArray, fields: list[tuple[str, str, pa.DataType | None]]) -> list[pa.Array]:
        values = [json.loads(v) if v is not None else {} for v in extra.to_pylist()]
        out = []
        for k, _, t in fields:
            column = [v.get(k) for v in values]
            if t is None:  # mixed types: keep them readable as JSON text
                out.append(pa.array([None if c is None else json.dumps(c, ensure_ascii=False) for c in column],
                                    type=pa.string()))
            else:
                out.append(pa.array(column, type=t))
        return out


def _with_current_fields(table: pa.Table, rows: list, lines: np.ndarray) -> pa.Table:
    """A record answers a row (manifests.row.ManifestRow) as the manifest says it now: its line number, reference
    text and other fields."""
    updates = {"line": pa.array(lines, type=PART_SCHEMA.field("line").type),
               "text": pa.array([r.text for r in rows], type=pa.string()),
               "manifest_extra": pa.array([r.extra_json() for r in rows], type=pa.string())}
    for name, column in updates.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def _joined(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A bucket sorted by (position, range) with each long row's range records joined into the row's record
    (workers/assemble.py join_ranges), still sorted by position."""
    ks = table["_range"].to_numpy()
    if not (ks >= 0).any():
        return table
    pos = table["_pos"].to_numpy()
    ranged = np.flatnonzero(ks >= 0)
    records = records_of(table.take(pa.array(ranged)))
    starts = np.flatnonzero(np.r_[True, np.diff(pos[ranged]) != 0])
    ends = np.r_[starts[1:], len(ranged)]
    joined = to_table([join_ranges(records[s:e]) for s, e in zip(starts.tolist(), ends.tolist())])
    joined = (joined.append_column("_pos", pa.array(pos[ranged][starts]))
              .append_column("_range", pa.array(np.full(len(starts), -1, dtype=np.int64))).cast(schema))
    whole = table.take(pa.array(np.flatnonzero(ks < 0)))
    out = pa.concat_tables([whole, joined])
    return out.take(pa.array(np.argsort(out["_pos"].to_numpy(), kind="stable")))


def merge_results(folder: RunFolder, plan, *, files: list[Path] | None = None, target: Path | None = None,
                  run_id: str | None = None, workdir: Path | None = None) -> MergeSummary:
    """Merge the part `files` (default: the folder's, in write order) into `target` (default: the folder's
    results.parquet; written whole or not at all): exactly the rows of `plan` (pipeline.plan.Plan: the current
    manifest) that have a record, plus its bad lines, in line order, manifest fields as columns, `run_id` in the
    schema metadata (RESULTS_RUN_ID).

    A pass over the input-digest columns fixes each record's output position; a pass over the parts (each read
    whole, its page checksums verified: PartUnreadable if it cannot be) spreads the chosen records, with the
    manifest's current fields (read back by byte offset and checked against the plan), into temporary bucket files
    of consecutive positions (Arrow IPC) in `workdir` (default: beside `target`); each bucket is then sorted alone
    and appended to the output. Memory: a few numbers per row plus one bucket of rows."""
    files = folder.part_files() if files is None else files
    target = folder.results if target is None else target
    positions, indices, range_ks, bad_pos, n_out = _output_positions(files, plan)
    bucket_rows = max(MERGE_BUCKET_ROWS, -(-n_out // MERGE_MAX_BUCKETS))
    n_buckets = -(-n_out // bucket_rows)
    bucket_schema = PART_SCHEMA.append(pa.field("_pos", pa.int64())).append(pa.field("_range", pa.int64()))
    work = (workdir or target.parent) / f".tmp-merge-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    extra = _ExtraFields()
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    tmp = temp_path(target)
    n_ok, audio_s = 0, 0.0

    def sources():
        for f, pos, idx, ks in zip(files, positions, indices, range_ks):
            rows = np.flatnonzero(pos >= 0)
            if len(rows):
                table = conform(read_part(f)).take(pa.array(rows))  # an older part may lack newer columns
                current = plan.rows(idx[rows])
                yield _with_current_fields(table, current, plan.lines[idx[rows]]), pos[rows], ks[rows]
        if plan.bad:
            yield to_table(plan.bad_line_records()), bad_pos, np.full(len(bad_pos), -1, dtype=np.int64)

    try:
        for table, pos, ks in sources():
            by_bucket = np.argsort(pos // bucket_rows, kind="stable")
            pos, ks = pos[by_bucket], ks[by_bucket]
            table = (table.take(pa.array(by_bucket)).append_column("_pos", pa.array(pos))
                     .append_column("_range", pa.array(ks)).cast(bucket_schema))
            extra.observe(table["manifest_extra"], pos)
            buckets = pos // bucket_rows
            cuts = np.flatnonzero(np.diff(buckets)) + 1
            for start, end in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(pos)].tolist()):
                b = int(buckets[start])
                if b not in writers:
                    writers[b] = pa.ipc.new_stream(str(work / f"bucket-{b:06d}.arrows"), bucket_schema)
                writers[b].write_table(table.slice(start, end - start))
            del table
        for w in writers.values():
            w.close()
        writers.clear()
        fields = extra.fields()
        schema = pa.schema([f for f in PART_SCHEMA if f.name != "manifest_extra"]
                           + [pa.field(name, t or pa.string()) for _, name, t in fields])
        if run_id is not None:
            schema = schema.with_metadata({RESULTS_RUN_ID: run_id})
        with pq.ParquetWriter(tmp, schema, write_page_checksum=True) as out:
            for b in range(n_buckets):
                path = work / f"bucket-{b:06d}.arrows"
                with pa.ipc.open_stream(str(path)) as reader:
                    table = reader.read_all()
                path.unlink()
                table = _joined(table.take(pa.array(np.lexsort((table["_range"].to_numpy(),
                                                                  table["_pos"].to_numpy())))), bucket_schema)
                columns = _ExtraFields.columns(table["manifest_extra"], fields)
                table = table.drop_columns(["_pos", "_range", "manifest_extra"])
                for (_, name, _), column in zip(fields, columns):
                    table = table.append_column(name, column)
                n_ok += int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)
                audio_s += float(pc.sum(table["duration_s"]).as_py() or 0.0)
                out.write_table(table.cast(schema))
                del table
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        for w in writers.values():
            w.close()
        shutil.rmtree(work, ignore_errors=True)
        tmp.unlink(missing_ok=True)
    return MergeSummary(n_rows=n_out, n_ok=n_ok, n_failed=n_out - n_ok, audio_s=audio_s)
