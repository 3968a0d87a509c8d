"""Ray scheduling: one actor per device, shards pulled by whichever device is free, retries, crash recovery.

- Each actor owns one device slot (pipeline/devices.py): BM1684X actors request the custom resource `bm1684x: 1`
  and are pinned to their node and told their card id; GPU actors request `num_gpus=1`; simulated devices are
  virtual and need no resource.
- The driver keeps `inflight_per_device` shards queued per actor (the actor prepares the next shard's audio while
  the current one runs) and hands the next shard to whichever actor has room (breadth first): fresh shards longest
  first, retries before fresh work; near the end of the work shards are cut shorter (down to single rows) so that
  the devices finish together (benchmarks/pipeline.py measures the tail).
- A row whose prediction failed is retried (up to max_attempts) preferably on a device it has not failed on: a
  retry waits about one shard-time for such a device before any device may take it.
- Results stream back row by row (a Ray streaming generator per shard): a finished row is on its way to disk
  at once, and a failed row is re-queued at once.
- An actor whose process dies is restarted by Ray (max_restarts=-1); the rows of its shards that had not come back
  are re-queued and the attempt counts for them. A device with `device_max_failures` consecutive crashes or all-failed shards is
  taken out of the pool with a log line; the run goes on with the rest.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from transcribe_batch.workers.actor import TranscriptionWorker
from transcribe_batch.workers.record import failed_record, now

from .devices import BM1684X_RESOURCE, DeviceSlot
from .plan import Plan


class SchedulerError(RuntimeError):
    pass


@dataclass
class Task:
    indices: np.ndarray  # plan row indices
    attempts: list[int]  # the attempt number this try is, per row
    avoid: frozenset = frozenset()  # device labels these rows already failed on
    queued: float = field(default_factory=time.monotonic)


@dataclass
class Shard:
    """A task handed to a device: the items sent and what has come back so far."""

    task: Task
    items: list[dict]
    submitted: float = field(default_factory=time.monotonic)
    received: int = 0
    any_ok: bool = False
    all_retryable: bool = True  # every failure so far was a failed prediction (not bad input)

    def rest(self) -> Task:
        """The rows that have not come back, as a task (same attempts)."""
        k = self.received
        return Task(self.task.indices[k:], self.task.attempts[k:], self.task.avoid)


@dataclass
class Device:
    slot: DeviceSlot
    actor: object
    inflight: dict = field(default_factory=dict)  # ObjectRefGenerator -> Shard
    strikes: float = 0.0  # consecutive failures: a crash or an all-failed full shard is 1 (a cut-short shard less)
    alive: bool = True
    info: dict | None = None
    shards_done: int = 0
    crashes: int = 0

    @property
    def label(self) -> str:
        return self.slot.label


def actor_options(slot: DeviceSlot, inflight_per_device: int) -> dict:
    opts: dict = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": 0, "max_concurrency": inflight_per_device + 1}
    if slot.kind == "bm1684x":
        opts["resources"] = {BM1684X_RESOURCE: 1}
        if slot.node_id:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=slot.node_id, soft=False)
    elif slot.kind == "gpu":
        opts["num_gpus"] = 1
    return opts


class Scheduler:
    def __init__(self, plan: Plan, slots: list[DeviceSlot], *, engine: str, options: dict, on_final, progress,
                 max_attempts: int = 3, device_max_failures: int = 3, inflight_per_device: int = 2,
                 startup_timeout_s: float = 3600.0):
        self.plan = plan
        self.slots = slots
        self.engine = engine
        self.options = options
        self.on_final = on_final  # callable(list[record]) for rows that are done for good
        self.progress = progress
        self.max_attempts = max_attempts
        self.device_max_failures = device_max_failures
        self.inflight_per_device = inflight_per_device
        self.startup_timeout_s = startup_timeout_s
        self.devices: list[Device] = []
        self.retries: deque[Task] = deque()
        self.cursor = 0  # next position in plan.todo to hand out
        self.shard_time_s = 0.0  # moving average of a shard's round trip: how long a retry waits for a new device
        self.full_shard = max(1, int(np.diff(plan.bounds).max())) if plan.n_shards else 1
        self.stats = {"retried_rows": 0, "actor_crashes": 0, "devices_removed": [], "retried_busy_s": 0.0}
        self.last_record: dict = {}

    # -- start/stop ---------------------------------------------------------------------------------------------
    def start(self) -> list[dict]:
        remote_cls = ray.remote(TranscriptionWorker)
        for slot in self.slots:
            actor = remote_cls.options(**actor_options(slot, self.inflight_per_device)).remote(
                self.engine, self.options, slot.device, gpu=slot.kind == "gpu", cpu=slot.kind == "cpu")
            self.devices.append(Device(slot, actor))
        pending = {d.actor.info.remote(): d for d in self.devices}
        deadline = time.monotonic() + self.startup_timeout_s
        errors = []
        while pending and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.1, deadline - time.monotonic()))
            for ref in ready:
                dev = pending.pop(ref)
                try:
                    dev.info = ray.get(ref)
                except RayError as e:
                    errors.append(f"{dev.label}: {_short(e)}")
                    self._remove(dev, f"failed to start its engine: {_short(e)}")
        for dev in pending.values():
            errors.append(f"{dev.label}: engine did not start within {self.startup_timeout_s:.0f} s")
            self._remove(dev, "engine did not start in time")
        if not self.alive:
            raise SchedulerError("no device could start its engine:\n  " + "\n  ".join(errors))
        return [d.info for d in self.alive]

    def shutdown(self) -> None:
        for d in self.devices:
            try:
                ray.kill(d.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    @property
    def alive(self) -> list[Device]:
        return [d for d in self.devices if d.alive]

    def _remove(self, dev: Device, why: str) -> None:
        if not dev.alive:
            return
        dev.alive = False
        self.stats["devices_removed"].append({"device": dev.label, "reason": why})
        try:
            ray.kill(dev.actor, no_restart=True)
        except Exception:  # noqa: BLE001
            pass
        for shard in dev.inflight.values():  # not the rows' fault: re-queue without counting an attempt
            if shard.received < len(shard.items):
                self.retries.appendleft(shard.rest())
        dev.inflight.clear()
        self.progress.log(f"device {dev.label} taken out of the pool: {why}; {len(self.alive)} device(s) left",
                          event="device_removed", device=dev.label, reason=why)

    # -- dispatch -----------------------------------------------------------------------------------------------
    def _next_task(self, dev: Device) -> Task | None:
        for i, task in enumerate(self.retries):
            if dev.label not in task.avoid:
                del self.retries[i]
                return task
        if self.cursor < len(self.plan.todo):
            return self._fresh_task()
        alive = {d.label for d in self.alive}
        for i, task in enumerate(self.retries):  # only devices it failed on are left, or none came for it in time
            if alive <= task.avoid or time.monotonic() - task.queued >= max(0.05, self.shard_time_s):
                del self.retries[i]
                return task
        return None

    def _fresh_task(self) -> Task:
        """The next planned shard, cut shorter near the end of the work (guided self-scheduling): once fewer rows are
        left than would give every device a few more shards, pieces shrink to remaining / (2 · devices · in-flight
        depth), down to single (shortest) rows, so that the devices finish together instead of one draining two
        full queued shards while the others idle."""
        todo, bounds = self.plan.todo, self.plan.bounds
        k = int(np.searchsorted(bounds, self.cursor, side="right")) - 1
        left = len(todo) - self.cursor
        share = -(-left // (2 * max(1, len(self.alive)) * self.inflight_per_device))
        end = min(int(bounds[k + 1]), self.cursor + max(1, share))
        indices = todo[self.cursor:end]
        self.cursor = end
        return Task(indices, [1] * len(indices))

    def _submit(self, dev: Device, task: Task) -> None:
        rows = self.plan.rows(task.indices)
        queued_at = now()
        items = []
        for row, i, attempt in zip(rows, task.indices.tolist(), task.attempts):
            d = float(self.plan.durations[i])
            items.append({"row": row, "line": int(self.plan.lines[i]), "attempt": attempt, "queued_at": queued_at,
                          "duration": None if d != d else d})
        stream = dev.actor.stream_shard.options(num_returns="streaming").remote(items)
        dev.inflight[stream] = Shard(task, items)

    def _dispatch(self) -> None:
        # Breadth first: every idle device gets its first shard before any device gets a second one.
        submitted = True
        while submitted:
            submitted = False
            for dev in sorted(self.alive, key=lambda d: len(d.inflight)):
                if dev.alive and len(dev.inflight) < self.inflight_per_device:
                    task = self._next_task(dev)
                    if task is not None:
                        self._submit(dev, task)
                        submitted = True

    def _work_left(self) -> bool:
        return bool(self.retries) or self.cursor < len(self.plan.todo) or any(d.inflight for d in self.devices)

    # -- results ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        while True:
            self._dispatch()
            refs = {ref: dev for dev in self.devices for ref in dev.inflight}
            if not refs:
                if not self._work_left():
                    return self.stats
                if not self.alive:
                    raise SchedulerError("every device was taken out of the pool; nothing left to run on "
                                         "(what finished is saved: run the same command again to resume)")
                time.sleep(0.02)  # retries waiting for a device they have not failed on
                continue
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            for stream in ready:
                if stream in refs[stream].inflight:  # a crash handled just before may have dropped it
                    self._advance(refs[stream], stream)

    def _advance(self, dev: Device, stream) -> None:
        """Take the next row (or the end, or the crash) from a shard's result stream."""
        shard = dev.inflight[stream]
        try:
            rec = ray.get(next(stream))
        except StopIteration:
            del dev.inflight[stream]
            self._shard_done(dev, shard)
            return
        except RayError as e:
            del dev.inflight[stream]
            if dev.alive:  # (a device we removed ourselves had its rows re-queued already)
                self._crashed(dev, shard, e)
            return
        self._row_done(dev, shard, rec)

    def _row_done(self, dev: Device, shard: Shard, rec: dict) -> None:
        k = shard.received
        shard.received += 1
        i, attempt = int(shard.task.indices[k]), shard.task.attempts[k]
        retry = rec.pop("_retry", False)
        shard.any_ok |= rec["status"] == "ok"
        shard.all_retryable &= rec["status"] == "ok" or retry
        self.last_record = rec
        if retry and attempt < self.max_attempts:
            self._requeue([i], [attempt + 1], shard.task.avoid | {dev.label})
            if rec.get("started_at") and rec.get("finished_at"):  # device time spent on the attempt (benchmarks)
                self.stats["retried_busy_s"] += (rec["finished_at"] - rec["started_at"]).total_seconds()
        else:
            self.on_final([rec])

    def _shard_done(self, dev: Device, shard: Shard) -> None:
        elapsed = time.monotonic() - shard.submitted
        self.shard_time_s = elapsed if not self.shard_time_s else 0.8 * self.shard_time_s + 0.2 * elapsed
        dev.shards_done += 1
        if shard.any_ok or not shard.all_retryable:
            dev.strikes = 0
        else:
            dev.strikes += min(1.0, shard.received / self.full_shard)  # tail shards are cut short: weigh by rows
            if dev.strikes >= self.device_max_failures - 1e-9:
                last = self.last_record
                self._remove(dev, f"{dev.strikes:.3g} shards' worth of rows in a row failed entirely (last: "
                                  f"{last.get('error_class')}: {last.get('error_message')})")

    def _requeue(self, indices: list[int], attempts: list[int], avoid: frozenset) -> None:
        self.stats["retried_rows"] += len(indices)
        self.progress.retry(len(indices))
        self.retries.append(Task(np.asarray(indices, dtype=np.int64), attempts, frozenset(avoid)))

    def _crashed(self, dev: Device, shard: Shard, error: RayError) -> None:
        dev.crashes += 1
        dev.strikes += 1
        self.stats["actor_crashes"] += 1
        kind = "actor process died" if isinstance(error, RayActorError) else "shard call failed"
        lost = [shard]
        if isinstance(error, RayActorError):  # the process is gone: the other shard it held went down with it
            lost += list(dev.inflight.values())
            dev.inflight.clear()
        retry_idx, retry_att, finals = [], [], []
        pairs = [(item, int(i), attempt) for sh in lost
                 for item, i, attempt in zip(sh.items[sh.received:], sh.task.indices[sh.received:],
                                             sh.task.attempts[sh.received:])]
        avoid = frozenset().union(*(sh.task.avoid for sh in lost))
        for item, i, attempt in pairs:
            if attempt < self.max_attempts:
                retry_idx.append(i)
                retry_att.append(attempt + 1)
            else:
                finals.append(failed_record(
                    item["row"], item["line"], f"{kind} on {dev.label} while transcribing ({_short(error)})",
                    error_class="ActorDied" if isinstance(error, RayActorError) else type(error).__name__,
                    attempts=attempt, engine=self.engine, device=dev.slot.device,
                    node=(dev.info or {}).get("node"), queued_at=item["queued_at"],
                    model_id=(dev.info or {}).get("model_id")))
        if retry_idx:
            self._requeue(retry_idx, retry_att, avoid | {dev.label})
        if finals:
            self.on_final(finals)
        self.progress.log(f"device {dev.label}: {kind} ({_short(error)}); {len(retry_idx)} row(s) re-queued"
                          + ("; Ray restarts the actor" if isinstance(error, RayActorError) else ""),
                          event="actor_crash", device=dev.label)
        if dev.strikes >= self.device_max_failures:
            self._remove(dev, f"{dev.strikes:.3g} consecutive failures (last: {kind})")


def _short(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    line = next((t for t in reversed(text) if t.strip()), type(e).__name__) if text else type(e).__name__
    return line[:limit]
