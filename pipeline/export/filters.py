"""Which rows an export keeps, and why each other row is dropped (the first rule it fails, in `REASONS` order).
With `export --segments` the rows are segments (segments.py): every rule reads the segment's own values.

The rules are vectorized over one Arrow batch, except the text checks of sanity.py (hallucination phrases,
repetition), which run only on the rows every earlier rule kept; the agreement rule reads the per-row codes
`agreement` computed. The sanity filters' defaults are config/defaults.toml's `[export]` table.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transcribe_batch.config.settings import section

from . import ExportError
from .sanity import hallucinated, read_phrases, repeated, shipped

STATUSES = ("ok", "failed", "any")

# Agreement codes (per row, float32): a normalized WER >= 0, or one of these.
NOT_CHECKED = np.float32(np.nan)  # the row failed an earlier rule: never compared
MISSING_OTHER = np.float32(-1.0)  # no row with this id in the --agree-with run
FAILED_OTHER = np.float32(-2.0)  # the --agree-with run's row failed or has no transcript
SPAN_DIFFERS = np.float32(-3.0)  # --segments: the --agree-with run's segment of this id covers other audio

_SANITY = section("export")

REASONS = {
    "status": "status is not the one asked for (--status)",
    "empty_text": "no transcript (null or blank)",
    "no_language": "no detected language (--language)",
    "other_language": "detected language is not --language",
    "no_confidence": "no confidence value (engine gave no log-probabilities)",
    "low_confidence": "confidence below --min-confidence",
    "too_short": "shorter than --min-duration",
    "too_long": "longer than --max-duration",
    "too_few_chars_per_s": "fewer characters per second than --min-chars-per-s",
    "too_many_chars_per_s": "more characters per second than --max-chars-per-s",
    "repetition": "runaway repetition (--repetition)",
    "hallucination": "a known hallucination phrase (--hallucinations)",
    "missing_in_other_run": "id not in the --agree-with run",
    "failed_in_other_run": "failed or empty in the --agree-with run",
    "split_differently_in_other_run": "the --agree-with run's segment of this id covers other audio",
    "disagreement": "normalized WER against the --agree-with run above --max-disagreement",
}


@lru_cache(maxsize=1024)
def _language_name(value: str) -> str:
    from transcribe_batch.workers.models.qwen3_asr import language_name  # (imports the front end: only when used)

    return language_name(value)


@dataclass(frozen=True)
class Filters:
    status: str = "ok"
    min_confidence: float | None = None
    min_duration: float | None = None
    max_duration: float | None = None
    max_disagreement: float | None = None  # set when there is a run to agree with
    language: str | None = None  # keep detected language X (a name or ISO code, as Qwen3-ASR's `language_name`)
    min_chars_per_s: float = _SANITY["min_chars_per_s"]  # 0: off
    max_chars_per_s: float = _SANITY["max_chars_per_s"]  # 0: off
    hallucinations: str | None = shipped(_SANITY["hallucinations"]) if _SANITY["hallucinations"] else None
    repetition: bool = _SANITY["repetition"]

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
        for name, value in (("--min-chars-per-s", self.min_chars_per_s), ("--max-chars-per-s", self.max_chars_per_s)):
            if not math.isfinite(value) or value < 0:
                raise ExportError(f"{name} {value:g}: must be a finite number >= 0 (0 = off)")
        if self.min_chars_per_s and self.max_chars_per_s and self.min_chars_per_s > self.max_chars_per_s:
            raise ExportError(f"--min-chars-per-s {self.min_chars_per_s:g} is above --max-chars-per-s "
                              f"{self.max_chars_per_s:g}")
        if self.language is not None and not self.language.strip():
            raise ExportError("--language: give a language name or code, e.g. English or en")
        if self.hallucinations:
            read_phrases(self.hallucinations)
        return self

    @property
    def language_wanted(self) -> str | None:
        return _language_name(self.language) if self.language else None

    def columns(self) -> list[str]:
        """Columns the rules read."""
        cols = ["status", "pred_text", "duration_s"]
        if self.min_confidence is not None:
            cols.append("confidence")
        if self.language is not None:
            cols.append("detected_language")
        return cols


def _np(array: pa.ChunkedArray | pa.Array, fill) -> np.ndarray:
    return pc.fill_null(array, fill).to_numpy(zero_copy_only=False)


def _languages(values: list[str | None], wanted: str) -> tuple[np.ndarray, np.ndarray]:
    """(no language, another language) per row; a row's "A,B" (its pieces said different ones) is another."""
    none = np.array([not v for v in values], dtype=bool)
    other = np.array([bool(v) and any(_language_name(p) != wanted for p in v.split(",") if p.strip())
                      for v in values], dtype=bool)
    return none, other


def _on_kept(check, batch: pa.Table, columns: tuple[str, ...]):
    """A text check (sanity.py) as a rule that runs only on the rows still kept."""
    def fails(keep: np.ndarray) -> np.ndarray:
        out = np.zeros(batch.num_rows, dtype=bool)
        rows = np.flatnonzero(keep)
        if len(rows):
            picked = batch.select(list(columns)).take(pa.array(rows))
            out[rows] = check(*(picked[c] for c in columns))
        return out
    return fails


def keep_mask(batch: pa.Table, filters: Filters, agreement: np.ndarray | None = None) -> tuple[np.ndarray, Counter]:
    """(keep: bool per row, dropped rows counted by reason). `agreement`: the rows' codes/WERs, or None."""
    n = batch.num_rows
    rules: list = []  # (reason, fails: bool per row, or a function of the rows kept so far giving it) in order
    if filters.status != "any":
        rules.append(("status", _np(pc.not_equal(batch["status"], filters.status), True)))
    text = pc.utf8_trim_whitespace(batch["pred_text"])
    n_chars = pc.utf8_length(text)
    rules.append(("empty_text", _np(pc.equal(n_chars, 0), True)))
    if filters.language is not None:
        none, other = _languages(batch["detected_language"].to_pylist(), filters.language_wanted)
        rules.append(("no_language", none))
        rules.append(("other_language", other))
    if filters.min_confidence is not None:
        confidence = batch["confidence"]
        rules.append(("no_confidence", _np(pc.is_null(confidence, nan_is_null=True), True)))
        rules.append(("low_confidence", _np(pc.less(confidence, filters.min_confidence), False)))
    duration = batch["duration_s"]
    if filters.min_duration is not None:
        rules.append(("too_short", _np(pc.less(duration, filters.min_duration), True)))
    if filters.max_duration is not None:
        rules.append(("too_long", _np(pc.greater(duration, filters.max_duration), True)))
    if filters.min_chars_per_s or filters.max_chars_per_s:
        seconds = _np(duration, 0.0).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            chars = _np(n_chars, 0).astype(np.float64)
            rate = np.where(seconds > 0, chars / np.where(seconds > 0, seconds, 1), np.inf)
        if filters.min_chars_per_s:
            rules.append(("too_few_chars_per_s", rate < filters.min_chars_per_s))
        if filters.max_chars_per_s:
            rules.append(("too_many_chars_per_s", rate > filters.max_chars_per_s))
    if filters.repetition:
        rules.append(("repetition", _on_kept(repeated, batch, ("pred_text", "duration_s"))))
    if filters.hallucinations:
        phrases = read_phrases(filters.hallucinations)
        rules.append(("hallucination", _on_kept(lambda texts: hallucinated(texts, phrases), batch, ("pred_text",))))
    if agreement is not None:
        rules.append(("missing_in_other_run", agreement == MISSING_OTHER))
        rules.append(("failed_in_other_run", agreement == FAILED_OTHER))
        rules.append(("split_differently_in_other_run", agreement == SPAN_DIFFERS))
        with np.errstate(invalid="ignore"):
            rules.append(("disagreement", agreement > filters.max_disagreement))
    keep = np.ones(n, dtype=bool)
    dropped: Counter = Counter()
    for reason, fails in rules:
        if callable(fails):
            fails = fails(keep)
        hit = keep & fails.astype(bool)
        count = int(hit.sum())
        if count:
            dropped[reason] += count
            keep &= ~hit
    return keep, dropped


def pre_agreement(filters: Filters) -> Filters:
    """The rules that run before agreement (only their survivors are compared with the other run)."""
    return dataclasses.replace(filters, max_disagreement=None)
