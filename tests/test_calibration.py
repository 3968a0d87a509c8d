"""eval's confidence calibration: WER per confidence bucket and what each threshold keeps."""

from __future__ import annotations

import json

import pytest

from eval_helpers import result_row, segment, write_run
from transcribe_batch.pipeline.evaluate.calibration import calibrate
from transcribe_batch.pipeline.evaluate.metrics import evaluate_accuracy
from transcribe_batch.pipeline.evaluate.render_html import render_html
from transcribe_batch.pipeline.evaluate.render_text import to_json, to_markdown
from transcribe_batch.pipeline.evaluate.report import evaluate_paths

REF = "the cat sat on the mat"  # 6 words


def _rows(with_confidence=True):
    rows = [
        # (prediction, confidence, duration): two right, one with 1 error, one all wrong, one failed, one no ref
        ("the cat sat on the mat", 0.99, 2.0),
        ("the cat sat on the mat", 0.96, 4.0),
        ("the cat sat on a mat", 0.85, 2.0),
        ("a dog ran by my hat", 0.40, 2.0),
    ]
    out = []
    for i, (pred, conf, dur) in enumerate(rows):
        r = result_row(f"u{i}", REF, pred, duration=dur)
        if with_confidence:
            r["confidence"] = conf
        out.append(r)
    failed = result_row("u4", REF, None, status="failed")
    no_ref = result_row("u5", None, "anything", duration=3.0)
    if with_confidence:
        failed["confidence"], no_ref["confidence"] = 0.1, 0.99
    return out + [failed, no_ref]


def test_buckets_and_thresholds():
    rows = _rows()
    acc, scores = evaluate_accuracy([r["text"] for r in rows], [r["pred_text"] for r in rows],
                                    [r["status"] == "ok" for r in rows])
    cal = calibrate([r["confidence"] for r in rows], [r["duration_s"] for r in rows],
                    [r["status"] == "ok" for r in rows], scores)
    assert cal.available and cal.n_rows == 4  # the failed row and the one without reference are not calibrated
    by_label = {b.label: b for b in cal.buckets if b.n}
    assert set(by_label) == {"[0, 0.5)", "[0.8, 0.9)", "[0.95, 0.98)", "[0.98, 1]"}
    assert by_label["[0, 0.5)"].wer == 1.0 and by_label["[0.8, 0.9)"].wer == pytest.approx(1 / 6)
    assert by_label["[0.98, 1]"].wer == 0.0 and by_label["[0.95, 0.98)"].audio_s == 4.0
    t = {row.threshold: row for row in cal.thresholds}
    assert t[0.0].n_kept == 4 and t[0.0].wer_kept == pytest.approx(7 / 24)
    assert t[0.8].n_kept == 3 and t[0.8].wer_kept == pytest.approx(1 / 18)
    assert t[0.8].share_hours_kept == pytest.approx(8 / 10) and t[0.8].share_kept == 0.75
    assert t[0.95].n_kept == 2 and t[0.95].wer_kept == 0.0
    assert t[0.99].n_kept == 1 and t[0.99].share_hours_kept == pytest.approx(0.2)


def test_eval_shows_calibration_in_every_format(tmp_path):
    run = write_run(tmp_path / "run", _rows())
    report = evaluate_paths([run])
    md = to_markdown(report)
    assert "### WER by confidence — run" in md and "### Confidence thresholds — run" in md
    assert "| 0.8 | 3 | 75.00 | 0.002 | 80.00 | 5.56 |" in md
    data = json.loads(to_json(report))["runs"][0]["calibration"]
    assert data["available"] and data["n_rows"] == 4
    assert [t["n_kept"] for t in data["thresholds"] if t["threshold"] in (0.0, 0.8, 0.95)] == [4, 3, 2]
    html = render_html(report)
    assert 'id="fig-confidence-calibration" class="report-figure"><svg' in html
    assert 'id="table-confidence-thresholds-run"' in html


def test_runs_without_confidence_columns(tmp_path):
    """A run written before the columns existed: eval works as before and says why there is no calibration."""
    old = write_run(tmp_path / "old", _rows(with_confidence=False))
    new = write_run(tmp_path / "new", _rows())
    report = evaluate_paths([old, new])
    md = to_markdown(report)
    assert "WER by confidence — new" in md and "WER by confidence — old" not in md
    assert "old: no confidence calibration: no confidence column" in md
    runs = json.loads(to_json(report))["runs"]
    assert runs[0]["calibration"]["available"] is False and runs[1]["calibration"]["available"] is True
    html = render_html(evaluate_paths([old]))
    assert 'class="missing-figure"' in html and "no run has both confidence values and references" in html


def test_null_confidence_and_no_references():
    rows = _rows()
    rows[0]["confidence"] = None
    acc, scores = evaluate_accuracy([r["text"] for r in rows], [r["pred_text"] for r in rows],
                                    [r["status"] == "ok" for r in rows])
    cal = calibrate([r["confidence"] for r in rows], [r["duration_s"] for r in rows],
                    [r["status"] == "ok" for r in rows], scores)
    assert cal.n_rows == 3 and cal.n_ok_without_confidence == 1
    none = calibrate([0.9], [1.0], [True], [None])
    assert not none.available and "no reference" in none.unavailable
    nulls = calibrate([None], [1.0], [True], scores[:1])
    assert not nulls.available and "no confidence values" in nulls.unavailable


def _long_rows():
    """Rows split in segments (each its own confidence) and an old row without segments."""
    a = result_row("a", "the cat sat on the mat and the dog ran by the hat", "the cat sat on the mat and a frog "
                   "ran by my cap", duration=6.0)
    a.update(confidence=0.7, segments=[segment(0.0, 3.0, "The cat sat on the mat.", confidence=0.99),
                                       segment(3.0, 6.0, "And a frog ran by my cap.", confidence=0.40)])
    b = result_row("b", "red green blue black", "red green blue", duration=4.0)
    b.update(confidence=0.92, segments=[segment(0.0, 2.0, "red green", confidence=0.95),
                                        segment(2.0, 4.0, "blue", confidence=0.90)])  # "black" deleted at the end
    c = result_row("c", "hello world", "hello world", duration=2.0)
    c.update(confidence=0.97, segments=None)  # from before segments: one segment
    d = result_row("d", "never said", None, status="failed")
    d.update(confidence=0.1, segments=None)
    return [a, b, c, d]


def test_calibration_per_segment_next_to_per_row(tmp_path):
    run = write_run(tmp_path / "run", _long_rows())
    report = evaluate_paths([run])
    acc = report.runs[0].accuracy
    assert acc.all.ref_words == 13 + 4 + 2 + 2  # rows scored as before: each row's joined text vs its reference
    assert acc.successful.wer == pytest.approx((4 + 1) / 19) and acc.all.wer == pytest.approx((4 + 1 + 2) / 21)
    data = json.loads(to_json(report))["runs"][0]
    rows, segs = data["calibration"], data["calibration_segments"]
    assert rows["n_rows"] == 3 and segs["n_rows"] == 5 and segs["n_segments"] == 6 and segs["n_split_rows"] == 2
    by_label = {b["lo"]: b for b in segs["wer_by_confidence"] if b["n"]}
    assert by_label[0.0]["ref_words"] == 7 and by_label[0.0]["word_edits"] == 4  # a's 2nd segment: 4 substitutions
    assert by_label[0.9]["ref_words"] == 2 and by_label[0.9]["word_edits"] == 1  # b's "blue" (+ deleted "black")
    assert by_label[0.95]["n"] == 2 and by_label[0.95]["word_edits"] == 0  # b's first segment and c
    assert by_label[0.98]["ref_words"] == 6 and by_label[0.98]["word_edits"] == 0
    kept = {t["threshold"]: t for t in segs["thresholds"]}
    assert kept[0.95]["n_kept"] == 3 and kept[0.95]["wer_kept"] == 0.0
    assert kept[0.5]["n_kept"] == 4 and kept[0.5]["wer_kept"] == pytest.approx(1 / 12)
    assert kept[0.0]["wer_kept"] == pytest.approx(5 / 19)  # all segments: the rows' words and edits again
    row_kept = {t["threshold"]: t for t in rows["thresholds"]}
    assert row_kept[0.9]["n_kept"] == 2 and row_kept[0.9]["wer_kept"] == pytest.approx(1 / 6)  # rows b and c
    md = to_markdown(report)
    assert "### WER by confidence — run" in md and "### WER by confidence, per segment — run" in md
    assert "### Confidence thresholds, per segment — run" in md and "export --segments --min-confidence" in md
    assert 'id="table-wer-by-confidence-segments-run"' in render_html(report)


def test_unsplit_runs_show_the_per_row_calibration_once(tmp_path):
    run = write_run(tmp_path / "run", _rows())
    report = evaluate_paths([run])
    data = json.loads(to_json(report))["runs"][0]
    assert data["calibration_segments"]["n_split_rows"] == 0
    assert data["calibration_segments"]["thresholds"] == data["calibration"]["thresholds"]
    assert "per segment" not in to_markdown(report)
