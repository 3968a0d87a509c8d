"""`transcribe-batch export`: NeMo / HF datasets / Lhotse outputs read back by the real readers, exact filters,
agreement with a second run, several runs, atomic output, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval_helpers import result_row, write_run
from manifest_helpers import shared_rows
from transcribe_batch.manifests.reader import iter_rows
from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.export import ExportError, agreement
from transcribe_batch.pipeline.export.export import export
from transcribe_batch.pipeline.export.filters import Filters
from transcribe_batch.pipeline.results import reader

runner = CliRunner()


@pytest.fixture(scope="module")
def clips(audio_dir):
    """(path, duration) of short shared recordings."""
    return [(r["audio_filepath"], r["duration"]) for r in shared_rows(audio_dir) if r["duration"] < 12][:8]


def _row(i, clips, pred, *, status="ok", confidence=0.95, text="ref words", **kw):
    path, duration = clips[i % len(clips)]
    r = result_row(f"u{i}", text, pred, status=status, duration=kw.pop("duration", duration), **kw)
    r.update(audio_filepath=path, offset=0.0, confidence=confidence, language="en", speaker=f"s{i % 2}")
    return r


def _run(folder, clips, specs):
    """specs: (pred, status, confidence[, duration]) per row; ids u0, u1, …"""
    rows = []
    for i, spec in enumerate(specs):
        pred, status, conf, *dur = spec
        rows.append(_row(i, clips, pred, status=status, confidence=conf, **({"duration": dur[0]} if dur else {})))
    return write_run(folder, rows)


SPECS = [
    ("hello world", "ok", 0.97),        # u0 kept
    ("good morning", "ok", 0.80),       # u1 low confidence
    (None, "failed", 0.20),             # u2 status
    ("   ", "ok", 0.99),                # u3 empty transcript
    ("a long one", "ok", 0.95, 40.0),   # u4 too long
    ("short", "ok", 0.95, 0.2),         # u5 too short
    ("no conf", "ok", None),            # u6 no confidence
    ("fine again", "ok", 0.91),         # u7 kept
]


def test_nemo_manifest_filters_exactly_and_reads_back(tmp_path, clips):
    run = _run(tmp_path / "run", clips, SPECS)
    out = tmp_path / "labels.jsonl"
    summary = export([run], out, filters=Filters(min_confidence=0.9, min_duration=0.5, max_duration=30),
                     fields=["confidence", "id", "speaker", "text"])
    assert summary.n_rows == 8 and summary.n_kept == 2
    assert dict(summary.dropped) == {"status": 1, "empty_text": 1, "no_confidence": 1, "low_confidence": 1,
                                     "too_short": 1, "too_long": 1}
    rows = [row for _, row in iter_rows(out)]  # our NeMo-style manifest reader
    assert [r.id for r in rows] == ["u0", "u7"]
    assert [r.text for r in rows] == ["hello world", "fine again"]
    raw = [json.loads(line) for line in out.read_text().splitlines()]
    assert list(raw[0])[:4] == ["audio_filepath", "offset", "duration", "text"]
    assert raw[0]["confidence"] == 0.97 and raw[0]["speaker"] == "s0" and raw[0]["reference_text"] == "ref words"
    assert raw[0]["audio_filepath"] == clips[0][0] and raw[0]["duration"] == clips[0][1]
    assert not list(tmp_path.glob(".tmp-*"))


def test_status_any_and_failed(tmp_path, clips):
    run = _run(tmp_path / "run", clips, [("x", "ok", 0.9), ("y", "failed", 0.9), (None, "failed", None)])
    run_rows = run / "results.parquet"
    import pyarrow.parquet as pq

    table = pq.read_table(run_rows)
    table = table.set_column(table.column_names.index("pred_text"), "pred_text", table["raw_text"])
    pq.write_table(table, run_rows)  # a failed row that still has a transcript
    s = export([run], tmp_path / "failed.jsonl", filters=Filters(status="failed"))
    assert s.n_kept == 1 and dict(s.dropped) == {"status": 1, "empty_text": 1}
    s = export([run], tmp_path / "any.jsonl", filters=Filters(status="any"))
    assert s.n_kept == 2


def test_agreement_across_two_runs(tmp_path, clips, monkeypatch):
    monkeypatch.setattr(agreement, "BUCKET_ROWS", 2)  # several hash buckets on this small run
    monkeypatch.setattr(reader, "BATCH_ROWS", 3)
    mine = _run(tmp_path / "a", clips, [
        ("The cat sat on the mat.", "ok", 0.9),           # u0: same after normalization -> 0
        ("the cat sat on a mat", "ok", 0.9),               # u1: 1/6 -> dropped at 0.1, kept at 0.2
        ("completely different words", "ok", 0.9),         # u2: disagreement
        ("only here", "ok", 0.9),                          # u3: not in the other run
        ("other failed", "ok", 0.9),                       # u4: other run failed
        (None, "failed", 0.9),                             # u5: fails --status first, never compared
        ("Twenty five apples", "ok", 0.9),                 # u6: "25 apples" both sides -> 0
    ])
    specs = [("the cat sat on the mat", "ok"), ("the cat sat on the mat", "ok"), ("the dog ran", "ok"),
             None, (None, "failed"), ("x", "ok"), ("25 apples", "ok"), ("extra row", "ok")]
    rows = [_row(i, clips, s[0], status=s[1]) for i, s in enumerate(specs) if s is not None]
    theirs = write_run(tmp_path / "b", list(reversed(rows)))  # another order: joined by id, not by position
    out = tmp_path / "agree.jsonl"
    s = export([mine], out, filters=Filters(max_disagreement=0.1), agree_with=theirs, fields=["id"])
    assert [r.id for _, r in iter_rows(out)] == ["u0", "u6"]
    assert dict(s.dropped) == {"status": 1, "missing_in_other_run": 1, "failed_in_other_run": 1, "disagreement": 2}
    s = export([mine], tmp_path / "agree2.jsonl", filters=Filters(max_disagreement=0.2), agree_with=theirs,
               fields=["id"])
    assert [r.id for _, r in iter_rows(tmp_path / "agree2.jsonl")] == ["u0", "u1", "u6"]


def test_pair_wer_edges():
    wer = agreement.pair_wer(["a b c", "", "x", ""], ["a b d", "", "", "hello there"], "whisper")
    assert wer[0] == pytest.approx(1 / 3) and wer[1] == 0.0 and wer[2] == float("inf") and wer[3] == 1.0


def test_several_runs_concatenate_and_id_clashes_are_refused(tmp_path, clips):
    a = _run(tmp_path / "a", clips, [("one", "ok", 0.9), ("two", "ok", 0.9)])
    rows = [_row(i, clips, "three") for i in (5, 6)]
    b = write_run(tmp_path / "b", rows)
    out = tmp_path / "both.jsonl"
    s = export([a, b], out, fields=["id"])
    assert [r.id for _, r in iter_rows(out)] == ["u0", "u1", "u5", "u6"]
    assert [(r.n_rows, r.n_kept) for r in s.runs] == [(2, 2), (2, 2)]
    clash = write_run(tmp_path / "c", [_row(1, clips, "again")])
    with pytest.raises(ExportError, match=r"id 'u1' is in both .*a and .*c"):
        export([a, clash], tmp_path / "clash.jsonl")
    assert not (tmp_path / "clash.jsonl").exists()


def test_hf_dataset_reads_back_with_datasets(tmp_path, clips):
    datasets = pytest.importorskip("datasets")
    import io

    import soundfile as sf

    run = _run(tmp_path / "run", clips, SPECS)
    out = tmp_path / "hf"
    s = export([run], out, fmt="hf", filters=Filters(min_confidence=0.9, max_duration=30), fields=["confidence"])
    ds = datasets.load_from_disk(str(out))
    assert s.n_kept == len(ds) == 3  # u0, u5 (no --min-duration here), u7
    assert ds.column_names == ["id", "audio_filepath", "offset", "duration", "text", "confidence"]
    assert ds["text"] == ["hello world", "short", "fine again"] and ds["confidence"] == [0.97, 0.95, 0.91]
    embedded = tmp_path / "hf-audio"
    export([run], embedded, fmt="hf", filters=Filters(min_confidence=0.9, max_duration=30), embed_audio=True)
    ds = datasets.load_from_disk(str(embedded)).cast_column("audio", datasets.Audio(decode=False))
    first = ds[0]
    samples, sr = sf.read(io.BytesIO(first["audio"]["bytes"]))
    assert sr == 16000 and abs(len(samples) - round(clips[0][1] * 16000)) <= 16
    assert not list(tmp_path.glob(".tmp-*"))


def test_lhotse_cutset_reads_back_with_lhotse(tmp_path, clips):
    lhotse = pytest.importorskip("lhotse")
    run = _run(tmp_path / "run", clips, SPECS + [("same file again", "ok", 0.99)])  # u8 reuses u0's file
    out = tmp_path / "lhotse"
    s = export([run], out, fmt="lhotse", filters=Filters(min_confidence=0.9, min_duration=0.5, max_duration=30),
               fields=["speaker"])
    cuts = lhotse.load_manifest(out / "cuts.jsonl.gz")
    assert isinstance(cuts, lhotse.CutSet) and s.n_kept == len(cuts) == 3
    cut = cuts["u0"]
    assert cut.supervisions[0].text == "hello world" and cut.supervisions[0].custom["confidence"] == 0.97
    assert cut.supervisions[0].custom["speaker"] == "s0" and cut.supervisions[0].language == "en"
    assert cut.duration == pytest.approx(clips[0][1])
    audio = cut.load_audio()
    assert audio.shape[0] == 1 and abs(audio.shape[1] - cut.num_samples) <= 1
    recordings = lhotse.load_manifest(out / "recordings.jsonl.gz")
    assert len(recordings) == 2  # u0 and u8 share one file: one recording
    sups = lhotse.load_manifest(out / "supervisions.jsonl.gz")
    assert sorted(sups.ids) == ["u0", "u7", "u8"] and cuts["u8"].recording_id == cut.recording_id


def test_atomic_output_on_failure(tmp_path, clips):
    pytest.importorskip("datasets")
    rows = [_row(0, clips, "fine"), _row(1, clips, "gone")]
    rows[1]["audio_filepath"] = str(tmp_path / "moved-away.wav")
    run = write_run(tmp_path / "run", rows)
    out = tmp_path / "hf"
    with pytest.raises(ExportError, match="moved-away.wav"):
        export([run], out, fmt="hf", embed_audio=True)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))
    old = tmp_path / "old.jsonl"
    export([run], old, filters=Filters(status="failed"))  # an earlier export (of no rows)
    with pytest.raises(ExportError, match="already exists"):
        export([run], old)
    export([run], old, overwrite=True)
    assert len(old.read_text().splitlines()) == 2
    mine = tmp_path / "mine.jsonl"
    mine.write_text("previous\n")
    with pytest.raises(ExportError, match="is not an earlier export"):  # not an export: never replaced
        export([run], mine, overwrite=True)
    assert mine.read_text() == "previous\n"


@pytest.mark.parametrize("args, words", [
    (["{tmp}/nope"], "no such run folder"),
    (["{run}", "--min-confidence", "1.5"], "--min-confidence 1.5: a confidence is in [0, 1]"),
    (["{run}", "--max-duration", "-1"], "--max-duration -1: must be a finite number >= 0"),
    (["{run}", "--min-duration", "5", "--max-duration", "2"], "--min-duration 5 is above --max-duration 2"),
    (["{run}", "--max-disagreement", "0.1"], "--max-disagreement needs --agree-with RUN"),
    (["{run}", "--agree-with", "{run}"], "is one of the runs exported"),
    (["{run}", "--field", "nonsense"], "--field nonsense: "),
    (["{run}", "--field", "pred_text"], "already in every export"),
    (["{old}", "--min-confidence", "0.5"], "no confidence column"),
    (["{run}", "--to", "nemo", "--embed-audio"], "--embed-audio is for --to hf"),
    (["{parts}"], "no results.parquet (the run has not finished)"),
])
def test_cli_errors_are_clear(tmp_path, clips, args, words):
    run = _run(tmp_path / "run", clips, SPECS[:2])
    old_rows = [_row(0, clips, "x")]
    del old_rows[0]["confidence"]
    old = write_run(tmp_path / "old", old_rows)
    (tmp_path / "parts-only" / "parts").mkdir(parents=True)
    fill = {"tmp": str(tmp_path), "run": str(run), "old": str(old), "parts": str(tmp_path / "parts-only")}
    argv = ["export", *[a.format(**fill) for a in args], "-o", str(tmp_path / "out.jsonl")]
    result = runner.invoke(app, argv, terminal_width=200)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_summary_json(tmp_path, clips):
    run = _run(tmp_path / "run", clips, SPECS)
    out = tmp_path / "labels.jsonl"
    result = runner.invoke(app, ["export", str(run), "--to", "nemo", "-o", str(out), "--min-confidence", "0.9",
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["n_rows"] == 8 and data["n_kept"] == 4 and data["n_dropped"] == 4
    assert data["dropped"] == {"status": 1, "empty_text": 1, "no_confidence": 1, "low_confidence": 1}
    assert len(out.read_text().splitlines()) == 4
    result = runner.invoke(app, ["export", "--help"], terminal_width=200)
    for option in ("--to", "--min-confidence", "--agree-with", "--max-disagreement", "--embed-audio", "--field"):
        assert option in result.output


@pytest.mark.slow
def test_export_benchmark_runs_and_both_ways_agree(tmp_path):
    """benchmarks/export.py at a tiny size: it completes and the streaming export equals the dict-join baseline."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "export.py"), "--sizes", "300,900", "--keep",
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = dict(pair.split("=", 1) for pair in done.stdout.strip().splitlines()[-1].split())
    assert figures["same_output"] == "True" and float(figures["rows_growth"]) == 3
