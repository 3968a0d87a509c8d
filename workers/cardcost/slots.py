"""B decode slots on one card, simulated: what the bm1684x engine's transcribe_batch does (a request starts as soon
as a slot is free, in order; its audio encode and prefill run alone; then one decode step serves every busy slot),
with each piece of work charged the time a cost model gives it. Used by the simulated engine to time a batched call
and by benchmarks/pipeline.py to project slot occupancy."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SlotJob:
    """One request as the slots see it."""

    first_token_s: float  # audio encode + prefill + first token (the card does nothing else meanwhile)
    decode_tokens: int  # tokens after the first one: decode steps it takes part in
    prompt_len: int = 0  # for dynamic nets' K/V length


@dataclass(frozen=True)
class SlotTiming:
    """When one job ran (seconds from the start of the schedule)."""

    slot: int
    wait_s: float  # until its prefill started (a slot was busy, or other prefills ran)
    first_token_s: float
    decode_s: float  # the steps it took part in (each shared with the other busy slots)
    steps: int
    finished_at: float


@dataclass(frozen=True)
class SlotSchedule:
    timings: tuple[SlotTiming, ...]  # one per job, in job order
    total_s: float
    steps: int  # decode steps run
    row_steps: int  # Σ busy slots over the steps

    def occupancy(self, batch: int) -> float | None:
        """Share of decode-step slot capacity with a live request (None without decode steps)."""
        return self.row_steps / (self.steps * batch) if self.steps else None


def run_slots(jobs: Sequence[SlotJob], batch: int, step_s: Callable[[list[int]], float],
              kv_len: Callable[[SlotJob, int], int] = lambda job, generated: 0) -> SlotSchedule:
    """All `jobs` through `batch` slots. `step_s(kv_lens)` is one decode step's time for the busy rows' history
    lengths; `kv_len(job, generated)` a row's history length after `generated` decode tokens."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    t = 0.0
    pending = deque(range(len(jobs)))
    free = list(range(batch))
    busy: dict[int, list] = {}  # slot -> [job index, generated, decode_s, wait_s, first_s]
    done: dict[int, SlotTiming] = {}
    steps = row_steps = 0
    while pending or busy:
        while pending and free:
            i = pending.popleft()
            slot = free.pop(0)
            wait = t
            t += jobs[i].first_token_s
            if jobs[i].decode_tokens <= 0:
                done[i] = SlotTiming(slot, wait, jobs[i].first_token_s, 0.0, 0, t)
                free.insert(0, slot)
            else:
                busy[slot] = [i, 0, 0.0, wait, jobs[i].first_token_s]
        if not busy:
            continue
        order = sorted(busy)
        dt = step_s([kv_len(jobs[busy[s][0]], busy[s][1]) for s in order])
        t += dt
        steps += 1
        row_steps += len(order)
        for s in order:
            state = busy[s]
            state[1] += 1
            state[2] += dt
            i = state[0]
            if state[1] >= jobs[i].decode_tokens:
                done[i] = SlotTiming(s, state[3], state[4], state[2], state[1], t)
                del busy[s]
                free.append(s)
        free.sort()
    return SlotSchedule(tuple(done[i] for i in range(len(jobs))), t, steps, row_steps)
