"""Calibration of the per-utterance confidence against references: how WER falls as confidence rises, and what a
confidence threshold keeps (utterances, hours) and at what WER — so a labeling job can pick `export --min-confidence`
from data.

Rows considered: successful rows (status ok: the only ones an export keeps) with a confidence and a scored reference
(non-empty after normalization). Rates are corpus WER = Σ word edits / Σ reference words over the rows in question.
Runs written before the confidence columns existed, or whose engine reports none, get no calibration and a reason.

The same calibration per segment (`segment_calibration_of`): each segment of a long row with its own confidence,
duration and share of the row's word edits (segment_scores.py) — what `export --segments --min-confidence`
keeps. A row without segments is one segment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from .metrics import UttScore

CONFIDENCE_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1.0)  # buckets [lo, hi); the last one includes 1.0
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.95, 0.97, 0.98, 0.99)


@dataclass(frozen=True)
class ConfidenceBucket:
    lo: float
    hi: float
    n: int
    audio_s: float
    confidence_sum: float
    ref_words: int
    word_edits: int

    @property
    def label(self) -> str:
        return f"[{self.lo:g}, {self.hi:g}" + ("]" if self.hi >= 1.0 else ")")

    @property
    def wer(self) -> float | None:
        return self.word_edits / self.ref_words if self.ref_words else None

    @property
    def mean_confidence(self) -> float | None:
        return self.confidence_sum / self.n if self.n else None

    def to_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "n": self.n, "audio_s": self.audio_s, "ref_words": self.ref_words,
                "word_edits": self.word_edits, "wer": self.wer, "mean_confidence": self.mean_confidence}


@dataclass(frozen=True)
class ThresholdRow:
    """What `confidence >= threshold` keeps of the calibration rows."""

    threshold: float
    n_kept: int
    n_total: int
    audio_kept_s: float
    audio_total_s: float
    ref_words: int
    word_edits: int

    @property
    def share_kept(self) -> float | None:
        return self.n_kept / self.n_total if self.n_total else None

    @property
    def share_hours_kept(self) -> float | None:
        return self.audio_kept_s / self.audio_total_s if self.audio_total_s else None

    @property
    def wer_kept(self) -> float | None:
        return self.word_edits / self.ref_words if self.ref_words else None

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "n_kept": self.n_kept, "share_kept": self.share_kept,
                "hours_kept": self.audio_kept_s / 3600, "share_hours_kept": self.share_hours_kept,
                "wer_kept": self.wer_kept}


@dataclass
class Calibration:
    n_rows: int  # successful rows with a confidence and a scored reference
    n_ok_without_confidence: int  # successful, scored rows whose confidence is null (left out)
    buckets: list[ConfidenceBucket] = field(default_factory=list)
    thresholds: list[ThresholdRow] = field(default_factory=list)
    unavailable: str | None = None  # why there is no calibration (then the lists are empty)

    @property
    def available(self) -> bool:
        return self.unavailable is None

    def to_dict(self) -> dict:
        return {
            "available": self.available,
            "unavailable": self.unavailable,
            "n_rows": self.n_rows,
            "n_ok_without_confidence": self.n_ok_without_confidence,
            "wer_by_confidence": [b.to_dict() for b in self.buckets],
            "thresholds": [t.to_dict() for t in self.thresholds],
        }


def _bucket_index(c: float, edges: Sequence[float]) -> int:
    last = len(edges) - 2
    return next((i for i in range(last) if c < edges[i + 1]), last)


def calibrate(confidence: Sequence[float | None], durations: Sequence[float | None], ok: Sequence[bool],
              scores: Sequence[UttScore | None], *, edges: Sequence[float] = CONFIDENCE_EDGES,
              thresholds: Sequence[float] = THRESHOLDS, has_column: bool = True) -> Calibration:
    """WER per confidence bucket and per threshold over successful, scored rows that have a confidence."""
    if not has_column:
        return Calibration(0, 0, unavailable="no confidence column (a run written before confidence existed)")
    rows = []
    n_without = 0
    for c, d, good, s in zip(confidence, durations, ok, scores):
        if not good or s is None:
            continue
        if c is None:
            n_without += 1
            continue
        rows.append((min(max(float(c), 0.0), 1.0), float(d or 0.0), s.ref_words, s.word_edits))
    if not rows:
        if not any(s is not None for s in scores):
            why = "no reference to score against"
        elif n_without:
            why = f"no confidence values ({n_without} successful scored rows have none: engine reports no log-probabilities?)"
        else:
            why = "no successful scored rows"
        return Calibration(0, n_without, unavailable=why)

    k = len(edges) - 1
    n, audio, conf, words, edits = [0] * k, [0.0] * k, [0.0] * k, [0] * k, [0] * k
    for c, d, w, e in rows:
        i = _bucket_index(c, edges)
        n[i] += 1
        audio[i] += d
        conf[i] += c
        words[i] += w
        edits[i] += e
    buckets = [ConfidenceBucket(edges[i], edges[i + 1], n[i], audio[i], conf[i], words[i], edits[i]) for i in range(k)]

    total_audio = sum(d for _, d, _, _ in rows)
    table = []
    for t in thresholds:
        kept = [r for r in rows if r[0] >= t]
        table.append(ThresholdRow(t, len(kept), len(rows), sum(r[1] for r in kept), total_audio,
                                  sum(r[2] for r in kept), sum(r[3] for r in kept)))
    return Calibration(len(rows), n_without, buckets, table)


def calibration_of(run) -> Calibration:
    """The calibration of one RunReport (its scored rows)."""
    sub = run.evaluated
    return calibrate(sub.col("confidence"), sub.col("duration_s"), [s == "ok" for s in sub.col("status")],
                     run.scores, has_column=sub.has("confidence"))


def segment_calibration_of(run) -> Calibration:
    """The calibration of one RunReport's segments (its scored rows' segments)."""
    seg = run.segment_scores
    return calibrate(seg.confidence, seg.duration_s, seg.ok, seg.scores,
                     has_column=run.evaluated.has("confidence") or run.evaluated.has("segments"))
