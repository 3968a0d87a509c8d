"""The job runner end to end on a real in-process Ray cluster with 4 simulated devices."""

import json

import pyarrow.parquet as pq
import pytest
import ray

from manifest_helpers import write_manifest
from transcribe_batch.config.settings import default
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.runner import run_job
from transcribe_batch.pipeline.scheduler import SchedulerError
from transcribe_batch.workers.engines.simulated import FaultSpec

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def _run(tmp_path, manifest, **kw):
    settings = dict(engine="simulated", devices="2", sim_speedup=2000, shard_size=3, quiet=True)
    settings.update(kw)
    return run_job(build_config(manifest, tmp_path / "out", **settings))


def _results(summary):
    return pq.read_table(summary.results).to_pylist()


def test_every_row_exactly_once_in_input_order(tmp_path, audio_dir):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=4)
    summary = _run(tmp_path, tmp_path / "m.jsonl", devices="4")
    out = _results(summary)
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert [r["line"] for r in out] == list(range(1, len(rows) + 1))
    assert summary.status == "complete" and summary.n_ok == len(rows) == 72
    assert {r["device"] for r in out} == {0, 1, 2, 3}  # work spread over every device
    for r, row in zip(out, rows):
        assert r["status"] == "ok" and r["engine"] == "simulated" and r["attempts"] == 1
        assert r["pred_text"] == (row.get("text") or "simulated output")
        assert r["source"] == row["source"]  # carried manifest field
        assert r["queued_at"] <= r["started_at"] <= r["finished_at"]
    for device in range(4):  # a device runs one row at a time
        spans = sorted((r["started_at"], r["finished_at"]) for r in out if r["device"] == device)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["status"] == "complete" and run["engine"] == "simulated" and run["model_id"] == "simulated"
    assert run["counts"]["rows"] == 72 and len(run["devices"]) == 4 and run["versions"]["ray"] == ray.__version__
    log = [json.loads(l) for l in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "end" and log[-1]["done"] == log[-1]["total"] == 72


def test_injected_failures_are_retried_and_recover(tmp_path, audio_dir):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2)
    faults = "error=0.25,empty=0.1,repeat=0.1,seed=11"
    summary = _run(tmp_path, tmp_path / "m.jsonl", sim_faults=faults, max_attempts=10, escalate_min_s=1000.0)
    out = _results(summary)
    spec = FaultSpec.parse(faults)
    expected = {}
    for row in rows:  # the attempt on which the seeded faults let each row through
        if row["duration"] > default("segment_max_s"):
            continue  # split into pieces: every piece draws its own faults
        expected[row["id"]] = next(k for k in range(1, 11) if spec.draw(row["id"], k) is None)
    assert summary.n_ok == len(rows) and len(out) == len(rows)
    got = {r["id"]: r["attempts"] for r in out}
    assert {i: got[i] for i in expected} == expected
    assert max(expected.values()) >= 3 and summary.stats["retried_rows"] >= sum(v - 1 for v in expected.values())


def test_retries_exhausted_are_recorded_as_failed(tmp_path, audio_dir):
    write_manifest(tmp_path / "m.jsonl", audio_dir, limit=6, max_duration=10)
    summary = _run(tmp_path, tmp_path / "m.jsonl", sim_faults="error=1", max_attempts=2, device_max_failures=100)
    out = _results(summary)
    assert len(out) == 6 and summary.n_failed == 6
    assert all(r["status"] == "failed" and r["attempts"] == 2 and r["error_class"] == "SimulatedFault" for r in out)


def test_actor_killed_mid_shard_loses_nothing(tmp_path, audio_dir):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2)
    summary = _run(tmp_path, tmp_path / "m.jsonl", sim_faults="crash=0.06,seed=5", max_attempts=6,
                   device_max_failures=100)
    out = _results(summary)
    assert summary.stats["actor_crashes"] >= 1
    assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)
    assert all(r["status"] == "ok" for r in out)
    assert max(r["attempts"] for r in out) >= 2  # the crashed shards' rows were re-queued as new attempts


def test_a_device_that_keeps_failing_leaves_the_pool(tmp_path, audio_dir):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2)
    summary = _run(tmp_path, tmp_path / "m.jsonl", engine_options={"sim_broken_devices": [2]}, shard_size=2,
                   devices="3")
    out = _results(summary)
    assert summary.n_ok == len(rows) == len(out)
    assert 2 not in {r["device"] for r in out}
    assert [d["device"] for d in summary.stats["devices_removed"]] == ["sim:2"]
    events = [json.loads(l) for l in (tmp_path / "out" / "progress.jsonl").read_text().splitlines()]
    removed = [e for e in events if e["event"] == "device_removed"]
    assert len(removed) == 1 and "sim:2" in removed[0]["message"] and "taken out of the pool" in removed[0]["message"]


def test_no_device_left_stops_the_run(tmp_path, audio_dir):
    write_manifest(tmp_path / "m.jsonl", audio_dir, limit=8)
    with pytest.raises(SchedulerError, match="every device was taken out of the pool"):
        _run(tmp_path, tmp_path / "m.jsonl", devices="1", engine_options={"sim_broken_devices": [0]},
             device_max_failures=2, shard_size=1)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "failed"


def test_bad_lines_become_failed_rows(tmp_path, audio_dir):
    m = tmp_path / "m.jsonl"
    rows = write_manifest(m, audio_dir, limit=4)
    lines = m.read_text().splitlines()
    lines.insert(2, '{"audio_filepath": "x.wav", "offset": -3}')
    lines.append("{broken")
    m.write_text("\n".join(lines) + "\n")
    summary = _run(tmp_path, m, skip_bad_lines=True, devices="2")
    out = _results(summary)
    assert [r["line"] for r in out] == [1, 2, 3, 4, 5, 6]
    bad = [r for r in out if r["status"] == "failed"]
    assert [(r["id"], r["error_class"]) for r in bad] == [("#bad-line-3", "ManifestError"), ("#bad-line-6", "ManifestError")]
    assert "m.jsonl:3: field 'offset'" in bad[0]["error_message"]
    assert summary.n_ok == len(rows) == 4


def test_card_engine_without_cards_says_what_to_do(tmp_path, audio_dir):
    from transcribe_batch.pipeline.devices import DeviceError

    write_manifest(tmp_path / "m.jsonl", audio_dir, limit=2)
    with pytest.raises(DeviceError, match=r"no BM1684X cards.*--resources.*--engine simulated"):
        _run(tmp_path, tmp_path / "m.jsonl", engine="bm1684x", bmodel=str(tmp_path / "x.bmodel"), devices="all")
