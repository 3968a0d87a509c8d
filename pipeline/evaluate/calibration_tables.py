"""The calibration as report tables (terminal, markdown, HTML) and statements."""

from __future__ import annotations

from .calibration import Calibration, calibration_of
from .report import Report
from .table import Table, hours, num, pct


def calibration_tables(report: Report) -> list[Table]:
    out: list[Table] = []
    for run in report.runs:
        cal = calibration_of(run)
        if not cal.available:
            continue
        notes = []
        if cal.n_ok_without_confidence:
            notes.append(f"{cal.n_ok_without_confidence} successful scored rows have no confidence and are left out")
        rows = [[b.label, str(b.n), hours(b.audio_s), num(b.mean_confidence), pct(b.wer)] for b in cal.buckets if b.n]
        out.append(Table(f"WER by confidence — {run.name}", ["confidence", "utterances", "hours", "mean confidence",
                                                              "WER %"], rows,
                         f"corpus WER of the {cal.n_rows} successful rows with a reference, per confidence bucket",
                         f"wer-by-confidence-{run.name}", notes))
        rows = [[f"{t.threshold:g}", str(t.n_kept), pct(t.share_kept), hours(t.audio_kept_s), pct(t.share_hours_kept),
                 pct(t.wer_kept)] for t in cal.thresholds]
        out.append(Table(f"Confidence thresholds — {run.name}", ["keep if confidence ≥", "utterances", "% of utterances",
                                                                 "hours", "% of hours", "WER % of kept"], rows,
                         "what `export --min-confidence T` would keep of these rows, and its WER",
                         f"confidence-thresholds-{run.name}"))
    return out


def calibration_notes(report: Report) -> list[str]:
    """Why a run with references has no calibration (older run, engine without log-probabilities)."""
    out = []
    for run in report.runs:
        cal: Calibration = calibration_of(run)
        if not cal.available and any(s is not None for s in run.scores):
            out.append(f"{run.name}: no confidence calibration: {cal.unavailable}")
    return out
