"""`transcribe-batch export --segments` and the sanity filters: what they cost, and does memory stay flat?

Synthetic finished runs (results.parquet with LibriSpeech-like transcripts, ~15 characters/s; no audio needed for
NeMo), each export in a fresh child process so its peak memory (above the RSS after imports) is its own:
  rows        N short rows, NeMo export with the default sanity filters (characters/s, repetition, hallucination
              list) against the same export with them off: the filters' cost, side by side
  segments    long rows of one hour, each with `segments` of 10 s (360 a row), exported --segments: segments/s,
              and the peak memory at 1x and 4x the rows (it should not grow: 32 rows are read at a time)

    .venv/bin/python benchmarks/export_segments.py                       # 100k rows; 160 and 640 one-hour rows
    .venv/bin/python benchmarks/export_segments.py --rows 20000 --long 10,40
The last line is the headline: key=value pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import durations, measure_in_child, peak_rss_bytes, rss_bytes, text_for  # noqa: E402

SEGMENT_S = 10.0
HOUR_S = 3600.0


def write_short(folder: Path, n: int, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    d = durations(n, seed)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "id": [f"utt-{i:08d}" for i in range(n)], "audio_filepath": [f"/data/{i}.flac" for i in range(n)],
        "offset": np.zeros(n), "duration_s": d, "status": ["ok"] * n, "confidence": rng.uniform(0.3, 1.0, n),
        "pred_text": [text_for(x, rng) for x in d.tolist()]}), folder / "results.parquet")
    return folder


def write_long(folder: Path, n_rows: int, seed: int = 1) -> Path:
    """n_rows one-hour rows, each with 360 segments of 10 s (texts shared between rows: the writer, not the texts,
    is measured)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transcribe_batch.workers.record import PART_SCHEMA

    rng = np.random.default_rng(seed)
    k = int(HOUR_S / SEGMENT_S)
    texts = [text_for(SEGMENT_S, rng) for _ in range(k)]
    segs = [{"start_s": j * SEGMENT_S, "end_s": (j + 1) * SEGMENT_S, "text": t, "raw_text": t,
             "confidence": float(c), "mean_logprob": float(np.log(c)), "min_logprob": float(2 * np.log(c)),
             "n_tokens": 30, "language": "English", "finish_reason": "eos", "status": "ok"}
            for j, (t, c) in enumerate(zip(texts, rng.uniform(0.3, 1.0, k)))]
    folder.mkdir(parents=True, exist_ok=True)
    writer = None
    try:
        for start in range(0, n_rows, 20):
            m = min(20, n_rows - start)
            table = pa.table({
                "id": [f"long-{i:06d}" for i in range(start, start + m)],
                "audio_filepath": [f"/data/long-{i}.flac" for i in range(start, start + m)],
                "offset": np.zeros(m), "duration_s": np.full(m, HOUR_S), "status": ["ok"] * m,
                "confidence": np.full(m, 0.8), "pred_text": [" ".join(texts)] * m,
                "segments": pa.array([segs] * m, PART_SCHEMA.field("segments").type)})
            writer = writer or pq.ParquetWriter(folder / "results.parquet", table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    return folder


def child(kind: str, run: Path, out: Path) -> dict:
    from transcribe_batch.pipeline.export.export import export
    from transcribe_batch.pipeline.export.filters import Filters

    base = rss_bytes()
    t0 = time.perf_counter()
    if kind == "off":
        filters = Filters(min_chars_per_s=0.0, max_chars_per_s=0.0, hallucinations=None, repetition=False)
    else:
        filters = Filters()
    summary = export([run], out, filters=filters, segments=kind == "segments")
    return {"s": time.perf_counter() - t0, "peak_mb": (peak_rss_bytes() - base) / 2**20, "kept": summary.n_kept,
            "read": summary.n_read}


def measure(kind: str, run: Path, out: Path) -> dict:
    return measure_in_child(__file__, kind, str(run), str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--long", default="160,640", help="two counts of one-hour rows (memory at both)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, run, out = args.child
        print(json.dumps(child(kind, Path(run), Path(out))))
        return
    with tempfile.TemporaryDirectory(prefix="export-seg-bench-") as tmp:
        root = Path(tmp)
        short = write_short(root / "short", args.rows)
        off = measure("off", short, root / "off.jsonl")
        on = measure("on", short, root / "on.jsonl")
        print(f"rows {args.rows}: sanity filters off {off['s']:.2f} s ({off['read'] / off['s']:,.0f} rows/s), "
              f"on {on['s']:.2f} s ({on['read'] / on['s']:,.0f} rows/s); kept {off['kept']} / {on['kept']}")
        small, big = (int(x) for x in args.long.split(","))
        seg = []
        for n in (small, big):
            r = measure("segments", write_long(root / f"long{n}", n), root / f"seg{n}.jsonl")
            seg.append(r)
            print(f"long rows {n} (1 h, 360 segments each): {r['read']} segments in {r['s']:.2f} s "
                  f"({r['read'] / r['s']:,.0f} segments/s), peak {r['peak_mb']:.0f} MB over the baseline")
    print(f"sanity_cost={on['s'] / off['s']:.2f} rows_per_s_on={on['read'] / on['s']:.0f} "
          f"segments_per_s={seg[1]['read'] / seg[1]['s']:.0f} peak_mb_small={seg[0]['peak_mb']:.0f} "
          f"peak_mb_big={seg[1]['peak_mb']:.0f} rows_growth={big / small:g}")


if __name__ == "__main__":
    main()
