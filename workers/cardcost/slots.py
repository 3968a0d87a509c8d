"""B decode slots on one card, simulated: what the bm1684x engine's slot stream does (a request starts in a free
slot; its audio encode and prefill run alone; then one decode step serves every busy slot), with each piece of work
charged the time a cost model gives it. `Slots` is the incremental model (the simulated engine's stream drives it a
request and a step at a time); `run_slots` runs a whole list through it (benchmarks/pipeline.py projects slot
occupancy with it)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SlotJob:
    """One request as the slots see it."""

    first_token_s: float  # audio encode + prefill + first token (the card does nothing else meanwhile)
    decode_tokens: int  # tokens after the first one: decode steps it takes part in
    prompt_len: int = 0  # for dynamic nets' K/V length


@dataclass(frozen=True)
class SlotTiming:
    """When one job ran (seconds on the slots' clock)."""

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


class _Live:
    __slots__ = ("key", "job", "generated", "decode_s", "wait_s")

    def __init__(self, key: Hashable, job: SlotJob, wait_s: float):
        self.key, self.job, self.generated, self.decode_s, self.wait_s = key, job, 0, 0.0, wait_s


class Slots:
    """`batch` decode slots and their clock `t` (seconds). `step_s(kv_lens)` is one decode step's time for the busy
    rows' history lengths; `kv_len(job, generated)` a row's history length after `generated` decode tokens."""

    def __init__(self, batch: int, step_s: Callable[[list[int]], float],
                 kv_len: Callable[[SlotJob, int], int] = lambda job, generated: 0):
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.batch, self.step_s, self.kv_len = batch, step_s, kv_len
        self.t = 0.0
        self.steps = self.row_steps = 0
        self._busy: dict[int, _Live] = {}

    @property
    def free_slots(self) -> int:
        return self.batch - len(self._busy)

    @property
    def live(self) -> int:
        return len(self._busy)

    def start(self, key: Hashable, job: SlotJob) -> SlotTiming | None:
        """`job` (named `key`) in the lowest free slot, its prefill run now; its timing when it needs no decode step
        (done at once: the slot stays free), else None (it comes back from a later `step`)."""
        slot = min(set(range(self.batch)) - set(self._busy))
        wait = self.t
        self.t += job.first_token_s
        if job.decode_tokens <= 0:
            return SlotTiming(slot, wait, job.first_token_s, 0.0, 0, self.t)
        self._busy[slot] = _Live(key, job, wait)
        return None

    def step(self) -> list[tuple[Hashable, SlotTiming]]:
        """One decode step of every busy slot; the (key, timing) of the jobs it finished, by slot."""
        order = sorted(self._busy)
        if not order:
            return []
        dt = self.step_s([self.kv_len(self._busy[s].job, self._busy[s].generated) for s in order])
        self.t += dt
        self.steps += 1
        self.row_steps += len(order)
        done = []
        for s in order:
            live = self._busy[s]
            live.generated += 1
            live.decode_s += dt
            if live.generated >= live.job.decode_tokens:
                done.append((live.key, SlotTiming(s, live.wait_s, live.job.first_token_s, live.decode_s,
                                                  live.generated, self.t)))
                del self._busy[s]
        return done


def run_slots(jobs: Sequence[SlotJob], batch: int, step_s: Callable[[list[int]], float],
              kv_len: Callable[[SlotJob, int], int] = lambda job, generated: 0) -> SlotSchedule:
    """All `jobs` through `batch` slots (`Slots`), each started as soon as a slot is free, in order."""
    slots = Slots(batch, step_s, kv_len)
    pending = deque(range(len(jobs)))
    done: dict[int, SlotTiming] = {}
    while pending or slots.live:
        while pending and slots.free_slots:
            i = pending.popleft()
            timing = slots.start(i, jobs[i])
            if timing is not None:
                done[i] = timing
        for i, timing in slots.step():
            done[i] = timing
    return SlotSchedule(tuple(done[i] for i in range(len(jobs))), slots.t, slots.steps, slots.row_steps)
