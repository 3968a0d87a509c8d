"""Accuracy and speed metrics on hand-made cases with known answers."""

from __future__ import annotations

import json
import math

import pytest

from eval_helpers import result_row, write_run
from transcribe_batch.pipeline.evaluate.metrics import evaluate_accuracy, score_texts
from transcribe_batch.pipeline.evaluate.normalize import get_normalizer
from transcribe_batch.pipeline.evaluate.render_text import to_json, to_markdown
from transcribe_batch.pipeline.evaluate.report import build_report, evaluate_paths
from transcribe_batch.pipeline.evaluate.runs import RunError, load_run
from transcribe_batch.pipeline.evaluate.speed import evaluate_speed


def acc(refs, hyps, ok=None, normalizer="whisper"):
    ok = [True] * len(refs) if ok is None else ok
    return evaluate_accuracy(refs, hyps, ok, normalizer=normalizer)


@pytest.mark.parametrize(
    "ref, hyp",
    [
        ("I'm twenty-five years old.", "i am 25 years old"),  # contraction + spelled-out number
        ("He won't go, Mr. Smith!", "he will not go mister smith"),
        ("Two thousand and five", "2005"),
        ("twenty three point five percent", "23.5%"),
        ("The colour of the harbour", "the color of the harbor"),  # British -> American spelling
        ("TEN OF CLUBS", "Ten of clubs."),
        ("uh so it began", "so it began"),  # filler dropped
        ("Um, well...", "well"),  # the lone "." the normalizer leaves is a punctuation token: dropped
    ],
)
def test_whisper_normalization_makes_equivalent_texts_exact(ref, hyp):
    a, rows = acc([ref], [hyp])
    assert rows[0].word_edits == 0, (get_normalizer("whisper")(ref), get_normalizer("whisper")(hyp))
    assert a.all.wer == 0.0 and a.successful.exact_match == 1.0


def test_without_normalization_the_same_pair_has_errors():
    a, _ = acc(["I'm twenty-five years old."], ["i am 25 years old"], normalizer="none")
    assert a.all.wer > 0


def test_known_substitution_deletion_insertion_counts():
    [s] = score_texts(["the cat sat on the mat"], ["the cat sit on mat"])
    assert (s.ref_words, s.hits, s.substitutions, s.deletions, s.insertions) == (6, 4, 1, 1, 0)
    assert s.wer == pytest.approx(2 / 6)
    [s] = score_texts(["a b"], ["a b c d"])
    assert (s.insertions, s.wer) == (2, 1.0)
    [c] = score_texts(["abc"], ["abd"])
    assert c.char_edits == 1 and c.ref_chars == 3


def test_corpus_wer_is_total_edits_over_total_reference_words_not_a_mean():
    a, _ = acc(["a b c d", "e f"], ["a b c d", "x"])
    assert a.all.wer == pytest.approx(2 / 6)  # the mean of per-utterance WERs would be 0.5
    assert (a.all.substitutions, a.all.deletions, a.all.insertions) == (1, 1, 0)
    assert a.all.cer == pytest.approx((0 + 3) / (7 + 3))  # "e f" -> "x": 1 substitution + 2 deletions


def test_empty_hypothesis_is_all_deletions_and_a_complete_error():
    a, [s] = acc(["hello world"], [""])
    assert (s.deletions, s.hits) == (2, 0)
    assert a.all.wer == 1.0 and a.successful.complete_error == 1.0 and a.successful.exact_match == 0.0


def test_empty_references_are_left_out_and_stated():
    a, rows = acc(["hello there", "", "uh", None], ["hello there", "something", "", "anything"])
    assert a.all.n_scored == 1 and a.all.wer == 0.0
    assert (a.n_empty_reference, a.n_empty_reference_with_output, a.n_no_reference) == (2, 1, 1)
    assert rows[1] is None and rows[3] is None
    assert any("empty after normalization" in n for n in a.notes)
    assert any("no reference text" in n for n in a.notes)


@pytest.mark.parametrize("refs, hyps", [([], []), ([""], ["x"]), ([None, None], ["a", "b"])])
def test_all_empty_sets_give_undefined_rates_with_a_statement_not_inf(refs, hyps):
    a, _ = acc(refs, hyps)
    s = a.summary()
    for key in ("wer", "wer_successful", "cer", "exact_match", "complete_error"):
        assert s[key] is None
    assert a.notes and ("undefined" in a.notes[0])


def test_failed_rows_count_as_deletions_in_the_all_rows_view_only():
    refs = ["red green blue white", "black gold", "dark night"]
    preds = ["red green blue white", "black gild", "dark night"]
    a, _ = acc(refs, preds, ok=[True, True, False])
    assert (a.n_samples, a.n_successful, a.n_failed) == (3, 2, 1)
    assert a.successful.wer == pytest.approx(1 / 6)  # the seed's view: the failed row vanishes
    assert a.all.wer == pytest.approx(3 / 8)  # honest view: its 2 words are deletions
    assert a.all.deletions == 2
    assert a.successful.exact_match == pytest.approx(1 / 2)
    assert a.all.complete_error == pytest.approx(1 / 3)


def test_seed_metric_definitions():
    # exact-match: share of successful utterances with 0 errors; complete-error: share with no word right
    refs = ["a b", "c d", "e f", "g h", "i j"]
    preds = ["a b", "x y", "e z", "g h", "i j"]
    a, _ = acc(refs, preds, ok=[True, True, True, True, False])
    s = a.summary()
    assert (s["n_samples"], s["n_successful"]) == (5, 4)
    assert s["exact_match"] == pytest.approx(2 / 4)
    assert s["complete_error"] == pytest.approx(1 / 4)
    assert s["wer_successful"] == pytest.approx(3 / 8)
    assert s["wer"] == pytest.approx(5 / 10)


def _two_runs(tmp_path, ids_b):
    rows_a = [result_row(f"u{i}", "the cat sat on the mat", "the cat sat on the mat") for i in range(4)]
    rows_b = [result_row(i, "the cat sat on the mat", "the cat sat on a mat") for i in ids_b]
    return write_run(tmp_path / "a", rows_a), write_run(tmp_path / "b", rows_b)


def test_unmatched_ids_are_intersected_and_stated(tmp_path):
    a, b = _two_runs(tmp_path, ["u1", "u2", "x9"])
    report = evaluate_paths([a, b])
    assert report.n_common == 2
    assert [r.accuracy.n_samples for r in report.runs] == [2, 2]
    assert any("2 utterances present in all 2 runs" in n for n in report.notes)
    assert any(n.startswith("a: 2 of its 4") for n in report.notes)
    assert [d["id"] for d in report.disagreements] == ["u1", "u2"]
    assert report.disagreements[0]["runs"][1]["wer"] == pytest.approx(1 / 6)


def test_disjoint_runs_are_stated_and_still_render(tmp_path):
    a, b = _two_runs(tmp_path, ["x1", "x2"])
    report = evaluate_paths([a, b])
    assert report.n_common is None and report.disagreements == []
    assert "share no utterance id" in report.notes[0]
    assert "share no utterance id" in to_markdown(report)
    json.loads(to_json(report))


def test_all_empty_run_renders_null_not_inf(tmp_path):
    run = write_run(tmp_path / "empty", [result_row("u0", "", "hello"), result_row("u1", None, "x")])
    text = to_json(evaluate_paths([run]))
    data = json.loads(text)
    assert data["runs"][0]["accuracy"]["wer"] is None
    assert "Infinity" not in text and "NaN" not in text


def test_labeling_run_without_references_compares_against_first_run(tmp_path):
    a = write_run(tmp_path / "gpu", [result_row("u0", None, "good morning"), result_row("u1", None, "hi there")])
    b = write_run(tmp_path / "tpu", [result_row("u0", None, "good morning"), result_row("u1", None, "high there")])
    report = evaluate_paths([a, b])
    assert [d["id"] for d in report.disagreements] == ["u1"]
    assert any("measured against gpu" in n for n in report.notes)


def test_speed_figures_from_known_timings(tmp_path):
    rows = [
        result_row("a", "x", "x", duration=4.0, device=0, start=0.0, total=1.0, ttft=0.2, n_new=9),
        result_row("b", "x", "x", duration=6.0, device=0, start=1.0, total=2.0, ttft=0.4, n_new=9),
        result_row("c", "x", "x", duration=10.0, device=1, start=0.0, total=2.0, ttft=0.3, n_new=9, attempts=2),
        result_row("d", "x", None, status="failed", duration=3.0, device=1, start=2.0, total=1.0, attempts=3,
                   error_class="RepetitionError"),
    ]
    speed = evaluate_speed(load_run(write_run(tmp_path / "r", rows)))
    o = speed.overall
    assert o.audio_s == 20.0  # successful rows only
    assert o.device_s == 6.0  # failed attempts' device time counts
    assert o.rtfx_device == pytest.approx(20 / 6)
    assert o.wall_s == pytest.approx(3.0) and o.rtfx_wall == pytest.approx(20 / 3)
    assert o.dists["ttft_s"].n == 3 and o.dists["ttft_s"].p50 == pytest.approx(0.3)
    assert o.dists["total_s"].mean == pytest.approx(5 / 3)
    d0, d1 = speed.per_device
    assert (d0.device, d0.audio_s, d0.rtfx_device) == ("0", 10.0, pytest.approx(10 / 3))
    assert (d1.device, d1.n_rows, d1.n_successful, d1.rtfx_wall) == ("1", 2, 1, pytest.approx(10 / 3))
    f = speed.failures
    assert (f.n_retried, f.extra_attempts, f.n_recovered, f.max_attempts) == (2, 3, 1, 3)
    assert f.by_class[0]["error_class"] == "RepetitionError" and f.by_class[0]["count"] == 1


def test_run_loading_errors_name_the_path(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no results.parquet"):
        load_run(tmp_path / "empty")


def test_partial_run_is_read_from_parts_with_duplicates_dropped(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = tmp_path / "run" / "parts"
    parts.mkdir(parents=True)
    first = [result_row("u0", "a b", "a x", status="ok"), result_row("u1", "c d", None, status="failed")]
    retry = [result_row("u1", "c d", "c d", attempts=2)]
    pq.write_table(pa.Table.from_pylist(first), parts / "part-000000-a1b2c3d4.parquet")
    pq.write_table(pa.Table.from_pylist(retry), parts / "part-000001-e5f6a7b8.parquet")
    (parts / ".tmp-9f8e-part-000002-c0ffee00.parquet").write_bytes(b"PAR1 cut off by a crash")  # never a result
    run = load_run(tmp_path / "run")
    assert run.n == 2 and run.col("status") == ["ok", "ok"]
    assert any("no results.parquet" in n for n in run.notes) and any("duplicate" in n for n in run.notes)
    report = build_report([run])
    assert report.runs[0].accuracy.all.wer == pytest.approx(1 / 4)
    assert not math.isnan(report.runs[0].speed.overall.rtfx_device)


def test_parallel_normalization_equals_serial(monkeypatch):
    import transcribe_batch.pipeline.evaluate.normalize as normalize

    texts = [f"I'm {n} years old, Mr. Smith; it's twenty {n}." for n in ("one", "two", "three")] * 20
    monkeypatch.setattr(normalize, "PARALLEL_MIN", 10)
    assert normalize.normalize_all(texts, workers=2) == normalize.normalize_all(texts, workers=1)
