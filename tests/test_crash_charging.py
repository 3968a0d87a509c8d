"""Actor crashes are charged to the row that was on the device, and do not take healthy devices out of the pool
(real Ray, simulated engine: injected crashes end the actor's process with os._exit)."""

import json

import pyarrow.parquet as pq
import pytest

from manifest_helpers import write_manifest
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.runner import run_job
from transcribe_batch.workers.engines.simulated import FaultSpec
from transcribe_batch.workers.ledger import ledger_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def _manifest(path, audio_dir, n):
    rows = write_manifest(path, audio_dir, repeat=4, max_duration=30)[:n]  # one request a row: one draw an attempt
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.mark.parametrize("batch_size, sim_batch, n_rows", [(1, 1, 30), (2, 1, 20), (1, 4, 24)])
def test_crashes_charge_only_the_rows_on_the_device(tmp_path, audio_dir, batch_size, sim_batch, n_rows):
    """Each crash is charged to the one row on the device (rows that were on the device together — 4 decode slots
    kept full across shards — are re-run a row at a time, free): a row's attempts are exactly its own crashes + 1,
    and with every device failing alike none is removed."""
    rows = _manifest(tmp_path / "m.jsonl", audio_dir, n_rows)
    faults = "crash=0.2,seed=1"
    summary = run_job(build_config(tmp_path / "m.jsonl", tmp_path / "out", engine="simulated", devices="2",
                                   sim_speedup=2000, sim_faults=faults, max_attempts=3, batch_size=batch_size,
                                   sim_batch=sim_batch,
                                   escalate_min_s=1000.0,  # no retry splits audio: one fault draw per attempt
                                   segment_max_s=30.0,  # rows ≤ 30 s are one piece: one draw an attempt
                                   quiet=True))
    out = {r["id"]: r for r in pq.read_table(summary.results).to_pylist()}
    spec = FaultSpec.parse(faults)
    assert summary.status == "complete" and sorted(out) == sorted(r["id"] for r in rows)
    assert summary.stats["devices_removed"] == []
    assert summary.stats["actor_crashes"] >= n_rows // 10
    assert not [f for i in summary.devices for f in ledger_files(i.ledger) if f.exists()]  # gone with the run
    for row in rows:
        crashes = [spec.draw(row["id"], k) == "crash" for k in (1, 2, 3)]
        rec = out[row["id"]]
        if all(crashes):  # crashed on each of its own attempts: failed for good
            assert rec["status"] == "failed" and rec["error_class"] == "ActorDied" and rec["attempts"] == 3
        else:  # attempts spent = its own crashes before the first attempt that did not crash
            assert rec["status"] == "ok", rec
            assert rec["attempts"] == crashes.index(False) + 1, (row["id"], crashes, rec["attempts"])


def test_quiet_stdout_is_only_the_summary_when_an_actor_crashes(tmp_path, audio_dir, ray_cluster):
    """Ray relays "(raylet) A worker died …" to the driver's stdout; --quiet promises one JSON summary there."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    rows = _manifest(tmp_path / "m.jsonl", audio_dir, 3)
    seed = next(s for s in range(1000) if [FaultSpec(crash=0.3, seed=s).draw(r["id"], 1) for r in rows]
                == ["crash", None, None] and FaultSpec(crash=0.3, seed=s).draw(rows[0]["id"], 2) is None)
    cli = str(Path(sys.executable).with_name("transcribe-batch"))
    done = subprocess.run([cli, "run", str(tmp_path / "m.jsonl"), "-o", str(tmp_path / "out"), "--engine", "simulated",
                           "--devices", "1", "--sim-speedup", "2000", "--sim-faults", f"crash=0.3,seed={seed}",
                           "--quiet", "--address", ray_cluster], capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["status"] == "complete" and summary["n_ok"] == 3 and summary["stats"]["actor_crashes"] == 1
    assert "A worker died" in done.stderr  # Ray did relay its notice (to a driver that joined with --address too)
