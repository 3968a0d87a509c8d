"""What recording "these rows are on the device" costs a device actor before each engine call: the node-local ledger
file (workers/ledger.py: write a temp file, rename) against the synchronous call to a ledger actor it replaced,
side by side in one process, plus the driver's read after a crash (in process, and via a task pinned to the node).

    .venv/bin/python benchmarks/ledger.py            # ≈ 20 s on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid


def _times(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _row(name: str, times: list[float]) -> str:
    us = sorted(t * 1e6 for t in times)
    return (f"| {name} | {len(us)} | {statistics.median(us):.0f} | {us[int(0.9 * len(us))]:.0f} | "
            f"{us[int(0.99 * len(us))]:.0f} | {statistics.mean(us):.0f} |")


class _ActorLedger:  # the ledger actor of before: device actors called hold() synchronously
    def __init__(self):
        self.holding = {}

    def hold(self, device, keys):
        self.holding[device] = tuple(tuple(k) for k in keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="calls per variant (default 2000)")
    args = ap.parse_args()

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from transcribe_batch.workers.ledger import DeviceLedger, ledger_dir, take_held

    keys = [(12345, 1), (12346, 2), (12347, 1), (12348, 1)]  # a batch of 4 rows
    ledger = DeviceLedger(uuid.uuid4().hex[:16], "bench:0")
    try:
        file_hold = _times(lambda: ledger.hold(keys), args.n)
        local_take = _times(lambda: (ledger.hold(keys), take_held(ledger.path)), min(args.n, 500))
        ray.init(include_dashboard=False, logging_level="WARNING", num_cpus=2)
        actor = ray.remote(_ActorLedger).options(num_cpus=0).remote()
        t0 = time.perf_counter()
        ray.get(actor.hold.remote("bench:0", keys))
        first_call = time.perf_counter() - t0
        actor_hold = _times(lambda: ray.get(actor.hold.remote("bench:0", keys)), args.n)
        node = ray.get_runtime_context().get_node_id()
        task = ray.remote(num_cpus=0, max_retries=0)(take_held).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))
        pinned_take = _times(lambda: (ledger.hold(keys), ray.get(task.remote(str(ledger.path)))), 20)
        ray.shutdown()
    finally:
        ledger.close()

    print(f"\n## Device ledger: cost per engine call (µs), {ledger_dir()}\n")
    print("| variant | calls | median | p90 | p99 | mean |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("file: hold (before each engine call)", file_hold))
    print(_row("actor: ray.get(ledger.hold.remote()) (before)", actor_hold))
    print(_row("after a crash: take in the driver's process (+ hold)", local_take))
    print(_row("after a crash: take by a task pinned to the node (+ hold)", pinned_take))
    print(f"\nfirst call to a just-created ledger actor (it starts): {first_call * 1e3:.0f} ms")
    print(f"\nledger_hold_median_us={statistics.median(file_hold) * 1e6:.0f} "
          f"actor_hold_median_us={statistics.median(actor_hold) * 1e6:.0f} "
          f"actor_over_file={statistics.median(actor_hold) / statistics.median(file_hold):.0f}")


if __name__ == "__main__":
    main()
