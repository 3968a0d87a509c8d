"""Agreement with a second run: per row, the normalized WER between this run's transcript and the other run's
transcript of the same id (the other run's as the reference), computed without holding either run in memory.

Both sides are spread by a hash of the id into bucket files on disk (Arrow IPC, only id + transcript, and the row's
position on this side); each bucket pair is then joined by id with pyarrow and scored alone. What stays in memory is
one float32 per row of this side (the result) plus one bucket. Texts go through the evaluator's normalizer
(pipeline/evaluate/normalize.py) and are scored with the evaluator's jiwer alignments (metrics.score_texts).

With `segments` both sides are segments (segments.py), joined by segment id "<row id>#<k>": a segment is compared
only with the other run's segment of the same id covering the same audio (both ends within SPAN_TOLERANCE_S);
where the other run split the row differently the segment gets SPAN_DIFFERS, not a WER of different audio.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transcribe_batch.manifests.reader import id_digests

from ..evaluate.metrics import score_texts
from ..evaluate.normalize import normalize_all
from . import segments as seg
from .filters import FAILED_OTHER, MISSING_OTHER, SPAN_DIFFERS, Filters, keep_mask
from .source import RunSource

BUCKET_ROWS = 20_000  # rows of this side per bucket (the join's working set)
SCORE_ROWS = 2_048  # pairs aligned by jiwer at once (its alignment objects are large)
MAX_BUCKETS = 256  # bucket files open at once per side
SPAN_TOLERANCE_S = 0.01  # --segments: two segments of one id cover the same audio when both ends are this close

_SPAN = [("start_s", pa.float64()), ("end_s", pa.float64())]
_MINE = pa.schema([("_row", pa.int64()), ("id", pa.string()), ("pred_text", pa.string()), *_SPAN])
_OTHER = pa.schema([("id", pa.string()), ("other_status", pa.string()), ("other_text", pa.string()),
                    *[("other_" + name, dtype) for name, dtype in _SPAN]])


def _bucket_of(ids: pa.Array, n_buckets: int) -> np.ndarray:
    return (id_digests(ids.to_pylist()).view(np.uint64) % np.uint64(n_buckets)).astype(np.int64)


def _spread(table: pa.Table, n_buckets: int, writers: dict, folder: Path, prefix: str, schema: pa.Schema) -> None:
    if table.num_rows == 0:
        return
    buckets = _bucket_of(table["id"], n_buckets)
    order = np.argsort(buckets, kind="stable")
    table, buckets = table.take(pa.array(order)), buckets[order]
    cuts = np.flatnonzero(np.diff(buckets)) + 1
    for start, end in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(buckets)].tolist()):
        b = int(buckets[start])
        if (prefix, b) not in writers:
            writers[prefix, b] = pa.ipc.new_stream(str(folder / f"{prefix}-{b:05d}.arrows"), schema)
        writers[prefix, b].write_table(table.slice(start, end - start).cast(schema))


def _read(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.is_file():
        return schema.empty_table()
    with pa.ipc.open_stream(str(path)) as reader:
        return reader.read_all()


def pair_wer(mine: Sequence[str], other: Sequence[str], normalizer: str) -> np.ndarray:
    """Normalized WER of each `mine` transcript against the `other` one (the reference). Both empty after
    normalization: 0; only the reference empty: inf (everything is an insertion)."""
    a = normalize_all(list(mine), normalizer)
    b = normalize_all(list(other), normalizer)
    out = np.zeros(len(a), dtype=np.float32)
    scored = [i for i, ref in enumerate(b) if ref]
    for i, ref in enumerate(b):
        if not ref:
            out[i] = 0.0 if not a[i] else np.inf
    for start in range(0, len(scored), SCORE_ROWS):
        block = scored[start:start + SCORE_ROWS]
        for i, s in zip(block, score_texts([b[i] for i in block], [a[i] for i in block])):
            out[i] = s.wer
    return out


def _count(source: RunSource, segments: bool) -> int:
    """Rows, or with `segments` the segments they hold (a null list counts one), to size the buckets."""
    if not (segments and "segments" in source.columns):
        return source.n_rows
    return sum(int(pc.sum(pc.fill_null(pc.list_value_length(b["segments"]), 1)).as_py() or 0)
               for b in source.batches(["segments"]))


def _span(table: pa.Table, segments: bool) -> tuple[pa.Array, pa.Array]:
    if not segments:
        return pa.nulls(table.num_rows, pa.float64()), pa.nulls(table.num_rows, pa.float64())
    return table["offset"], pc.add(table["offset"], table["duration_s"])


def agreement_codes(sources: Sequence[RunSource], other: RunSource, filters: Filters, *,
                    normalizer: str = "whisper", workdir: str | Path | None = None,
                    segments: bool = False) -> np.ndarray:
    """One float32 per row of `sources` (in their read order; with `segments`, per segment): NaN for rows that fail
    `filters` (never compared), MISSING_OTHER / FAILED_OTHER / SPAN_DIFFERS, or the normalized WER against
    `other`."""
    n_rows = sum(_count(s, segments) for s in sources)
    n_buckets = max(1, min(MAX_BUCKETS, -(-n_rows // BUCKET_ROWS)))
    folder = Path(tempfile.mkdtemp(prefix=".tmp-agree-", dir=workdir))
    writers: dict = {}
    extra = ["offset", "duration_s"] if segments else []
    try:
        start = 0
        for source in sources:
            for batch in seg.rows_of(source, list(dict.fromkeys(["id", *filters.columns(), *extra])), segments):
                keep, _ = keep_mask(batch, filters)
                rows = np.flatnonzero(keep)
                picked = batch.take(pa.array(rows))
                begin, end = _span(picked, segments)
                mine = pa.table({"_row": pa.array(rows + start, pa.int64()), "id": picked["id"],
                                 "pred_text": picked["pred_text"], "start_s": begin, "end_s": end})
                _spread(mine, n_buckets, writers, folder, "mine", _MINE)
                start += batch.num_rows
        codes = np.full(start, np.nan, dtype=np.float32)
        for batch in seg.rows_of(other, ["id", "status", "pred_text", *extra], segments):
            begin, end = _span(batch, segments)
            theirs = pa.table({"id": batch["id"], "other_status": batch["status"], "other_text": batch["pred_text"],
                               "other_start_s": begin, "other_end_s": end})
            _spread(theirs, n_buckets, writers, folder, "other", _OTHER)
        for w in writers.values():
            w.close()
        writers.clear()
        for b in range(n_buckets):
            mine = _read(folder / f"mine-{b:05d}.arrows", _MINE)
            if mine.num_rows == 0:
                continue
            theirs = _read(folder / f"other-{b:05d}.arrows", _OTHER)
            joined = mine.join(theirs, keys="id", join_type="left outer", use_threads=False)
            rows = joined["_row"].to_numpy()
            present = pc.is_valid(joined["other_status"]).to_numpy(zero_copy_only=False)
            usable = present & pc.fill_null(pc.and_(pc.equal(joined["other_status"], "ok"), pc.greater(
                pc.utf8_length(pc.utf8_trim_whitespace(joined["other_text"])), 0)), False).to_numpy(zero_copy_only=False)
            same_span = np.ones(len(rows), dtype=bool)
            if segments:
                for name in ("start_s", "end_s"):
                    gap = pc.abs(pc.subtract(joined[name], joined["other_" + name]))
                    same_span &= pc.fill_null(pc.less_equal(gap, SPAN_TOLERANCE_S), False).to_numpy(
                        zero_copy_only=False)
            codes[rows[~present]] = MISSING_OTHER
            codes[rows[present & ~same_span]] = SPAN_DIFFERS
            usable &= same_span
            codes[rows[present & same_span & ~usable]] = FAILED_OTHER
            idx = np.flatnonzero(usable)
            if len(idx):
                mine_text = joined["pred_text"].take(pa.array(idx)).to_pylist()
                other_text = joined["other_text"].take(pa.array(idx)).to_pylist()
                codes[rows[idx]] = pair_wer(mine_text, other_text, normalizer)
            for side in ("mine", "other"):
                (folder / f"{side}-{b:05d}.arrows").unlink(missing_ok=True)
    finally:
        for w in writers.values():
            w.close()
        shutil.rmtree(folder, ignore_errors=True)
    return codes
