"""Slots that never drain on the native runtime (issue 19 item 2): the actor's device loop feeds the B = 4 tiny
bmodel on the simulator from two shards, answers of mixed lengths; every decode step while rows remain has all four
slots live, and every answer is still the HF reference's tokens."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from bm1684x_support import BATCH, batched_bmodel_path, clip_row, fixture_dir, native, reference
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.workers.device_loop import DeviceLoop, Job
from transcribe_batch.workers.engines import create_engine
from transcribe_batch.workers.engines.base import FINISH_MAX_TOKENS, DecodeOptions
from transcribe_batch.workers.work import WorkItem

ANSWERS = [2, 5, 3, 6, 2, 4, 3, 5, 2]  # tokens per request: slots free at different steps
FIRST_SHARD = 5


@pytest.mark.slow
@pytest.mark.simulator
def test_the_b4_bmodel_keeps_its_slots_full_across_shards(audio_dir):
    native()
    from transcribe_batch.workers.frontend import FrontEnd

    engine = create_engine(worker_config(engine="bm1684x", model_dir=str(fixture_dir()),
                                         bmodel=str(batched_bmodel_path())), 0)
    try:
        fe = FrontEnd(fixture_dir(), template="default", max_new_tokens=256, limits=engine.limits)
        clips = reference()["clips"]
        prepared = [fe.prepare(clip_row(c, audio_dir))[0] for c in clips]
        done: list[Job] = []
        held: list[list] = []
        loop = DeviceLoop(engine.stream(BATCH), hold=held.append)
        t = time.perf_counter()
        jobs = [Job(WorkItem(index=i, line=i + 1), [replace(prepared[i % len(clips)], id=f"r{i}",
                                                             decode=DecodeOptions(n, ()))], done.append, t, t)
                for i, n in enumerate(ANSWERS)]
        loop.expect(len(jobs))
        for job in jobs[:FIRST_SHARD]:
            loop.put(job)
        while not loop.use.steps:  # the second shard arrives while the first is decoding
            time.sleep(0.05)
        for job in jobs[FIRST_SHARD:]:
            loop.put(job)
        deadline = time.monotonic() + 900
        while len(done) < len(jobs) and time.monotonic() < deadline:
            time.sleep(0.1)
        loop.close()
    finally:
        engine.close()
    assert len(done) == len(jobs)
    for i, job in enumerate(jobs):
        res = job.results[0]
        assert res.token_ids == clips[i % len(clips)]["tokens"][:ANSWERS[i]], (i, res)
        assert res.finish_reason == FINISH_MAX_TOKENS and res.extra["decode_steps"] == ANSWERS[i] - 1
    use = loop.use
    print(f"B={BATCH} bmodel on the simulator: slot occupancy {use.queued_occupancy:.3f} while rows remained "
          f"({use.queued_steps} steps), {use.occupancy:.3f} overall ({use.steps} steps)")
    assert use.queued_occupancy >= 0.9, use
    assert use.busy == sum(n - 1 for n in ANSWERS)  # Σ live rows over the steps = Σ decode tokens
    assert max(len(keys) for keys in held) == BATCH  # the ledger named all four rows on the device
