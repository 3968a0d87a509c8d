"""Several runs on the same utterances: the common id set, and the utterances where the runs disagree most."""

from __future__ import annotations

from typing import Sequence

from .metrics import UttScore, score_texts
from .normalize import get_normalizer, normalize_all
from .runs import Run


def common_ids(runs: Sequence[Run]) -> tuple[list[str] | None, list[str]]:
    """Ids present in every run, in the first run's order, with statements about what was left out.

    Returns (None, notes) when the runs share no id at all: then each run is scored on its own rows.
    """
    if len(runs) < 2:
        return (list(runs[0].columns["id"]) if runs else []), []
    sets = [set(run.columns["id"]) for run in runs]
    shared = set.intersection(*sets)
    notes: list[str] = []
    if not shared:
        notes.append(
            f"the {len(runs)} runs share no utterance id: each is scored on its own rows, "
            "so their figures are not comparable and no per-utterance comparison is possible"
        )
        return None, notes
    ids = [row_id for row_id in runs[0].columns["id"] if row_id in shared]
    if all(len(s) == len(shared) for s in sets):
        notes.append(f"all {len(runs)} runs hold the same {len(shared)} utterances")
    else:
        notes.append(f"compared on the {len(shared)} utterances present in all {len(runs)} runs")
        for run, s in zip(runs, sets):
            extra = len(s) - len(shared)
            if extra:
                notes.append(f"{run.name}: {extra} of its {len(s)} utterances are not in every run and are left out")
    return ids, notes


def reference_conflicts(runs: Sequence[Run], normalizer: str) -> int:
    """How many common ids carry different (normalized) references in different runs."""
    texts = [run.col("text") for run in runs]
    if all(t == texts[0] for t in texts[1:]):  # the usual case: the same manifest, identical references
        return 0
    refs = []
    for column in texts:
        given = normalize_all([t for t in column if t is not None], normalizer)
        it = iter(given)
        refs.append([next(it) if t is not None else None for t in column])
    return sum(len({r for r in row if r is not None}) > 1 for row in zip(*refs))


def disagreements(
    runs: Sequence[Run], scores: Sequence[Sequence[UttScore | None]], *, normalizer: str, top: int = 10
) -> tuple[list[dict], list[str]]:
    """The utterances whose per-utterance WER differs most between runs (runs already cut to the common ids).

    Without references, the first run's prediction stands in as the reference, and the report says so.
    """
    notes: list[str] = []
    if len(runs) < 2 or top <= 0:
        return [], notes
    base = runs[0]
    has_ref = any(s is not None for s in scores[0])
    if not has_ref:
        norm = get_normalizer(normalizer)
        refs = [norm(t or "") for t in base.col("pred_text")]
        ok0 = [s == "ok" for s in base.col("status")]
        keep = [i for i, r in enumerate(refs) if r and ok0[i]]
        if not keep:
            notes.append("no references and no usable prediction in the first run: runs cannot be compared by text")
            return [], notes
        notes.append(f"no references: disagreements are measured against {base.name}'s predictions")
        scores = []
        for run in runs:
            preds = run.col("pred_text")
            ok = [s == "ok" for s in run.col("status")]
            hyps = [norm(preds[i] or "") if ok[i] else "" for i in keep]
            row_scores: list[UttScore | None] = [None] * base.n
            for i, score in zip(keep, score_texts([refs[i] for i in keep], hyps)):
                row_scores[i] = score
            scores.append(row_scores)

    rows = []
    for i, row_id in enumerate(base.columns["id"]):
        wers = [s[i].wer if s[i] is not None else None for s in scores]
        defined = [w for w in wers if w is not None]
        if len(defined) < 2:
            continue
        spread = max(defined) - min(defined)
        if spread <= 0:
            continue
        rows.append((spread, max(defined), i, wers))
    rows.sort(key=lambda r: (-r[0], -r[1], r[2]))
    if not rows:
        notes.append("the runs have the same per-utterance WER on every common utterance")
    out = []
    refs_text = base.col("text") if has_ref else base.col("pred_text")
    durations = base.col("duration_s")
    for spread, _, i, wers in rows[:top]:
        out.append(
            {
                "id": base.columns["id"][i],
                "duration_s": durations[i],
                "reference": refs_text[i],
                "spread": spread,
                "runs": [
                    {
                        "run": run.name,
                        "text": run.col("pred_text")[i],
                        "status": run.col("status")[i],
                        "wer": w,
                    }
                    for run, w in zip(runs, wers)
                ],
            }
        )
    return out, notes


def worst_utterances(run: Run, scores: Sequence[UttScore | None], *, top: int = 10) -> list[dict]:
    """A single run's utterances with the most word errors."""
    ranked = sorted(
        (i for i, s in enumerate(scores) if s is not None and s.word_edits > 0),
        key=lambda i: (-scores[i].word_edits, -(scores[i].wer or 0.0), i),
    )
    texts, refs, status, durations = run.col("pred_text"), run.col("text"), run.col("status"), run.col("duration_s")
    return [
        {
            "id": run.columns["id"][i],
            "duration_s": durations[i],
            "reference": refs[i],
            "text": texts[i],
            "status": status[i],
            "wer": scores[i].wer,
            "word_edits": scores[i].word_edits,
        }
        for i in ranked[:top]
    ]
