"""Resume: a driver killed with SIGKILL (or stopped with Ctrl-C) mid-run, then the same command again."""

import json
import os
import signal
import sys
import time

import pyarrow.parquet as pq
import pytest

from manifest_helpers import write_manifest
from process_helpers import CLI, Driver
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.results import ResumeError
from transcribe_batch.pipeline.runner import run_job

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def address(ray_cluster):
    return ray_cluster


def _cfg(manifest, out, **kw):
    settings = dict(engine="simulated", devices="4", sim_speedup=2000, shard_size=2, splitter="energy", quiet=True)
    settings.update(kw)
    return build_config(manifest, out, **settings)


def _texts(path):
    return [(r["id"], r["pred_text"]) for r in pq.read_table(path, columns=["id", "pred_text"]).to_pylist()]


def _start_driver(manifest, out, address, speedup=60):
    """The CLI in its own process group (as a shell runs a job). `address=None`: it starts its own Ray cluster,
    whose processes are in that group too."""
    return Driver(
        [sys.executable, "-c", CLI, "run", str(manifest), "-o", str(out), "--engine", "simulated", "--devices", "2",
         "--sim-speedup", str(speedup), "--shard-size", "2", "--splitter", "energy",
         "--save-every-s", "1", "--quiet",
         *(["--address", address] if address else [])],
        start_new_session=True)


def _wait_for_parts(out, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list((out / "parts").glob("part-*.parquet")):
            return
        if proc.poll() is not None:
            pytest.fail(f"driver ended before writing a part: {proc.output()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail("no part file appeared")


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, audio_dir, address):
    manifest = tmp_path / "m.jsonl"
    rows = write_manifest(manifest, audio_dir, repeat=6)
    reference = run_job(_cfg(manifest, tmp_path / "ref"))
    assert reference.n_ok == len(rows)

    out = tmp_path / "killed"
    proc = _start_driver(manifest, out, address)
    _wait_for_parts(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "results.parquet").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # died without a word
    written = sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet"))
    assert 0 < written < len(rows)

    resumed = run_job(_cfg(manifest, out))
    assert resumed.n_resumed == written
    assert _texts(out / "results.parquet") == _texts(tmp_path / "ref" / "results.parquet")
    ids = [i for i, _ in _texts(out / "results.parquet")]
    assert len(ids) == len(set(ids)) == len(rows)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and run["resumed"] and len(run["runs"]) == 2


# The signal tests cannot race: the manifest is 72 rows at a simulated speed that keeps 2 devices busy for > 40 s,
# and the signal goes out as soon as the first part file (rows finished) exists, which is seconds in (the test polls
# every 0.1 s). A run that received a signal can never end "complete" (runner.StopSignals remembers it even if an
# exception were swallowed). test_signals.py covers each signal at each stage of a run.
SLOW = 40  # --sim-speedup: ~1.2 s a row


def test_sigterm_to_the_process_group_of_a_driver_with_its_own_ray(tmp_path, audio_dir):
    """`timeout`, systemd and batch schedulers signal the whole group: Ray's own processes (started by the driver)
    get SIGTERM too, and the driver must still save its work and say `interrupted`."""
    manifest = tmp_path / "m.jsonl"
    rows = write_manifest(manifest, audio_dir, repeat=4)
    out = tmp_path / "out"
    proc = _start_driver(manifest, out, None, speedup=SLOW)
    _wait_for_parts(out, proc, timeout=240)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.output(timeout=120)
    assert proc.returncode == 130, stderr
    run = json.loads((out / "run.json").read_text())
    done = sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet"))
    assert run["status"] == "interrupted" and 0 < done < len(rows) and run["counts"]["rows"] == done


def test_changed_engine_or_prompt_is_refused_unless_overwrite(tmp_path, audio_dir, address):
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, audio_dir, limit=4)
    run_job(_cfg(manifest, tmp_path / "out"))
    with pytest.raises(ResumeError, match="sim_text"):
        run_job(_cfg(manifest, tmp_path / "out", sim_text="something else"))
    with pytest.raises(ResumeError, match="template: 'default' -> 'recognize'"):
        run_job(_cfg(manifest, tmp_path / "out", template="recognize"))
    again = run_job(_cfg(manifest, tmp_path / "out", sim_text="something else", overwrite=True))
    assert again.n_resumed == 0 and {t for _, t in _texts(again.results)} == {"something else"}


def test_retry_failed_redoes_only_failed_rows(tmp_path, audio_dir, address):
    manifest = tmp_path / "m.jsonl"
    rows = write_manifest(manifest, audio_dir, limit=10, max_duration=20)
    first = run_job(_cfg(manifest, tmp_path / "out", sim_faults="error=0.5,seed=2", max_attempts=1))
    assert 0 < first.n_failed < len(rows)
    plain = run_job(_cfg(manifest, tmp_path / "out"))
    assert plain.n_failed == first.n_failed  # a plain resume keeps failed rows as they are
    redo = run_job(_cfg(manifest, tmp_path / "out", retry_failed=True))
    assert redo.n_resumed == first.n_ok and redo.n_ok == len(rows) == redo.n_rows
    assert [i for i, _ in _texts(redo.results)] == [r["id"] for r in rows]
