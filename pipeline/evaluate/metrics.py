"""Accuracy: corpus WER/CER with S/D/I, exact-match and complete-error rates, in two views.

Corpus WER = Σ word edits / Σ reference words (not a mean of per-utterance WERs), from jiwer's alignments of the
normalized texts. Two views, side by side:

* **all rows** (`wer`, `cer`, …): every row with a reference counts; a failed row is scored as an empty hypothesis,
  i.e. all its reference words are deletions. A run that fails on the hard utterances cannot look better than it is.
* **successful rows** (`wer_successful`, …, `exact_match`, `complete_error`): only rows whose status is `ok` — what
  the existing BM1684X port (UltraEval-Audio) published, kept for comparison with its figures.

Rows without a reference, and references that are empty after normalization, are left out of every rate (as the
Open ASR Leaderboard does) and counted, so the report can state it. Rates are fractions; renderers show percent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import jiwer

from .normalize import normalize_all


@dataclass(frozen=True)
class UttScore:
    """Edit counts of one utterance (normalized texts)."""

    ref_words: int
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    ref_chars: int
    char_edits: int

    @property
    def word_edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float | None:
        return self.word_edits / self.ref_words if self.ref_words else None

    @property
    def exact(self) -> bool:
        return self.word_edits == 0

    @property
    def complete_error(self) -> bool:
        return self.ref_words > 0 and self.hits == 0


def score_texts(refs: Sequence[str], hyps: Sequence[str]) -> list[UttScore]:
    """Per-utterance word and character edit counts of already-normalized texts (one jiwer call per level)."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        return []
    words = jiwer.process_words(list(refs), list(hyps))
    chars = jiwer.process_characters(list(refs), list(hyps))
    scores = []
    for ref_words, word_chunks, ref_chars, char_chunks in zip(
        words.references, words.alignments, chars.references, chars.alignments
    ):
        counts = {"equal": 0, "substitute": 0, "delete": 0, "insert": 0}
        for chunk in word_chunks:
            span = chunk.hyp_end_idx - chunk.hyp_start_idx if chunk.type == "insert" else chunk.ref_end_idx - chunk.ref_start_idx
            counts[chunk.type] += span
        char_edits = 0
        for chunk in char_chunks:
            if chunk.type == "insert":
                char_edits += chunk.hyp_end_idx - chunk.hyp_start_idx
            elif chunk.type != "equal":
                char_edits += chunk.ref_end_idx - chunk.ref_start_idx
        scores.append(
            UttScore(
                ref_words=len(ref_words),
                hits=counts["equal"],
                substitutions=counts["substitute"],
                deletions=counts["delete"],
                insertions=counts["insert"],
                ref_chars=len(ref_chars),
                char_edits=char_edits,
            )
        )
    return scores


@dataclass
class ViewTotals:
    """Sums over the scored rows of one view."""

    n_scored: int = 0
    ref_words: int = 0
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_chars: int = 0
    char_edits: int = 0
    n_exact: int = 0
    n_complete_error: int = 0

    def add(self, s: UttScore) -> None:
        self.n_scored += 1
        self.ref_words += s.ref_words
        self.hits += s.hits
        self.substitutions += s.substitutions
        self.deletions += s.deletions
        self.insertions += s.insertions
        self.ref_chars += s.ref_chars
        self.char_edits += s.char_edits
        self.n_exact += s.exact
        self.n_complete_error += s.complete_error

    @property
    def wer(self) -> float | None:
        return (self.substitutions + self.deletions + self.insertions) / self.ref_words if self.ref_words else None

    @property
    def cer(self) -> float | None:
        return self.char_edits / self.ref_chars if self.ref_chars else None

    @property
    def exact_match(self) -> float | None:
        return self.n_exact / self.n_scored if self.n_scored else None

    @property
    def complete_error(self) -> float | None:
        return self.n_complete_error / self.n_scored if self.n_scored else None


@dataclass
class Accuracy:
    normalizer: str
    n_samples: int  # rows evaluated
    n_successful: int  # status ok
    n_no_reference: int  # rows whose reference text is missing
    n_empty_reference: int  # references empty after normalization (left out of the rates)
    n_empty_reference_with_output: int  # … of which the prediction was not empty
    all: ViewTotals  # every row with a reference; failed rows scored as empty hypotheses
    successful: ViewTotals  # successful rows with a reference (the seed's view)
    notes: list[str] = field(default_factory=list)

    @property
    def n_failed(self) -> int:
        return self.n_samples - self.n_successful

    def summary(self) -> dict:
        """Flat numbers for tables and JSON (rates as fractions, None where undefined)."""
        return {
            "n_samples": self.n_samples,
            "n_successful": self.n_successful,
            "n_failed": self.n_failed,
            "n_scored": self.all.n_scored,
            "n_no_reference": self.n_no_reference,
            "n_empty_reference": self.n_empty_reference,
            "ref_words": self.all.ref_words,
            "wer": self.all.wer,
            "wer_successful": self.successful.wer,
            "substitutions": self.all.substitutions,
            "deletions": self.all.deletions,
            "insertions": self.all.insertions,
            "cer": self.all.cer,
            "cer_successful": self.successful.cer,
            "exact_match": self.successful.exact_match,
            "complete_error": self.successful.complete_error,
            "exact_match_all": self.all.exact_match,
            "complete_error_all": self.all.complete_error,
        }

    def to_dict(self) -> dict:
        return {
            "normalizer": self.normalizer,
            **self.summary(),
            "totals_all": asdict(self.all),
            "totals_successful": asdict(self.successful),
            "notes": list(self.notes),
        }


def evaluate_accuracy(
    references: Sequence[str | None],
    predictions: Sequence[str | None],
    ok: Sequence[bool],
    *,
    normalizer: str = "whisper",
) -> tuple[Accuracy, list[UttScore | None]]:
    """Score rows; returns the corpus figures and each row's score (None where the row has no usable reference).

    A failed row's score is that of an empty hypothesis (all deletions), whatever text it carries.
    """
    if not (len(references) == len(predictions) == len(ok)):
        raise ValueError("references, predictions and ok must have one entry per row")
    with_ref = [i for i, ref in enumerate(references) if ref is not None]
    n_no_ref = len(references) - len(with_ref)
    refs_n = normalize_all([references[i] for i in with_ref], normalizer)
    scored_rows = [i for i, r in zip(with_ref, refs_n) if r]
    refs = [r for r in refs_n if r]
    empty_ref_rows = [i for i, r in zip(with_ref, refs_n) if not r]
    n_empty_ref = len(empty_ref_rows)
    # Only rows that are scored need their hypothesis normalized (a failed row's hypothesis is empty).
    todo = [i for i in scored_rows + empty_ref_rows if ok[i] and predictions[i]]
    hyp_of = dict(zip(todo, normalize_all([predictions[i] for i in todo], normalizer)))
    hyps = [hyp_of.get(i, "") for i in scored_rows]
    n_empty_ref_with_output = sum(bool(hyp_of.get(i)) for i in empty_ref_rows)

    per_row: list[UttScore | None] = [None] * len(references)
    everything, successful = ViewTotals(), ViewTotals()
    for i, score in zip(scored_rows, score_texts(refs, hyps)):
        per_row[i] = score
        everything.add(score)
        if ok[i]:
            successful.add(score)

    n_successful = sum(bool(x) for x in ok)
    notes: list[str] = []
    if not references:
        notes.append("no rows to evaluate: every metric is undefined")
    elif everything.n_scored == 0:
        notes.append("no row has a non-empty reference text: WER, CER, exact-match and complete-error are undefined")
    elif successful.n_scored == 0:
        notes.append("no successful row has a reference: the successful-rows WER/CER are undefined")
    if n_no_ref:
        notes.append(f"{n_no_ref} of {len(references)} rows have no reference text: left out of WER/CER")
    if n_empty_ref:
        notes.append(
            f"{n_empty_ref} references are empty after normalization: left out of WER/CER "
            f"({n_empty_ref_with_output} of them got a non-empty prediction)"
        )
    accuracy = Accuracy(
        normalizer=normalizer,
        n_samples=len(references),
        n_successful=n_successful,
        n_no_reference=n_no_ref,
        n_empty_reference=n_empty_ref,
        n_empty_reference_with_output=n_empty_ref_with_output,
        all=everything,
        successful=successful,
        notes=notes,
    )
    return accuracy, per_row


DURATION_EDGES = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, float("inf"))


@dataclass(frozen=True)
class Bucket:
    lo: float
    hi: float
    n_scored: int
    ref_words: int
    word_edits: int

    @property
    def label(self) -> str:
        return f"≥{self.lo:g} s" if self.hi == float("inf") else f"{self.lo:g}–{self.hi:g} s"

    @property
    def wer(self) -> float | None:
        return self.word_edits / self.ref_words if self.ref_words else None


def wer_by_duration(durations: Sequence[float | None], scores: Sequence[UttScore | None],
                    edges: Sequence[float] = DURATION_EDGES) -> list[Bucket]:
    """Corpus WER per utterance-duration bucket [lo, hi) over the scored rows (all-rows view)."""
    n = [0] * (len(edges) - 1)
    words = [0] * (len(edges) - 1)
    edits = [0] * (len(edges) - 1)
    for d, s in zip(durations, scores):
        if s is None or d is None:
            continue
        k = next((i for i in range(len(edges) - 1) if d < edges[i + 1]), len(edges) - 2)
        n[k] += 1
        words[k] += s.ref_words
        edits[k] += s.word_edits
    return [Bucket(edges[i], edges[i + 1], n[i], words[i], edits[i]) for i in range(len(edges) - 1)]
