"""Run one job end to end: check/resume the output folder, plan, start Ray and the actors, schedule, merge, run.json.

`run_job(config)` is what `transcribe-batch run` calls; benchmarks and notebooks call it directly:

    from transcribe_batch.pipeline.config import build_config
    from transcribe_batch.pipeline.runner import run_job
    summary = run_job(build_config("m.jsonl", "runs/x", engine="simulated", devices="4", sim_speedup=100))
"""

from __future__ import annotations

import os
import signal
import threading
import time
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
from .results import (PartWriter, ResumeError, RunFolder, RunLock, merge_results, open_run_folder,
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


class StopSignals:
    """SIGINT and SIGTERM stop a run the same way (Ctrl-C, `kill`, `timeout`, systemd, batch schedulers): the first
    one raises KeyboardInterrupt in the main thread and is remembered in `received` (so a run can never end
    "complete" after one, even if something swallowed the exception); later ones are ignored while finished work
    is being saved. `ray.init` installs its own SIGTERM handler, so `install()` runs again after it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def check(self) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(signal.Signals(self.received).name)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()


def run_job(cfg: RunConfig) -> RunSummary:
    """Run (or resume) one job; returns its summary. Raises ManifestError (incl. ManifestChanged), ResumeError,
    DeviceError, SchedulerError, or KeyboardInterrupt (Ctrl-C/SIGTERM: finished rows are saved, run.json says
    interrupted). A run refused before it starts leaves nothing behind (no .lock, no parts/)."""
    t0 = time.monotonic()
    signals = StopSignals()
    signals.install()
    try:
        folder = RunFolder(cfg.output)
        lock = RunLock(folder)
        started = False
        try:
            summary = _run_locked(cfg, folder, t0, signals)
            started = True
            return summary
        except _Refused as e:
            raise e.error from None
        except BaseException:
            started = True
            raise
        finally:
            lock.release(refused=not started)
    finally:
        signals.restore()


class _Refused(Exception):
    """The run stopped before writing anything (bad manifest, other run's folder, …): wraps the error."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _run_locked(cfg: RunConfig, folder: RunFolder, t0: float, signals: StopSignals) -> RunSummary:
    import ray

    try:
        state = open_run_folder(folder, cfg.identity(), overwrite=cfg.overwrite, retry_failed=cfg.retry_failed)
        plan = build_plan(cfg.manifest, skip_bad_lines=cfg.skip_bad_lines, done_inputs=state.done_inputs,
                          shard_size=cfg.shard_size, shard_max_audio_s=cfg.shard_max_audio_s)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised as is by run_job
        raise _Refused(e) from None
    fp = plan.fingerprint
    run_info = {
        "status": "running",
        "started_at": now().isoformat(),
        "finished_at": None,
        "manifest": str(cfg.manifest),
        "manifest_fingerprint": {"size": fp.size, "mtime_ns": fp.mtime_ns, "blake2b": fp.blake2b} if fp else None,
        "output": str(cfg.output),
        "identity": cfg.identity(),
        "engine": cfg.engine,
        "model_id": None,
        "config": cfg.to_json(),
        "versions": versions(),
        "resumed": state.previous is not None,
        "runs": (state.previous or {}).get("runs", []) + [{"started_at": now().isoformat(),
                                                             "manifest": str(cfg.manifest)}],
    }
    n_failed_before = int(np.isin(plan.inputs[plan.done], state.failed_inputs).sum())
    summary = RunSummary(output=cfg.output, status="running", n_resumed=plan.n_done)
    writer = PartWriter(folder, state.next_seq)
    try:
        write_json(folder.run_json, run_info)  # from now on the folder is claimed by this identity
    except OSError as e:
        raise _Refused(ResumeError(f"{folder.path}: cannot write run.json ({e.strerror or e})")) from None
    progress = ProgressTracker(total=plan.n_rows, audio_s_total=plan.audio_s(), done=plan.n_done,
                               failed=n_failed_before, audio_s_done=plan.audio_s(np.flatnonzero(plan.done)),
                               log_path=cfg.progress_log or folder.progress_log, quiet=cfg.quiet)

    def on_final(outcomes: list[Outcome]) -> None:
        records = [o.record for o in outcomes]
        writer.add(records, [o.input_digest for o in outcomes])
        progress.update(records)

    scheduler = None
    started_ray = False
    error: BaseException | None = None
    try:
        with progress:
            for note in state.set_aside:
                progress.log(note, event="part_set_aside")
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
            if plan.bad:
                on_final([Outcome(-1, 0, None, rec) for rec in plan.bad_line_records()])
            if plan.n_shards:
                started_ray = connect_ray(cfg)
                signals.install()  # ray.init replaced our SIGTERM handler
                signals.check()
                kind = run_device_kind(cfg, gpus_available=ray.cluster_resources().get("GPU", 0) > 0)
                spec = cfg.devices
                env = platform(kind).visibility_env(spec)
                if env and all(os.environ.get(k) == v for k, v in env.items()):  # Ray sees exactly those: count them
                    spec = str(len([s for s in str(spec).split(",") if s.strip()]))
                slots = cluster_slots(kind, spec)
                scheduler = Scheduler(plan, slots, cfg.worker_config(log_dir=folder.logs), on_final=on_final,
                                      progress=progress, max_attempts=cfg.max_attempts,
                                      device_max_failures=cfg.device_max_failures,
                                      inflight_per_device=cfg.inflight_per_device)
                infos = scheduler.start()
                summary.devices = infos
                run_info.update(model_id=infos[0].model_id, devices=[i.to_json() for i in infos],
                                engine=infos[0].engine)
                write_json(folder.run_json, run_info)
                progress.log(f"{len(infos)} device(s): " + ", ".join(
                    f"{i.engine} on {i.label} ({i.node})" for i in infos), event="devices")
                summary.stats = scheduler.run()
            writer.flush()
            signals.check()
        plan.check_unchanged()
        merged = merge_results(folder, plan)
        if merged.n_rows != plan.n_rows:  # never "complete" with a manifest row missing
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
        error = e
        raise
    finally:
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
                                "failed": summary.n_failed, "resumed": summary.n_resumed, "bad_lines": len(plan.bad)},
                        audio_s=summary.audio_s, wall_s=summary.wall_s, stats=summary.stats)
        if error is not None:
            run_info["error"] = f"{type(error).__name__}: {error}"
        if signals.received is not None:
            run_info["signal"] = signal.Signals(signals.received).name
        run_info["runs"][-1].update(finished_at=run_info["finished_at"], status=summary.status)
        if run_info["model_id"] is None and state.previous:
            run_info.update(model_id=state.previous.get("model_id"), devices=state.previous.get("devices"))
        write_json(folder.run_json, run_info, in_place_fallback=True)
        signals.restore()  # the work is saved: from here a second Ctrl-C may cut a slow Ray shutdown short
        if scheduler is not None:
            scheduler.shutdown()
        if started_ray:
            ray.shutdown()
    return summary
