"""Slots that never drain: the actor's device loop (workers/device_loop.py) feeds an engine's stream from every
shard at once, so a device with B decode slots keeps them full while rows remain (issue 19 item 2). Simulated
engine here (B = 4, the port's cost model, mixed answer lengths); the same on the native runtime with the B = 4
bmodel: tests/test_bm1684x_streaming.py."""

from __future__ import annotations

import threading
import time

import pytest

from transcribe_batch.manifests.reader import iter_rows
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.workers.actor import TranscriptionWorker
from transcribe_batch.workers.device_loop import DeviceLoop, Job
from transcribe_batch.workers.engines import create_engine
from transcribe_batch.workers.engines.base import DecodeOptions, Request, WholeCalls
from transcribe_batch.workers.record import now
from transcribe_batch.workers.work import WorkItem

B = 4
WORDS = [1, 10, 3, 8, 2, 9, 4, 7, 1, 6, 10, 3]  # answer lengths in words: long ones hold a slot for many steps


def _words(n: int) -> str:
    return " ".join(f"word{k}" for k in range(n))


def _rows(audio_manifest, n: int) -> list[ManifestRow]:
    # short rows: their front end (≤ 10 ms each) outruns the simulated device, so only the slots are measured
    base = [r for _, r in iter_rows(audio_manifest) if r.duration and 2 <= r.duration <= 10]
    return [ManifestRow(id=f"r{i}", audio_filepath=base[i % len(base)].audio_filepath,
                        duration=base[i % len(base)].duration, text=_words(WORDS[i % len(WORDS)]))
            for i in range(n)]


def _items(rows, start=0):
    return [WorkItem(index=start + i, line=start + i + 1, row=r, queued_at=now(), duration=r.duration)
            for i, r in enumerate(rows)]


def test_slots_stay_full_across_shards_while_rows_remain(audio_manifest):
    """Two shards in flight (as the scheduler keeps them): a slot freed by a short answer takes the next prepared
    row, from either shard, so every decode step while rows wait has all B slots live; each row's outcome carries
    the device's slot use."""
    rows = _rows(audio_manifest, 24)
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=400, sim_batch=B), device=0)
    out: dict[str, list] = {}

    def shard(name, items):
        out[name] = w.run_shard(items)

    try:
        second = threading.Thread(target=shard, args=("b", _items(rows[12:], start=12)))
        shard_a = threading.Thread(target=shard, args=("a", _items(rows[:12])))
        shard_a.start()
        second.start()
        shard_a.join()
        second.join()
        use = w.loop.use
    finally:
        w.close()
    outcomes = out["a"] + out["b"]
    assert sorted(o.index for o in outcomes) == list(range(24)) and all(o.ok for o in outcomes)
    assert use.slots == B and use.steps > 0
    assert use.queued_occupancy >= 0.9, use
    assert use.occupancy < 1.0  # the last answers drain the slots at the end of the work
    assert all(o.slots is not None and o.slots.slots == B for o in outcomes)
    last = max(outcomes, key=lambda o: o.slots.steps)
    assert last.slots == use
    print(f"slot occupancy: {use.queued_occupancy:.3f} while rows remained, {use.occupancy:.3f} overall "
          f"({use.steps} steps)")


def _jobs(requests, done):
    t = time.perf_counter()
    return [Job(WorkItem(index=i, line=i + 1), [r], done.append, t, t) for i, r in enumerate(requests)]


def _run(loop: DeviceLoop, jobs: list[Job], done: list[Job]) -> None:
    loop.expect(len(jobs))
    for job in jobs:
        loop.put(job)
    deadline = time.monotonic() + 60
    while len(done) < len(jobs) and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.close()


def _requests(n: int) -> list[Request]:
    return [Request(id=f"u{i}", duration_s=5.0, reference=_words(WORDS[i % len(WORDS)]),
                    decode=DecodeOptions(200)) for i in range(n)]


@pytest.mark.parametrize("whole_calls", [False, True])
def test_streaming_keeps_slots_full_where_whole_calls_drain(whole_calls):
    """The same requests through B = 4 slots: streamed, every step while requests wait is full; in whole calls of
    B requests (the actor's way before), each call's slots drain while its longest answer runs."""
    engine = create_engine(worker_config(engine="simulated", sim_speedup=2000, sim_batch=B), 0)
    slots = engine.stream(B)
    done: list[Job] = []
    held: list[list] = []
    loop = DeviceLoop(WholeCalls(engine, B) if whole_calls else slots, hold=held.append,
                      begin_attempts=engine.begin_attempts)
    _run(loop, _jobs(_requests(24), done), done)
    assert sorted(j.item.index for j in done) == list(range(24))
    assert all(not j.failed and j.results[0].text == j.requests[0].reference for j in done)
    occupancy = slots.busy / (slots.steps * B)  # the engine's own decode steps
    if whole_calls:
        assert occupancy < 0.75
    else:
        assert loop.use.queued_occupancy == 1.0 and loop.use.busy == slots.busy
        assert max(len(keys) for keys in held) == B  # the ledger named every row on the device


def test_an_alone_job_runs_with_nothing_else_on_the_device():
    """A row marked alone (it was in a batch that crashed) waits for the slots to drain and has the device, and
    the ledger, to itself; the rows after it fill the slots again."""
    engine = create_engine(worker_config(engine="simulated", sim_speedup=2000, sim_batch=B), 0)
    done: list[Job] = []
    held: list[list] = []
    loop = DeviceLoop(engine.stream(B), hold=held.append)
    jobs = _jobs(_requests(9), done)
    jobs[5].alone = True
    _run(loop, jobs, done)
    assert len(done) == 9
    assert [jobs[5].item.key] in held
    alone = jobs[5]
    others = [j for j in jobs if j is not alone]
    assert all(j.finished_at <= alone.started_at or j.started_at >= alone.finished_at for j in others)
    assert not alone.shared and max(len(keys) for keys in held) == B


def test_a_request_that_fails_next_to_others_is_run_again_alone(audio_manifest):
    """An injected engine error in a full device: the row goes again alone (a failed step may have been its
    neighbours'), fails again on its own, and comes back as a failed attempt for the driver to retry; its
    neighbours are answered."""
    from transcribe_batch.workers.engines.simulated import FaultSpec

    rows = _rows(audio_manifest, 8)
    seed = next(s for s in range(1000) if [FaultSpec(error=0.2, seed=s).draw(r.id, 1) for r in rows].count("error")
                == 1)
    w = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=2000, sim_batch=B,
                                          sim_faults=f"error=0.2,seed={seed}"), device=0)
    try:
        outcomes = w.run_shard(_items(rows))
    finally:
        w.close()
    failed = [o for o in outcomes if not o.ok]
    assert len(failed) == 1 and failed[0].decision == "retry" and failed[0].record.error_class == "SimulatedFault"
    assert len([o for o in outcomes if o.ok]) == 7
