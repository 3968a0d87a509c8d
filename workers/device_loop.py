"""One device's engine, fed continuously: the actor's device loop.

A thread owns the engine's stream (workers/engines/base.py `EngineStream`). Work items whose front end is done come
in as `Job`s, from any shard (`put`); the loop submits their requests while the device has a free slot, steps the
device, and hands each job back (`Job.on_done`, on the loop's thread) once every request of it came back. So a
device with B decode slots never drains between shards: a slot freed by a finished answer takes the next prepared
request at once. An engine that only does whole calls (`continuous` False) is stepped when its call is full or no
more work is on its way, as the actor batched before.

Before every engine call that changes what is on the device, the loop writes the keys of every job with a request
on it into the device ledger (workers/ledger.py) and tells the engine their attempts, so that a crash is charged
to exactly those rows. A job marked `alone` (it was in a batch that crashed, or it failed next to others) runs
with nothing else on the device: the loop lets the slots drain first and admits nothing while it runs.

The loop counts its slot use (workers/work.py `SlotUse`): decode steps, live requests over them, and the same over
the steps taken while work was waiting for this device.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .engines.base import EngineError, EngineResult, EngineStream, Request
from .record import now
from .work import SlotUse, WorkItem

WHOLE_CALL_WAIT_S = 0.05  # a whole-call engine with room waits this long at a time for work on its way


@dataclass(eq=False)
class Job:
    """One work item's requests on their way through the device, and what the loop measured of them."""

    item: WorkItem
    requests: list[Request]
    on_done: Callable[["Job"], None]  # called on the loop's thread when every request came back (or one failed)
    ready_at: float  # perf_counter when its front end was done
    submitted_at: float  # perf_counter when its shard reached the actor
    alone: bool = False  # nothing else on the device while it runs
    prep_s: float = 0.0  # CPU seconds its front end took
    chunk_s: float | None = None  # the piece length its requests were prepared with (None: the front end's own)
    resplits: int = 0  # times it was re-prepared in shorter pieces
    # filled in by the loop
    results: list[EngineResult | BaseException | None] = field(default_factory=list)
    started_at: datetime | None = None  # its first request went on the device (UTC)
    finished_at: datetime | None = None  # its last came back
    device_s: float = 0.0  # device seconds charged to it: its prefills, and its share of each step
    wait_s: float = 0.0  # the device sat idle waiting for its front end before it
    shared: bool = False  # another job was on the device with it
    _next: int = 0  # its next request to submit
    _out: int = 0  # its requests on the device

    def __post_init__(self):
        self.results = [None] * len(self.requests)

    @property
    def failed(self) -> bool:
        return any(isinstance(r, BaseException) for r in self.results)

    @property
    def to_submit(self) -> bool:
        return self._next < len(self.requests) and not self.failed

    @property
    def done(self) -> bool:
        return self._out == 0 and not self.to_submit


class DeviceLoop:
    """The thread that drives one engine stream. `hold(keys)` records what is on the device (the ledger; None: no
    record); `begin_attempts(ids → attempt)` tells the engine the attempts of the rows on it."""

    def __init__(self, stream: EngineStream, *, hold: Callable[[list[tuple[int, ...]]], None] | None = None,
                 begin_attempts: Callable[[dict[str, int]], None] | None = None, name: str = "device-loop"):
        self.stream = stream
        self._hold = hold
        self._begin_attempts = begin_attempts
        self._cond = threading.Condition()
        self._inbox: deque[Job] = deque()
        self._coming = 0  # jobs expected (their front end is running)
        self._closed = False
        self._live: list[Job] = []  # jobs with requests on the device or still to submit, in admission order
        self._owner: dict[int, tuple[Job, int]] = {}  # id(request) -> (job, index) for requests on the device
        self._held: tuple | None = None  # what the ledger says now
        self._free_at = 0.0  # perf_counter when the device last ran out of work
        self._use = SlotUse(stream.slots)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the actor's side (any thread) --------------------------------------------------------------------------
    def expect(self, n: int) -> None:
        """`n` more jobs are on their way (their front end runs): a whole-call engine waits for them."""
        with self._cond:
            self._coming += n
            self._cond.notify_all()

    def put(self, job: Job, *, expected: bool = True, front: bool = False) -> None:
        """A job ready for the device (`expected`: announced by `expect`); `front`: ahead of the others (a job
        that is run again)."""
        with self._cond:
            if expected:
                self._coming -= 1
            (self._inbox.appendleft if front else self._inbox.append)(job)
            self._cond.notify_all()

    def forget(self, n: int = 1) -> None:
        """`n` expected jobs will not come (their front end failed, or they need no device)."""
        with self._cond:
            self._coming -= n
            self._cond.notify_all()

    @property
    def use(self) -> SlotUse:
        return self._use

    def close(self) -> None:
        """Finish what is on the device, fail what waits (EngineError: the actor is closing), end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    # -- the loop -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._live and not self._inbox:
                    self._cond.wait()
                if self._closed and not self._live:
                    abandoned, self._inbox = list(self._inbox), deque()
                    break
            try:
                self._admit()
                self._advance()
            except Exception as e:  # noqa: BLE001 - a bug, not a request's failure: fail what is on the device
                self._fail_live(e)
        for job in abandoned:
            job.results = [EngineError(f"{job.item.id}: the actor closed before it ran")] * len(job.requests)
            self._finish(job)

    def _take(self) -> Job | None:
        """The next job that may go on the device now, or None."""
        with self._cond:
            if self._closed or not self._inbox or any(j.alone for j in self._live):
                return None
            if self._inbox[0].alone and self._live:  # let the slots drain for it
                return None
            return self._inbox.popleft()

    def _admit(self) -> None:
        """Requests onto the device while it has room: the live jobs' remaining pieces first, then new jobs."""
        while self.stream.free_slots > 0:
            job = next((j for j in self._live if j.to_submit), None)
            if job is None:
                job = self._take()
                if job is None:
                    return
                self._begin(job)
            self._submit(job)

    def _begin(self, job: Job) -> None:
        job.wait_s = max(0.0, job.ready_at - max(self._free_at, job.submitted_at)) if not self._live else 0.0
        job.shared = bool(self._live)
        for other in self._live:
            other.shared = True
        job.started_at = now()
        self._live.append(job)

    def _submit(self, job: Job) -> None:
        k = job._next
        request = job.requests[k]
        job._next += 1
        job._out += 1
        self._owner[id(request)] = (job, k)
        self._record()
        t0 = time.perf_counter()
        self.stream.submit(request)
        job.device_s += time.perf_counter() - t0

    def _record(self) -> None:
        """The ledger and the engine learn what is on the device, when that changed since they last did."""
        keys = tuple(j.item.key for j in self._live)
        if keys == self._held:
            return
        if self._begin_attempts is not None:
            self._begin_attempts({j.item.id: j.item.attempt for j in self._live})
        if self._hold is not None:
            self._hold(list(keys))
        self._held = keys

    def _backlog(self) -> bool:
        """Work is waiting for this device (prepared, in its front end, or pieces of a live job)."""
        with self._cond:
            waiting = bool(self._inbox) or self._coming > 0
        return waiting or any(j.to_submit for j in self._live)

    def _advance(self) -> None:
        stream = self.stream
        if not stream.pending:
            return
        if not stream.continuous and stream.free_slots > 0:
            with self._cond:  # (a job in the inbox now is one that waits for the slots to drain)
                if not self._inbox and self._coming > 0 and not self._closed:  # a fuller call is on its way
                    self._cond.wait(WHOLE_CALL_WAIT_S)
                    return
        queued = self._backlog()
        self._record()
        on_device = [(j, j._out) for j in self._live if j._out]
        steps, busy = stream.steps, stream.busy
        t0 = time.perf_counter()
        finished = stream.step()
        dt = time.perf_counter() - t0
        total = sum(n for _, n in on_device)
        for job, n in on_device:
            job.device_s += dt * n / total
        d_steps, d_busy = stream.steps - steps, stream.busy - busy
        u = self._use
        self._use = SlotUse(u.slots, u.steps + d_steps, u.busy + d_busy, u.queued_steps + d_steps * queued,
                            u.queued_busy + d_busy * queued)
        for f in finished:
            entry = self._owner.pop(id(f.request), None)
            if entry is None:  # its job was failed by _fail_live
                continue
            job, k = entry
            job.results[k] = f.result
            job._out -= 1
        for job in [j for j in self._live if j.done]:
            self._finish(job)

    def _finish(self, job: Job) -> None:
        if job in self._live:
            self._live.remove(job)
        job.finished_at = now()
        if not self._live:
            self._free_at = time.perf_counter()
        job.on_done(job)

    def _fail_live(self, error: BaseException) -> None:
        print(f"device loop: {type(error).__name__}: {error}; failing the {len(self._live)} row(s) on the device",
              flush=True)
        for job in list(self._live):
            for key in [k for k, (j, _) in self._owner.items() if j is job]:
                del self._owner[key]
            job.results = [r if r is not None else EngineError(f"{job.item.id}: device loop failed: {error}")
                           for r in job.results]
            job._out, job.shared = 0, False
            self._finish(job)
