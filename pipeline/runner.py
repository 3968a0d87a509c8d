"""Run one job end to end: check/resume the output folder, plan, start Ray and the actors, schedule, merge, run.json.

`run_job(config)` is what `transcribe-batch run` calls; benchmarks and notebooks call it directly:

    from transcribe_batch.pipeline.config import build_config
    from transcribe_batch.pipeline.runner import run_job
    summary = run_job(build_config("m.jsonl", "runs/x", engine="simulated", devices="4", sim_speedup=100))
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from transcribe_batch.workers.engines import device_kind
from transcribe_batch.workers.platforms import local_gpus, platform
from transcribe_batch.workers.record import failed_record, now

from .config import RunConfig
from .devices import cluster_slots
from .plan import bad_line_id, build_plan
from .progress import ProgressTracker
from .results import PartWriter, RunFolder, lock_run_folder, merge_results, open_run_folder, versions, write_json
from .scheduler import Scheduler, SchedulerError


@dataclass
class RunSummary:
    output: Path
    status: str  # complete | interrupted | failed
    n_rows: int = 0
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
    """The device kind this run's engine uses (engine option `device_kind` picks one of the engine's kinds)."""
    return device_kind(cfg.engine, (cfg.engine_options or {}).get("device_kind"), gpus_available=gpus_available)


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
    ray.init(num_cpus=cfg.ray_num_cpus or None, resources=resources or None, **common)
    return True


def _bad_line_records(plan) -> list[dict]:
    records = []
    for err in plan.bad:
        row = {"id": bad_line_id(err.line), "audio_filepath": None, "offset": None}
        records.append(failed_record(row, err.line, err, error_class="ManifestError", attempts=0, finish_reason="error"))
    return records


def run_job(cfg: RunConfig) -> RunSummary:
    """Run (or resume) one job; returns its summary. Raises ManifestError, ResumeError, DeviceError, SchedulerError,
    or KeyboardInterrupt (Ctrl-C/SIGTERM: finished rows are saved, run.json says interrupted)."""
    t0 = time.monotonic()
    folder = RunFolder(cfg.output)
    lock = lock_run_folder(folder)
    try:
        return _run_locked(cfg, folder, t0)
    finally:
        lock.close()


def _run_locked(cfg: RunConfig, folder: RunFolder, t0: float) -> RunSummary:
    import ray

    state = open_run_folder(folder, cfg.identity(), overwrite=cfg.overwrite, retry_failed=cfg.retry_failed)
    plan = build_plan(cfg.manifest, skip_bad_lines=cfg.skip_bad_lines, done_digests=state.done_digests,
                      shard_size=cfg.shard_size, shard_max_audio_s=cfg.shard_max_audio_s)
    run_info = {
        "status": "running",
        "started_at": now().isoformat(),
        "finished_at": None,
        "manifest": str(cfg.manifest),
        "output": str(cfg.output),
        "identity": cfg.identity(),
        "engine": cfg.engine,
        "model_id": None,
        "config": cfg.to_json(),
        "versions": versions(),
        "resumed": state.previous is not None,
        "runs": (state.previous or {}).get("runs", []) + [{"started_at": now().isoformat()}],
    }
    summary = RunSummary(output=cfg.output, status="running", n_resumed=plan.n_done)
    writer = PartWriter(folder, state.next_seq)
    progress = ProgressTracker(total=plan.n_rows, audio_s_total=plan.audio_s(), done=plan.n_done,
                               failed=state.n_failed, audio_s_done=plan.audio_s(np.flatnonzero(plan.done)),
                               log_path=cfg.progress_log or folder.progress_log, quiet=cfg.quiet)

    def on_final(records: list[dict]) -> None:
        writer.add(records)
        progress.update(records)

    write_json(folder.run_json, run_info)  # from now on the folder is claimed by this identity
    scheduler = None
    started_ray = False
    try:
        with progress:
            if plan.n_done:
                progress.log(f"resuming: {plan.n_done} of {plan.n_rows} rows already in {cfg.output}", event="resume")
            if plan.bad:
                on_final(_bad_line_records(plan))
            if plan.n_shards:
                started_ray = connect_ray(cfg)
                kind = run_device_kind(cfg, gpus_available=ray.cluster_resources().get("GPU", 0) > 0)
                spec = cfg.devices
                env = platform(kind).visibility_env(spec)
                if env and all(os.environ.get(k) == v for k, v in env.items()):  # Ray sees exactly those: count them
                    spec = str(len([s for s in str(spec).split(",") if s.strip()]))
                slots = cluster_slots(kind, spec)
                options = {**cfg.engine_options_dict(), "log_dir": str(folder.logs)}
                scheduler = Scheduler(plan, slots, engine=cfg.engine, options=options,
                                      on_final=on_final, progress=progress, max_attempts=cfg.max_attempts,
                                      device_max_failures=cfg.device_max_failures,
                                      inflight_per_device=cfg.inflight_per_device)
                infos = scheduler.start()
                summary.devices = infos
                run_info.update(model_id=infos[0]["model_id"], devices=infos, engine=infos[0]["engine"])
                write_json(folder.run_json, run_info)
                progress.log(f"{len(infos)} device(s): " + ", ".join(
                    f"{i['engine']} on {i['label']} ({i['node']})" for i in infos), event="devices")
                summary.stats = scheduler.run()
            writer.flush()
        merged = merge_results(folder)
        summary.status = "complete"
        summary.n_rows, summary.n_ok, summary.n_failed = merged.n_rows, merged.n_ok, merged.n_failed
        summary.audio_s = merged.audio_s
    except KeyboardInterrupt:
        summary.status = "interrupted"
        raise
    except SchedulerError:
        summary.status = "failed"
        raise
    finally:
        writer.flush()
        if scheduler is not None:
            scheduler.shutdown()
        if started_ray:
            ray.shutdown()
        summary.wall_s = time.monotonic() - t0
        if summary.status == "running":
            summary.status = "failed"
        run_info.update(status=summary.status, finished_at=now().isoformat(),
                        counts={"rows": summary.n_rows, "ok": summary.n_ok, "failed": summary.n_failed,
                                "resumed": summary.n_resumed, "bad_lines": plan.n_bad_total},
                        audio_s=summary.audio_s, wall_s=summary.wall_s, stats=summary.stats)
        run_info["runs"][-1].update(finished_at=run_info["finished_at"], status=summary.status)
        if run_info["model_id"] is None and state.previous:
            run_info.update(model_id=state.previous.get("model_id"), devices=state.previous.get("devices"))
        write_json(folder.run_json, run_info)
    return summary
