"""The BM1684X cmodel simulator's idle engine threads, made to yield.

Loaded into a process, the simulator starts one polling thread per TPU engine (TPU_BD, TPU_GDMA, TPU_GDE, TPU_SORT,
TPU_NMS, CORE_MAIN) and they spin until the process exits, each taking a share of the CPU whether it has work or not.
Our nets run on the BD (compute) and GDMA (copy) engines under CORE_MAIN; the GDE and NMS engines get no work, yet
their spinning takes CPU time the busy engines need: at the lowest priority, a generate call of the tiny Qwen2-Audio
fixture ran in 5.1-5.4 s instead of 8.2-8.4 s on 2 cores. The sort engine is left alone: a TopK head (Sophgo's
prebuilt Qwen3-ASR bmodels) runs on it. On a card these threads do not exist and nothing happens.
"""

from __future__ import annotations

import os

ENGINE_THREADS = frozenset({"TPU_BD", "TPU_GDMA", "TPU_GDE", "TPU_SORT", "TPU_NMS", "CORE_MAIN"})
IDLE_ENGINES = frozenset({"TPU_GDE", "TPU_NMS"})
LOWEST_PRIORITY = 19


def _engine_threads():
    """(thread id, name) of this process's simulator engine threads (none on a card or without /proc)."""
    try:
        tasks = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        return
    for tid in tasks:
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:  # the thread ended meanwhile
            continue
        if name in ENGINE_THREADS:
            yield int(tid), name


def simulator_loaded() -> bool:
    """Whether the simulator's engine threads run in this process (it has loaded a bmodel on the cmodel)."""
    return any(True for _ in _engine_threads())


def yield_idle_engine_threads() -> int:
    """Gives this process's idle simulator engine threads the lowest scheduling priority; returns how many it changed
    (0 on a card, or where /proc is not readable)."""
    changed = 0
    for tid, name in _engine_threads():
        try:
            if name in IDLE_ENGINES and os.getpriority(os.PRIO_PROCESS, tid) < LOWEST_PRIORITY:
                os.setpriority(os.PRIO_PROCESS, tid, LOWEST_PRIORITY)
                changed += 1
        except OSError:  # the thread ended meanwhile, or the priority may not be changed here
            continue
    return changed
