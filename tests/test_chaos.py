"""The chaos run of issue 9: 2 simulated devices with every kind of injected fault, the driver SIGKILLed twice mid-run,
the manifest appended to between runs; the final run ends with exactly the manifest's rows, each once, and no
recoverable failure left failed."""

import json

import pyarrow.parquet as pq
import pytest

from manifest_helpers import write_manifest
from process_helpers import kill_after_a_new_part
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.runner import run_job

pytestmark = pytest.mark.slow

FAULTS = "error=0.05,empty=0.02,repeat=0.02,crash=0.02,seed=9"
COMMON = dict(engine="simulated", devices="2", shard_size=2, sim_faults=FAULTS, max_attempts=8,
              device_max_failures=1000, splitter="energy")


@pytest.fixture(scope="module")
def address(ray_cluster):
    return ray_cluster


def _kill_mid_run(manifest, out, address, batch_size):
    """Start the CLI, SIGKILL it as soon as it has written a new part file (rows finished, more to do)."""
    args = ["run", str(manifest), "-o", str(out), "--address", address, "--quiet", "--sim-speedup", "150",
            "--save-every-s", "1"]
    for key, value in {**COMMON, "batch_size": batch_size}.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    kill_after_a_new_part(args, out, timeout=180)


# Batches of 2: a fault or crash meets several rows in one engine call (a batch of 1 is the special case, and the
# rest of the suite runs it with every kind of fault: test_runner, test_crash_charging, test_resume, test_signals).
@pytest.mark.parametrize("batch_size", [2])
def test_chaos_run_ends_with_every_row_once(tmp_path, audio_dir, address, batch_size):
    manifest = tmp_path / "m.jsonl"
    rows = write_manifest(manifest, audio_dir, repeat=4)
    out = tmp_path / "out"
    _kill_mid_run(manifest, out, address, batch_size)
    _kill_mid_run(manifest, out, address, batch_size)
    with open(manifest, "a") as f:  # appended between runs
        extra = [{**r, "id": f"late-{k}"} for k, r in enumerate(rows[:10])]
        f.write("".join(json.dumps(r) + "\n" for r in extra))
    rows += extra
    final = run_job(build_config(manifest, out, sim_speedup=2000, quiet=True, batch_size=batch_size, **COMMON))
    table = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["id"] for r in table] == [r["id"] for r in rows]  # exactly the manifest's rows, in order, once
    assert [r["line"] for r in table] == list(range(1, len(rows) + 1))
    assert final.status == "complete" and final.n_rows == len(rows) and 0 < final.n_resumed < len(rows)
    assert [(r["id"], r["error_class"]) for r in table if r["status"] != "ok"] == []
    assert max(r["attempts"] for r in table) >= 2  # the faults happened and were retried
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and len(run["runs"]) == 3 and run["counts"]["rows"] == len(rows)
