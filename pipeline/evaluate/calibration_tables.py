"""The calibration as report tables (terminal, markdown, HTML) and statements."""

from __future__ import annotations

from .calibration import Calibration, calibration_of, segment_calibration_of
from .report import Report
from .table import Table, hours, num, pct


def _tables(cal: Calibration, run_name: str, unit: str, key: str, export: str) -> list[Table]:
    """unit: "rows" / "segments"; key: "" / "segments-" (table keys); export: the export command it calibrates."""
    notes = []
    if cal.n_ok_without_confidence:
        notes.append(f"{cal.n_ok_without_confidence} successful scored {unit} have no confidence and are left out")
    of = "" if unit == "rows" else ", per segment"
    count = "utterances" if unit == "rows" else "segments"
    rows = [[b.label, str(b.n), hours(b.audio_s), num(b.mean_confidence), pct(b.wer)] for b in cal.buckets if b.n]
    caption = (f"corpus WER of the {cal.n_rows} successful rows with a reference, per confidence bucket"
               if unit == "rows" else
               f"corpus WER of the {cal.n_rows} segments of successful rows with a reference (each segment's share "
               "of its row's word edits, by alignment), per confidence bucket of the segment's own confidence")
    out = [Table(f"WER by confidence{of} — {run_name}", ["confidence", count, "hours", "mean confidence", "WER %"],
                 rows, caption, f"wer-by-confidence-{key}{run_name}", notes)]
    rows = [[f"{t.threshold:g}", str(t.n_kept), pct(t.share_kept), hours(t.audio_kept_s), pct(t.share_hours_kept),
             pct(t.wer_kept)] for t in cal.thresholds]
    out.append(Table(f"Confidence thresholds{of} — {run_name}", ["keep if confidence ≥", count, f"% of {count}",
                                                                 "hours", "% of hours", "WER % of kept"], rows,
                     f"what `{export} T` would keep of these {unit}, and its WER",
                     f"confidence-thresholds-{key}{run_name}"))
    return out


def calibration_tables(report: Report) -> list[Table]:
    """Per run: the per-row calibration, then the per-segment one where some row was split in segments (else it
    is the same as the per-row one and not repeated)."""
    out: list[Table] = []
    for run in report.runs:
        cal = calibration_of(run)
        if cal.available:
            out += _tables(cal, run.name, "rows", "", "export --min-confidence")
        if run.segment_scores.n_split_rows:
            seg = segment_calibration_of(run)
            if seg.available:
                out += _tables(seg, run.name, "segments", "segments-", "export --segments --min-confidence")
    return out


def calibration_notes(report: Report) -> list[str]:
    """Why a run with references has no calibration (older run, engine without log-probabilities)."""
    out = []
    for run in report.runs:
        cal: Calibration = calibration_of(run)
        if not cal.available and any(s is not None for s in run.scores):
            out.append(f"{run.name}: no confidence calibration: {cal.unavailable}")
        if run.segment_scores.n_split_rows:
            seg = segment_calibration_of(run)
            if not seg.available and any(s is not None for s in run.scores):
                out.append(f"{run.name}: no per-segment confidence calibration: {seg.unavailable}")
    return out
