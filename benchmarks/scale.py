"""Driver cost at scale: planning a 100k- and a 1M-row manifest, and resuming over an output folder of 1M results.

For each size a synthetic manifest (LibriSpeech-like durations and transcripts; the audio paths need not exist, the
durations are in the manifest) is written streaming into a temporary folder. Each measurement runs in a fresh child
process so that its peak memory is its own:
  plan     build_plan(manifest): stream, validate, check duplicate ids, order longest first, cut shards
  resume   open_run_folder() over an output folder whose parts/ hold every row of the manifest (Parquet parts of
           512 rows in the results schema, written with the results module's own atomic writer, as PartWriter does
           during a run), then build_plan with those done ids: the work a re-run of a finished 1M-row job does
           before it can say "nothing left to do". The scan reads every part whole and verifies its page checksums
           (a part damaged anywhere is set aside); beside it, in the same process, the time to read only the two
           columns resume needs (what the scan read before it verified whole parts)
  merge    merge_results(): every part into results.parquet in input order (what the end of a run does)
Memory: peak RSS of the child above its RSS after imports (what the driver adds), and, with --tracemalloc, the
peak of Python allocations (numpy included) in a second child (tracemalloc slows Python, so not timed).

    .venv/bin/python benchmarks/scale.py                          # 100k and 1M rows, ≈ 1-2 min on 2 cores
    .venv/bin/python benchmarks/scale.py --sizes 100000 --tracemalloc
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import CHARS_PER_S, WORDS, durations, peak_rss_bytes, rss_bytes  # noqa: E402
from transcribe_batch.workers.engines.simulated import CHARS_PER_TOKEN, DEFAULT_S_PER_TOKEN, DEFAULT_TTFT_S  # noqa: E402

PART_ROWS = 512  # PartWriter's flush size


def _texts(lengths: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Transcript-like strings of about CHARS_PER_S characters per second, cut from one long random word stream."""
    stream = " ".join(WORDS[i] for i in rng.integers(len(WORDS), size=200_000))
    n_chars = (lengths * CHARS_PER_S).astype(np.int64)
    starts = rng.integers(0, len(stream) - int(n_chars.max()) - 1, size=len(lengths))
    return [stream[s:s + n].strip() for s, n in zip(starts.tolist(), n_chars.tolist())]


def write_manifest(path: Path, n: int, seed: int = 0, block: int = 100_000) -> float:
    """n rows, streamed in blocks; returns total audio seconds."""
    rng = np.random.default_rng(seed)
    total = 0.0
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, block):
            d = durations(min(block, n - start), seed + start)
            total += float(d.sum())
            texts = _texts(d, rng)
            f.writelines(
                json.dumps({"id": f"utt-{i:08d}", "audio_filepath": f"audio/{i // 1000:04d}/utt-{i:08d}.flac",
                            "duration": float(x), "text": t}) + "\n"
                for i, x, t in zip(range(start, start + len(d)), d.tolist(), texts))
    return total


def write_parts(folder: Path, manifest: Path) -> int:
    """A finished run's parts/: one ok result row per manifest row, in RUN_PART_SCHEMA, 512 rows per part."""
    import pyarrow as pa

    from transcribe_batch.manifests.reader import audio_stamp, input_digest, iter_rows
    from transcribe_batch.pipeline.results import RUN_PART_SCHEMA, RunFolder, write_parquet_atomic

    run = RunFolder(folder)
    run.parts.mkdir(parents=True, exist_ok=True)
    t0 = np.datetime64("2026-01-01T00:00:00", "us")
    seq = 0
    buf: list = []  # (line, ManifestRow)

    def flush():
        nonlocal seq
        n = len(buf)
        lines = np.array([ln for ln, _ in buf], dtype=np.int64)
        dur = np.array([r.duration for _, r in buf])
        tokens = dur * CHARS_PER_S / CHARS_PER_TOKEN
        total = DEFAULT_TTFT_S + DEFAULT_S_PER_TOKEN * tokens
        start = t0 + (lines * 50_000_000).astype("timedelta64[us]")
        text = [r.text for _, r in buf]
        cols = {
            "id": [r.id for _, r in buf], "line": lines, "audio_filepath": [r.audio_filepath for _, r in buf],
            "offset": np.zeros(n), "duration_s": dur, "text": text, "pred_text": text, "raw_text": text,
            "status": ["ok"] * n, "error_class": [None] * n, "error_message": [None] * n,
            "attempts": np.ones(n, np.int32), "engine": ["bm1684x"] * n, "model_id": ["Qwen2-Audio-7B-Instruct"] * n,
            "device": (lines % 8).astype(np.int32), "node": ["node-0"] * n, "node_id": ["0" * 56] * n,
            "prompt": ["Detect the language and recognize the speech: <|en|>"] * n, "task": [None] * n,
            "language": [None] * n, "detected_language": [None] * n, "n_prompt_tokens": (dur * 25 + 50).astype(np.int32),
            "n_audio_tokens": (dur * 25).astype(np.int32), "n_new_tokens": tokens.astype(np.int32),
            "finish_reason": ["eos"] * n, "mean_logprob": np.full(n, -0.05), "min_logprob": np.full(n, -1.5),
            "confidence": np.full(n, np.exp(-0.05)), "ttft_s": np.full(n, DEFAULT_TTFT_S), "encode_s": [None] * n, "decode_s": total - DEFAULT_TTFT_S,
            "tokens_per_s": np.full(n, 1 / DEFAULT_S_PER_TOKEN), "total_s": total, "rtf": total / dur, "prep_s": dur * 0.003,
            "wait_s": np.zeros(n), "queued_at": start, "started_at": start,
            "finished_at": start + (total * 1e6).astype("timedelta64[us]"), "n_chunks": np.ones(n, np.int32),
            "manifest_extra": [None] * n, "segments": [None] * n, "skipped": [None] * n,
            "input_digest": [input_digest(r, audio_stamp(r.audio_filepath)) for _, r in buf],
        }
        table = pa.Table.from_pydict({f.name: pa.array(cols[f.name], type=f.type) for f in RUN_PART_SCHEMA},
                                     schema=RUN_PART_SCHEMA)
        write_parquet_atomic(table, run.parts / f"part-{seq:06d}-{uuid.uuid4().hex[:8]}.parquet")
        seq += 1
        buf.clear()

    for line, row in iter_rows(manifest):
        buf.append((line, row))
        if len(buf) == PART_ROWS:
            flush()
    if buf:
        flush()
    return seq


# -- children ---------------------------------------------------------------------------------------------------
def child(kind: str, manifest: Path, folder: Path | None, trace: bool) -> dict:
    from transcribe_batch.pipeline.plan import build_plan
    from transcribe_batch.pipeline.results import RunFolder, merge_results, open_run_folder

    if trace:
        import tracemalloc

        tracemalloc.start()
    base = rss_bytes()
    out: dict = {}
    t = time.perf_counter()
    if kind == "plan":
        plan = build_plan(manifest)
        out.update(rows=len(plan.lines), shards=plan.n_shards)
    elif kind == "resume":
        state = open_run_folder(RunFolder(folder), {"engine": "bm1684x"})
        out["scan_s"] = time.perf_counter() - t
        import pyarrow.parquet as pq

        t_cols = time.perf_counter()  # side by side: what a scan reading only the two columns it needs costs
        for f in RunFolder(folder).part_files():
            pq.read_table(f, columns=["input_digest", "status"])
        out["scan_two_columns_s"] = time.perf_counter() - t_cols
        t = time.perf_counter() - out["scan_s"]  # time_s below: the scan and the plan, not the side measurement
        plan = build_plan(manifest, done_inputs=state.done_inputs)
        out.update(rows=len(plan.lines), done=int(plan.n_done), left=len(plan.todo), shards=plan.n_shards)
    elif kind == "merge":
        merged = merge_results(RunFolder(folder), build_plan(manifest))
        out.update(rows=merged.n_rows, results_mb=(folder / "results.parquet").stat().st_size / 1e6)
    out["time_s"] = time.perf_counter() - t
    out["rss_delta_mb"] = (peak_rss_bytes() - base) / 1e6
    out["rss_peak_mb"] = peak_rss_bytes() / 1e6
    if trace:
        out["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 1e6
    return out


def run_child(kind: str, manifest: Path, folder: Path | None = None, trace: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--manifest", str(manifest)]
    if folder:
        cmd += ["--folder", str(folder)]
    if trace:
        cmd.append("--tracemalloc")
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="manifest rows (default 100000,1000000)")
    ap.add_argument("--resume-size", type=int, default=None, help="rows in the resumed output folder (default: largest size)")
    ap.add_argument("--tracemalloc", action="store_true", help="also measure peak Python allocations (slower)")
    ap.add_argument("--no-merge", action="store_true", help="skip the results merge")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir, removed)")
    ap.add_argument("--child", choices=("plan", "resume", "merge"), help=argparse.SUPPRESS)
    ap.add_argument("--manifest", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.manifest, args.folder, args.tracemalloc)))
        return

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    resume_n = args.resume_size or max(sizes)
    work = args.keep or Path(tempfile.mkdtemp(prefix="tb-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    rows_out = []
    try:
        manifests = {}
        for n in sorted(set(sizes) | {resume_n}):
            t = time.perf_counter()
            path = work / f"manifest-{n}.jsonl"
            audio_s = write_manifest(path, n)
            manifests[n] = path
            print(f"# wrote {n:,} rows ({path.stat().st_size / 1e6:.0f} MB, {audio_s / 3600:,.0f} h of audio) in "
                  f"{time.perf_counter() - t:.1f} s", file=sys.stderr)
        for n in sizes:
            r = run_child("plan", manifests[n])
            if args.tracemalloc:
                r["tracemalloc_peak_mb"] = run_child("plan", manifests[n], trace=True)["tracemalloc_peak_mb"]
            rows_out.append(("plan", n, r))
            print(f"# plan {n:,}: {r['time_s']:.1f} s", file=sys.stderr)
        folder = work / f"run-{resume_n}"
        t = time.perf_counter()
        n_parts = write_parts(folder, manifests[resume_n])
        print(f"# wrote {n_parts:,} part files for {resume_n:,} rows in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        r = run_child("resume", manifests[resume_n], folder)
        if args.tracemalloc:
            r["tracemalloc_peak_mb"] = run_child("resume", manifests[resume_n], folder, trace=True)["tracemalloc_peak_mb"]
        rows_out.append(("resume", resume_n, r))
        print(f"# resume {resume_n:,}: {r['time_s']:.1f} s", file=sys.stderr)
        if not args.no_merge:
            r = run_child("merge", manifests[resume_n], folder)
            rows_out.append(("merge", resume_n, r))
            print(f"# merge {resume_n:,}: {r['time_s']:.1f} s", file=sys.stderr)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n## Driver at scale ({os.cpu_count()} CPUs; each step in a fresh process)\n")
    print("| step | rows | time s | rows/s | peak RSS added MB | bytes/row (RSS) | tracemalloc peak MB | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    line = {}
    for kind, n, r in rows_out:
        notes = {"plan": f"{r.get('shards', 0):,} shards",
                 "resume": f"scan of {n_parts:,} parts {r.get('scan_s', 0):.1f} s (every page verified; the two "
                           f"columns alone: {r.get('scan_two_columns_s', 0):.1f} s); {r.get('done', 0):,} done, "
                           f"{r.get('left', 0):,} left",
                 "merge": f"results.parquet {r.get('results_mb', 0):.0f} MB"}[kind]
        tm = r.get("tracemalloc_peak_mb")
        print(f"| {kind} | {n:,} | {r['time_s']:.1f} | {n / r['time_s']:,.0f} | {r['rss_delta_mb']:.0f} | "
              f"{r['rss_delta_mb'] * 1e6 / n:.0f} | {'' if tm is None else f'{tm:.0f}'} | {notes} |")
        key = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}m"
        line[f"{kind}_s_{key}"] = f"{r['time_s']:.1f}"
        line[f"{kind}_rss_mb_{key}"] = f"{r['rss_delta_mb']:.0f}"
        if kind == "resume":
            line[f"resume_scan_s_{key}"] = f"{r['scan_s']:.1f}"
            line[f"resume_scan_two_columns_s_{key}"] = f"{r['scan_two_columns_s']:.1f}"
    print("\n" + " ".join(f"{k}={v}" for k, v in line.items()))


if __name__ == "__main__":
    main()
