"""Word edits per segment of a long row, for the per-segment confidence calibration (calibration.py).

A reference belongs to the whole row, never to one segment, so each segment's share is found by alignment: the
row's normalized reference is aligned (jiwer, as metrics.score_texts) with the row's hypothesis made of its
segments' normalized texts in order, every hypothesis word remembering its segment. A hit, substitution or
insertion belongs to the segment of its hypothesis word (with the reference word it covers); a run of deletions
belongs to the segment of the hypothesis word before it (at the very start: the one after it; a row whose
segments say nothing at all: its first segment). The row's own score (joined text against its reference) is
metrics.evaluate_accuracy's and is not changed by any of this; the per-segment sums can differ slightly from it
where the normalizer treats a text differently cut in pieces (numbers spanning a cut, say).

A row whose `segments` is null (a run from before segments existed) is one segment with the row's own text,
confidence and duration, so an old run's per-segment calibration is its per-row one. A row whose list is empty (all
of it left out as non-speech) has no segment to hold its reference's words: they are in the per-row figures only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import jiwer

from .metrics import UttScore
from .normalize import normalize_all


@dataclass
class SegmentScores:
    """One entry per segment of the evaluated rows (rows in order, segments in order)."""

    confidence: list[float | None] = field(default_factory=list)
    duration_s: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    scores: list[UttScore | None] = field(default_factory=list)  # None: its row is failed or has no reference
    n_split_rows: int = 0  # rows with two segments or more

    @property
    def n(self) -> int:
        return len(self.scores)


def _segments_of(segments: Any, pred: str | None, confidence: float | None, duration: float | None,
                 status: str | None) -> list[dict]:
    if segments is None:
        return [{"text": pred, "confidence": confidence, "start_s": 0.0, "end_s": float(duration or 0.0),
                 "status": status}]
    return list(segments)


def score_segments(references: Sequence[str | None], predictions: Sequence[str | None],
                   statuses: Sequence[str | None], confidence: Sequence[float | None],
                   durations: Sequence[float | None], segments: Sequence[Any], *,
                   normalizer: str = "whisper") -> SegmentScores:
    out = SegmentScores()
    todo: list[tuple[int, str, list[str], int]] = []  # (index of its first segment, reference, texts, segments)
    refs_n = normalize_all([r or "" for r in references], normalizer)
    for ref, ref_n, pred, status, conf, dur, segs in zip(references, refs_n, predictions, statuses, confidence,
                                                         durations, segments):
        pieces = _segments_of(segs, pred, conf, dur, status)
        out.n_split_rows += len(pieces) > 1
        first = out.n
        row_ok = status == "ok"
        for p in pieces:
            out.confidence.append(p.get("confidence"))
            out.duration_s.append(max(0.0, float(p.get("end_s") or 0.0) - float(p.get("start_s") or 0.0)))
            out.ok.append(row_ok and p.get("status", status) == "ok")
            out.scores.append(None)
        if row_ok and ref is not None and ref_n and pieces:
            todo.append((first, ref_n, [p.get("text") or "" for p in pieces], len(pieces)))
    if not todo:
        return out
    texts = normalize_all([t for _, _, seg_texts, _ in todo for t in seg_texts], normalizer)
    hyps, owners, at = [], [], 0
    for _, _, seg_texts, n in todo:
        words, owner = [], []
        for k, text in enumerate(texts[at:at + n]):
            split = text.split()
            words += split
            owner += [k] * len(split)
        at += n
        hyps.append(" ".join(words))
        owners.append(owner)
    aligned = jiwer.process_words([ref for _, ref, _, _ in todo], hyps)
    for (first, _, _, n), owner, chunks in zip(todo, owners, aligned.alignments):
        counts = [[0, 0, 0, 0, 0] for _ in range(n)]  # ref words, hits, substitutions, deletions, insertions
        for c in chunks:
            if c.type in ("equal", "substitute"):
                for j in range(c.ref_end_idx - c.ref_start_idx):
                    k = owner[c.hyp_start_idx + j]
                    counts[k][0] += 1
                    counts[k][1 if c.type == "equal" else 2] += 1
            elif c.type == "insert":
                for j in range(c.hyp_start_idx, c.hyp_end_idx):
                    counts[owner[j]][4] += 1
            else:  # delete
                k = (owner[c.hyp_start_idx - 1] if c.hyp_start_idx > 0
                     else owner[c.hyp_start_idx] if c.hyp_start_idx < len(owner) else 0)
                counts[k][0] += c.ref_end_idx - c.ref_start_idx
                counts[k][3] += c.ref_end_idx - c.ref_start_idx
        for k, (words, hits, subs, dels, ins) in enumerate(counts):
            out.scores[first + k] = UttScore(words, hits, subs, dels, ins, 0, 0)
    return out
