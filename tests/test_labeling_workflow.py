"""The labeling workflow end to end, through the real CLI: manifest from a folder → run (simulated engine, real Ray)
→ eval with confidence calibration → pick a threshold from its JSON → export --min-confidence → NeMo manifest."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from typer.testing import CliRunner

from transcribe_batch.manifests.reader import iter_rows
from transcribe_batch.pipeline.cli import app

pytestmark = pytest.mark.slow


def _in_process(*args: str):
    """The same CLI in this process (no interpreter start-up): manifest, eval, export."""
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"{args}\n{result.output[-3000:]}"
    return result


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("transcribe-batch"))
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "RAY_DEDUP_LOGS": "0"})
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_folder_to_filtered_nemo_labels(tmp_path, audio_dir, ray_cluster):
    manifest = tmp_path / "sample.jsonl"
    texts = tmp_path / "texts.tsv"  # the labeled sample's human transcripts
    shared = [json.loads(line) for line in (audio_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    texts.write_text("file\ttext\n" + "".join(f"{r['audio_filepath']}\t{r['text']}\n" for r in shared if r.get("text")))
    _in_process("manifest", "dir", str(audio_dir), "--glob", "0*.wav", "--transcripts", str(texts), "-o", str(manifest))
    rows = [r for _, r in iter_rows(manifest)]
    assert len(rows) >= 5 and all(r.text for r in rows)

    run = tmp_path / "runs" / "sample"
    _cli("run", str(manifest), "-o", str(run), "--engine", "simulated", "--devices", "2", "--sim-speedup", "2000",
         "--sim-faults", "garble=0.5,seed=11", "--quiet", "--address", ray_cluster)  # the tests' shared cluster
    results = pq.read_table(run / "results.parquet").to_pylist()
    assert all(r["status"] == "ok" and 0 < r["confidence"] <= 1 for r in results)
    garbled = [r for r in results if r["pred_text"] != r["text"]]
    clean = [r for r in results if r["pred_text"] == r["text"]]
    assert garbled and clean, "seed 11 should garble some rows and leave others"

    metrics = tmp_path / "metrics.json"
    _in_process("eval", str(run), "--format", "json", "-o", str(metrics), "--html", str(tmp_path / "report.html"))
    calibration = json.loads(metrics.read_text())["runs"][0]["calibration"]
    assert calibration["available"] and calibration["n_rows"] == len(results)
    assert 'id="fig-confidence-calibration" class="report-figure"' in (tmp_path / "report.html").read_text()
    # pick a threshold from data: the lowest one whose kept rows have no word error, keeping something
    threshold = min(t["threshold"] for t in calibration["thresholds"] if t["wer_kept"] == 0 and t["n_kept"] > 0)

    labels = tmp_path / "labels.jsonl"
    proc = _in_process("export", str(run), "--to", "nemo", "-o", str(labels), "--min-confidence", str(threshold),
                "--field", "id", "--field", "confidence", "--json")
    summary = json.loads(proc.stdout)
    exported = [r for _, r in iter_rows(labels)]
    expected = [r for r in results if r["confidence"] >= threshold]
    assert [r.id for r in exported] == [r["id"] for r in expected]
    assert summary["n_kept"] == len(expected) and summary["dropped"].get("low_confidence", 0) == len(results) - len(expected)
    by_id = {r["id"]: r for r in results}
    for row in exported:
        assert row.text == by_id[row.id]["text"]  # what is kept is right (WER 0 at this threshold)
        assert Path(row.audio_filepath).is_file() and row.duration > 0


def test_long_recordings_to_segments_in_every_format(tmp_path, audio_dir, ray_cluster):
    """Long recordings: manifest dir → run → export --segments into NeMo, Lhotse and HF, each loaded by its own
    library: ids <row id>#<k>, segments inside their file, in order, not overlapping."""
    datasets = pytest.importorskip("datasets")
    lhotse = pytest.importorskip("lhotse")
    manifest = tmp_path / "long.jsonl"
    _in_process("manifest", "dir", str(audio_dir), "--glob", "[et]*.wav", "-o", str(manifest))
    rows = {r.id: r for _, r in iter_rows(manifest)}
    assert len(rows) == 2  # endgame.wav (28 s), two_cities.wav (44 s)
    run = tmp_path / "runs" / "long"
    _cli("run", str(manifest), "-o", str(run), "--engine", "simulated", "--sim-speedup", "2000", "--sim-text",
         "it was the best of times", "--quiet", "--address", ray_cluster)
    results = {r["id"]: r for r in pq.read_table(run / "results.parquet").to_pylist()}

    def check(ids, offsets, durations):
        by_row: dict = {}
        for segment_id, start, length in zip(ids, offsets, durations):
            row_id, k = segment_id.rsplit("#", 1)
            by_row.setdefault(row_id, []).append((int(k), start, start + length))
        assert set(by_row) == set(results)
        for row_id, pieces in by_row.items():
            r = results[row_id]
            assert [k for k, _, _ in pieces] == sorted(k for k, _, _ in pieces)
            assert all(r["offset"] - 1e-6 <= a < b <= r["offset"] + r["duration_s"] + 1e-6 for _, a, b in pieces)
            assert all(b1 <= a2 + 1e-6 for (_, _, b1), (_, a2, _) in zip(pieces, pieces[1:]))

    _in_process("export", str(run), "--segments", "-o", str(tmp_path / "seg.jsonl"))
    nemo = [json.loads(line) for line in (tmp_path / "seg.jsonl").read_text().splitlines()]
    check([x["id"] for x in nemo], [x["offset"] for x in nemo], [x["duration"] for x in nemo])
    joined: dict = {}  # each piece says its share of the --sim-text: a row's segments say all of it, in order
    for x in nemo:
        joined.setdefault(x["id"].rsplit("#", 1)[0], []).append(x["text"])
    assert {k: " ".join(v) for k, v in joined.items()} == dict.fromkeys(results, "it was the best of times")
    assert len(nemo) > len(results)  # both recordings are longer than --segment-max-s: cut into segments
    _in_process("export", str(run), "--segments", "--to", "lhotse", "-o", str(tmp_path / "lhotse"))
    cuts = lhotse.CutSet.from_file(tmp_path / "lhotse" / "cuts.jsonl.gz").to_eager()
    check(list(cuts.ids), [c.start for c in cuts], [c.duration for c in cuts])
    assert len({c.recording_id for c in cuts}) == 2
    _in_process("export", str(run), "--segments", "--to", "hf", "--embed-audio", "-o", str(tmp_path / "hf"))
    ds = datasets.load_from_disk(str(tmp_path / "hf")).cast_column("audio", datasets.Audio(decode=False))
    samples, sr = sf.read(io.BytesIO(ds[0]["audio"]["bytes"]))
    assert ds["id"] == [x["id"] for x in nemo] and sr == 16000 and len(samples) == round(nemo[0]["duration"] * sr)
