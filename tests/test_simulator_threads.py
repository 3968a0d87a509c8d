"""The cmodel simulator's idle engine threads get the lowest priority once a runtime is loaded."""

import os

import pytest

from bm1684x_support import bmodel_path, native
from transcribe_batch.workers.simulator_threads import IDLE_ENGINES, LOWEST_PRIORITY, yield_idle_engine_threads

pytestmark = pytest.mark.simulator


def _threads() -> dict[str, int]:
    out = {}
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        with open(f"/proc/{os.getpid()}/task/{tid}/comm") as f:
            out[f.read().strip() + f"/{tid}"] = os.getpriority(os.PRIO_PROCESS, int(tid))
    return out


def test_idle_engines_yield_and_the_busy_ones_do_not():
    tbn = native()
    tbn.Runtime(str(bmodel_path()), 0)  # (the session's cached runtime: the simulator's threads are up)
    yield_idle_engine_threads()
    threads = _threads()
    idle = {k: v for k, v in threads.items() if k.split("/")[0] in IDLE_ENGINES}
    assert {k.split("/")[0] for k in idle} == IDLE_ENGINES, threads
    assert all(v == LOWEST_PRIORITY for v in idle.values()), threads
    busy = {k: v for k, v in threads.items() if k.split("/")[0] in ("TPU_BD", "TPU_GDMA", "TPU_SORT", "CORE_MAIN")}
    assert busy and all(v < LOWEST_PRIORITY for v in busy.values()), threads
    assert yield_idle_engine_threads() == 0  # done once
