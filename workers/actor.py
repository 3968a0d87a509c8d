"""The per-device worker: one instance per card/GPU/simulated device, run as a Ray actor by pipeline/scheduler.py.

It builds its engine and front end once, then transcribes shards of work items (workers/work.py). The front end
(audio decode, resampling, features, prompt tokens) is warmed up when the actor starts and runs on a prefetch
thread: every item of a shard is queued for preparation when the shard arrives, and the actor runs two shard calls
concurrently (the driver keeps the next shard queued, at least `batch_size` rows each). Prepared items go to the
device loop (workers/device_loop.py), one thread that feeds the engine's stream from every shard at once: a
request starts as soon as a slot is free, so a batched device never drains between shards, and the device never
waits for the CPU while the front end keeps up (when it does, `wait_s` says for how long). Each row's `Outcome` is
yielded as soon as its last request is done, with the device's slot use so far. Before each engine call that
changes what is on the device the loop writes every item on it into the `DeviceLedger` (a small file on its own
node: workers/ledger.py), so that a crash of this process is charged to those rows only.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from queue import SimpleQueue
from typing import Iterator

from .assemble import DeviceTime, Producer, answered, failed
from .audio import AudioError
from .contracts import ActorInfo, WorkerConfig
from .device_loop import DeviceLoop, Job
from .engines import create_engine
from .engines.base import SequenceTooLong
from .frontend import FrontEnd, Pieces
from .ledger import DeviceLedger
from .platforms import platform
from .prompts import PromptError
from .record import node_name, now
from .vad import VadUnavailable
from .work import Outcome, WorkItem

MIN_CHUNK_S = 4.0  # escalation never splits audio into pieces shorter than this
MAX_RESPLITS = 3  # SequenceTooLong -> re-prepare in shorter pieces at most this often



def escalated_chunk_s(duration: float | None, attempt: int, max_audio_s: float, escalate_min_s: float) -> float | None:
    """Retry escalation: a long utterance that failed is re-tried in shorter pieces (30 s -> 15 s -> 7.5 s …)."""
    if attempt <= 1 or duration is None or duration < escalate_min_s:
        return None
    return max(MIN_CHUNK_S, min(max_audio_s, duration) / 2 ** (attempt - 1))


def ray_node_id() -> str | None:
    """This process's Ray node id (None outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - outside a Ray worker
        return None


class TranscriptionWorker:
    def __init__(self, config: WorkerConfig, device: int, *, device_kind: str = "sim", label: str | None = None,
                 ledger_run: str | None = None):
        """`config`: the run's worker settings (pipeline/config.py RunConfig.worker_config()); `device`: the device
        index on this node; `device_kind`: its kind (workers/platforms.py); `label`: its name in the cluster;
        `ledger_run`: the run's device-ledger name (workers/ledger.py; None outside a scheduler)."""
        self.config = config
        self.platform = platform(device_kind)
        self.device, engine_device = self.platform.in_actor(device)
        self.label = label or self.platform.label(device)
        self.engine = create_engine(config, engine_device)
        self.frontend = FrontEnd.for_worker(config, self.engine.limits)
        self.frontend.warm_up()
        # a batched bmodel keeps B decode slots: shards hold at least B rows, whatever --batch-size says
        self.batch_size = max(config.batch_size, self.engine.preferred_batch_size)
        self.node = node_name()
        self.node_id = ray_node_id()
        # what is on the device, for the driver to charge a crash to (None outside the scheduler)
        self.ledger = DeviceLedger(ledger_run, self.label) if ledger_run else None
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frontend-prefetch")
        self.loop = DeviceLoop(self.engine.stream(self.batch_size), hold=self._hold if self.ledger else None,
                               begin_attempts=self.engine.begin_attempts, name=f"device-loop-{self.label}")

    # -- identity -----------------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.engine.model_id or self.frontend.model_id

    def info(self) -> ActorInfo:
        return ActorInfo(engine=self.engine.name, model_id=self.model_id, device=self.device, node=self.node,
                         node_id=self.node_id, label=self.label, kind=self.platform.kind, pid=os.getpid(),
                         batch_size=self.batch_size, limits=self.engine.limits,
                         ledger=str(self.ledger.path) if self.ledger else None,
                         driver=self.platform.device_info(self.device))

    # -- one shard ----------------------------------------------------------------------------------------------
    def stream_shard(self, items: list[WorkItem]) -> Iterator[Outcome]:
        """One Outcome per item, each yielded as soon as its last request is done (rows whose front end failed
        come back at once), in the order they finish. The driver runs this as a Ray streaming generator (which
        drives it with send(): no `yield from` over plain iterators here)."""
        submitted_at = time.perf_counter()
        done: SimpleQueue = SimpleQueue()
        self.loop.expect(len(items))
        for item in items:
            fut = self._prefetch.submit(self._prepare, item, self._chunk_s(item))
            fut.add_done_callback(partial(self._prepared, item, done, submitted_at))
        for _ in items:
            yield replace(done.get(), slots=self.loop.use)

    def run_shard(self, items: list[WorkItem]) -> list[Outcome]:
        """`stream_shard` as a list."""
        return list(self.stream_shard(items))

    def _chunk_s(self, item: WorkItem) -> float | None:
        return escalated_chunk_s(item.duration, item.attempt, self.engine.limits.max_audio_s,
                                 self.config.escalate_min_s)

    def _prepare(self, item: WorkItem, max_chunk_s: float | None) -> tuple[Pieces, float, float]:
        """(pieces, CPU seconds, perf_counter when ready)."""
        t0 = time.perf_counter()
        pieces = self.frontend.prepare_pieces(item.row, span=item.span, max_chunk_s=max_chunk_s,
                                              keep_audio=self.engine.needs_audio)
        t1 = time.perf_counter()
        return pieces, t1 - t0, t1

    def _prepared(self, item: WorkItem, done: SimpleQueue, submitted_at: float, fut: Future) -> None:
        """An item's front end is over: to the device loop, or (it failed) its outcome straight back."""
        try:
            pieces, prep_s, ready_at = fut.result()
        except (AudioError, PromptError, VadUnavailable) as e:  # bad input, or no VAD on this node: final, never
            self.loop.forget()  # worth a retry
            done.put(self._failed(item, e, on_device=False))
            return
        except BaseException as e:  # noqa: BLE001 - recorded; the driver may retry
            self.loop.forget()
            done.put(self._failed(item, e, retry=True, on_device=False))
            return
        if not pieces.requests:  # no speech anywhere in its audio: nothing for the device
            self.loop.forget()
            at = now()
            done.put(answered(self.frontend, self.producer, item, pieces, [], DeviceTime(at, at, 0.0, 0.0, prep_s)))
            return
        self.loop.put(self._job(done, item, pieces, ready_at, submitted_at, alone=item.alone and
                                self.loop.stream.slots > 1, prep_s=prep_s, chunk_s=self._chunk_s(item)))

    def _job(self, done: SimpleQueue, item: WorkItem, pieces: Pieces, ready_at: float, submitted_at: float,
             **kw) -> Job:
        return Job(item, pieces.requests, partial(self._ran, done, pieces), ready_at, submitted_at, **kw)

    def _ran(self, done: SimpleQueue, pieces: Pieces, job: Job) -> None:
        try:
            self._answer(done, pieces, job)
        except Exception as e:  # noqa: BLE001 - a bug in the assembly must not leave the shard waiting
            done.put(self._failed(job.item, e, retry=True, started_at=job.started_at, finished_at=job.finished_at))

    def _answer(self, done: SimpleQueue, pieces: Pieces, job: Job) -> None:
        """A job is back from the device (on the loop's thread): its outcome, or it goes again — alone when it
        failed next to others (a failed step may have been theirs), in shorter pieces when too long."""
        item = job.item
        errors = [r for r in job.results if isinstance(r, BaseException)]
        if not errors:
            done.put(answered(self.frontend, self.producer, item, pieces, job.results,
                              DeviceTime(job.started_at, job.finished_at, job.device_s, job.wait_s, job.prep_s)))
            return
        if job.shared:
            self.loop.put(self._again(done, job, pieces, job.chunk_s, job.resplits), expected=False, front=True)
            return
        error = errors[0]
        if not isinstance(error, SequenceTooLong):  # one bad prediction; the driver retries it elsewhere
            done.put(self._failed(item, error, retry=True, started_at=job.started_at, finished_at=job.finished_at))
            return
        chunk_s = max(MIN_CHUNK_S, (job.chunk_s or self.engine.limits.max_audio_s) / 2)
        if job.resplits >= MAX_RESPLITS:
            done.put(self._failed(item, SequenceTooLong(f"{item.id}: still too long in {job.chunk_s:g} s pieces"),
                                  started_at=job.started_at, finished_at=job.finished_at))
            return
        try:
            pieces, prep_s, _ = self._prepare(item, chunk_s)
        except Exception as e:  # noqa: BLE001
            done.put(self._failed(item, e, retry=not isinstance(e, (AudioError, PromptError, VadUnavailable))))
            return
        again = self._again(done, job, pieces, chunk_s, job.resplits + 1)
        again.prep_s += prep_s
        self.loop.put(again, expected=False, front=True)

    def _again(self, done: SimpleQueue, job: Job, pieces: Pieces, chunk_s: float | None, resplits: int) -> Job:
        """The job once more, alone (in `pieces`: the same, or shorter ones)."""
        return self._job(done, job.item, pieces, job.ready_at, job.submitted_at, alone=True, prep_s=job.prep_s,
                         chunk_s=chunk_s, resplits=resplits)

    def _hold(self, keys: list) -> None:
        """Record in the ledger what goes on the device (before it does: a crash can come at any moment)."""
        try:
            self.ledger.hold(keys)
        except OSError as e:  # no record: a crash now is blamed on the device alone
            print(f"{self.label}: could not record {keys} in the device ledger {self.ledger.path}: {e}", flush=True)

    # -- records (workers/assemble.py) ---------------------------------------------------------------------------
    @property
    def producer(self) -> Producer:
        return Producer(self.engine.name, self.model_id, self.device, self.node, self.node_id)

    def _failed(self, item: WorkItem, error: BaseException, **kw) -> Outcome:
        return failed(self.producer, item, error, **kw)

    def close(self) -> None:
        """Let go of the engine and the device (the scheduler calls this before it ends the actor)."""
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self.loop.close()  # after what is on the device is done
        self.engine.close()
        if self.ledger is not None:
            self.ledger.close()
