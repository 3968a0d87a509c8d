"""Stop signals (SIGINT, SIGTERM, SIGHUP), sent to the driver or to its whole process group, at each stage of a run:
planning, Ray start-up, actors starting, mid-run, merge; and a terminal that closes under a run.

The CLI runs as a subprocess in its own session. Each test waits for an observable state before it signals: a marker
file the stage writes when it is reached (the CLI is started through HOOKED_CLI, which wraps the runner's step for
that stage: ray.init and the actors' start run for real, planning and the merge are stand-ins, and none of them
ends before the test has sent its signal), a child `gcs_server` process (Ray is starting), or a new part file (rows
finished). Every folder holds an earlier partial run
(the first rows of the manifest), so "finished rows are saved and a rerun resumes without repeating them" is checked
at every stage: by a rerun after a stop that changed the folder, by the folder's bytes (unchanged) before that.

Outcomes: a run stopped before it claims the folder (planning, Ray start-up) leaves the folder as it was; after
(actors starting, mid-run, merge) run.json says interrupted with the signal. Always exit 130, no .lock left.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.parquet as pq
import pytest

from manifest_helpers import write_manifest
from process_helpers import Driver
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.runner import run_job

pytestmark = pytest.mark.slow

HOOKED_CLI = r"""
import os, sys, time
from pathlib import Path
from transcribe_batch.pipeline import runner

stage, marker = os.environ.get("TB_STAGE", ""), Path(os.environ.get("TB_MARKER", "/nonexistent"))
released = marker.with_name("released")  # the test writes it once it has sent the signal

def held(real):
    # The step does not end before the signal has come (nor, for `real`, before it has run): the signal is sure to
    # arrive during it.
    def step(*args, **kwargs):
        marker.write_text(stage)
        out = real(*args, **kwargs) if real else None
        while not released.exists():  # (a stop signal's KeyboardInterrupt may end this wait in the main thread)
            time.sleep(0.05)
        return out
    return step

if stage == "planning":
    runner.build_plan = held(None)
elif stage == "ray-startup":
    runner.connect_ray = held(runner.connect_ray)  # ray.init, on the runner's helper thread
elif stage == "ray-stuck":  # a ray.init that never returns (as when the cluster it starts is killed under it)
    runner.STOP_GRACE_S = 2.0  # (10 s in a real run: the wait is the same, shorter)
    def stuck(*args, **kwargs):
        marker.write_text(stage)
        while True:
            time.sleep(0.05)
    runner.connect_ray = stuck
elif stage == "actors":
    runner.Scheduler.start = held(runner.Scheduler.start)
elif stage == "merge":
    runner.merge_results = held(None)
sys.argv[0] = "transcribe-batch"
from transcribe_batch.pipeline.cli import main
main()
"""

SLOW = 25  # --sim-speedup for the signalled run: ~2 s a row, both devices busy for about 12 s after the first part
EARLIER = 6  # rows an earlier run already finished
SAVE_EVERY_S = 1  # a part file a second: the mid-run tests wait for one
SPLITTER = "energy"  # the long rows' cuts do not matter here; the Silero VAD would cost every actor CPU time
DEVICES = "2"  # two actors: every signal still meets more than one (each actor start costs ~1.5 CPU-seconds)


def _cfg(manifest, out, **kw):
    settings = dict(engine="simulated", devices=DEVICES, sim_speedup=4000, shard_size=2, splitter=SPLITTER, quiet=True)
    settings.update(kw)
    return build_config(manifest, out, **settings)


@pytest.fixture(scope="module")
def earlier_runs(tmp_path_factory, audio_dir, ray_cluster):
    """A manifest, and two run folders made once for the module (each test works on a copy): one in which an
    earlier run finished the first EARLIER rows, one in which every row is done."""
    base = tmp_path_factory.mktemp("earlier")
    manifest = base / "m.jsonl"
    rows = write_manifest(manifest, audio_dir, repeat=3)
    first = base / "first.jsonl"
    first.write_text("".join(manifest.read_text().splitlines(keepends=True)[:EARLIER]))
    assert run_job(_cfg(first, base / "partial")).status == "complete"
    assert run_job(_cfg(manifest, base / "all")).status == "complete"
    return manifest, rows, base


def _folder_with_an_earlier_run(tmp_path, earlier_runs, *, finished_all: bool = False):
    """(manifest, its rows, a copy of a run folder holding an earlier run: the first EARLIER rows, or all)."""
    manifest, rows, base = earlier_runs
    out = tmp_path / "out"
    shutil.copytree(base / ("all" if finished_all else "partial"), out)
    return manifest, rows, out


def _snapshot(out):
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _part_rows(out):
    return sum(pq.read_metadata(p).num_rows for p in (out / "parts").glob("part-*.parquet"))


# A group signal at Ray start-up can kill the GCS before it publishes its port; ray.init then waits for the port file
# with the GIL held (docs/running.md), 30 s by default: 5 s is enough for the test's cluster to start.
RAY_START_ENV = {"RAY_gcs_server_port_wait_time_s": "5"}


def _hooked_cli(manifest, out, address, *extra):
    """The command line of the signalled run (HOOKED_CLI), joining the cluster at `address` (None: its own)."""
    return [sys.executable, "-c", HOOKED_CLI, "run", str(manifest), "-o", str(out), "--engine", "simulated",
            "--devices", DEVICES, "--sim-speedup", str(SLOW), "--shard-size", "2", "--splitter", SPLITTER,
            "--save-every-s", str(SAVE_EVERY_S), *extra, *(["--address", address] if address else [])]


def _start(manifest, out, address, stage, marker):
    env = {**os.environ, "TB_STAGE": stage, "TB_MARKER": str(marker), **RAY_START_ENV}
    return Driver(_hooked_cli(manifest, out, address, "--quiet"), start_new_session=True, env=env)


def _wait_for(what, proc, done, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        if proc.poll() is not None:
            pytest.fail(f"driver ended before {what}: {proc.output()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{what}: not reached in {timeout} s")


def _gcs_started(proc) -> bool:
    try:
        return any("gcs_server" in c.name() for c in psutil.Process(proc.pid).children(recursive=True))
    except psutil.Error:
        return False


def _signal(proc, sig, group, released=None):
    (os.killpg if group else os.kill)(proc.pid, sig)
    if released is not None:
        released.touch()
    stdout, stderr = proc.output(timeout=240)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return stdout, stderr


def _resumes(manifest, rows, out):
    """The same command again finishes the run, redoing no row that has a result."""
    done = _part_rows(out)
    again = run_job(_cfg(manifest, out, devices="1"))  # (the device count is not part of a run's identity)
    assert again.status == "complete" and again.n_resumed == done and again.n_rows == len(rows) == again.n_ok
    assert pq.read_table(out / "results.parquet", columns=["id"])["id"].to_pylist() == [r["id"] for r in rows]


# Which signals each stage gets: every one where the signal's kind once mattered (Ray start-up: Ray's own C++ SIGTERM
# handler; mid-run: the actors' work under way), elsewhere a part of them, so that every stage sees the driver and
# its group signalled and SIGHUP and SIGTERM both come early (one handler serves all three signals).
STAGE_SIGNALS = {
    0: ("SIGTERM", "SIGHUP"),             # planning
    1: ("SIGINT", "SIGTERM", "SIGHUP"),   # Ray start-up
    2: ("SIGINT", "SIGHUP"),              # actors starting
    3: ("SIGINT", "SIGTERM", "SIGHUP"),   # mid-run
    4: ("SIGINT", "SIGTERM"),             # merge
}


def _matrix(stage: int) -> list:
    """The stage's signals; to the driver or to its group alternately, so that each stage gets both."""
    return [pytest.param(getattr(signal, name), (stage + k) % 2 == 1,
                         id=f"{name}-{'group' if (stage + k) % 2 else 'driver'}")
            for k, name in enumerate(STAGE_SIGNALS[stage])]


@pytest.mark.parametrize("sig, group", _matrix(0))
def test_stop_while_planning(tmp_path, earlier_runs, ray_cluster, sig, group):
    """The run has not claimed the folder: it stays exactly as it was."""
    manifest, rows, out = _folder_with_an_earlier_run(tmp_path, earlier_runs)
    before = _snapshot(out)
    _, stderr = _stop_at("planning", manifest, out, ray_cluster, sig, group, tmp_path)
    # byte for byte the earlier run's folder, which the other stages' tests resume (_resumes): no need to here
    assert "interrupted before the run started" in stderr and _snapshot(out) == before


@pytest.mark.parametrize("sig, group", _matrix(1))
def test_stop_while_ray_starts(tmp_path, earlier_runs, sig, group):
    """The driver starts its own Ray cluster (no --address); the signal comes while ray.init runs. Ray installs its
    own SIGTERM handler when started from the main thread (exit 15, run.json "failed: SystemExit: 15") and a group
    signal kills the cluster's processes under it: the run must still stop as a stop. It had not claimed the folder:
    the folder is as it was; a folder it created is removed."""
    if sig == signal.SIGINT:  # into a new folder
        manifest, out = earlier_runs[0], tmp_path / "new"
        _, stderr = _stop_at("ray-startup", manifest, out, None, sig, group, tmp_path)
        assert "interrupted before the run started" in stderr and not out.exists()
        return
    manifest, rows, out = _folder_with_an_earlier_run(tmp_path, earlier_runs)
    before = _snapshot(out)
    _, stderr = _stop_at("ray-startup", manifest, out, None, sig, group, tmp_path)
    assert "interrupted before the run started" in stderr and _snapshot(out) == before  # (resumable: as above)


def test_a_ray_start_that_does_not_return_is_given_up(tmp_path, earlier_runs):
    """A group signal can kill the cluster ray.init is starting; ray.init may then wait a long time (and Ray ends a
    process whose GCS died while it connected, exit 1, after 60 s). A stopped run waits STOP_GRACE_S for it (2 s
    here), then ends: exit 130, the folder as it was."""
    manifest, rows, out = _folder_with_an_earlier_run(tmp_path, earlier_runs)
    before = _snapshot(out)
    _, stderr = _stop_at("ray-stuck", manifest, out, None, signal.SIGTERM, False, tmp_path)
    assert "interrupted before the run started" in stderr and _snapshot(out) == before
    assert "once ray.init returns, or in 2 s" in stderr


@pytest.mark.parametrize("sig, group", _matrix(2))
def test_stop_while_actors_start(tmp_path, earlier_runs, ray_cluster, sig, group):
    manifest, rows, out = _folder_with_an_earlier_run(tmp_path, earlier_runs)
    _stop_at("actors", manifest, out, ray_cluster, sig, group, tmp_path)
    _check_interrupted(out, sig, rows, new_rows=False)
    _resumes(manifest, rows, out)


@pytest.mark.parametrize("sig, group", _matrix(3))
def test_stop_mid_run(tmp_path, earlier_runs, ray_cluster, sig, group):
    manifest, rows, out = _folder_with_an_earlier_run(tmp_path, earlier_runs)
    _stop_at("mid-run", manifest, out, ray_cluster, sig, group, tmp_path)
    run = _check_interrupted(out, sig, rows, new_rows=True)
    _assert_ledgers_removed(run)
    _resumes(manifest, rows, out)


def _assert_ledgers_removed(run: dict) -> None:
    """The device ledgers (workers/ledger.py) of an interrupted run are gone with it, even where an actor was still
    finishing an engine call as the driver ended it (given it a moment to be ended)."""
    from transcribe_batch.workers.ledger import ledger_files

    files = [f for d in run["devices"] for f in ledger_files(d["ledger"])]
    deadline = time.monotonic() + 10
    while any(f.exists() for f in files) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert files and not [f for f in files if f.exists()]


@pytest.mark.parametrize("sig, group", _matrix(4))
def test_stop_while_merging(tmp_path, earlier_runs, ray_cluster, sig, group):
    """Every row is done and the merge runs: run.json says interrupted, no results.parquet and no temporary file
    is left, and the next run merges without redoing a row."""
    manifest, rows, out = _folder_with_an_earlier_run(tmp_path, earlier_runs, finished_all=True)
    _stop_at("merge", manifest, out, ray_cluster, sig, group, tmp_path)
    run = _check_interrupted(out, sig, rows, new_rows=False)
    assert run["counts"]["rows"] == len(rows)
    assert not (out / "results.parquet").exists() and not list(out.glob(".tmp-*"))
    _resumes(manifest, rows, out)


def _stop_at(stage, manifest, out, address, sig, group, tmp_path):
    """Start the CLI (joining the Ray cluster at `address`, or with None starting its own), wait until it is at
    `stage`, send `sig`; its stdout and stderr (exit code 130, no traceback, --quiet's JSON says interrupted)."""
    marker = tmp_path / "reached"
    parts_before = set(out.glob("parts/part-*.parquet"))
    proc = _start(manifest, out, address, "" if stage == "mid-run" else stage, marker)
    if stage == "mid-run":
        _wait_for("a new part file", proc, lambda: bool(set(out.glob("parts/part-*.parquet")) - parts_before))
    elif stage == "ray-startup":
        _wait_for("Ray's start-up", proc, lambda: marker.exists() and _gcs_started(proc))
    elif stage == "ray-stuck":
        _wait_for("Ray's start-up", proc, marker.exists)
    else:
        _wait_for(stage, proc, marker.exists)
    stdout, stderr = _signal(proc, sig, group, marker.with_name("released"))
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "interrupted"  # --quiet: the outcome as JSON
    assert not (out / ".lock").exists()
    return stdout, stderr


def _check_interrupted(out, sig, rows, *, new_rows: bool) -> dict:
    """run.json of a run stopped after it claimed the folder: interrupted, the signal, and counts that are exactly
    the rows in parts/ (the earlier ones, and those this run finished)."""
    run = json.loads((out / "run.json").read_text())
    done = _part_rows(out)
    assert run["status"] == "interrupted" and run["signal"] == sig.name
    assert EARLIER <= done <= len(rows) and run["counts"]["rows"] == done == run["counts"]["ok"]
    if new_rows:
        assert EARLIER < done < len(rows)
    return run


def test_a_closed_terminal_stops_the_run_like_a_signal(tmp_path, earlier_runs, ray_cluster):
    """The run's terminal goes away (an ssh session drops, a terminal window closes): the kernel sends SIGHUP and
    every later write to the terminal fails (EIO). The run still saves its work and ends interrupted (130)."""
    import fcntl
    import termios

    manifest, rows, out = _folder_with_an_earlier_run(tmp_path, earlier_runs)
    master, slave = os.openpty()

    def controlling_terminal():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        _hooked_cli(manifest, out, ray_cluster),
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=controlling_terminal)
    os.close(slave)
    seen = bytearray()

    def drain():  # the terminal's reader keeps up with the progress bar
        while True:
            try:
                chunk = os.read(master, 65536) if _readable(master) else b""
            except OSError:
                return
            if not chunk:
                return
            seen.extend(chunk)

    earlier = set((out / "parts").glob("part-*.parquet"))
    deadline = time.monotonic() + 240
    while not set((out / "parts").glob("part-*.parquet")) - earlier:
        drain()
        assert proc.poll() is None and time.monotonic() < deadline, seen[-3000:].decode(errors="replace")
        time.sleep(0.05)
    drain()
    os.close(master)  # the terminal is gone: SIGHUP to the session, EIO for writes
    assert proc.wait(timeout=240) == 130
    run = json.loads((out / "run.json").read_text())
    done = _part_rows(out)
    assert run["status"] == "interrupted" and run["signal"] == "SIGHUP"
    assert EARLIER < done < len(rows) and run["counts"]["rows"] == done
    assert not (out / ".lock").exists()
    _resumes(manifest, rows, out)


def _readable(fd) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])
