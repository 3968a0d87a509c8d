"""`export --segments`: each result row's `segments` (workers/record.py SEGMENT_FIELDS) as rows of their own, with
the columns a row has, so that the filters, the agreement join and the writers take them as they take rows.

A segment's row: `id` = "<row id>#<k>" (k: the segment's place in the row's list, from 0, whatever is dropped, so
an id names the same audio in every export of the run), `row_id`, `offset` = its start in the file, `duration_s` =
end - start, `pred_text` = its cleaned text, and its own `raw_text`, `confidence`, `mean_logprob`, `min_logprob`,
`n_new_tokens` (its tokens), `detected_language`, `finish_reason`, `status`; `language` is the detected language,
else the manifest's. Every other column is its row's (a --field such as `speaker` is carried to each segment).
A row whose `segments` is null (a run written before segments existed, or a row that never reached the engine)
is one segment spanning the row, with the row's own values; a row whose list is empty (all of it left out as
non-speech) has none.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transcribe_batch.workers.record import PART_SCHEMA, SEGMENT

from .source import RunSource

# result column -> the segment field that gives a segment's row its value (offset, duration_s: from start_s, end_s)
FROM_SEGMENT = {
    "pred_text": "text",
    "raw_text": "raw_text",
    "confidence": "confidence",
    "mean_logprob": "mean_logprob",
    "min_logprob": "min_logprob",
    "n_new_tokens": "n_tokens",
    "detected_language": "language",
    "finish_reason": "finish_reason",
    "status": "status",
}
ROW_ID = "row_id"
# With --segments: result rows read at a time (one hour of segments is ~0.7 MB in Arrow: 32 three-hour rows stay
# under ~100 MB), and segments handed on at a time (the filters and writers make Python objects of them; batches
# of short rows are gathered up to it before they are split, so that their per-batch cost stays the row export's).
BATCH_ROWS = 32
SEGMENT_ROWS = 8192
# Row columns that say nothing true of one segment: refused as --field with --segments.
ROW_ONLY = ("text", "segments", "skipped", "n_chunks", "n_prompt_tokens", "n_audio_tokens", "ttft_s", "encode_s",
            "decode_s", "tokens_per_s", "total_s", "rtf", "prep_s", "wait_s", "queued_at", "started_at",
            "finished_at", "attempts", "error_class", "error_message")
_SEGMENTS = pa.list_(SEGMENT)


def read_columns(available: Sequence[str], wanted: Sequence[str]) -> list[str]:
    """The result columns to read for segment rows with columns `wanted` (those the run has)."""
    needed = ["id", "segments", "offset", "duration_s", "language", *FROM_SEGMENT, *wanted]
    return [c for c in dict.fromkeys(needed) if c in available and c != ROW_ID]


def rows_of(source: RunSource, columns: Sequence[str], segments: bool) -> Iterator[pa.Table]:
    """What the filters see of a run, batch by batch, with `columns`: its result rows, or (`segments`) their
    segments, read BATCH_ROWS result rows at a time and handed on SEGMENT_ROWS segments at a time."""
    if not segments:
        yield from source.batches(columns)
        return
    pending: list[pa.Table] = []
    n_pending = 0
    for batch in source.batches(read_columns(source.columns, columns), BATCH_ROWS):
        n = _n_segments(batch)
        if pending and n_pending + n > SEGMENT_ROWS:
            yield from _exploded(pending, columns)
            pending, n_pending = [], 0
        pending.append(batch)
        n_pending += n
    if pending:
        yield from _exploded(pending, columns)


def _n_segments(batch: pa.Table) -> int:
    if "segments" not in batch.column_names:
        return batch.num_rows
    return int(pc.sum(pc.fill_null(pc.list_value_length(batch["segments"]), 1)).as_py() or 0)


def _exploded(batches: list[pa.Table], columns: Sequence[str]) -> Iterator[pa.Table]:
    segments = explode(pa.concat_tables(batches).combine_chunks(), columns)
    for start in range(0, segments.num_rows, SEGMENT_ROWS):
        yield segments.slice(start, SEGMENT_ROWS)


def _column(batch: pa.Table, name: str) -> pa.Array:
    """A column of `batch` as one array of its record type (nulls when the run lacks it)."""
    dtype = _SEGMENTS if name == "segments" else PART_SCHEMA.field(name).type
    if name not in batch.column_names:
        return pa.nulls(batch.num_rows, dtype)
    array = batch[name].combine_chunks() if isinstance(batch[name], pa.ChunkedArray) else batch[name]
    return array.cast(dtype)


def _one_segment_each(batch: pa.Table) -> pa.ListArray:
    """Each row as a list of one segment spanning it, with the row's own values."""
    start = pc.fill_null(_column(batch, "offset"), 0.0)
    end = pc.add(start, pc.fill_null(_column(batch, "duration_s"), 0.0))
    values = {"start_s": start, "end_s": end}
    values.update({field: _column(batch, column) for column, field in FROM_SEGMENT.items()})
    struct = pa.StructArray.from_arrays([values[f.name].cast(f.type) for f in SEGMENT], fields=list(SEGMENT))
    return pa.ListArray.from_arrays(pa.array(np.arange(batch.num_rows + 1, dtype=np.int32)), struct)


def explode(batch: pa.Table, columns: Sequence[str]) -> pa.Table:
    """The segments of `batch`'s rows, in order, as rows with `columns` (see the module's doc)."""
    segments = _column(batch, "segments")
    filled = pc.if_else(pc.is_null(segments), _one_segment_each(batch), segments)
    flat = pc.list_flatten(filled)
    parents = pc.list_parent_indices(filled)
    starts = np.asarray(filled.offsets)[:-1] - filled.offsets[0].as_py()
    k = np.arange(len(flat), dtype=np.int64) - starts[np.asarray(parents)]
    from_rows = ["id", *(c for c in columns if c not in FROM_SEGMENT and c not in ("id", ROW_ID, "offset",
                                                                                 "duration_s")), "status"]
    rows = batch.select([c for c in dict.fromkeys(from_rows) if c in batch.column_names]).take(parents)
    row_ids = pc.cast(rows["id"], pa.string())
    out: dict[str, pa.Array] = {}
    for name in columns:
        if name == "id":
            out[name] = pc.binary_join_element_wise(row_ids, pa.array(k).cast(pa.string()), "#")
        elif name == ROW_ID:
            out[name] = row_ids
        elif name == "offset":
            out[name] = flat.field("start_s")
        elif name == "duration_s":
            out[name] = pc.subtract(flat.field("end_s"), flat.field("start_s"))
        elif name == "language":
            out[name] = pc.coalesce(flat.field("language"), _column(rows, "language"))
        elif name == "status":
            out[name] = pc.coalesce(flat.field("status"), _column(rows, "status"))
        elif name in FROM_SEGMENT:
            out[name] = flat.field(FROM_SEGMENT[name])
        elif name in rows.column_names:
            out[name] = rows[name]
        else:
            out[name] = pa.nulls(len(flat), PART_SCHEMA.field(name).type if name in PART_SCHEMA.names
                                 else pa.float64())
    return pa.table(out)


def schema(row_schema: pa.Schema) -> pa.Schema:
    """The columns of segment rows, typed: the segment-given ones as the record types them, the rest as `row_schema`
    (the runs' results) has them."""
    out = []
    for f in row_schema:
        if f.name in FROM_SEGMENT or f.name in ("offset", "duration_s", "language"):
            out.append(pa.field(f.name, PART_SCHEMA.field(f.name).type))
        elif f.name in ("id", ROW_ID):
            out.append(pa.field(f.name, pa.string()))
        else:
            out.append(f)
    return pa.schema(out)
