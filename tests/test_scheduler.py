"""Dispatch decisions of the scheduler, without Ray: who gets which work next."""

import numpy as np

from manifest_helpers import write_manifest
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.pipeline.devices import DeviceSlot
from transcribe_batch.pipeline.plan import build_plan
from transcribe_batch.pipeline.scheduler import Device, Scheduler, Task, required_streak
from transcribe_batch.workers.work import WorkItem


class _Progress:
    def log(self, *a, **k):
        pass

    def retry(self, n):
        pass


def _scheduler(tmp_path, audio_dir, n_devices=2):
    write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2)
    plan = build_plan(tmp_path / "m.jsonl", shard_size=4)
    slots = [DeviceSlot("sim", d) for d in range(n_devices)]
    s = Scheduler(plan, slots, worker_config(engine="simulated"), on_final=lambda r: None, progress=_Progress())
    s.devices = [Device(slot, actor=None) for slot in slots]
    return s


def test_retries_go_to_another_device_first(tmp_path, audio_dir):
    s = _scheduler(tmp_path, audio_dir)
    a, b = s.devices
    s.retries.append(Task([WorkItem(5, 6, attempt=2, failed_on=(a.label,))]))
    fresh = s._next_task(a)
    assert [i.attempt for i in fresh.items] == [1] * len(fresh.items)  # a fresh shard, not the retry
    retry = s._next_task(b)
    assert [(i.index, i.attempt) for i in retry.items] == [(5, 2)]


def test_a_retry_waits_for_another_device_then_any_may_take_it(tmp_path, audio_dir):
    s = _scheduler(tmp_path, audio_dir)
    a, b = s.devices
    s.cursor = len(s.plan.todo)  # no fresh work left
    s.shard_time_s = 0.3
    s.retries.append(Task([WorkItem(7, 8, attempt=2, failed_on=(a.label,))]))
    assert s._next_task(a) is None  # b may still come for it
    s.retries[0].queued -= 0.31
    assert [i.index for i in s._next_task(a).items] == [7]
    s.retries.append(Task([WorkItem(8, 9, attempt=3, failed_on=(a.label, b.label))]))
    assert [i.index for i in s._next_task(a).items] == [8]  # it failed everywhere: no reason to wait


def test_fresh_work_is_longest_first_and_each_row_handed_out_once(tmp_path, audio_dir):
    s = _scheduler(tmp_path, audio_dir, n_devices=3)
    seen = []
    while (t := s._next_task(s.devices[len(seen) % 3])) is not None:
        seen.extend(i.index for i in t.items)
    assert sorted(seen) == list(range(len(s.plan.lines)))
    d = s.plan.durations[seen]
    assert np.all(np.diff(d) <= 0)


def test_shards_hold_at_least_a_batch(tmp_path, audio_dir):
    write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2)
    plan = build_plan(tmp_path / "m.jsonl", shard_size=2)
    slots = [DeviceSlot("sim", d) for d in range(2)]
    s = Scheduler(plan, slots, worker_config(engine="simulated", batch_size=5), on_final=lambda r: None,
                  progress=_Progress())
    s.devices = [Device(slot, actor=None) for slot in slots]
    sizes = []
    while (t := s._next_task(s.devices[0])) is not None:
        sizes.append(len(t.items))
    assert sum(sizes) == len(plan.lines) and min(sizes[:-1]) >= 5


def test_a_failure_streak_is_evidence_only_against_a_pool_that_does_better():
    assert required_streak(3, 0, 100, True) == 3  # a healthy pool: the flag's value
    assert required_streak(3, 0, 0, False) == 3  # a device alone: the flag's value
    assert required_streak(3, 20, 100, True) >= 6  # the others fail 20% of the time: a longer streak is needed
    assert 0.2 ** required_streak(3, 20, 100, True) < 1e-4
    assert required_streak(3, 30, 30, True) == float("inf")  # every device fails alike: never the device's fault


def test_device_kinds_come_from_one_registry():
    import pytest

    from transcribe_batch.workers.engines import UnknownEngine, device_kind
    from transcribe_batch.workers.platforms import PLATFORMS, UnknownDeviceKind

    assert device_kind("bm1684x") == "bm1684x"
    assert device_kind("hf", gpus_available=True) == "gpu" and device_kind("hf") == "cpu"
    assert device_kind("simulated") == "sim" and device_kind("simulated", "bm1684x") == "bm1684x"
    with pytest.raises(UnknownEngine, match="unknown engine 'whisper'"):
        device_kind("whisper")  # not silently a virtual device
    with pytest.raises(UnknownEngine, match="does not run on device kind 'gpu'"):
        device_kind("bm1684x", "gpu")
    with pytest.raises(UnknownDeviceKind, match="unknown device kind 'tpu'"):
        DeviceSlot("tpu", 0)
    assert PLATFORMS["bm1684x"].actor_options() == {"resources": {"bm1684x": 1}}
    assert PLATFORMS["gpu"].actor_options() == {"num_gpus": 1} and PLATFORMS["sim"].actor_options() == {}
    two = [DeviceSlot("bm1684x", 0, "a" * 56, "10.0.0.2", "aaaaaaaa"), DeviceSlot("bm1684x", 0, "b" * 56, "10.0.0.2",
                                                                                 "bbbbbbbb")]
    assert len({s.label for s in two}) == 2  # two raylets on one host: still two names
