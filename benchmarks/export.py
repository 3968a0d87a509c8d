"""`transcribe-batch export` memory at scale: does the export stay flat as runs grow 10×?

For each size, two synthetic finished runs (results.parquet with LibriSpeech-like transcripts, confidences and
durations; run B's transcripts differ from A's in ~10 % of rows) are written to a temporary folder. Each measurement
runs in a fresh child process so its peak memory is its own (peak RSS above the RSS after imports):
  ours      export(A → NeMo, --min-confidence 0.5, --agree-with B --max-disagreement 0.1): the streaming passes and
            the on-disk hash-bucket join
  dict      the simple alternative: B's id → transcript as a Python dict, then A streamed and looked up (same
            filters, same normalizer, same output)
Texts are normalized with `none` (whitespace only) so the run measures the join and the I/O, not Whisper's
normalizer (~0.3 ms a text; with it the time grows, the memory does not).

    .venv/bin/python benchmarks/export.py                    # 50k and 500k rows, ≈ 2-4 min on 2 cores
    .venv/bin/python benchmarks/export.py --sizes 2000,20000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import CHARS_PER_S, WORDS, durations, measure_in_child, peak_rss_bytes, rss_bytes  # noqa: E402

BLOCK = 50_000


def write_runs(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    """Runs A and B (results.parquet each), written block by block."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    stream = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=200_000))
    paths = []
    writers = {}
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        paths.append(folder / name)
    try:
        for start in range(0, n, BLOCK):
            m = min(BLOCK, n - start)
            d = durations(m, seed + start)
            n_chars = (d * CHARS_PER_S).astype(np.int64)
            starts = rng.integers(0, len(stream) - int(n_chars.max()) - 1, size=m)
            texts = [stream[s:s + k].strip() for s, k in zip(starts.tolist(), n_chars.tolist())]
            other = [t if rng.random() > 0.1 else t[::-1] for t in texts]
            ids = [f"utt-{i:08d}" for i in range(start, start + m)]
            base = {"id": ids, "line": np.arange(start + 1, start + m + 1), "audio_filepath":
                    [f"/data/{i // 1000:04d}/{i}.flac" for i in range(start, start + m)], "offset": np.zeros(m), "duration_s": d,
                    "status": ["ok"] * m, "confidence": rng.uniform(0.3, 1.0, size=m)}
            for path, pred in zip(paths, (texts, other)):
                table = pa.table({**base, "pred_text": pred})
                if path not in writers:
                    writers[path] = pq.ParquetWriter(path / "results.parquet", table.schema)
                writers[path].write_table(table)
    finally:
        for w in writers.values():
            w.close()
    return paths[0], paths[1]


def child(kind: str, a: Path, b: Path, out: Path) -> dict:
    from transcribe_batch.pipeline.export.export import export
    from transcribe_batch.pipeline.export.filters import Filters, keep_mask
    from transcribe_batch.pipeline.export.agreement import pair_wer
    from transcribe_batch.pipeline.export.source import open_run

    base = rss_bytes()
    t0 = time.perf_counter()
    filters = Filters(min_confidence=0.5, max_disagreement=0.1)
    if kind == "ours":
        summary = export([a], out, filters=filters, agree_with=b, normalizer="none")
        kept = summary.n_kept
    else:
        import pyarrow as pa

        from transcribe_batch.pipeline.export.filters import pre_agreement
        from transcribe_batch.pipeline.export.nemo import Writer
        from transcribe_batch.pipeline.export.writer import WriterOptions

        other = open_run(b)
        texts: dict[str, str] = {}
        for batch in other.batches(["id", "pred_text"]):
            texts.update(zip(batch["id"].to_pylist(), batch["pred_text"].to_pylist()))
        mine = open_run(a)
        writer, kept = Writer(out, WriterOptions(), mine.schema), 0
        for batch in mine.batches(["id", "status", "pred_text", "duration_s", "confidence", "audio_filepath",
                                          "offset"]):
            keep, _ = keep_mask(batch, pre_agreement(filters))
            rows = batch.filter(pa.array(keep))
            mine = rows["pred_text"].to_pylist()
            theirs = [texts.get(i) or "" for i in rows["id"].to_pylist()]
            good = pair_wer(mine, theirs, "none") <= 0.1
            rows = rows.filter(pa.array(good))
            writer.write(rows)
            kept += rows.num_rows
        writer.close()
    return {"s": time.perf_counter() - t0, "peak_mb": (peak_rss_bytes() - base) / 2**20, "kept": kept}


def measure(kind: str, a: Path, b: Path, out: Path) -> dict:
    return measure_in_child(__file__, kind, str(a), str(b), str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="50000,500000")
    ap.add_argument("--keep", type=Path, help="write the runs here (kept) instead of a temporary folder")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, a, b, out = args.child
        print(json.dumps(child(kind, Path(a), Path(b), Path(out))))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="export-bench-"))
    results = []
    try:
        for n in [int(x) for x in args.sizes.split(",")]:
            folder = root / f"n{n}"
            a, b = write_runs(folder, n)
            ours = measure("ours", a, b, folder / "ours.jsonl")
            simple = measure("dict", a, b, folder / "dict.jsonl")
            assert ours["kept"] == simple["kept"], (ours, simple)
            same = (folder / "ours.jsonl").read_bytes() == (folder / "dict.jsonl").read_bytes()
            results.append((n, ours, simple, same))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print("| rows | ours s | ours peak MB above imports | dict s | dict peak MB above imports | kept | same output |")
    print("|---:|---:|---:|---:|---:|---:|:---:|")
    for n, ours, simple, same in results:
        print(f"| {n:,} | {ours['s']:.2f} | {ours['peak_mb']:.1f} | {simple['s']:.2f} | {simple['peak_mb']:.1f} "
              f"| {ours['kept']:,} | {'yes' if same else 'NO'} |")
    (n0, o0, d0, _), (n1, o1, d1, _) = results[0], results[-1]
    growth = n1 / n0
    print()
    print(f"rows_growth={growth:g} ours_peak_growth={o1['peak_mb'] / max(o0['peak_mb'], 1e-9):.2f} "
          f"dict_peak_growth={d1['peak_mb'] / max(d0['peak_mb'], 1e-9):.2f} "
          f"ours_peak_mb={o1['peak_mb']:.1f} dict_peak_mb={d1['peak_mb']:.1f} same_output={all(r[3] for r in results)}")


if __name__ == "__main__":
    main()
