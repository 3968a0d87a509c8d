"""The per-device worker: one instance per card/GPU/simulated device, run as a Ray actor by pipeline/scheduler.py.

It builds its engine and front end once, then transcribes shards of work items (workers/work.py). The front end
(audio decode, resampling, features, prompt tokens) is warmed up when the actor starts and runs on a prefetch
thread: every item of a shard is queued for preparation when the shard arrives, and the actor runs two shard calls
concurrently (the driver keeps the next shard queued, at least `batch_size` rows each), so while one holds the
device the next one's rows are being prepared and the device never waits for the CPU; when it does, `wait_s` says
for how long. Rows go to the engine one at a time (batch_size 1) or `batch_size` at a time
(`Engine.transcribe_batch`), and each row's `Outcome` is yielded as soon as its engine call is done. Before each
engine call the actor writes which items it puts on the device into its `DeviceLedger` (a small file on its own
node: workers/ledger.py), so that a crash of this process is charged to those rows only.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

from .assemble import DeviceTime, Producer, answered, failed
from .audio import AudioError
from .contracts import ActorInfo, WorkerConfig
from .engines import create_engine
from .engines.base import Request, SequenceTooLong
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


class _Prepared:
    """A work item whose front end is done: its pieces (requests), CPU seconds, and when it was ready
    (perf_counter)."""

    __slots__ = ("item", "pieces", "prep_s", "ready_at")

    def __init__(self, item: WorkItem, pieces: Pieces, prep_s: float, ready_at: float):
        self.item, self.pieces, self.prep_s, self.ready_at = item, pieces, prep_s, ready_at

    @property
    def requests(self) -> list[Request]:
        return self.pieces.requests


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
        # a batched bmodel keeps B decode slots: hand it at least B requests per call, whatever --batch-size says
        self.batch_size = max(config.batch_size, self.engine.preferred_batch_size)
        self.node = node_name()
        self.node_id = ray_node_id()
        # what is on the device, for the driver to charge a crash to (None outside the scheduler)
        self.ledger = DeviceLedger(ledger_run, self.label) if ledger_run else None
        self._device_lock = threading.Lock()
        self._device_free_at = 0.0  # perf_counter when the device last finished a row
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frontend-prefetch")

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
        """One Outcome per item, each yielded as soon as its engine call (one row, or a batch of up to batch_size
        rows) is done; rows whose front end failed come back at once. The driver runs this as a Ray streaming
        generator (which drives it with send(): no `yield from` over plain iterators here)."""
        submitted_at = time.perf_counter()
        futures = [self._prefetch.submit(self._prepare, item, self._chunk_s(item)) for item in items]
        group: list[_Prepared] = []
        for item, fut in zip(items, futures):
            prepared = self._await(item, fut)
            if isinstance(prepared, Outcome):
                yield prepared
                continue
            if not prepared.requests:  # no speech anywhere in its audio: nothing for the device
                at = now()
                yield self._record(prepared, [], at, at, 0.0, 0.0)
                continue
            if prepared.item.alone and self.batch_size > 1:  # it was in a batch that crashed: find out alone
                for outcome in self._run_group([prepared], submitted_at):
                    yield outcome
                continue
            group.append(prepared)
            if len(group) == self.batch_size:
                for outcome in self._run_group(group, submitted_at):
                    yield outcome
                group = []
        if group:
            for outcome in self._run_group(group, submitted_at):
                yield outcome

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

    def _await(self, item: WorkItem, fut: Future) -> _Prepared | Outcome:
        try:
            return _Prepared(item, *fut.result())
        except (AudioError, PromptError, VadUnavailable) as e:  # bad input, or no VAD on this node: final, never
            return self._failed(item, e, on_device=False)  # worth a retry
        except Exception as e:  # noqa: BLE001 - recorded; the driver may retry
            return self._failed(item, e, retry=True, on_device=False)

    @contextmanager
    def _device(self, group: list[_Prepared], submitted_at: float):
        """Hold the device for `group`; yields how long it sat idle waiting for this work's front end: from when it
        was free (and the work had been handed to this actor) until the work was prepared. Time another shard held
        the device is not waiting. The ledger learns which items are on the device before the engine sees them."""
        with self._device_lock:
            if self.ledger is not None:
                self._hold([p.item.key for p in group])
            self.engine.begin_attempts({p.item.id: p.item.attempt for p in group})
            try:
                yield max(0.0, max(p.ready_at for p in group) - max(self._device_free_at, submitted_at))
            finally:
                self._device_free_at = time.perf_counter()

    def _hold(self, keys: list) -> None:
        """Record in the ledger what goes on the device (before it does: a crash can come at any moment)."""
        try:
            self.ledger.hold(keys)
        except OSError as e:  # no record: a crash now is blamed on the device alone
            print(f"{self.label}: could not record {keys} in the device ledger {self.ledger.path}: {e}", flush=True)

    def _run_group(self, group: list[_Prepared], submitted_at: float) -> Iterator[Outcome]:
        if len(group) == 1:
            yield self._run_one(group[0], submitted_at)
            return
        flat = [(k, r) for k, p in enumerate(group) for r in p.requests]
        with self._device(group, submitted_at) as waited:
            started_at = now()
            t0 = time.perf_counter()
            results = self.engine.transcribe_batch([r for _, r in flat])
            total_s = time.perf_counter() - t0
            finished_at = now()
        by_row: dict[int, list] = {}
        for (k, _), res in zip(flat, results):
            by_row.setdefault(k, []).append(res)
        audio_s = max(1e-9, sum(r.duration_s for p in group for r in p.requests))
        for k, p in enumerate(group):
            res = by_row[k]
            if any(isinstance(r, BaseException) for r in res):  # redone alone (a retry budget is not spent on it)
                yield self._run_one(p, submitted_at)
                continue
            share = total_s * sum(r.duration_s for r in p.requests) / audio_s  # the batch's time, by audio share
            yield self._record(p, res, started_at, finished_at, share, waited if k == 0 else 0.0)

    def _run_one(self, p: _Prepared, submitted_at: float) -> Outcome:
        item, pieces, prep_s = p.item, p.pieces, p.prep_s
        chunk_s = self._chunk_s(item)
        with self._device([p], submitted_at) as wait_s:
            started_at = now()
            t0 = time.perf_counter()
            for _ in range(MAX_RESPLITS + 1):
                try:
                    results = [self.engine.transcribe(r) for r in pieces.requests]
                    break
                except SequenceTooLong:
                    chunk_s = max(MIN_CHUNK_S, (chunk_s or self.engine.limits.max_audio_s) / 2)
                    try:
                        pieces, extra_prep, _ = self._prepare(item, chunk_s)
                        prep_s += extra_prep
                    except Exception as e:  # noqa: BLE001
                        return self._failed(item, e, retry=not isinstance(e, (AudioError, PromptError)))
                except Exception as e:  # noqa: BLE001 - one bad prediction; the driver retries it elsewhere
                    return self._failed(item, e, retry=True, started_at=started_at, finished_at=now())
            else:
                return self._failed(item, SequenceTooLong(f"{item.id}: still too long in {chunk_s:g} s pieces"),
                                    started_at=started_at, finished_at=now())
            total_s = time.perf_counter() - t0
            finished_at = now()
        return self._record(_Prepared(item, pieces, prep_s, p.ready_at), results, started_at, finished_at,
                            total_s, wait_s)

    # -- records (workers/assemble.py) ---------------------------------------------------------------------------
    @property
    def producer(self) -> Producer:
        return Producer(self.engine.name, self.model_id, self.device, self.node, self.node_id)

    def _failed(self, item: WorkItem, error: BaseException, **kw) -> Outcome:
        return failed(self.producer, item, error, **kw)

    def _record(self, p: _Prepared, results, started_at, finished_at, total_s, wait_s) -> Outcome:
        return answered(self.frontend, self.producer, p.item, p.pieces, results,
                        DeviceTime(started_at, finished_at, total_s, wait_s, p.prep_s))

    def close(self) -> None:
        """Let go of the engine and the device (the scheduler calls this before it ends the actor)."""
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        with self._device_lock:  # not under a running engine call
            self.engine.close()
        if self.ledger is not None:
            self.ledger.close()
