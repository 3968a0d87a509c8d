"""Does the scheduler keep every device busy? The real job runner (Ray, one actor per device, Parquet parts) with the
`simulated` engine on 1, 2, 4 and 8 devices, against the physical limit and against the existing port's way of work.

The simulated engine sleeps per the existing BM1684X port's cost model (TTFT ≈ 24 s + ≈ 0.8 s per generated token),
or with --cost-model card per the card cost model fitted to Sophgo's published BM1684X figures (workers/cardcost/),
divided by --sim-speedup so that the whole benchmark runs in about a minute. The manifest has LibriSpeech-like
durations (1–35 s) with real FLAC files synthesized into a temporary folder, reference texts of matching length
(the simulated engine "generates" them, so token counts follow the audio), and injected faults (--sim-faults) that
the scheduler retries on other devices.

Per device count, from the results' per-row `started_at`/`finished_at` (plus the device time of retried attempts,
which the scheduler reports in run.json stats):
  wall      last row finished − first shard handed out (start-up of Ray and the actors is reported apart)
  ideal     Σ device busy time / N  (no scheduler can do better)
  idle      1 − Σ busy / (N · wall): the share of device time spent waiting
  scaling   wall(1 device) / (N · wall(N devices))
  overhead  device idle time per processed utterance (ms, and as a share of the mean utterance time)
  tail      last device finishing − first device finishing (target: under one mean utterance)
  start     mean delay from the first shard handed out to a device's first row starting (decoding its first,
            longest audio on a contended CPU); `steady idle` leaves it out
  slot occ. share of decode steps × B with a live request (run.json devices' `slot_occupancy`, docs/engines.md),
            and the same over the steps taken while rows waited for the device (`slot_occupancy_queued`)
Baseline, same process, same work: the port's loop — one utterance at a time: load audio → features → infer.

    .venv/bin/python benchmarks/pipeline.py                      # ≈ 1-2 min on 2 cores
    .venv/bin/python benchmarks/pipeline.py --frontend full      # real log-mel + prompt ids in the actors
    .venv/bin/python benchmarks/pipeline.py --utterances 2000 --sim-speedup 200 --devices 1,8,16
    .venv/bin/python benchmarks/pipeline.py --cost-model card    # + calibration table and per-card RTFx PROJECTION
    .venv/bin/python benchmarks/pipeline.py --cost-model card --projection-only   # the tables only, no runs (seconds)

With --cost-model card the script also prints the card cost model's calibration (each published figure, the fitted
value, the error; `calibration_max_error=`) and a PROJECTION of per-card RTFx for Qwen2-Audio-7B w4bf16/w8bf16 and
Qwen3-ASR-1.7B/0.6B bf16 at B = 1, 4, 8 (`proj_rtfx_<model>_<quant>_b<B>=`), with the overhead per utterance these
runs measured and the decode slots' occupancy (benchmarks/card_projection.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from card_projection import Utterance, measured_occupancy, print_calibration, print_projection  # noqa: E402
from synthetic import durations, speech_like, text_for, write_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO / "tests" / "data" / "qwen2-audio-7b-instruct"
DEFAULT_FAULTS = "error=0.02,empty=0.01,repeat=0.01,seed=7"


def make_work(folder: Path, n: int, seed: int) -> tuple[Path, float]:
    rng = np.random.default_rng(seed)
    audio_dir = folder / "audio"
    audio_dir.mkdir(parents=True)
    lengths = durations(n, seed)
    rows = []
    for i, d in enumerate(lengths):
        path = audio_dir / f"utt-{i:05d}.flac"
        sf.write(path, speech_like(float(d), 16000, rng), 16000, subtype="PCM_16")
        rows.append({"id": f"utt-{i:05d}", "audio_filepath": f"audio/{path.name}", "duration": float(d),
                     "text": text_for(float(d), rng)})
    manifest = folder / "manifest.jsonl"
    write_manifest(manifest, rows)
    return manifest, float(lengths.sum())


def _seconds(column) -> np.ndarray:
    return column.to_numpy(zero_copy_only=False).astype("datetime64[us]").astype(np.int64) / 1e6


def busy_union(start: np.ndarray, finish: np.ndarray) -> float:
    """Seconds covered by the [start, finish] intervals of one device's rows: their sum when rows run one at a time,
    less where the rows of a batched engine call overlap."""
    order = np.argsort(start)
    total, end = 0.0, -np.inf
    for a, b in zip(start[order], finish[order]):
        if a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return float(total)


def analyse(run_dir: Path, n_devices: int) -> dict:
    table = pq.read_table(run_dir / "results.parquet",
                          columns=["status", "device", "attempts", "queued_at", "started_at", "finished_at",
                                   "duration_s"])
    info = json.loads((run_dir / "run.json").read_text())
    stats = info.get("stats") or {}
    ran = table.filter(table["started_at"].is_valid())
    start, finish = _seconds(ran["started_at"]), _seconds(ran["finished_at"])
    queued = _seconds(table.filter(table["queued_at"].is_valid())["queued_at"])
    device = ran["device"].to_numpy(zero_copy_only=False)
    t0 = float(queued.min())
    wall = float(finish.max()) - t0
    retried_busy = float(stats.get("retried_busy_s", 0.0))
    retried_attempts = int(stats.get("retried_attempts", stats.get("retried_rows", 0)))
    busy = sum(busy_union(start[device == d], finish[device == d]) for d in np.unique(device)) + retried_busy
    attempts = len(ran) + retried_attempts
    last = [float(finish[device == d].max()) for d in np.unique(device)]
    first = np.array([float(start[device == d].min()) - t0 for d in np.unique(device)])
    steady = n_devices * wall - first.sum() - (n_devices - len(first)) * wall
    mean_utt = busy / max(1, attempts)
    status = table["status"].to_numpy(zero_copy_only=False)
    devs = [d for d in info.get("devices") or [] if d.get("decode_steps")]
    slots = sum(d["decode_steps"] * d["slots"] for d in devs)
    queued = sum(d["decode_steps_queued"] * d["slots"] for d in devs if d.get("slot_occupancy_queued") is not None)
    return {
        "devices": n_devices,
        "devices_used": len(last),
        "rows": table.num_rows,
        "ok": int((status == "ok").sum()),
        "failed": int((status != "ok").sum()),
        "retried": int(stats.get("retried_rows", 0)),
        "crashes": int(stats.get("actor_crashes", 0)),
        "job_wall_s": float(info.get("wall_s") or 0.0),
        "wall_s": wall,
        "busy_s": busy,
        "ideal_s": busy / n_devices,
        "idle_fraction": 1.0 - busy / (n_devices * wall),
        "first_start_s": float(first.mean()),
        "steady_idle_fraction": 1.0 - busy / steady if steady > 0 else float("nan"),
        "overhead_ms": 1000 * (n_devices * wall - busy) / max(1, attempts),
        "mean_utt_s": mean_utt,
        "tail_s": (max(last) - min(last)) if len(last) == n_devices else max(last) - t0,
        "busy_from_stats": "retried_busy_s" in stats,
        # decode-slot occupancy over all the devices' steps (run.json devices)
        "slot_occupancy": sum(d["slot_occupancy"] * d["decode_steps"] * d["slots"] for d in devs) / slots
        if slots else float("nan"),
        "slot_occupancy_queued": sum(d["slot_occupancy_queued"] * d["decode_steps_queued"] * d["slots"] for d in devs
                                     if d.get("slot_occupancy_queued") is not None) / queued
        if queued else float("nan"),
    }


def sequential_baseline(manifest: Path, config) -> dict:
    """The existing port's loop in this process: per utterance, load → features → infer; no retries, no overlap.
    A `crash` draw would kill the port's process; here it counts as a failed utterance. config: the run's
    WorkerConfig."""
    from dataclasses import replace

    from transcribe_batch.manifests.reader import iter_rows
    from transcribe_batch.workers.engines.base import EngineError
    from transcribe_batch.workers.engines.simulated import FaultSpec, create
    from transcribe_batch.workers.frontend import FrontEnd

    spec = FaultSpec.parse(config.sim.faults)
    no_crash = f"error={spec.error + spec.crash},empty={spec.empty},repeat={spec.repeat},seed={spec.seed}"
    config = replace(config, sim=replace(config.sim, faults=no_crash))
    engine = create(config, 0)
    frontend = FrontEnd.for_worker(config, engine.limits)
    n = failed = 0
    prep = infer = 0.0
    t0 = time.perf_counter()
    for _, row in iter_rows(manifest):
        t1 = time.perf_counter()
        requests = frontend.prepare(row)
        t2 = time.perf_counter()
        engine.begin_attempts({row.id: 1})
        for request in requests:
            try:
                engine.transcribe(request)
            except EngineError:
                failed += 1
                break
        prep += t2 - t1
        infer += time.perf_counter() - t2
        n += 1
    return {"wall_s": time.perf_counter() - t0, "rows": n, "failed": failed, "prep_s": prep, "infer_s": infer}


def manifest_utterances(manifest: Path) -> list[Utterance]:
    """Each row's duration and answer tokens as the simulated engine counts them (without a tokenizer)."""
    from transcribe_batch.manifests.reader import iter_rows
    from transcribe_batch.workers.engines.simulated import count_tokens

    return [Utterance(float(row.duration or 0.0), count_tokens(row.text or ""))
            for _, row in iter_rows(manifest)]


def synthetic_utterances(n: int, seed: int) -> list[Utterance]:
    """The utterances make_work would write (same durations and texts), without audio files."""
    from transcribe_batch.workers.engines.simulated import count_tokens

    rng = np.random.default_rng(seed)
    out = []
    for d in durations(n, seed):
        speech_like(float(d), 16000, rng)  # make_work draws the audio first: the same random stream, the same texts
        out.append(Utterance(float(d), count_tokens(text_for(float(d), rng))))
    return out


def manifest_work(utterances: list[Utterance]) -> tuple[float, int, int]:
    """(audio seconds, rows, answer tokens as the simulated engine counts them)."""
    # + the stop token, - the one the prefill yields
    return sum(u.duration_s for u in utterances), len(utterances), sum(u.answer_tokens for u in utterances)


def project_batches(work: tuple[float, int, int], config, batches=(1, 2, 4, 8, 16)) -> dict:
    """PROJECTION, not measured: audio-hours per card-hour of this manifest at decode batch B, with the simulated
    engine's cost model (its TTFT and s/token at B = 1) and its batched step model (workers/engines/simulated.py:
    batched_step_s — weights read once per step for all rows, each row's K/V history for itself). Slots are taken
    as always full; prefills (TTFT) are not batched."""
    from transcribe_batch.workers.engines.simulated import batched_step_s

    ttft, s_tok = config.sim.ttft_s, config.sim.s_per_token  # the run's WorkerConfig
    audio_s, rows, tokens = work
    prefill_s = rows * ttft
    print(f"\n## PROJECTION (not measured): audio-hours per card-hour by decode batch B — simulated cost model "
          f"(TTFT {ttft:g} s, {s_tok:g} s/token at B=1, K/V share of a step's bytes 0.10), this manifest\n")
    print("| B | step s | decode card-h | prefill card-h | audio-h per card-h | × B=1 |")
    print("|---:|---:|---:|---:|---:|---:|")
    out, base = {}, None
    for b in batches:
        step = batched_step_s(s_tok, b)
        decode = tokens * step / b
        rate = audio_s / (prefill_s + decode)
        base = base or rate
        out[f"proj_audio_h_per_card_h_b{b}"] = f"{rate:.3f}"
        print(f"| {b} | {step:.3f} | {decode / 3600:.3f} | {prefill_s / 3600:.3f} | {rate:.3f} | {rate / base:.2f} |")
    print("\nWith the port's 24 s TTFT the unbatched prefill dominates once B > 2; benchmarks/runtime.py "
          "--projection-only gives the roofline for our runtime (prefill ≥ 1 s), where B buys far more.")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=200, help="manifest rows (default 200)")
    ap.add_argument("--devices", default="1,2,4,8", help="simulated device counts to run (default 1,2,4,8)")
    ap.add_argument("--sim-speedup", type=float, default=None,
                    help="divides the simulated times; default 500 (port: 24 s TTFT + 0.8 s/token), 50 (card)")
    ap.add_argument("--cost-model", choices=("port", "card"), default="port",
                    help="the simulated engine's cost model in the runs; card also prints the calibration table and "
                         "the per-card RTFx PROJECTION")
    ap.add_argument("--card-model", default="qwen2-audio-7b", help="card cost model of the runs (a preset)")
    ap.add_argument("--card-quant", default="w4bf16", help="card cost model of the runs: bf16 | w8bf16 | w4bf16")
    ap.add_argument("--sim-batch", type=int, default=1, help="decode slots per simulated device in the runs")
    ap.add_argument("--occupancy", type=float, default=None,
                    help="slot occupancy (0-1] for the projection at B > 1 (default: simulated for today's engine)")
    ap.add_argument("--occupancy-from", type=Path, default=None,
                    help="a run folder whose run.json devices carry a measured `slot_occupancy`")
    ap.add_argument("--overhead-ms", type=float, default=None,
                    help="pipeline overhead per utterance for the projection (default: measured by these runs; "
                         "1.1 ms with --projection-only, the README's 1-device figure)")
    ap.add_argument("--projection-only", action="store_true",
                    help="no runs: only the card calibration and projection (--cost-model card) or the port's")
    ap.add_argument("--sim-faults", default=DEFAULT_FAULTS, help=f"injected faults per attempt (default {DEFAULT_FAULTS})")
    ap.add_argument("--frontend", choices=("cheap", "full"), default="cheap",
                    help="cheap: actors only load+validate audio (what the simulated engine needs); full: also log-mel "
                         "and prompt ids with the real Qwen2-Audio tokenizer/config (--model-dir)")
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--shard-size", type=int, default=None, help="rows per shard (default: config default)")
    ap.add_argument("--inflight-per-device", type=int, default=None)
    ap.add_argument("--device-max-failures", type=int, default=1000,
                    help="failed attempts in a row that take a device out of the pool (default 1000: with one device, "
                         "an unlucky streak of injected faults would end the run being measured)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the sequential baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", type=Path, default=None, help="keep the work folder here instead of a temp dir")
    args = ap.parse_args()
    if args.sim_speedup is None:
        args.sim_speedup = 50.0 if args.cost_model == "card" else 500.0
    if args.occupancy is not None and not 0 < args.occupancy <= 1:
        ap.error(f"--occupancy {args.occupancy}: expected a share in (0, 1]")
    measured = measured_occupancy(args.occupancy_from) if args.occupancy_from else None
    if args.projection_only:
        utterances = synthetic_utterances(args.utterances, args.seed)
        overhead = 1.1 if args.overhead_ms is None else args.overhead_ms
        line = project(args, utterances, overhead, "--overhead-ms" if args.overhead_ms is not None else
                       "README: 1 device, port cost model ÷ 500", measured, {})
        print("\n" + " ".join(f"{key}={value}" for key, value in line.items()))
        return

    import ray

    from transcribe_batch.pipeline.config import build_config
    from transcribe_batch.pipeline.runner import run_job

    counts = [int(x) for x in args.devices.split(",") if x.strip()]
    work = args.keep or Path(tempfile.mkdtemp(prefix="tb-bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        manifest, audio_s = make_work(work / "data", args.utterances, args.seed)
        print(f"# {args.utterances} utterances, {audio_s / 3600:.2f} h of synthetic FLAC in {time.perf_counter() - t:.1f} s; "
              f"sim speedup {args.sim_speedup:g}, faults {args.sim_faults or 'none'}, front end {args.frontend}",
              file=sys.stderr)
        ray.init(include_dashboard=False, logging_level="WARNING", configure_logging=True)
        overrides = dict(engine="simulated", sim_speedup=args.sim_speedup, sim_faults=args.sim_faults or None,
                         quiet=True, shard_size=args.shard_size, inflight_per_device=args.inflight_per_device,
                         device_max_failures=args.device_max_failures,
                         model_dir=args.model_dir if args.frontend == "full" else None,
                         sim_cost_model=args.cost_model, sim_card_model=args.card_model,
                         sim_card_quant=args.card_quant, sim_batch=args.sim_batch)
        results = []
        for n in counts:
            cfg = build_config(manifest, work / f"run-{n}", devices=str(n), overwrite=True, **overrides)
            run_job(cfg)
            results.append(analyse(cfg.output, n))
            r = results[-1]
            print(f"# {n} device(s): wall {r['wall_s']:.2f} s, ideal {r['ideal_s']:.2f} s, idle {r['idle_fraction']:.1%}",
                  file=sys.stderr)
        ray.shutdown()
        base = None
        if not args.no_baseline:
            base = sequential_baseline(manifest, cfg.worker_config())
        utterances = manifest_utterances(manifest)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    one = next((r for r in results if r["devices"] == 1), None)
    model = ("BM1684X port cost model" if args.cost_model == "port" else
             f"card cost model ({args.card_model} {args.card_quant}, B={args.sim_batch})")
    print(f"\n## Scheduler vs physical limit — simulated {model} ÷ {args.sim_speedup:g}, "
          f"{args.utterances} utterances ({audio_s / 3600:.2f} h), front end: {args.frontend}\n")
    print("| devices | rows ok/failed | retried | wall s | ideal s | wall/ideal | device idle | steady idle | start s | "
          "scaling eff. | overhead ms/utt | tail s | mean utt s | slot occ. | slot occ. while rows remain | "
          "job wall s (incl. Ray/actor start-up) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        r["scaling"] = one["wall_s"] / (r["devices"] * r["wall_s"]) if one else float("nan")
        print(f"| {r['devices']} | {r['ok']}/{r['failed']} | {r['retried']} | {r['wall_s']:.2f} | {r['ideal_s']:.2f} | "
              f"{r['wall_s'] / r['ideal_s']:.3f} | {r['idle_fraction']:.1%} | {r['steady_idle_fraction']:.1%} | "
              f"{r['first_start_s']:.3f} | {r['scaling']:.1%} | "
              f"{r['overhead_ms']:.1f} ({r['overhead_ms'] / 1000 / r['mean_utt_s']:.1%}) | {r['tail_s']:.3f} | "
              f"{r['mean_utt_s']:.3f} | {r['slot_occupancy']:.3f} | {r['slot_occupancy_queued']:.3f} | "
              f"{r['job_wall_s']:.1f} |")
    if not all(r["busy_from_stats"] for r in results):
        print("\n(busy time of retried attempts not reported by this scheduler version: idle is overstated)")
    if base:
        print(f"\nSequential baseline (the port's loop, 1 device, same work, no retries): {base['wall_s']:.2f} s "
              f"({base['prep_s']:.2f} s load/features + {base['infer_s']:.2f} s inference, {base['failed']} failed)")
        for r in results:
            print(f"- {r['devices']} device(s): {base['wall_s'] / r['wall_s']:.2f}× the sequential loop")
    top = max(results, key=lambda r: r["devices"])
    k = top["devices"]
    line = {f"scaling_efficiency_{k}": f"{top['scaling']:.3f}", f"idle_fraction_{k}": f"{top['idle_fraction']:.4f}",
            f"steady_idle_fraction_{k}": f"{top['steady_idle_fraction']:.4f}",
            f"wall_over_ideal_{k}": f"{top['wall_s'] / top['ideal_s']:.3f}",
            f"tail_over_utt_{k}": f"{top['tail_s'] / top['mean_utt_s']:.2f}",
            f"overhead_ms_per_utt_{k}": f"{top['overhead_ms']:.1f}",
            f"slot_occupancy_{k}": f"{top['slot_occupancy']:.3f}",
            f"slot_occupancy_queued_{k}": f"{top['slot_occupancy_queued']:.3f}"}
    if base:
        line["speedup_vs_sequential"] = f"{base['wall_s'] / top['wall_s']:.2f}"
    fewest = min(results, key=lambda r: r["devices"])
    overhead = fewest["overhead_ms"] if args.overhead_ms is None else args.overhead_ms
    source = (f"measured here: {fewest['devices']} device(s), ÷ {args.sim_speedup:g}" if args.overhead_ms is None
              else "--overhead-ms")
    line.update(project(args, utterances, overhead, source, measured, cfg.worker_config()))
    print("\n" + " ".join(f"{key}={value}" for key, value in line.items()))


def project(args, utterances: list[Utterance], overhead_ms: float, source: str, measured, config) -> dict:
    """The PROJECTION block of the chosen cost model."""
    if args.cost_model == "card":
        line = print_calibration()
        line.update(print_projection(utterances, max(0.0, overhead_ms), overhead_source=source, measured=measured,
                                     given=args.occupancy))
        return line
    return project_batches(manifest_work(utterances), config)


if __name__ == "__main__":
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    main()
