"""Long recordings: an actor's memory for one long row, and one long file spread over several devices.

The recordings are built from the real speech in tests/data/audio, laid end to end with pauses and long silences
(tests/longform_helpers.py), written as 16 kHz WAV.

1. Memory: a device actor (TranscriptionWorker with the simulated engine, in a fresh process of its own, outside
   Ray) transcribes every work item of one row of an H-hour file, two items in flight as the scheduler keeps them
   (inflight_per_device = 2), once with the row planned in ranges of `--range-s` (pipeline/plan.py: each item reads
   only its range) and once as one whole item (what a long row was before: the whole file in memory). Reported: peak
   RSS over the actor's baseline (its RSS once its engine and front end are up). The bound for ranges: two prepared
   items of at most 1.5 × range_s of 16 kHz float32 audio each (plus their pieces' features with a model folder),
   whatever the file's length.
2. Wall time: one H-hour file, run end to end (run_job, real Ray started once beforehand, the simulated engine's
   port cost model divided by `--speedup`) on 4 simulated devices and on 1; the ratio is the figure.

    .venv/bin/python benchmarks/longform.py                         # 1 h and 3 h memory, 1 h on 4 vs 1 devices
    .venv/bin/python benchmarks/longform.py --hours 0.05 --wall-hours 0.05 --range-s 60 --wall-range-s 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the long-recording builder the tests use

from longform_helpers import speech_clips, write_long_recording  # noqa: E402

AUDIO = REPO / "tests" / "data" / "audio"

MEMORY_CHILD = r"""
import json, sys, threading, time
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.pipeline.plan import n_ranges
from transcribe_batch.workers.actor import TranscriptionWorker
from transcribe_batch.workers.audio import audio_duration
from transcribe_batch.workers.work import Span, WorkItem

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
path, range_s, splitter, speedup = sys.argv[1], float(sys.argv[2]), sys.argv[3], float(sys.argv[4])
worker = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=speedup, splitter=splitter), 0)
row = ManifestRow(id="long", audio_filepath=path)
duration = audio_duration(path)
n = n_ranges(duration, range_s) if range_s > 0 else 1
items = [WorkItem(index=0, line=1, row=row, duration=duration / n, span=Span(k, n, duration) if n > 1 else None)
         for k in range(n)]
baseline = rss("VmRSS")
t0 = time.perf_counter()
outcomes, lock = [], threading.Lock()
queue = list(items)
def lane():  # the scheduler keeps two shards in flight per actor: two lanes, one item a shard
    while True:
        with lock:
            if not queue:
                return
            item = queue.pop(0)
        for outcome in worker.stream_shard([item]):
            with lock:
                outcomes.append(outcome)
lanes = [threading.Thread(target=lane) for _ in range(2)]
for t in lanes: t.start()
for t in lanes: t.join()
wall = time.perf_counter() - t0
segments = sum(len(o.record.segments or []) for o in outcomes)
print(json.dumps({"baseline": baseline, "peak": rss("VmHWM"), "items": n, "ok": sum(o.ok for o in outcomes),
                  "segments": segments, "wall_s": wall}))
"""


def measure_memory(path: Path, range_s: float, splitter: str, speedup: float) -> dict:
    env = dict(os.environ)
    done = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path), str(range_s), splitter, str(speedup)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"memory run failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_wall(manifest: Path, out: Path, devices: int, range_s: float, splitter: str, speedup: float) -> dict:
    from transcribe_batch.pipeline.config import build_config
    from transcribe_batch.pipeline.runner import run_job

    summary = run_job(build_config(manifest, out, engine="simulated", devices=str(devices), sim_speedup=speedup,
                                   range_s=range_s, splitter=splitter, quiet=True, overwrite=True))
    if summary.status != "complete":
        raise SystemExit(f"the run on {devices} device(s) ended {summary.status}")
    import pyarrow.parquet as pq

    run = json.loads((out / "run.json").read_text())
    recs = [r for p in sorted((out / "parts").glob("part-*.parquet"))
            for r in pq.read_table(p, columns=["started_at", "finished_at", "wait_s"]).to_pylist()]
    first, last = min(r["started_at"] for r in recs), max(r["finished_at"] for r in recs)
    from datetime import datetime

    return {"wall_s": summary.wall_s, "ok": summary.n_ok, "failed": summary.n_failed,
            "to_first_s": (first - datetime.fromisoformat(run["started_at"])).total_seconds(),
            "device_span_s": (last - first).total_seconds(), "wait_s": sum(r["wait_s"] or 0.0 for r in recs)}


def mb(x: float) -> str:
    return f"{x / 2**20:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", default="1,3", help="file lengths (hours) for the memory figure")
    ap.add_argument("--range-s", type=float, default=300.0, help="range length for the memory figure (the default)")
    ap.add_argument("--whole", default="1", help="file lengths (hours) also measured as one whole item ('' = none)")
    ap.add_argument("--wall-hours", type=float, default=1.0, help="file length (hours) for the wall-time figure")
    ap.add_argument("--wall-range-s", type=float, default=150.0,
                    help="range length for the wall-time figure (24 ranges of an hour: 6 rounds on 4 devices)")
    ap.add_argument("--speedup", type=float, default=40.0, help="sim_speedup of the wall-time runs")
    ap.add_argument("--splitter", default="auto", help="vad | energy | auto")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the audio and run folders here (default: a temp dir)")
    args = ap.parse_args()

    from transcribe_batch.pipeline.config import build_config

    splitter = build_config(os.devnull, os.devnull, engine="simulated", splitter=args.splitter).resolved_splitter()
    rows = [json.loads(line) for line in (AUDIO / "manifest.jsonl").read_text().splitlines() if line.strip()]
    clips = speech_clips(rows, AUDIO)
    tmp = tempfile.TemporaryDirectory(prefix="longform-bench-") if args.keep is None else None
    root = Path(tmp.name) if tmp else args.keep
    root.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {"splitter": splitter}

    print(f"## Actor memory for one long row (splitter {splitter}, ranges of {args.range_s:g} s, 2 items in flight)\n")
    print("| file | planned as | items | segments | baseline RSS MB | peak over baseline MB | actor wall s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    whole = {float(h) for h in args.whole.split(",") if h.strip()}
    for hours in [float(h) for h in args.hours.split(",") if h.strip()]:
        path = root / f"long_{hours:g}h.wav"
        if not path.exists():
            write_long_recording(path, hours * 60, clips, seed=int(hours * 100))
        tag = f"{hours:g}h"
        for label, range_s in (("ranges", args.range_s), ("whole row", 0.0)):
            if range_s == 0.0 and hours not in whole:
                continue
            m = measure_memory(path, range_s, splitter, 1e6)
            over = m["peak"] - m["baseline"]
            print(f"| {tag} | {label} | {m['items']} | {m['segments']} | {mb(m['baseline'])} | {mb(over)} | "
                  f"{m['wall_s']:.1f} |")
            key = "ranges" if range_s else "whole"
            figures[f"mem_over_baseline_mb_{tag}_{key}"] = mb(over)
            figures[f"items_{tag}_{key}"] = str(m["items"])
    bound = 2 * 1.5 * args.range_s * 16000 * 4
    print(f"\nBound for ranges: 2 items in flight × at most 1.5 × {args.range_s:g} s of 16 kHz float32 = "
          f"{mb(bound)} MB of audio (plus features with a model folder), whatever the file's length.\n")
    figures["audio_bound_mb"] = mb(bound)

    import ray

    ray.init(address="local", include_dashboard=False, logging_level="ERROR")
    try:
        path = root / f"wall_{args.wall_hours:g}h.wav"
        if not path.exists():
            write_long_recording(path, args.wall_hours * 60, clips, seed=7)
        manifest = root / "wall.jsonl"
        manifest.write_text(json.dumps({"id": "long", "audio_filepath": str(path)}) + "\n")
        print(f"## One {args.wall_hours:g}-hour file on 4 vs 1 simulated devices (ranges of {args.wall_range_s:g} s, "
              f"port cost model ÷ {args.speedup:g}, Ray started beforehand)\n")
        print("| devices | wall s | start → first range on a device s | first range start → last range end s | "
              "devices waiting for the front end s | rows ok/failed |")
        print("|---:|---:|---:|---:|---:|---|")
        walls = {}
        for devices in (1, 4):
            w = measure_wall(manifest, root / f"run_{devices}", devices, args.wall_range_s, splitter, args.speedup)
            walls[devices] = w
            print(f"| {devices} | {w['wall_s']:.1f} | {w['to_first_s']:.1f} | {w['device_span_s']:.1f} | "
                  f"{w['wait_s']:.1f} | {w['ok']}/{w['failed']} |")
        ratio = walls[4]["wall_s"] / walls[1]["wall_s"]
        span_ratio = walls[4]["device_span_s"] / walls[1]["device_span_s"]
        print(f"\nwall time on 4 devices / on 1: {ratio:.2f} (target ≤ 0.3); from the first range's start to the "
              f"last one's end: {span_ratio:.2f}\n")
        figures.update(wall_s_1=f"{walls[1]['wall_s']:.1f}", wall_s_4=f"{walls[4]['wall_s']:.1f}",
                       wall_ratio_4_over_1=f"{ratio:.3f}", span_ratio_4_over_1=f"{span_ratio:.3f}")
    finally:
        ray.shutdown()
        if tmp:
            tmp.cleanup()
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
