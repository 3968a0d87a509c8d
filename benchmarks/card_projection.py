"""The card cost model's calibration table and its PROJECTION (not measured) of per-card audio hours per hour (RTFx)
on one BM1684X: workers/cardcost/ (fitted to Sophgo's published figures) applied to a manifest's utterances, with the
pipeline's own overhead per utterance and the decode slots' occupancy. Used by pipeline.py --cost-model card.

Per card and decode batch B, for the manifest's requests (utterances longer than a request may carry are pieces):
  card time = Σ (audio encode + prefill)                      one request at a time, not batched
            + decode steps × step time(occupancy · B rows)     steps = Σ decode tokens / (occupancy · B)
            + utterances × pipeline overhead per utterance     measured by pipeline.py's runs (device idle per row)
  RTFx      = Σ audio seconds / card time
Occupancy (share of decode-step slots with a live request): measured where run.json devices carry `slot_occupancy`
(--occupancy-from), given (--occupancy), else simulated with the same slot model the simulated engine uses, for
the engine's stream: a slot freed by an answer takes the next row at once, across shards (docs/engines.md). The
`whole calls` column is the same model with calls of B rows whose slots drain before the next call starts (the
engine before streaming).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from transcribe_batch.workers.cardcost import CardModel, SlotJob, calibration, preset, run_slots
from transcribe_batch.workers.cardcost.model import USABLE_DEVICE_BYTES


@dataclass(frozen=True)
class Target:
    """A model as the projection runs it: compiled by native/compile/convert.py (static nets, prefill over SEQLEN)."""

    model: str  # a workers/cardcost preset
    quant: str
    seqlen: int
    max_audio_s: float = 30.0  # audio per request: a 30 s window fits SEQLEN with the prompt and the answer
    answer_extra_tokens: int = 0  # tokens every answer carries besides the transcript

    @property
    def key(self) -> str:
        return f"{self.model}_{self.quant}"


TARGETS = (
    Target("qwen2-audio-7b", "w4bf16", 1024),  # 750 audio rows per 30 s window + prompt + answer ≤ 1024
    Target("qwen2-audio-7b", "w8bf16", 1024),
    Target("qwen3-asr-1.7b", "bf16", 512, answer_extra_tokens=3),  # 390 rows per 30 s; "language X<asr_text>"
    Target("qwen3-asr-0.6b", "bf16", 512, answer_extra_tokens=3),
)
BATCHES = (1, 4, 8)


@dataclass(frozen=True)
class Utterance:
    duration_s: float
    answer_tokens: int  # transcript tokens (without the stop token)


def requests_of(utterances: list[Utterance], target: Target, model: CardModel) -> list[tuple[float, SlotJob]]:
    """(audio seconds, job) per request: utterances longer than max_audio_s in equal pieces, each with its share of
    the words, the target's extra answer tokens and the stop token (decode tokens = answer + stop − the first)."""
    out = []
    for u in utterances:
        k = max(1, math.ceil(u.duration_s / target.max_audio_s - 1e-9))
        piece = u.duration_s / k
        tokens = math.ceil(u.answer_tokens / k) + target.answer_extra_tokens
        prompt = model.arch.prompt_len(piece)
        out.append((piece, SlotJob(model.first_token_s(piece, prompt), tokens, prompt)))
        out.extend([out[-1]] * (k - 1))
    return out


def _schedule(model: CardModel, jobs: list[SlotJob], batch: int):
    return run_slots(jobs, batch, model.decode_step_s, lambda job, g: model.kv_len(job.prompt_len, g + 1))


def occupancy(model: CardModel, reqs: list[tuple[float, SlotJob]], batch: int, *, continuous: bool) -> float:
    """Simulated slot occupancy of the (audio seconds, job) requests: continuous slots, or calls of `batch` requests
    that drain; longest audio first, as the scheduler hands rows out."""
    if batch == 1:
        return 1.0
    ordered = [j for _, j in sorted(reqs, key=lambda r: -r[0])]
    calls = [ordered] if continuous else [ordered[i:i + batch] for i in range(0, len(ordered), batch)]
    steps = rows = 0
    for call in calls:
        s = _schedule(model, call, batch)
        steps, rows = steps + s.steps, rows + s.row_steps
    return rows / (steps * batch) if steps else 1.0


def card_time(model: CardModel, jobs: list[SlotJob], batch: int, occ: float, n_utterances: int,
              overhead_s: float) -> dict:
    """Card seconds for the jobs at decode batch B with mean occupancy `occ` (static nets: every row attends to all
    SEQLEN slots, so a step's time depends only on how many rows are busy)."""
    first = sum(j.first_token_s for j in jobs)
    tokens = sum(j.decode_tokens for j in jobs)
    rows = max(1.0, occ * batch)
    kv = model.seqlen or round(sum(j.prompt_len for j in jobs) / max(1, len(jobs)))
    steps = tokens / rows
    decode = steps * model.decode_step_rows_s(rows, kv)
    overhead = n_utterances * overhead_s
    return {"first_s": first, "decode_s": decode, "overhead_s": overhead, "card_s": first + decode + overhead,
            "steps": steps}


def measured_occupancy(run_dir: Path) -> dict[int, float]:
    """Mean slot occupancy per decode batch B from a run's run.json devices (`batch_size`, `slot_occupancy`)."""
    path = Path(run_dir) / "run.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"--occupancy-from: {path}: cannot read ({e})") from None
    found: dict[int, list[float]] = {}
    for dev in info.get("devices") or []:
        occ = dev.get("slot_occupancy") if isinstance(dev, dict) else None
        if isinstance(occ, (int, float)) and 0 < occ <= 1:
            found.setdefault(int(dev.get("batch_size") or 1), []).append(float(occ))
    if not found:
        raise SystemExit(f"--occupancy-from: {path}: no device carries `slot_occupancy` (a run of an engine that "
                         "reports it is needed)")
    return {b: sum(v) / len(v) for b, v in found.items()}


def print_calibration() -> dict:
    cal = calibration()
    c = cal.constants
    print("\n## Card cost model: calibration to Sophgo's published BM1684X figures (batch 1; sources in "
          "benchmarks/README.md)\n")
    print("| model | weights | SEQLEN | figure | published | fitted | error | in the fit |")
    print("|---|---|---:|---|---:|---:|---:|:---:|")
    for r in cal.rows:
        p = r.point
        print(f"| {p.model} | {p.quant} | {p.seqlen} | {r.quantity} | {r.measured:.3f} | {r.fitted:.3f} | "
              f"{r.error:+.1%} | {'yes' if r.used else 'no'} |")

    def rate(x: float, unit: float) -> str:
        return "∞ (not supported by the data)" if math.isinf(x) else f"{x / unit:.2f}"

    print(f"\nFitted (least squares on relative errors, all constants ≥ 0): weights streamed at "
          f"{rate(c.weight_bytes_per_s, 1e9)} GB/s, K/V history read at {rate(c.kv_bytes_per_s, 1e9)} GB/s, "
          f"per-step fixed cost {c.step_overhead_s * 1e3:.2f} ms; prefill matmuls at "
          f"{rate(c.matmul_flops_per_s, 1e12)} TFLOPS, attention at {rate(c.attention_flops_per_s, 1e12)} TFLOPS, "
          f"{c.call_overhead_s * 1e3:.0f} ms per prefill call. Max error over the fitted figures "
          f"{cal.max_error:.1%} (rms {cal.rms_error:.1%}); over every figure, the ChatGLM3 first-token ones (not "
          f"fitted) included, {cal.max_error_all:.1%}.")
    print("\nWhisper on the SE7 (F16, TPU time per audio second) is not fitted: its time is mostly beam-search "
          "decoding, which the table does not separate. The fitted encoder alone:\n")
    print("| model | published ms per audio s | fitted encoder ms per audio s (30 s windows) | encoder share |")
    print("|---|---:|---:|---:|")
    for w in cal.whisper:
        print(f"| {w.point.model} | {w.point.ms_per_audio_s:.1f} | {w.encoder_ms_per_audio_s:.2f} | "
              f"{w.encoder_share:.1%} |")
    return {"calibration_max_error": f"{cal.max_error:.3f}", "calibration_rms_error": f"{cal.rms_error:.3f}"}


def print_projection(utterances: list[Utterance], overhead_ms: float, *, overhead_source: str,
                     measured: dict[int, float] | None = None, given: float | None = None,
                     targets=TARGETS, batches=BATCHES) -> dict:
    audio_s = sum(u.duration_s for u in utterances)
    n = len(utterances)
    print(f"\n## PROJECTION (not measured): per-card RTFx (audio hours per card hour) on one BM1684X — card cost "
          f"model, "
          f"{n} utterances ({audio_s / 3600:.2f} h), pipeline overhead {overhead_ms:.1f} ms per utterance "
          f"({overhead_source})\n")
    print("Occupancy: `streamed` = simulated for the engine's stream (a slot freed by an answer takes the next row, "
          "across shards), `measured` = run.json, `given` = --occupancy; `whole calls` = calls of B requests whose "
          "slots drain (the engine before streaming).\n")
    print("| model | weights | SEQLEN | B | requests | TTFT s | step ms | occupancy | encode+prefill card-h | "
          "decode card-h | overhead card-h | **RTFx** | RTFx whole calls | device memory | fits one chip |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|:---:|")
    out = {}
    not_fitting = []
    for t in targets:
        model = CardModel(preset(t.model), t.quant, seqlen=t.seqlen)
        reqs = requests_of(utterances, t, model)
        jobs = [j for _, j in reqs]
        ttft = sum(j.first_token_s for j in jobs) / len(jobs)
        for b in batches:
            if measured and b in measured:
                occ, src = measured[b], "measured"
            elif given is not None and b > 1:
                occ, src = given, "given"
            else:
                occ, src = occupancy(model, reqs, b, continuous=True), "streamed"
            calls = occupancy(model, reqs, b, continuous=False)
            r = card_time(model, jobs, b, occ, n, overhead_ms / 1e3)
            rc = card_time(model, jobs, b, calls, n, overhead_ms / 1e3)
            rtfx, rtfx_calls = audio_s / r["card_s"], audio_s / rc["card_s"]
            fits = model.fits(b)
            if not fits:
                not_fitting.append(f"{t.key}_b{b}")
            step = model.decode_step_rows_s(max(1.0, occ * b), t.seqlen)
            out[f"proj_rtfx_{t.key}_b{b}"] = f"{rtfx:.2f}"
            print(f"| {t.model} | {t.quant} | {t.seqlen} | {b} | {len(jobs)} | {ttft:.2f} | {step * 1e3:.0f} | "
                  f"{occ:.2f} ({src}) | {r['first_s'] / 3600:.3f} | {r['decode_s'] / 3600:.3f} | "
                  f"{r['overhead_s'] / 3600:.4f} | **{rtfx:.2f}** | {rtfx_calls:.2f} (occ. {calls:.2f}) | "
                  f"{model.device_bytes(b) / 1e9:.1f} GB | {'yes' if fits else 'NO'} |")
    print(f"\nDevice memory: weights + embedding + audio net + B × K/V at SEQLEN, against "
          f"{USABLE_DEVICE_BYTES / 2**30:.1f} GiB usable per chip. Static nets: every prefill runs over all SEQLEN "
          "positions and every decode step attends to all of them, whatever the request's length.")
    if not_fitting:
        out["proj_not_fitting"] = ",".join(not_fitting)
    return out
