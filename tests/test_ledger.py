"""The device ledger (workers/ledger.py): what an actor puts on its device survives the actor's process dying, is
read once, and leaves nothing behind once the run is over."""

import os
import stat
import subprocess
import sys
import time

import pytest

from transcribe_batch.workers import ledger as ledger_mod
from transcribe_batch.workers.ledger import DeviceLedger, ledger_files, remove_ledgers, sweep_stale, take_held


@pytest.fixture
def ledger_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(ledger_mod.DIR_ENV, str(tmp_path))
    return tmp_path


def test_the_last_hold_is_taken_once(ledger_dir):
    led = DeviceLedger("run1", "bm1684x:0@10.0.0.2")
    led.hold([(3, 1)])
    led.hold([(4, 2), (5, 1)])  # the last call's keys replace the earlier ones
    assert led.path.parent == ledger_dir and stat.S_IMODE(led.path.stat().st_mode) == 0o600
    assert take_held(led.path) == [(4, 2), (5, 1)]
    assert take_held(led.path) == []  # taken: a second crash is not charged to the first one's rows
    assert sorted(p.name for p in ledger_dir.iterdir()) == [ledger_files(led.path)[2].name]  # no temp file left
    led.close()
    assert list(ledger_dir.iterdir()) == []


def test_labels_and_runs_get_their_own_files(ledger_dir):
    a, b, c = DeviceLedger("run1", "sim:1"), DeviceLedger("run1", "sim_1"), DeviceLedger("run2", "sim:1")
    for k, led in enumerate((a, b, c)):
        led.hold([(k, 1)])
    assert [take_held(led.path) for led in (a, b, c)] == [[(0, 1)], [(1, 1)], [(2, 1)]]


def test_the_record_survives_the_process_dying(ledger_dir):
    """What a crash looks like: the actor's process ends with os._exit right after recording, mid engine call."""
    code = ("import os; from transcribe_batch.workers.ledger import DeviceLedger; "
            "led = DeviceLedger('run1', 'sim:0'); led.hold([(7, 1)]); led.hold([(8, 3)]); print(led.path, flush=True); "
            "os._exit(77)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=60)
    assert done.returncode == 77, done.stderr
    assert take_held(done.stdout.strip()) == [(8, 3)]


def test_a_failed_write_leaves_no_earlier_record(ledger_dir, monkeypatch):
    led = DeviceLedger("run1", "sim:0")
    led.hold([(1, 1)])

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ledger_mod.os, "replace", full)
    with pytest.raises(OSError):
        led.hold([(2, 1)])
    assert take_held(led.path) == []  # not (1, 1): that row is not on the device


def test_remove_ledgers_removes_every_file(ledger_dir):
    led = DeviceLedger("run1", "sim:0")
    led.hold([(1, 1)])
    assert remove_ledgers([led.path]) == 2  # keys and lock
    assert list(ledger_dir.iterdir()) == []
    assert remove_ledgers([led.path]) == 0


def test_a_sweep_removes_only_ledgers_of_dead_actors_nothing_wrote_to_lately(ledger_dir):
    live = DeviceLedger("run1", "sim:0")
    live.hold([(1, 1)])
    dead = DeviceLedger("run2", "sim:0")
    dead.hold([(2, 1)])
    os.close(dead._lock)  # the process died: the kernel let go of its lock
    fresh_dead = DeviceLedger("run3", "sim:0")
    fresh_dead.hold([(3, 1)])
    os.close(fresh_dead._lock)
    old = time.time() - 2 * ledger_mod.STALE_S
    for p in ledger_files(live.path) + ledger_files(dead.path):
        if p.exists():
            os.utime(p, (old, old))
    removed = sweep_stale(ledger_dir)
    assert removed == [ledger_files(dead.path)[2].stem]
    assert not any(p.exists() for p in ledger_files(dead.path))
    assert take_held(live.path) == [(1, 1)]  # held by a live actor, however old
    assert take_held(fresh_dead.path) == [(3, 1)]  # its driver may not have read it yet


def test_an_actor_starting_sweeps(ledger_dir):
    dead = DeviceLedger("run2", "sim:0")
    os.close(dead._lock)
    old = time.time() - 2 * ledger_mod.STALE_S
    os.utime(ledger_files(dead.path)[2], (old, old))
    DeviceLedger("run3", "sim:0")
    assert not ledger_files(dead.path)[2].exists()


def test_a_hold_after_the_run_ended_leaves_nothing(ledger_dir):
    """An actor still finishing an engine call when the driver removes the run's ledgers (an interrupted run)
    writes once more: that record must not outlive the run."""
    led = DeviceLedger("run1", "sim:0")
    led.hold([(1, 1)])
    remove_ledgers([led.path])
    led.hold([(2, 1)])
    assert list(ledger_dir.iterdir()) == []


def test_a_sweep_removes_old_records_without_a_lock(ledger_dir):
    led = DeviceLedger("run1", "sim:0")
    led.hold([(1, 1)])
    os.close(led._lock)
    ledger_files(led.path)[2].unlink()  # as a record written after its run's clean-up by an older version
    fresh = DeviceLedger("run2", "sim:0")
    fresh.hold([(2, 1)])
    ledger_files(fresh.path)[2].unlink()
    old = time.time() - 2 * ledger_mod.STALE_S
    os.utime(led.path, (old, old))
    assert sweep_stale(ledger_dir) == [led.path.stem]
    assert not led.path.exists() and fresh.path.exists()  # a fresh one may be a live actor's: left alone


@pytest.mark.slow
def test_shutdown_closes_each_idle_actor(tmp_path, audio_dir, ray_cluster):
    """The scheduler closes every actor it ends that has no work in flight (engine, device, ledger), rather than
    only killing its process: with the driver's own clean-up of the ledgers left out, they are gone all the same."""
    from manifest_helpers import write_manifest
    from transcribe_batch.pipeline.config import worker_config
    from transcribe_batch.pipeline.devices import DeviceSlot
    from transcribe_batch.pipeline.plan import build_plan
    from transcribe_batch.pipeline.scheduler import Scheduler

    class Progress:
        def log(self, *a, **k):
            pass

        def retry(self, n):
            pass

    write_manifest(tmp_path / "m.jsonl", audio_dir, limit=4)
    done = []
    scheduler = Scheduler(build_plan(tmp_path / "m.jsonl"), [DeviceSlot("sim", d) for d in range(2)],
                          worker_config(engine="simulated", sim_speedup=2000), on_final=done.extend,
                          progress=Progress())
    try:
        infos = scheduler.start()
        scheduler.run()
        assert len(done) == 4 and all(o.ok for o in done)
        paths = [info.ledger for info in infos]
        assert all(ledger_files(p)[2].exists() for p in paths)  # each actor holds its ledger's lock file
        scheduler.ledgers = {}  # leave the driver's clean-up out: only the actors' close() can remove them
    finally:
        scheduler.shutdown()
    assert not [f for p in paths for f in ledger_files(p) if f.exists()]
