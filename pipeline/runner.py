"""Run one job end to end: check/resume the output folder, plan, start Ray and the actors, schedule, merge, run.json.

`run_job(config)` is what `transcribe-batch run` calls; benchmarks and notebooks call it directly:

    from transcribe_batch.pipeline.config import build_config
    from transcribe_batch.pipeline.runner import run_job
    summary = run_job(build_config("m.jsonl", "runs/x", engine="simulated", devices="4", sim_speedup=100))
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from transcribe_batch.workers.engines import device_kind
from transcribe_batch.workers.platforms import local_gpus, platform
from transcribe_batch.workers.record import now
from transcribe_batch.workers.work import Outcome

from .config import RunConfig
from .devices import cluster_slots
from .plan import build_plan
from .progress import ProgressTracker
from .results import (PartWriter, ResumeError, RunFolder, RunLock, claim_run_folder, merge_results, open_run_folder,
                      versions, write_json)
from .scheduler import Scheduler, SchedulerError


@dataclass
class RunSummary:
    output: Path
    status: str  # complete | interrupted | failed
    n_rows: int = 0  # rows with a result (complete: every manifest row; interrupted/failed: so far)
    n_ok: int = 0
    n_failed: int = 0
    n_resumed: int = 0  # rows already done by an earlier run of this folder
    audio_s: float = 0.0
    wall_s: float = 0.0
    devices: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return self.output / "results.parquet"

    def to_json(self) -> dict:
        out = asdict(self)
        out["output"] = str(self.output)
        return out


def run_device_kind(cfg: RunConfig, *, gpus_available: bool) -> str:
    """The device kind this run's engine uses (the `device_kind` setting picks one of the engine's kinds)."""
    return device_kind(cfg.engine, cfg.device_kind, gpus_available=gpus_available)


def connect_ray(cfg: RunConfig) -> bool:
    """Join `cfg.address`, reuse an already initialised Ray, or start a local cluster that advertises this run's
    devices (workers/platforms.py). True if we connected."""
    import ray

    if ray.is_initialized():
        return False
    common = {"include_dashboard": False, "logging_level": "WARNING", "configure_logging": True}
    if cfg.address:
        ray.init(address=cfg.address, **{k: v for k, v in common.items() if k != "include_dashboard"})
        return True
    plat = platform(run_device_kind(cfg, gpus_available=bool(local_gpus())))
    resources = dict(plat.ray_resources(cfg.devices))
    if plat.kind != "bm1684x":  # a card host still advertises its cards (other jobs may join this cluster)
        resources.update(platform("bm1684x").ray_resources(None))
    os.environ.update(plat.visibility_env(cfg.devices))
    # address="local": always a new cluster of our own, never one that happens to run on this host (RAY_ADDRESS,
    # `ray start`, another job): its resources and code would not be this run's
    ray.init(address="local", num_cpus=cfg.ray_num_cpus or None, resources=resources or None, **common)
    return True


class RangeTally:
    """Long rows' ranges still to finish: a long row counts as done (failed if any range failed, now or in an
    earlier run) when its last range's outcome comes."""

    def __init__(self, plan, failed_inputs: np.ndarray):
        rows, _ = plan.range_rows()
        todo = ~plan.range_done
        self.left = dict(zip(*np.unique(rows[todo], return_counts=True))) if todo.any() else {}
        self.left = {int(i): int(n) for i, n in self.left.items()}
        self.failed = {int(i) for i in np.unique(rows[np.isin(plan.range_inputs, failed_inputs) & plan.range_done])}

    def done(self, outcome: Outcome) -> bool | None:
        """None: the row has ranges left; else whether the finished row failed (its ranges of this run)."""
        self.left[outcome.index] -= 1
        if not outcome.ok:
            self.failed.add(outcome.index)
        if self.left[outcome.index] > 0:
            return None
        return outcome.index in self.failed


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP stop a run the same way (Ctrl-C; `kill`, `timeout`, systemd, batch schedulers; a
    closed terminal or a dropped ssh session). The first one is remembered in `received` (a run can never end
    "complete" after one) and raises KeyboardInterrupt in the main thread, unless it comes inside `deferred()` (Ray
    starting, the folder being claimed): then the run acts on it (`check()`) when that step is done. Later signals
    are only recorded, so that nothing cuts short the saving of finished work; `cutting_short()` (Ray's shutdown,
    after everything is saved) lets any signal end that wait. A signal that was ignored when the run started (nohup,
    a background job of a script) stays ignored. After SIGHUP, stdout/stderr whose other end is gone (a closed
    terminal, a dropped ssh pipe) point at /dev/null, where writing cannot fail."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.received: int | None = None
        self._deferred = 0
        self._cut_short = False
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            current = signal.getsignal(sig)
            if current is signal.SIG_IGN and sig not in self._previous:
                continue
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGHUP:
            _drop_lost_outputs()
        first = self.received is None
        if first:
            self.received = signum
        if self._cut_short or (first and not self._deferred):
            raise KeyboardInterrupt(signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self):
        """A step that must not be cut off half way: a signal meanwhile is only recorded (call check() after)."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    @contextlib.contextmanager
    def cutting_short(self):
        """A wait that any signal may end (KeyboardInterrupt, swallowed here): the run's outcome is already saved."""
        self._cut_short = True
        try:
            yield
        except KeyboardInterrupt:
            pass
        finally:
            self._cut_short = False

    def check(self) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(signal.Signals(self.received).name)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def _drop_lost_outputs() -> None:
    """Point stdout/stderr at /dev/null where their reader is gone (a hung-up terminal, a closed pipe or socket:
    poll reports an error or hang-up), so that the run's last writes (progress bar, messages) cannot fail with EIO or
    EPIPE while it saves its work."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        for fd in (1, 2):
            try:
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                events = dict(poller.poll(0)).get(fd, 0)
            except (OSError, ValueError):
                continue
            if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class _QuietRayThreadWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


STOP_GRACE_S = 10.0  # how long a run stopped while Ray starts waits for ray.init to return before giving up on it


class RayStartAbandoned(KeyboardInterrupt):
    """A stop signal came while Ray was starting, and ray.init did not return within STOP_GRACE_S: it is still
    running on its helper thread (Ray's processes go when this process ends)."""


def start_ray(cfg: RunConfig, signals: StopSignals) -> threading.Event | None:
    """`connect_ray` on a helper thread while the main thread waits with signals deferred. Returns None if Ray was
    already initialised (someone else's to shut down); else an Event: the caller sets it after ray.shutdown() to let
    the helper thread end. That thread must outlive the run's use of Ray: Ray ties the processes it starts (GCS,
    raylet) to the thread that started them (PR_SET_PDEATHSIG: killed when that thread ends).

    ray.init must not be cut off half way (a half-started cluster, exit codes 15 or 134), and from the main thread
    it would install its own SIGTERM handler (SystemExit(15)); from a helper thread it installs none (its core
    worker still installs a C++ one, replaced by ours as soon as ray.init returns). After a stop
    signal the caller acts on it (`signals.check()`) once ray.init has returned, or after STOP_GRACE_S
    (RayStartAbandoned): a signal to the whole process group can kill the new cluster's processes, and ray.init may
    then wait for them for a long time (its own timeout is 30 s)."""
    import ray

    if ray.is_initialized():
        return None
    outcome: dict = {}
    returned, keep = threading.Event(), threading.Event()

    def connect() -> None:
        try:
            outcome["connected"] = connect_ray(cfg)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = e
        returned.set()
        keep.wait()  # the cluster's processes live as long as this thread

    quiet = _QuietRayThreadWarning()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    give_up_at = None
    try:
        with signals.deferred():
            threading.Thread(target=connect, name="ray-start", daemon=True).start()
            while not returned.wait(0.2):
                if signals.received is not None and give_up_at is None:
                    give_up_at = time.monotonic() + STOP_GRACE_S
                    _say(f"stopping: Ray is starting; the run stops (nothing written) once ray.init returns, or in "
                         f"{STOP_GRACE_S:.0f} s")
                elif give_up_at is not None and time.monotonic() > give_up_at:
                    raise RayStartAbandoned(signal.Signals(signals.received).name)
    finally:
        logging.getLogger("ray._private.worker").removeFilter(quiet)
        signals.install()  # Ray's core worker installs its own SIGTERM handler (it logs, then may abort): ours again
    if "error" in outcome:
        ray.shutdown()  # whatever a failed ray.init started
        keep.set()
        if signals.received is not None:
            raise KeyboardInterrupt(signal.Signals(signals.received).name) from None
        raise outcome["error"]
    return keep


def _say(message: str) -> None:
    try:
        print(message, file=sys.stderr, flush=True)
    except OSError:
        pass


class RunStopped(KeyboardInterrupt):
    """A stop signal (Ctrl-C, SIGTERM, SIGHUP) ended the run. `started`: whether it had claimed the folder (then
    its run.json says interrupted and what finished is saved); if not, the folder is as it was (a new one is
    removed). `ray_abandoned`: ray.init was still running (RayStartAbandoned); a program should end now (the CLI
    exits at once), as Ray cannot be shut down cleanly from here."""

    def __init__(self, message: str, *, started: bool, ray_abandoned: bool = False):
        super().__init__(message)
        self.started = started
        self.ray_abandoned = ray_abandoned


@dataclass
class _Lifecycle:
    """What a run has done outside itself so far: what its end must release."""

    claimed: bool = False  # it wrote its run.json: the folder is this run's
    ray_thread: threading.Event | None = None  # it connected to (or started) Ray: shut it down at the end, then set
    # this to let the thread that started it (and keeps its processes alive) end


def run_job(cfg: RunConfig) -> RunSummary:
    """Run (or resume) one job; returns its summary. Raises ManifestError (incl. ManifestChanged), ResumeError,
    DeviceError, SchedulerError, or RunStopped (a KeyboardInterrupt: Ctrl-C/SIGTERM/SIGHUP; finished rows are saved,
    run.json says interrupted). A run refused (or stopped) before it claims the folder, i.e. before its checks,
    planning, Ray's start and the device lookup are done, leaves the folder as it was: no .lock, no run.json, a new
    folder removed."""
    t0 = time.monotonic()
    signals = StopSignals()
    signals.install()
    life = _Lifecycle()
    try:
        folder = RunFolder(cfg.output)
        lock = RunLock(folder)
        try:
            return _run_locked(cfg, folder, t0, signals, life)
        except _Refused as e:
            raise e.error from None
        except KeyboardInterrupt as e:
            raise RunStopped(str(e) or "interrupted", started=life.claimed,
                             ray_abandoned=isinstance(e, RayStartAbandoned)) from None
        finally:
            lock.release(refused=not life.claimed)  # before Ray's shutdown: the folder is free for the next run
            if life.ray_thread is not None:
                import ray

                try:
                    with signals.cutting_short():
                        ray.shutdown()
                finally:
                    life.ray_thread.set()
    finally:
        signals.restore()


class _Refused(Exception):
    """The run stopped before writing anything (bad manifest, other run's folder, …): wraps the error."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def with_slot_use(devices: list[dict] | None, slot_use: dict) -> None:
    """run.json's devices (ActorInfo.to_json(), by label) get their decode-slot use: `slot_occupancy` (share of
    decode steps × B with a live request), `slot_occupancy_queued` (the same while rows waited for the device),
    `decode_steps`, `decode_steps_queued`, `slots` (workers/work.py SlotUse)."""
    for dev in devices or []:
        use = slot_use.get(dev.get("label"))
        if use is not None:
            dev.update(use.to_json())


def _device_slots(cfg: RunConfig) -> list:
    """The devices this run's actors will own (DeviceError if --devices names ones the cluster does not have)."""
    import ray

    kind = run_device_kind(cfg, gpus_available=ray.cluster_resources().get("GPU", 0) > 0)
    spec = cfg.devices
    env = platform(kind).visibility_env(spec)
    if env and all(os.environ.get(k) == v for k, v in env.items()):  # Ray sees exactly those: count them
        spec = str(len([s for s in str(spec).split(",") if s.strip()]))
    return cluster_slots(kind, spec)


def _run_locked(cfg: RunConfig, folder: RunFolder, t0: float, signals: StopSignals, life: _Lifecycle) -> RunSummary:
    # Before the run claims the folder: check it, plan, start Ray, find the devices. A refusal or a stop signal
    # here leaves the folder as it was.
    try:
        state = open_run_folder(folder, cfg.identity(), overwrite=cfg.overwrite, retry_failed=cfg.retry_failed)
        plan = build_plan(cfg.manifest, skip_bad_lines=cfg.skip_bad_lines, done_inputs=state.done_inputs,
                          shard_size=cfg.shard_size, shard_max_audio_s=cfg.shard_max_audio_s, range_s=cfg.range_s)
        slots = []
        if plan.n_shards:
            life.ray_thread = start_ray(cfg, signals)
            signals.check()
            slots = _device_slots(cfg)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised as is by run_job
        raise _Refused(e) from None
    fp = plan.fingerprint
    run_id = uuid.uuid4().hex
    run_info = {
        "status": "running",
        "run_id": run_id,
        "started_at": now().isoformat(),
        "finished_at": None,
        "manifest": str(cfg.manifest),
        "manifest_fingerprint": {"size": fp.size, "mtime_ns": fp.mtime_ns, "blake2b": fp.blake2b} if fp else None,
        "output": str(cfg.output),
        "identity": cfg.identity(),
        "engine": cfg.engine,
        "model_id": None,
        "splitter": cfg.resolved_splitter(),
        "config": cfg.to_json(),
        "versions": versions(),
        "resumed": state.previous is not None,
        "runs": (state.previous or {}).get("runs", []) + [{"run_id": run_id, "started_at": now().isoformat(),
                                                             "manifest": str(cfg.manifest)}],
    }
    n_failed_before = plan.failed_rows(state.failed_inputs)
    summary = RunSummary(output=cfg.output, status="running", n_resumed=plan.n_done)
    writer = PartWriter(folder, state.next_seq, flush_s=cfg.save_every_s)
    had_results = folder.results.exists()
    with signals.deferred():  # run.json and what it replaces change together
        try:
            set_aside = claim_run_folder(folder, state, run_info, overwrite=cfg.overwrite)
        except OSError as e:
            raise _Refused(ResumeError(f"{folder.path}: cannot write run.json ({e.strerror or e})")) from None
        life.claimed = True
    unreadable = {f for f, _ in state.unreadable}
    progress = ProgressTracker(total=plan.n_rows, audio_s_total=plan.audio_s(), done=plan.n_done,
                               failed=n_failed_before, audio_s_done=plan.done_audio_s(),
                               log_path=cfg.progress_log or folder.progress_log, quiet=cfg.quiet)

    range_tally = RangeTally(plan, state.failed_inputs)

    def on_final(outcomes: list[Outcome]) -> None:
        writer.add([o.record for o in outcomes], [o.input_digest for o in outcomes])
        progress.update([o.record for o in outcomes if o.span is None])
        for o in outcomes:
            if o.span is not None:  # a long row counts once its last range is done
                progress.update_range(o.record, row_failed=range_tally.done(o))

    scheduler = None
    error: BaseException | None = None
    try:
        signals.check()
        with progress:
            for note in set_aside:
                progress.log(note, event="part_set_aside")
            if had_results and not cfg.overwrite:
                progress.log(f"{folder.results} (an earlier run's results) removed: this run writes the folder's "
                             "results when it completes (finished rows are reused from parts/)",
                             event="results_removed")
            previous_manifest = (state.previous or {}).get("manifest")
            if previous_manifest and previous_manifest != str(cfg.manifest):
                progress.log(f"{cfg.output} held results of {previous_manifest}; the results will hold exactly the "
                             f"rows of {cfg.manifest} (earlier results are reused for rows with the same id, audio "
                             "and prompt)", event="other_manifest")
            stale = len(state.done_inputs) - plan.n_done
            if stale > 0:
                progress.log(f"{stale} earlier result(s) answer rows this manifest no longer has as they were "
                             "(removed, or their audio/prompt changed): left out of the results, changed rows are "
                             "redone", event="stale")
            if plan.n_done:
                progress.log(f"resuming: {plan.n_done} of {plan.n_rows} rows already in {cfg.output}", event="resume")
            planned = (f"; {len(plan.long_rows)} long row(s) planned in {len(plan.range_inputs)} ranges of about "
                      f"{cfg.range_s:g} s ({int(plan.range_done.sum())} done already)") if len(plan.long_rows) else ""
            progress.log(f"audio longer than {cfg.segment_max_s:g} s (or the engine's limit) is cut at pauses found by "
                         f"the {run_info['splitter']} splitter{planned}", event="segments",
                         splitter=run_info["splitter"], long_rows=len(plan.long_rows),
                         ranges=len(plan.range_inputs))
            if plan.bad:
                on_final([Outcome(-1, 0, None, rec) for rec in plan.bad_line_records()])
            if plan.n_shards:
                scheduler = Scheduler(plan, slots, cfg.worker_config(log_dir=folder.logs), on_final=on_final,
                                      progress=progress, max_attempts=cfg.max_attempts,
                                      device_max_failures=cfg.device_max_failures,
                                      inflight_per_device=cfg.inflight_per_device)
                infos = scheduler.start()
                progress.watch_slots(scheduler.slot_use)
                summary.devices = infos
                run_info.update(model_id=infos[0].model_id, devices=[i.to_json() for i in infos],
                                engine=infos[0].engine)
                write_json(folder.run_json, run_info)
                progress.log(f"{len(infos)} device(s): " + ", ".join(
                    f"{i.engine} on {i.label} ({i.node})" + (f", {i.limits.layout} layout" if i.limits.layout else "")
                    for i in infos), event="devices")
                for caveat in sorted({c for i in infos for c in i.limits.caveats}):
                    progress.log(f"WARNING: {caveat}", event="engine_caveat")
                summary.stats = scheduler.run()
            writer.flush()
            signals.check()
        plan.check_unchanged()
        merged = merge_results(folder, plan, files=[f for f in folder.part_files() if f not in unreadable],
                               run_id=run_id)
        if merged.n_rows != plan.n_rows:  # never "complete" with a manifest row missing
            folder.results.unlink(missing_ok=True)
            raise SchedulerError(f"{plan.n_rows - merged.n_rows} manifest row(s) have no result; run the same "
                                 "command again to redo them")
        signals.check()
        summary.status = "complete"
        summary.n_rows, summary.n_ok, summary.n_failed = merged.n_rows, merged.n_ok, merged.n_failed
        summary.audio_s = merged.audio_s
    except KeyboardInterrupt:
        summary.status = "interrupted"
        raise
    except BaseException as e:
        if signals.received is None:
            error = e
            raise
        summary.status = "interrupted"  # e.g. Ray's processes killed by the same group signal
        raise KeyboardInterrupt(signal.Signals(signals.received).name) from None
    finally:
        with signals.deferred():  # a signal now (the first, or a second one) must not cut the saving short
            # Save what finished before touching Ray again (its processes may be dying from the same signal).
            try:
                writer.flush()
            except OSError as e:
                error = error or e
            summary.wall_s = time.monotonic() - t0
            if summary.status == "running":
                summary.status = "failed"
            if summary.status != "complete":  # what has a result so far
                summary.n_rows, summary.n_failed = progress.done, progress.failed
                summary.n_ok = progress.done - progress.failed
                summary.audio_s = progress.audio_s_done
            run_info.update(status=summary.status, finished_at=now().isoformat(),
                            counts={"rows": summary.n_rows, "total": plan.n_rows, "ok": summary.n_ok,
                                    "failed": summary.n_failed, "resumed": summary.n_resumed,
                                    "bad_lines": len(plan.bad)},
                            audio_s=summary.audio_s, wall_s=summary.wall_s, stats=summary.stats)
            if error is not None:
                run_info["error"] = f"{type(error).__name__}: {error}"
            if summary.status == "interrupted" and signals.received is not None:
                run_info["signal"] = signal.Signals(signals.received).name
            run_info["runs"][-1].update(finished_at=run_info["finished_at"], status=summary.status)
            if scheduler is not None:
                with_slot_use(run_info.get("devices"), scheduler.slot_use())
            if run_info["model_id"] is None and state.previous:
                run_info.update(model_id=state.previous.get("model_id"), devices=state.previous.get("devices"))
            write_json(folder.run_json, run_info, in_place_fallback=True)
        if scheduler is not None:  # the work is saved: from here any signal may cut Ray's shutdown short
            with signals.cutting_short():
                scheduler.shutdown()
    return summary
