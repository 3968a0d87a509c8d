"""Which rows an export keeps, and why each other row is dropped (the first rule it fails, in `REASONS` order).

All rules are vectorized over one Arrow batch; the agreement rule reads the per-row codes `agreement` computed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import ExportError

STATUSES = ("ok", "failed", "any")

# Agreement codes (per row, float32): a normalized WER >= 0, or one of these.
NOT_CHECKED = np.float32(np.nan)  # the row failed an earlier rule: never compared
MISSING_OTHER = np.float32(-1.0)  # no row with this id in the --agree-with run
FAILED_OTHER = np.float32(-2.0)  # the --agree-with run's row failed or has no transcript

REASONS = {
    "status": "status is not the one asked for (--status)",
    "empty_text": "no transcript (null or blank)",
    "no_confidence": "no confidence value (engine gave no log-probabilities)",
    "low_confidence": "confidence below --min-confidence",
    "too_short": "shorter than --min-duration",
    "too_long": "longer than --max-duration",
    "missing_in_other_run": "id not in the --agree-with run",
    "failed_in_other_run": "failed or empty in the --agree-with run",
    "disagreement": "normalized WER against the --agree-with run above --max-disagreement",
}


@dataclass(frozen=True)
class Filters:
    status: str = "ok"
    min_confidence: float | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    max_disagreement: float | None = None  # set when there is a run to agree with

    def check(self) -> "Filters":
        if self.status not in STATUSES:
            raise ExportError(f"--status {self.status!r}: choose from {', '.join(STATUSES)}")
        if self.min_confidence is not None and not (0.0 <= self.min_confidence <= 1.0):
            raise ExportError(f"--min-confidence {self.min_confidence:g}: a confidence is in [0, 1]")
        for name, value in (("--min-duration", self.min_duration), ("--max-duration", self.max_duration),
                            ("--max-disagreement", self.max_disagreement)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ExportError(f"{name} {value:g}: must be a finite number >= 0")
        if self.min_duration is not None and self.max_duration is not None and self.min_duration > self.max_duration:
            raise ExportError(f"--min-duration {self.min_duration:g} is above --max-duration {self.max_duration:g}")
        return self

    def columns(self) -> list[str]:
        """Columns the rules read."""
        cols = ["status", "pred_text", "duration_s"]
        if self.min_confidence is not None:
            cols.append("confidence")
        return cols


def _np(array: pa.ChunkedArray | pa.Array, fill) -> np.ndarray:
    return pc.fill_null(array, fill).to_numpy(zero_copy_only=False)


def keep_mask(batch: pa.Table, filters: Filters, agreement: np.ndarray | None = None) -> tuple[np.ndarray, Counter]:
    """(keep: bool per row, dropped rows counted by reason). `agreement`: the rows' codes/WERs, or None."""
    n = batch.num_rows
    rules: list[tuple[str, np.ndarray]] = []  # (reason, fails) in order
    if filters.status != "any":
        rules.append(("status", _np(pc.not_equal(batch["status"], filters.status), True)))
    text = pc.utf8_trim_whitespace(batch["pred_text"])
    rules.append(("empty_text", _np(pc.equal(pc.utf8_length(text), 0), True)))
    if filters.min_confidence is not None:
        confidence = batch["confidence"]
        rules.append(("no_confidence", _np(pc.is_null(confidence, nan_is_null=True), True)))
        rules.append(("low_confidence", _np(pc.less(confidence, filters.min_confidence), False)))
    duration = batch["duration_s"]
    if filters.min_duration is not None:
        rules.append(("too_short", _np(pc.less(duration, filters.min_duration), True)))
    if filters.max_duration is not None:
        rules.append(("too_long", _np(pc.greater(duration, filters.max_duration), True)))
    if agreement is not None:
        rules.append(("missing_in_other_run", agreement == MISSING_OTHER))
        rules.append(("failed_in_other_run", agreement == FAILED_OTHER))
        with np.errstate(invalid="ignore"):
            rules.append(("disagreement", agreement > filters.max_disagreement))
    keep = np.ones(n, dtype=bool)
    dropped: Counter = Counter()
    for reason, fails in rules:
        hit = keep & fails.astype(bool)
        count = int(hit.sum())
        if count:
            dropped[reason] += count
            keep &= ~hit
    return keep, dropped


def pre_agreement(filters: Filters) -> Filters:
    """The rules that run before agreement (only their survivors are compared with the other run)."""
    return Filters(filters.status, filters.min_confidence, filters.min_duration, filters.max_duration, None)
