"""Ray scheduling: one actor per device, shards pulled by whichever device is free, retries, crash recovery.

- Each actor owns one device slot (pipeline/devices.py); what it asks Ray for (a card, a GPU, nothing) and whether
  it is pinned to its node comes from the slot's device kind (workers/platforms.py).
- Work travels as typed `WorkItem`s and comes back as `Outcome`s (workers/work.py): plan index, line, attempt
  number and the devices earlier attempts failed on go with each row; a long row goes as one item per time range
  (pipeline/plan.py), each retried and charged on its own.
- The driver keeps `inflight_per_device` shards queued per actor (the actor prepares the next shard's audio while
  the current one runs) and hands the next shard to whichever actor has room (breadth first): fresh shards longest
  first, retries before fresh work; a shard holds at least `batch_size` rows, so a batching engine always has a
  full batch prepared; near the end of the work shards are cut shorter (down to one batch) so that the devices
  finish together (benchmarks/pipeline.py measures the tail).
- A row whose prediction failed is retried (up to max_attempts) preferably on a device it has not failed on: a
  retry waits about one shard-time for such a device before any device may take it.
- Results stream back row by row (a Ray streaming generator per shard): a finished row is on its way to disk
  at once, and a failed row is re-queued at once.
- An actor whose process dies is restarted by Ray (max_restarts=-1); no work goes to it until it answers again.
  Only the row that was on the device when it died (before each engine call the actor writes what it puts on the
  device into its `DeviceLedger`, a small file on its node that the driver takes after the crash: in its own
  process, or by a task pinned to that node; workers/ledger.py) is charged an attempt; the other rows it held go
  back to the queue as they were. When a batch was on the device, each of its rows goes back free but marked to run alone next, so
  that a crash is only ever charged to a row that was on the device by itself.
- A device leaves the pool on evidence against it, not on bad luck every device shares: after
  `device_max_failures` failed attempts in a row (failed predictions and crashes charged to its rows; a success
  resets the count) — or more where the other devices fail often too: as many as make such a streak a
  1-in-10,000 chance at the others' recent failure rate, and never while the others fail as often. A crash no row
  was on the device for counts against the device like a failure.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from transcribe_batch.workers.actor import TranscriptionWorker
from transcribe_batch.workers.contracts import ActorInfo, WorkerConfig
from transcribe_batch.workers.record import failed_record, now
from transcribe_batch.workers.ledger import remove_ledgers, take_held
from transcribe_batch.workers.work import RETRY, Outcome, WorkItem

from .devices import DeviceSlot
from .plan import Plan

STREAK_CHANCE = 1e-4  # a failure streak this unlikely at the other devices' failure rate is evidence
RECENT = 50  # attempts per device the failure rate is measured over


class SchedulerError(RuntimeError):
    pass


@dataclass
class Task:
    """Work waiting for a device: rows (no manifest data yet) of the same attempt history."""

    items: list[WorkItem]
    queued: float = field(default_factory=time.monotonic)

    @property
    def avoid(self) -> frozenset:
        return frozenset(d for item in self.items for d in item.failed_on)


@dataclass
class Shard:
    """A task handed to a device: the items sent, by key, until their outcome comes back."""

    pending: dict  # WorkItem.key -> WorkItem (with row)
    submitted: float = field(default_factory=time.monotonic)


@dataclass
class Device:
    slot: DeviceSlot
    actor: object
    inflight: dict = field(default_factory=dict)  # ObjectRefGenerator -> Shard
    streak: int = 0  # failed attempts in a row (a success resets it)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))  # recent attempts: True = failed
    alive: bool = True
    info: ActorInfo | None = None
    restarting: bool = False  # its process died; no work until it answers a ping again
    ping: object = None  # ObjectRef of the ping (info call) in flight
    ping_after: float = 0.0  # monotonic time to send the next ping
    restart_deadline: float = 0.0

    @property
    def label(self) -> str:
        return self.slot.label


def actor_options(slot: DeviceSlot, inflight_per_device: int) -> dict:
    return {"num_cpus": 0, "max_restarts": -1, "max_task_retries": 0, "max_concurrency": inflight_per_device + 1,
            **slot.platform.actor_options(slot.node_id)}


def required_streak(max_failures: int, others_failed: int, others_attempts: int, has_others: bool) -> float:
    """Failed attempts in a row that take a device out of the pool, given the other devices' recent record."""
    if not has_others:
        return max_failures
    p = (others_failed + 1) / (others_attempts + 2)  # the others' failure rate (Laplace: no data is 1/2)
    if p >= 0.5 and others_failed >= others_attempts > 0:
        return math.inf  # every device fails alike: not the device's fault
    return max(max_failures, math.ceil(math.log(STREAK_CHANCE) / math.log(p)))


class Scheduler:
    def __init__(self, plan: Plan, slots: list[DeviceSlot], config: WorkerConfig, *, on_final, progress,
                 max_attempts: int = 3, device_max_failures: int = 3, inflight_per_device: int = 2,
                 startup_timeout_s: float = 3600.0, close_timeout_s: float = 30.0):
        self.plan = plan
        self.slots = slots
        self.config = config  # every actor's (workers/contracts.py)
        self.on_final = on_final  # callable(list[Outcome]) for rows that are done for good
        self.progress = progress
        self.max_attempts = max_attempts
        self.device_max_failures = device_max_failures
        self.inflight_per_device = inflight_per_device
        self.batch_size = config.batch_size
        self.startup_timeout_s = startup_timeout_s
        self.close_timeout_s = close_timeout_s  # at shutdown, how long an actor may take to close its engine
        self.devices: list[Device] = []
        self.ledger_run = uuid.uuid4().hex[:16]  # names this run's device ledgers (workers/ledger.py)
        self.ledgers: dict[str, set] = {}  # node id -> ledger paths of the actors that ran there
        self.driver_node: str | None = None
        self.retries: deque[Task] = deque()
        self.cursor = 0  # next position in plan.todo to hand out
        self.shard_time_s = 0.0  # moving average of a shard's round trip: how long a retry waits for a new device
        self.stats = {"retried_rows": 0, "actor_crashes": 0, "requeued_unharmed": 0, "devices_removed": [],
                      "retried_busy_s": 0.0}

    # -- start/stop ---------------------------------------------------------------------------------------------
    def start(self) -> list[ActorInfo]:
        self.driver_node = ray.get_runtime_context().get_node_id()
        remote_cls = ray.remote(TranscriptionWorker)
        for slot in self.slots:
            actor = remote_cls.options(**actor_options(slot, self.inflight_per_device)).remote(
                self.config, slot.device, device_kind=slot.kind, label=slot.label, ledger_run=self.ledger_run)
            self.devices.append(Device(slot, actor))
        pending = {d.actor.info.remote(): d for d in self.devices}
        deadline = time.monotonic() + self.startup_timeout_s
        errors = []
        while pending and time.monotonic() < deadline:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.1, deadline - time.monotonic()))
            for ref in ready:
                dev = pending.pop(ref)
                try:
                    self._answered(dev, ray.get(ref))
                except RayError as e:
                    errors.append(f"{dev.label}: {_short(e)}")
                    self._remove(dev, f"failed to start its engine: {_short(e)}")
        for dev in pending.values():
            errors.append(f"{dev.label}: engine did not start within {self.startup_timeout_s:.0f} s")
            self._remove(dev, "engine did not start in time")
        if not self.alive:
            raise SchedulerError("no device could start its engine:\n  " + "\n  ".join(errors))
        # shards hold at least one full batch of the batch the actors settled on (a batched bmodel raises it to its B)
        self.batch_size = max([self.batch_size] + [d.info.batch_size for d in self.alive])
        return [d.info for d in self.alive]

    def shutdown(self) -> None:
        """Close the engine of every live actor with no work in flight (its device left as it should be: card memory
        freed, runtime closed), then end the actors and remove the run's device ledgers. An actor still running
        work (an interrupted run) or that does not close in time (a hung device) is ended as it is."""
        closing = [d.actor.close.remote() for d in self.devices if d.alive and not d.restarting and not d.inflight]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=self.close_timeout_s)
        for dev in self.devices:
            try:
                ray.kill(dev.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        for node, paths in self.ledgers.items():  # the run's ledger files go with it
            try:
                self._on_node(node, remove_ledgers, sorted(paths), timeout=10)
            except Exception:  # noqa: BLE001 - a node that is gone took its files with it; else a later sweep does
                pass

    def _answered(self, dev: Device, info: ActorInfo) -> None:
        """An actor answered (started, or back after a restart, maybe on another node): note where its ledger is."""
        dev.info = info
        if info.ledger:
            self.ledgers.setdefault(info.node_id, set()).add(info.ledger)

    def _on_node(self, node: str | None, fn, *args, timeout: float):
        """fn(*args) on `node`: here when that is the driver's node, else in a 0-CPU task pinned there."""
        if node is None or node == self.driver_node:
            return fn(*args)
        task = ray.remote(num_cpus=0, max_retries=0)(fn).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))
        return ray.get(task.remote(*args), timeout=timeout)

    def _held(self, dev: Device) -> set:
        """Keys the dead actor had put on its device last (read from its ledger on its node)."""
        if dev.info is None or not dev.info.ledger:
            return set()
        try:
            return {tuple(k) for k in self._on_node(dev.info.node_id, take_held, dev.info.ledger, timeout=30)}
        except Exception as e:  # noqa: BLE001 - the node went down with it: the crash is the device's alone
            self.progress.log(f"device {dev.label}: could not read its ledger after the crash ({_short(e)})",
                              event="ledger_unreadable", device=dev.label)
            return set()

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
            self._requeue_unharmed(shard.pending.values())
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
        """The next planned shard (planned shards joined up to at least batch_size rows), cut shorter near the end of
        the work (guided self-scheduling): once fewer rows are left than would give every device a few more shards,
        pieces shrink to remaining / (2 · devices · in-flight depth), down to one batch of the shortest rows, so
        that the devices finish together instead of one draining two full queued shards while the others idle."""
        todo, bounds = self.plan.todo, self.plan.bounds
        k = int(np.searchsorted(bounds, self.cursor, side="right")) - 1
        end = int(bounds[k + 1])
        while end - self.cursor < self.batch_size and end < len(todo):
            k += 1
            end = int(bounds[k + 1])
        left = len(todo) - self.cursor
        share = -(-left // (2 * max(1, len(self.alive)) * self.inflight_per_device))
        end = min(end, self.cursor + max(self.batch_size, share))
        start, self.cursor = self.cursor, end
        return Task([self.plan.work_item(at) for at in range(start, end)])

    def _submit(self, dev: Device, task: Task) -> None:
        rows = self.plan.rows(np.asarray([item.index for item in task.items], dtype=np.int64))
        queued_at = now()
        items = [replace(item, row=row, queued_at=queued_at) for item, row in zip(task.items, rows)]
        stream = dev.actor.stream_shard.options(num_returns="streaming").remote(items)
        dev.inflight[stream] = Shard({item.key: item for item in items})

    def _dispatch(self) -> None:
        # Breadth first: every idle device gets its first shard before any device gets a second one.
        submitted = True
        while submitted:
            submitted = False
            for dev in sorted(self.alive, key=lambda d: len(d.inflight)):
                if dev.alive and not dev.restarting and len(dev.inflight) < self.inflight_per_device:
                    task = self._next_task(dev)
                    if task is not None:
                        self._submit(dev, task)
                        submitted = True

    def _work_left(self) -> bool:
        return bool(self.retries) or self.cursor < len(self.plan.todo) or any(d.inflight for d in self.devices)

    def _pings(self) -> dict:
        """Pings to restarting actors (new work waits until the restarted process answers)."""
        pings = {}
        for dev in self.alive:
            if dev.restarting and dev.ping is None and time.monotonic() >= dev.ping_after:
                dev.ping = dev.actor.info.remote()
            if dev.restarting and dev.ping is not None:
                pings[dev.ping] = dev
        return pings

    def _pinged(self, dev: Device) -> None:
        ref, dev.ping = dev.ping, None
        try:
            self._answered(dev, ray.get(ref))
            dev.restarting = False
        except RayError as e:  # still restarting
            if time.monotonic() > dev.restart_deadline:
                self._remove(dev, f"did not come back after its process died ({_short(e)})")
            dev.ping_after = time.monotonic() + 0.2

    # -- results ------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        while True:
            self._dispatch()
            refs = {ref: dev for dev in self.devices for ref in dev.inflight}
            if not refs and not self._work_left():
                return self.stats
            pings = self._pings()
            if not refs and not pings:
                if not self.alive:
                    raise SchedulerError("every device was taken out of the pool; nothing left to run on "
                                         "(what finished is saved: run the same command again to resume)")
                time.sleep(0.02)  # retries waiting for a device they have not failed on
                continue
            ready, _ = ray.wait(list(refs) + list(pings), num_returns=1, timeout=0.5 if refs else 0.2)
            for stream in ready:
                if stream in pings:
                    if pings[stream].alive:
                        self._pinged(pings[stream])
                elif stream in refs[stream].inflight:  # a crash handled just before may have dropped it
                    self._advance(refs[stream], stream)

    def _advance(self, dev: Device, stream) -> None:
        """Take the next outcome (or the end, or the crash) from a shard's result stream."""
        shard = dev.inflight[stream]
        try:
            outcome = ray.get(next(stream))
        except StopIteration:
            del dev.inflight[stream]
            self._shard_done(shard)
            return
        except RayError as e:
            del dev.inflight[stream]
            if dev.alive:  # (a device we removed ourselves had its rows re-queued already)
                self._crashed(dev, shard, e)
            return
        self._outcome(dev, shard, outcome)

    def _outcome(self, dev: Device, shard: Shard, outcome: Outcome) -> None:
        item = shard.pending.pop(outcome.key)
        rec = outcome.record
        if outcome.ok:
            self._evidence(dev, failed=False)
        elif outcome.decision == RETRY and outcome.on_device:
            self._evidence(dev, failed=True)
        if outcome.decision == RETRY and item.attempt < self.max_attempts:
            self._requeue([item.next_attempt(dev.label)])
            if rec.started_at and rec.finished_at:  # device time spent on the attempt (benchmarks)
                self.stats["retried_busy_s"] += (rec.finished_at - rec.started_at).total_seconds()
        else:
            self.on_final([outcome])
        if dev.alive and dev.streak >= self._required_streak(dev):
            self._remove(dev, f"{dev.streak} attempts in a row failed on it while the other devices did better "
                              f"(last: {rec.error_class}: {rec.error_message})")

    def _shard_done(self, shard: Shard) -> None:
        elapsed = time.monotonic() - shard.submitted
        self.shard_time_s = elapsed if not self.shard_time_s else 0.8 * self.shard_time_s + 0.2 * elapsed
        if shard.pending:  # an actor answers every item; should one be missing, it is not lost
            self._requeue_unharmed(shard.pending.values())

    def _evidence(self, dev: Device, *, failed: bool) -> None:
        dev.recent.append(failed)
        dev.streak = dev.streak + 1 if failed else 0

    def _required_streak(self, dev: Device) -> float:
        others = [d for d in self.alive if d is not dev]
        return required_streak(self.device_max_failures, sum(sum(d.recent) for d in others),
                               sum(len(d.recent) for d in others), bool(others))

    def _requeue(self, items: list[WorkItem]) -> None:
        self.stats["retried_rows"] += len(items)
        self.progress.retry(len(items))
        self.retries.append(Task(items))

    def _requeue_unharmed(self, items) -> None:
        """Rows that never got their turn on a device that died or left: back to the front, same attempt."""
        items = [item.requeued() for item in items]
        if items:
            self.stats["requeued_unharmed"] += len(items)
            self.retries.appendleft(Task(items))

    def _drain(self, dev: Device) -> None:
        """After the actor died: take the outcomes its other streams delivered before it went down."""
        for stream, shard in list(dev.inflight.items()):
            while True:
                ready, _ = ray.wait([stream], timeout=10.0)
                if not ready:
                    break
                try:
                    outcome = ray.get(next(stream))
                except (StopIteration, RayError):
                    break
                self._outcome(dev, shard, outcome)
                if not dev.alive:
                    return

    def _crashed(self, dev: Device, shard: Shard, error: RayError) -> None:
        self.stats["actor_crashes"] += 1
        died = isinstance(error, RayActorError)
        kind = "actor process died" if died else "shard call failed"
        if died:  # the process is gone: the other shard it held went down with it
            self._drain(dev)
            if not dev.alive:
                self._requeue_unharmed(shard.pending.values())
                return
            lost = [shard] + list(dev.inflight.values())
            dev.inflight.clear()
            held = self._held(dev)
            dev.restarting, dev.ping, dev.ping_after = True, None, time.monotonic()
            dev.restart_deadline = time.monotonic() + self.startup_timeout_s
        else:  # the call itself raised (a bug, not the device): its rows are the suspects
            lost = [shard]
            held = set(shard.pending)
        charged, unharmed, finals = [], [], []
        suspects = sum(key in held for sh in lost for key in sh.pending)
        for sh in lost:
            for key, item in sh.pending.items():
                if key not in held:
                    unharmed.append(item)
                elif suspects > 1:  # a batch was on the device: each goes again alone, free, to find the culprit
                    unharmed.append(item.requeued(alone=True))
                elif item.attempt < self.max_attempts:
                    charged.append(item.next_attempt(dev.label))
                else:
                    info = dev.info
                    finals.append(Outcome.of(item, failed_record(
                        item.row, item.line, f"{kind} on {dev.label} while transcribing ({_short(error)})",
                        error_class="ActorDied" if died else type(error).__name__,
                        attempts=item.attempt, engine=self.config.engine, device=dev.slot.device,
                        node=info.node if info else None, node_id=info.node_id if info else None,
                        queued_at=item.queued_at, model_id=info.model_id if info else None,
                        **({"duration_s": item.duration} if item.span else {}))))
        self._requeue_unharmed(unharmed)
        if charged:
            self._requeue(charged)
        if finals:
            self.on_final(finals)
        self._evidence(dev, failed=True)  # on its rows, or with none on the device: the device's doing either way
        self.progress.log(f"device {dev.label}: {kind} ({_short(error)}); {len(charged) + len(finals)} row(s) charged "
                          f"an attempt, {len(unharmed)} re-queued as they were"
                          + ("; Ray restarts the actor" if died else ""),
                          event="actor_crash", device=dev.label)
        if dev.streak >= self._required_streak(dev):
            self._remove(dev, f"{dev.streak} attempts in a row failed on it while the other devices did better "
                              f"(last: {kind})")


def _short(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    line = next((t for t in reversed(text) if t.strip()), type(e).__name__) if text else type(e).__name__
    return line[:limit]
