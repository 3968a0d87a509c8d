"""Dispatch decisions of the scheduler, without Ray: who gets which work next."""

import numpy as np

from manifest_helpers import write_manifest
from transcribe_batch.pipeline.devices import DeviceSlot
from transcribe_batch.pipeline.plan import build_plan
from transcribe_batch.pipeline.scheduler import Device, Scheduler, Task


class _Progress:
    def log(self, *a, **k):
        pass

    def retry(self, n):
        pass


def _scheduler(tmp_path, audio_dir, n_devices=2):
    write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2)
    plan = build_plan(tmp_path / "m.jsonl", shard_size=4)
    slots = [DeviceSlot("sim", d) for d in range(n_devices)]
    s = Scheduler(plan, slots, engine="simulated", options={}, on_final=lambda r: None, progress=_Progress())
    s.devices = [Device(slot, actor=None) for slot in slots]
    return s


def test_retries_go_to_another_device_first(tmp_path, audio_dir):
    s = _scheduler(tmp_path, audio_dir)
    a, b = s.devices
    s.retries.append(Task(np.array([5]), [2], frozenset({a.label})))
    fresh = s._next_task(a)
    assert fresh.attempts == [1] * len(fresh.indices)  # a fresh shard, not the retry
    retry = s._next_task(b)
    assert retry.indices.tolist() == [5] and retry.attempts == [2]


def test_a_retry_waits_for_another_device_then_any_may_take_it(tmp_path, audio_dir):
    s = _scheduler(tmp_path, audio_dir)
    a, b = s.devices
    s.cursor = len(s.plan.todo)  # no fresh work left
    s.shard_time_s = 0.3
    s.retries.append(Task(np.array([7]), [2], frozenset({a.label})))
    assert s._next_task(a) is None  # b may still come for it
    s.retries[0].queued -= 0.31
    assert s._next_task(a).indices.tolist() == [7]
    s.retries.append(Task(np.array([8]), [3], frozenset({a.label, b.label})))
    assert s._next_task(a).indices.tolist() == [8]  # it failed everywhere: no reason to wait


def test_fresh_work_is_longest_first_and_each_row_handed_out_once(tmp_path, audio_dir):
    s = _scheduler(tmp_path, audio_dir, n_devices=3)
    seen = []
    while (t := s._next_task(s.devices[len(seen) % 3])) is not None:
        seen.extend(t.indices.tolist())
    assert sorted(seen) == list(range(len(s.plan.lines)))
    d = s.plan.durations[seen]
    assert np.all(np.diff(d) <= 0)
