"""`transcribe-batch run`: transcribe a manifest into a resumable Parquet run folder."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from transcribe_batch.config.settings import default, helps


def _h(name: str) -> str:
    """An option's help: its setting's line in config/defaults.toml (the one source), then the default."""
    text = helps()[name]
    value = default(name)
    shown = "" if value in ("", False) else f" \\[default: {value}]"
    return text + "." + shown

_ENGINE = "Engine and model"
_DEVICES = "Devices and cluster"
_RETRY = "Work, retries and resume"
_OUT = "Output and progress"
_SIM = "Simulated engine (tests, benchmarks)"
_LONG = "Long recordings and segments"

HELP = """Transcribe every row of a JSONL MANIFEST into a run folder (-o DIR) of Parquet results.

One Ray actor per device (BM1684X card, GPU, or simulated device) pulls small shards of work, longest utterances first. Every manifest row ends in exactly one result row. Running the same command again resumes: rows with a result in DIR are kept; rows whose audio file or manifest fields (offset, duration, prompt, task, language) changed are redone, and failed rows stay failed unless --retry-failed.

[bold]Manifest[/bold] (NeMo JSONL, one object per line): audio_filepath (relative paths resolve against the manifest's folder), optional duration, offset, text (reference), id, prompt or task, language; other fields are carried to the results.

[bold]Output[/bold]: DIR/results.parquet (input order), DIR/parts/ (written as work finishes), DIR/run.json (config, engine, model, versions, counts), DIR/progress.jsonl (machine-readable progress).

[bold]Settings[/bold] come from config/defaults.toml, then --config FILE.toml (same keys), then these flags.

[bold]Examples[/bold]

  transcribe-batch run data/test-clean.jsonl -o runs/test-clean \\
      --engine bm1684x --bmodel qwen2-audio-7b.bmodel \\
      --model-dir Qwen2-Audio-7B-Instruct --devices all

  # Qwen3-ASR: the model folder's config.json picks the family
  transcribe-batch run data/test-clean.jsonl -o runs/q3 \\
      --engine bm1684x --bmodel qwen3-asr-1.7b.bmodel --model-dir Qwen3-ASR-1.7B

  # the same command again after a crash or Ctrl-C: resumes
  transcribe-batch run data/test-clean.jsonl -o runs/test-clean

  transcribe-batch run demo/manifest.jsonl -o runs/sim --engine simulated \\
      --devices 4 --sim-speedup 100 --sim-faults error=0.05,crash=0.01,seed=7
"""


def run(
    manifest: Path = typer.Argument(..., help="JSONL manifest to transcribe.", show_default=False),
    output: Path = typer.Option(..., "--output", "-o", help="Run folder (created; an existing one is resumed).",
                                rich_help_panel=_OUT, show_default=False),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with settings (keys as in "
                                          "config/defaults.toml); flags override it.", rich_help_panel=_OUT),
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help=_h("engine"), rich_help_panel=_ENGINE),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help=_h("model_dir"), rich_help_panel=_ENGINE),
    bmodel: Optional[Path] = typer.Option(None, "--bmodel", help=_h("bmodel"), rich_help_panel=_ENGINE),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=_h("dtype"), rich_help_panel=_ENGINE),
    template: Optional[str] = typer.Option(None, "--template", help=_h("template"), rich_help_panel=_ENGINE),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=_h("max_new_tokens"),
                                                 rich_help_panel=_ENGINE),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=_h("batch_size"), rich_help_panel=_ENGINE),
    devices: Optional[str] = typer.Option(None, "--devices", "-d", help=_h("devices"), rich_help_panel=_DEVICES),
    address: Optional[str] = typer.Option(None, "--address", help=_h("address"), rich_help_panel=_DEVICES),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help=_h("max_attempts"), rich_help_panel=_RETRY),
    device_max_failures: Optional[int] = typer.Option(None, "--device-max-failures", help=_h("device_max_failures"),
                                                      rich_help_panel=_RETRY),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help=_h("shard_size"), rich_help_panel=_RETRY),
    skip_bad_lines: Optional[bool] = typer.Option(None, "--skip-bad-lines", help=_h("skip_bad_lines"),
                                                  rich_help_panel=_RETRY, show_default=False),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help=_h("overwrite"), rich_help_panel=_RETRY,
                                             show_default=False),
    retry_failed: Optional[bool] = typer.Option(None, "--retry-failed", help=_h("retry_failed"),
                                                rich_help_panel=_RETRY, show_default=False),
    quiet: Optional[bool] = typer.Option(None, "--quiet", "-q", help=_h("quiet"), rich_help_panel=_OUT,
                                         show_default=False),
    progress_log: Optional[Path] = typer.Option(None, "--progress-log", help=_h("progress_log"), rich_help_panel=_OUT),
    save_every_s: Optional[float] = typer.Option(None, "--save-every-s", help=_h("save_every_s"),
                                                 rich_help_panel=_OUT),
    splitter: Optional[str] = typer.Option(None, "--splitter", help=_h("splitter"), rich_help_panel=_LONG),
    segment_min_s: Optional[float] = typer.Option(None, "--segment-min-s", help=_h("segment_min_s"),
                                                  rich_help_panel=_LONG),
    segment_max_s: Optional[float] = typer.Option(None, "--segment-max-s", help=_h("segment_max_s"),
                                                  rich_help_panel=_LONG),
    range_s: Optional[float] = typer.Option(None, "--range-s", help=_h("range_s"), rich_help_panel=_LONG),
    sim_speedup: Optional[float] = typer.Option(None, "--sim-speedup", help=_h("sim_speedup"), rich_help_panel=_SIM),
    sim_faults: Optional[str] = typer.Option(None, "--sim-faults", help=_h("sim_faults"), rich_help_panel=_SIM),
    sim_text: Optional[str] = typer.Option(None, "--sim-text", help=_h("sim_text"), rich_help_panel=_SIM),
) -> None:
    from transcribe_batch.manifests.reader import ManifestError
    from transcribe_batch.pipeline.config import ConfigError, build_config
    from transcribe_batch.pipeline.devices import DeviceError
    from transcribe_batch.pipeline.results import ResumeError
    from transcribe_batch.pipeline.runner import run_job
    from transcribe_batch.pipeline.scheduler import SchedulerError

    overrides = dict(engine=engine, model_dir=model_dir, bmodel=bmodel, dtype=dtype, template=template,
                     max_new_tokens=max_new_tokens, batch_size=batch_size, devices=devices, address=address,
                     max_attempts=max_attempts, device_max_failures=device_max_failures, shard_size=shard_size,
                     skip_bad_lines=skip_bad_lines, overwrite=overwrite, retry_failed=retry_failed, quiet=quiet,
                     progress_log=progress_log, save_every_s=save_every_s, splitter=splitter,
                     segment_min_s=segment_min_s, segment_max_s=segment_max_s, range_s=range_s,
                     sim_speedup=sim_speedup, sim_faults=sim_faults, sim_text=sim_text)
    from transcribe_batch.pipeline.ray_address import probe

    err = typer.echo
    t_start = time.time()
    try:
        if config is not None and config.is_dir():
            raise ConfigError(f"--config {config}: is a folder; give a TOML file (keys as in config/defaults.toml)")
        cfg = build_config(manifest, output, config_file=config, **overrides)
        check_progress_log(cfg)
    except (ConfigError, OSError) as e:
        message = f"error: {e}" if isinstance(e, ConfigError) else f"error: --config {config}: cannot read it " \
                                                                   f"({e.strerror or e})"
        err(message, err=True)
        if quiet if quiet is not None else _quiet_in(config):  # unattended: the outcome as JSON, whatever it is
            typer.echo(json.dumps({"output": str(output), "status": "refused", "error": message}))
        raise typer.Exit(2) from None

    def stop(code: int, message: str, status: str) -> typer.Exit:
        err(message, err=True)
        if cfg.quiet:  # unattended: the outcome as JSON on stdout, whatever it is
            typer.echo(json.dumps(_failure_summary(cfg.output, status, message, t_start), default=str))
        return typer.Exit(code)

    # SIGINT, SIGTERM and SIGHUP (also to the whole process group) stop the run the same way: run_job handles them.
    try:
        if cfg.address:
            probe(cfg.address)
        with contextlib.redirect_stdout(sys.stderr):  # Ray prints worker notices to stdout: keep it for the summary
            summary = run_job(cfg)
    except (ManifestError, ResumeError, DeviceError, SchedulerError) as e:
        raise stop(2 if isinstance(e, (ManifestError, ResumeError, DeviceError)) else 1, f"error: {e}",
                   "failed") from None
    except ConnectionError as e:  # --address names no reachable Ray cluster
        raise stop(2, f"error: could not join the Ray cluster at {cfg.address!r}: {e}", "failed") from None
    except OSError as e:  # a full or read-only disk, a vanished folder
        where = f"{e.filename}: " if e.filename else ""
        raise stop(1, f"error: {where}{e.strerror or e}; finished rows are saved in {cfg.output} (what could be "
                   "written): fix this and run the same command again to resume", "failed") from None
    except KeyboardInterrupt as e:
        if getattr(e, "started", True):
            raise stop(130, f"interrupted: finished rows are saved in {cfg.output}; run the same command again to "
                       "resume.", "interrupted") from None
        stopped = stop(130, f"interrupted before the run started: {cfg.output} is as it was (nothing written); run "
                       "the same command again to start it.", "interrupted")
        if getattr(e, "ray_abandoned", False):  # ray.init still runs on a thread: end now (Ray's processes go too)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        raise stopped from None
    line = (f"{summary.status}: {summary.n_rows} rows ({summary.n_ok} ok, {summary.n_failed} failed"
            + (f", {summary.n_resumed} from an earlier run" if summary.n_resumed else "")
            + f"), {summary.audio_s / 3600:.2f} h audio in {summary.wall_s:.1f} s -> {summary.results}")
    err(line, err=True)
    if cfg.quiet:  # unattended: the summary as JSON on stdout
        typer.echo(json.dumps(summary.to_json(), default=str))


def _quiet_in(config: Path | None) -> bool:
    """--quiet from the config file (or the defaults) when the settings could not be built: best effort."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8")) if config is not None else {}
        value = data.get("run", {}).get("quiet", data.get("quiet")) if isinstance(data.get("run"), dict) \
            else data.get("quiet")
    except (OSError, ValueError, UnicodeDecodeError):
        value = None
    return value if isinstance(value, bool) else bool(default("quiet"))


def check_progress_log(cfg) -> None:
    """--progress-log appends JSON lines: refuse a path where that would damage something (ConfigError). Allowed: a
    new file in an existing folder, an empty file, an earlier progress log (its first line is a progress event), or
    not a regular file at all (/dev/stderr, a named pipe); in the run folder only the run's own progress.jsonl (written anyway). Never the manifest or the config file."""
    from transcribe_batch.pipeline.config import ConfigError

    if cfg.progress_log is None:
        return
    given = cfg.progress_log
    path = given.resolve()
    output = cfg.output.resolve()
    for other, what in ((cfg.manifest, "the manifest"), (cfg.config_file, "the --config file")):
        if other is not None and path == Path(other).resolve():
            raise ConfigError(f"--progress-log {given}: is {what}; give a new file (e.g. {output.name}.progress.jsonl)")
    if path.is_dir():
        raise ConfigError(f"--progress-log {given}: is a folder; give a file name")
    if output in path.parents and path != output / "progress.jsonl":
        raise ConfigError(f"--progress-log {given}: is inside the run folder, which keeps its own log "
                          f"({output / 'progress.jsonl'}, always written); give a path outside it")
    if not path.parent.is_dir():
        raise ConfigError(f"--progress-log {given}: its folder {path.parent} does not exist")
    if path.is_file() and path.stat().st_size:
        try:
            with open(path, "rb") as f:
                first = json.loads(f.readline(1 << 20))
            ours = isinstance(first, dict) and {"time", "event"} <= first.keys()
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise ConfigError(f"--progress-log {given}: exists and is not a progress log (its first line is not a "
                              "progress event); it would be appended to: give a new file or an earlier progress log")


def _failure_summary(output: Path, status: str, message: str, t_start: float) -> dict:
    """--quiet's JSON for a run that did not complete: this run's status and counts from run.json if it started
    (wrote run.json), else status "refused"."""
    out = {"output": str(output), "status": status, "error": message}
    try:
        mine = (output / "run.json").stat().st_mtime >= t_start - 1.0
        run = json.loads((output / "run.json").read_text()) if mine else None
    except (OSError, ValueError):
        run = None
    if run and run.get("finished_at"):
        out["status"] = run.get("status", status)
        out.update({f"n_{k}": v for k, v in (run.get("counts") or {}).items()})
    else:
        out["status"] = "refused" if status == "failed" else status
    return out


def register(app: typer.Typer) -> None:
    app.command("run", help=HELP, no_args_is_help=True)(run)
