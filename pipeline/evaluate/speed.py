"""Speed: TTFT, decode tokens/s, latency, RTF and RTFx per device and overall; retries and failures by class.

Definitions (per result row, contract 5): `ttft_s` audio encode + prefill + first token; `tokens_per_s` decode
speed after the first token; `total_s` the device time of the utterance (its latency on the card); `rtf` =
total_s / duration_s. Aggregates:

* RTFx (device) = Σ audio seconds of successful rows / Σ `total_s` of every row that has one (failed attempts'
  recorded time included): how much faster than real time one card transcribes.
* RTFx (wall) = Σ audio seconds of successful rows / (last `finished_at` − first `started_at`): what the whole run
  (or one device) delivered, idle gaps and scheduling included.
* RTFx (job) = the same audio / the job's wall time from run.json (`wall_s`: Ray start-up and model loading
  included; summed over resumed sessions where the runner records them).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .runs import Run

DIST_COLUMNS = {"ttft_s": "TTFT s", "tokens_per_s": "decode tokens/s", "total_s": "latency s", "rtf": "RTF"}


@dataclass
class Dist:
    n: int
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, values: list[float]) -> "Dist":
        if not values:
            return cls(0)
        a = np.asarray(values, dtype=float)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(len(a), float(a.mean()), float(p50), float(p90), float(p99))


@dataclass
class DeviceSpeed:
    device: str  # "all", or the device label ("node:device" when the run spans nodes)
    n_rows: int
    n_successful: int
    audio_s: float  # Σ duration of successful rows
    device_s: float  # Σ total_s
    wall_s: float | None  # first started_at → last finished_at
    rtfx_device: float | None
    rtfx_wall: float | None
    dists: dict[str, Dist]  # column -> distribution over successful rows


@dataclass
class Failures:
    n_retried: int  # rows that needed more than one attempt
    extra_attempts: int  # Σ (attempts − 1)
    max_attempts: int
    n_recovered: int  # retried rows that ended ok
    by_class: list[dict[str, Any]]  # failed rows: error_class, count, an example message
    finish_reasons: dict[str, int]


@dataclass
class Speed:
    overall: DeviceSpeed
    per_device: list[DeviceSpeed]
    failures: Failures
    job_wall_s: float | None = None  # run.json wall_s
    rtfx_job: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def device_labels(run: Run) -> list[str | None]:
    devices = run.col("device")
    nodes = run.col("node")
    several_nodes = len({n for n in nodes if n is not None}) > 1
    labels: list[str | None] = []
    for node, device in zip(nodes, devices):
        if device is None:
            labels.append(None)
        elif several_nodes:
            labels.append(f"{node}:{device}")
        else:
            labels.append(str(device))
    return labels


def _speed_of(label: str, rows: list[int], run: Run, ok: list[bool]) -> DeviceSpeed:
    duration = [_finite(v) for v in run.col("duration_s")]
    total = [_finite(v) for v in run.col("total_s")]
    started = [_finite(v) for v in run.col("started_at")]
    finished = [_finite(v) for v in run.col("finished_at")]
    audio_s = sum(duration[i] or 0.0 for i in rows if ok[i])
    device_s = sum(total[i] or 0.0 for i in rows)
    starts = [started[i] for i in rows if started[i] is not None]
    ends = [finished[i] for i in rows if finished[i] is not None]
    wall_s = max(ends) - min(starts) if starts and ends and max(ends) > min(starts) else None
    dists = {}
    for column in DIST_COLUMNS:
        values = [_finite(v) for v in run.col(column)]
        dists[column] = Dist.of([values[i] for i in rows if ok[i] and values[i] is not None])
    return DeviceSpeed(
        device=label,
        n_rows=len(rows),
        n_successful=sum(ok[i] for i in rows),
        audio_s=audio_s,
        device_s=device_s,
        wall_s=wall_s,
        rtfx_device=audio_s / device_s if device_s > 0 else None,
        rtfx_wall=audio_s / wall_s if wall_s else None,
        dists=dists,
    )


def _failures(run: Run, ok: list[bool]) -> Failures:
    attempts = [int(a) if a is not None else 1 for a in run.col("attempts", 1)]
    retried = [i for i, a in enumerate(attempts) if a > 1]
    classes: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for good, cls, msg in zip(ok, run.col("error_class"), run.col("error_message")):
        if good:
            continue
        key = cls or "unknown"
        classes[key] += 1
        examples.setdefault(key, (msg or "")[:200])
    by_class = [{"error_class": k, "count": n, "example": examples[k]} for k, n in classes.most_common()]
    reasons = Counter(r for r in run.col("finish_reason") if r is not None)
    return Failures(
        n_retried=len(retried),
        extra_attempts=sum(attempts[i] - 1 for i in retried),
        max_attempts=max(attempts, default=0),
        n_recovered=sum(ok[i] for i in retried),
        by_class=by_class,
        finish_reasons=dict(reasons.most_common()),
    )


def evaluate_speed(run: Run) -> Speed:
    ok = [s == "ok" for s in run.col("status")]
    notes = []
    missing = [c for c in ("duration_s", "total_s", "started_at", "finished_at") if not run.has(c)]
    if missing:
        notes.append(f"results lack {', '.join(missing)}: the speed figures that need them are left empty")
    labels = device_labels(run)
    per_device = []
    for label in sorted({lab for lab in labels if lab is not None}, key=lambda s: (len(s), s)):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        per_device.append(_speed_of(label, rows, run, ok))
    n_unplaced = sum(lab is None for lab in labels)
    if n_unplaced:
        notes.append(f"{n_unplaced} rows never ran on a device (no device recorded)")
    overall = _speed_of("all", list(range(run.n)), run, ok)
    job_wall = _finite(run.meta.get("wall_s"))
    rtfx_job = overall.audio_s / job_wall if job_wall else None
    return Speed(overall, per_device, _failures(run, ok), job_wall, rtfx_job, notes)
