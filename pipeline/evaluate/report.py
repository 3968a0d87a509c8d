"""One object with everything `transcribe-batch eval` shows: per-run accuracy and speed, comparison, statements."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .calibration import calibration_of, segment_calibration_of
from .compare import common_ids, disagreements, reference_conflicts, worst_utterances
from .metrics import Accuracy, Bucket, UttScore, evaluate_accuracy, wer_by_duration
from .runs import Run, load_run, unique_names
from .segment_scores import SegmentScores, score_segments
from .speed import Speed, evaluate_speed

META_KEYS = ("engine", "model_id", "bmodel", "dtype", "template", "status")
COLUMN_KEYS = ("engine", "model_id")  # identity that result rows carry when run.json is missing


@dataclass
class RunReport:
    run: Run  # the whole run (speed, timeline)
    evaluated: Run  # the rows scored (the common utterances when several runs are compared)
    accuracy: Accuracy
    scores: list[UttScore | None]  # per row of `evaluated`
    speed: Speed
    segment_scores: SegmentScores  # per segment of `evaluated`'s rows (for the per-segment calibration)

    @property
    def name(self) -> str:
        return self.run.name

    def identity(self) -> dict[str, Any]:
        """Engine / model / settings, from run.json where present, else from the result columns."""
        meta = self.run.meta
        out: dict[str, Any] = {}
        for key in META_KEYS:
            value = meta.get(key)
            if value is None and isinstance(meta.get("config"), dict):
                value = meta["config"].get(key)
            if value is None and key in COLUMN_KEYS and self.run.has(key):
                values = {v for v in self.run.col(key) if v is not None}
                value = ", ".join(sorted(map(str, values))) if values else None
            if value is not None:
                out[key] = value
        return out


@dataclass
class Report:
    runs: list[RunReport]
    normalizer: str
    n_common: int | None  # utterances compared (None: the runs share none)
    disagreements: list[dict] = field(default_factory=list)
    worst: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "normalizer": self.normalizer,
            "n_common": self.n_common,
            "notes": list(self.notes),
            "runs": [
                {
                    "name": r.name,
                    "path": str(r.run.path),
                    "identity": r.identity(),
                    "n_rows": r.run.n,
                    "notes": list(r.run.notes),
                    "accuracy": r.accuracy.to_dict(),
                    "speed": r.speed.to_dict(),
                    "wer_by_duration": [
                        {"bucket": b.label, "n_scored": b.n_scored, "ref_words": b.ref_words, "wer": b.wer}
                        for b in buckets_of(r)
                    ],
                    "calibration": calibration_of(r).to_dict(),
                    "calibration_segments": {**segment_calibration_of(r).to_dict(),
                                             "n_segments": r.segment_scores.n,
                                             "n_split_rows": r.segment_scores.n_split_rows},
                }
                for r in self.runs
            ],
            "disagreements": self.disagreements,
            "worst": self.worst,
        }


def buckets_of(run: RunReport) -> list[Bucket]:
    return wer_by_duration(run.evaluated.col("duration_s"), run.scores)


def build_report(runs: Sequence[Run], *, normalizer: str = "whisper", top: int = 10) -> Report:
    if not runs:
        raise ValueError("no runs to evaluate")
    ids, notes = common_ids(runs)
    evaluated = [run.subset(ids) if ids is not None else run for run in runs]
    if ids is not None and len(runs) > 1:
        conflicts = reference_conflicts(evaluated, normalizer)
        if conflicts:
            notes.append(f"{conflicts} common utterances have different references in different runs; "
                         "each run is scored against its own")
    reports = []
    for run, sub in zip(runs, evaluated):
        accuracy, scores = evaluate_accuracy(
            sub.col("text"), sub.col("pred_text"), [s == "ok" for s in sub.col("status")], normalizer=normalizer
        )
        segments = score_segments(sub.col("text"), sub.col("pred_text"), sub.col("status"), sub.col("confidence"),
                                  sub.col("duration_s"), sub.col("segments"), normalizer=normalizer)
        reports.append(RunReport(run, sub, accuracy, scores, evaluate_speed(run), segments))
    report = Report(reports, normalizer, len(ids) if ids is not None else None, notes=notes)
    if len(runs) > 1 and ids is not None:
        report.disagreements, more = disagreements(
            evaluated, [r.scores for r in reports], normalizer=normalizer, top=top
        )
        report.notes.extend(more)
    elif len(runs) == 1:
        report.worst = worst_utterances(reports[0].evaluated, reports[0].scores, top=top)
    return report


def evaluate_paths(paths: Sequence[str | Path], *, normalizer: str = "whisper", top: int = 10) -> Report:
    names = unique_names(list(paths))
    return build_report([load_run(p, name) for p, name in zip(paths, names)], normalizer=normalizer, top=top)
