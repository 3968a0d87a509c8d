"""The runner with --batch-size above 1, through real Ray actors (simulated engine)."""

import pyarrow.parquet as pq
import pytest

from manifest_helpers import write_manifest
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.runner import run_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def test_batch_size_2_runs_every_row_once(tmp_path, audio_dir):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2)
    summary = run_job(build_config(tmp_path / "m.jsonl", tmp_path / "out", engine="simulated", devices="2",
                                   sim_speedup=2000, batch_size=2, quiet=True))
    out = pq.read_table(summary.results).to_pylist()
    assert summary.status == "complete" and not summary.stats["devices_removed"]
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert all(r["status"] == "ok" and r["attempts"] == 1 for r in out)
    assert [r["pred_text"] for r in out] == [r.get("text") or "simulated output" for r in rows]



def test_decode_slots_report_their_occupancy_in_run_json_and_the_progress_log(tmp_path, audio_dir):
    """sim_batch 4 on two devices: run.json's devices carry `slot_occupancy` (share of decode steps × B with a
    live request) and the same while rows waited for the device; the progress log's progress events carry it per
    device."""
    import json

    write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=3, max_duration=30)
    summary = run_job(build_config(tmp_path / "m.jsonl", tmp_path / "out", engine="simulated", devices="2",
                                   sim_speedup=2000, sim_batch=4, quiet=True))
    assert summary.status == "complete"
    devices = json.loads((tmp_path / "out" / "run.json").read_text())["devices"]
    assert len(devices) == 2
    for dev in devices:
        assert dev["slots"] == 4 and dev["decode_steps"] > 0, dev
        assert 0 < dev["slot_occupancy"] <= dev["slot_occupancy_queued"] <= 1, dev
    events = [json.loads(line) for line in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()]
    logged = [e["slot_occupancy"] for e in events if e["event"] in ("progress", "end") and "slot_occupancy" in e]
    assert logged and set(logged[-1]) == {dev["label"] for dev in devices}
    assert logged[-1] == {dev["label"]: dev["slot_occupancy"] for dev in devices}


def test_batch_size_2_retries_failed_rows(tmp_path, audio_dir):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2, max_duration=30)
    summary = run_job(build_config(tmp_path / "m.jsonl", tmp_path / "out", engine="simulated", devices="2",
                                   sim_speedup=2000, batch_size=2, quiet=True, max_attempts=10,
                                   sim_faults="error=0.3,empty=0.1,seed=3"))
    out = pq.read_table(summary.results).to_pylist()
    assert summary.n_ok == len(rows) == len(out)
    assert max(r["attempts"] for r in out) >= 2


def test_hf_engine_batch_path_through_the_runner(tmp_path, audio_dir):
    """--engine hf --batch-size 2 on the CPU (the tiny fixture's weights): rows come back from batched generate()
    calls with the reference's greedy tokens, and the encoder's share of TTFT is recorded."""
    pytest.importorskip("transformers")
    import json
    from pathlib import Path

    from manifest_helpers import write_reference_manifest
    from transcribe_batch.workers.frontend import FrontEnd

    fixture = Path(__file__).parent / "fixtures" / "tiny-qwen2-audio"
    clips = json.loads((fixture / "reference.json").read_text())["clips"]
    write_reference_manifest(tmp_path / "m.jsonl", clips, audio_dir)
    n_tokens = 8
    summary = run_job(build_config(tmp_path / "m.jsonl", tmp_path / "out", engine="hf", model_dir=fixture,
                                   max_new_tokens=n_tokens, batch_size=2, dtype="fp32", quiet=True))
    rows = pq.read_table(summary.results).to_pylist()
    assert [r["id"] for r in rows] == [c["audio_filepath"] for c in clips]
    fe = FrontEnd(fixture, template="default", max_new_tokens=n_tokens)
    for row, clip in zip(rows, clips):
        assert row["status"] == "ok" and row["engine"] == "hf", row
        assert row["raw_text"] == fe.decode(clip["tokens"][:n_tokens])
        assert 0 < row["encode_s"] < row["ttft_s"]


def test_the_next_batch_is_prepared_while_one_runs(audio_dir, model_dir):
    """batch_size 2, a shard of 4 rows with the real front end, one decode slot: each row is prepared while the one
    before it is on the device, so the device never waits for the CPU after the first; every row comes back once."""
    from transcribe_batch.manifests.reader import iter_rows
    from transcribe_batch.workers.actor import TranscriptionWorker
    from transcribe_batch.workers.record import now
    from transcribe_batch.workers.work import WorkItem

    rows = [r for _, r in iter_rows(audio_dir / "manifest.jsonl") if r.duration <= 30][:4]
    assert len(rows) == 4
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=40, batch_size=2, model_dir=str(model_dir)),
                            0)
    try:
        items = [WorkItem(i, i + 1, row=r, queued_at=now(), duration=r.duration) for i, r in enumerate(rows)]
        outcomes = w.run_shard(items)
    finally:
        w.close()
    assert sorted(o.key for o in outcomes) == sorted(i.key for i in items)
    recs = {o.key[0]: o.record for o in outcomes}
    assert all(r.status == "ok" for r in recs.values())
    spans = sorted((recs[k].started_at, recs[k].finished_at, recs[k].wait_s) for k in recs)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one decode slot: one row after the other
    assert [wait for _, _, wait in spans[1:]] == [0.0, 0.0, 0.0]  # each prepared while the one before ran
