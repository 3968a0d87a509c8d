"""`transcribe-batch run`: transcribe a manifest into a resumable Parquet run folder."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer

from transcribe_batch.pipeline.config import load_defaults

_D = load_defaults()  # the --help defaults are the real ones (config/defaults.toml)
_ENGINE = "Engine and model"
_DEVICES = "Devices and cluster"
_RETRY = "Work, retries and resume"
_OUT = "Output and progress"
_SIM = "Simulated engine (tests, benchmarks)"

HELP = """Transcribe every row of a JSONL MANIFEST into a run folder (-o DIR) of Parquet results.

One Ray actor per device (BM1684X card, GPU, or simulated device) pulls small shards of work, longest utterances first. Every manifest row ends in exactly one result row. Running the same command again resumes: only rows not yet in DIR are processed.

[bold]Manifest[/bold] (NeMo JSONL, one object per line): audio_filepath (relative paths resolve against the manifest's folder), optional duration, offset, text (reference), id, prompt or task, language; other fields are carried to the results.

[bold]Output[/bold]: DIR/results.parquet (input order), DIR/parts/ (written as work finishes), DIR/run.json (config, engine, model, versions, counts), DIR/progress.jsonl (machine-readable progress).

[bold]Settings[/bold] come from config/defaults.toml, then --config FILE.toml (same keys), then these flags.

[bold]Examples[/bold]

  transcribe-batch run data/test-clean.jsonl -o runs/test-clean \\
      --engine bm1684x --bmodel qwen2-audio-7b.bmodel \\
      --model-dir Qwen2-Audio-7B-Instruct --devices all

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
    engine: Optional[str] = typer.Option(None, "--engine", "-e", help=f"bm1684x | hf | simulated  \\[default: {_D['engine']}]",
                                         rich_help_panel=_ENGINE),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="Model folder (tokenizer + configs; hf: "
                                             "weights too).", rich_help_panel=_ENGINE),
    bmodel: Optional[Path] = typer.Option(None, "--bmodel", help="Compiled .bmodel (bm1684x engine).",
                                          rich_help_panel=_ENGINE),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="hf engine: auto (bf16 on a GPU, fp32 on the CPU) | fp32 | fp16 | bf16.",
                                        rich_help_panel=_ENGINE),
    template: Optional[str] = typer.Option(None, "--template", help="Prompt template from config/prompts.toml "
                                           f"\\[default: {_D['template']}]; rows may override with prompt/task.",
                                           rich_help_panel=_ENGINE),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Cap on generated tokens per "
                                                 f"request \\[default: {_D['max_new_tokens']}].", rich_help_panel=_ENGINE),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Requests per engine call for engines "
                                             f"that batch (hf) \\[default: {_D['batch_size']}].", rich_help_panel=_ENGINE),
    devices: Optional[str] = typer.Option(None, "--devices", "-d", help="all | ids like 0,2 (a single id: '2,') | "
                                          f"N = the first N devices. Simulated: N virtual devices (all = 1) \\[default: {_D['devices']}].",
                                          rich_help_panel=_DEVICES),
    address: Optional[str] = typer.Option(None, "--address", help="Join a Ray cluster: auto | ray://host:10001. "
                                          "Default: start a local one.", rich_help_panel=_DEVICES),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="Tries per row before it is recorded "
                                               f"as failed \\[default: {_D['max_attempts']}].", rich_help_panel=_RETRY),
    device_max_failures: Optional[int] = typer.Option(None, "--device-max-failures", help="Consecutive crashes / "
                                                      f"all-failed shards before a device leaves the pool \\[default: {_D['device_max_failures']}].",
                                                      rich_help_panel=_RETRY),
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help=f"Rows per shard of work \\[default: {_D['shard_size']}].",
                                             rich_help_panel=_RETRY),
    skip_bad_lines: Optional[bool] = typer.Option(None, "--skip-bad-lines", help="Record bad "
                                                  "manifest lines as failed rows instead of stopping.",
                                                  rich_help_panel=_RETRY, show_default=False),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="Delete results of a different "
                                             "engine/model/prompt in the output folder and start over.",
                                             rich_help_panel=_RETRY, show_default=False),
    retry_failed: Optional[bool] = typer.Option(None, "--retry-failed", help="On resume, also redo rows recorded "
                                                "as failed.", rich_help_panel=_RETRY, show_default=False),
    quiet: Optional[bool] = typer.Option(None, "--quiet", "-q", help="No progress bar (progress.jsonl is still "
                                         "written).", rich_help_panel=_OUT, show_default=False),
    progress_log: Optional[Path] = typer.Option(None, "--progress-log", help="JSONL progress log \\[default: "
                                                "DIR/progress.jsonl].", rich_help_panel=_OUT),
    sim_speedup: Optional[float] = typer.Option(None, "--sim-speedup", help="Divide every simulated time by X "
                                                f"\\[default: {_D['sim_speedup']}].", rich_help_panel=_SIM),
    sim_faults: Optional[str] = typer.Option(None, "--sim-faults", help="Per-attempt fault probabilities "
                                             "(error, empty, repeat, crash, garble = a wrong answer with low "
                                             "confidence), e.g. error=0.05,empty=0.02,repeat=0.02,crash=0.01,seed=7.",
                                             rich_help_panel=_SIM),
    sim_text: Optional[str] = typer.Option(None, "--sim-text", help="Fixed answer instead of the reference text.",
                                           rich_help_panel=_SIM),
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
                     progress_log=progress_log, sim_speedup=sim_speedup, sim_faults=sim_faults, sim_text=sim_text)
    err = typer.echo
    try:
        cfg = build_config(manifest, output, config_file=config, **overrides)
    except ConfigError as e:
        err(f"error: {e}", err=True)
        raise typer.Exit(2) from None

    def _terminate(signum, frame):  # SIGTERM stops like Ctrl-C: finished work is saved, the next run resumes
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        summary = run_job(cfg)
    except (ManifestError, ResumeError, DeviceError, SchedulerError, FileNotFoundError) as e:
        err(f"error: {e}", err=True)
        raise typer.Exit(2 if isinstance(e, (ManifestError, ResumeError, DeviceError)) else 1) from None
    except ConnectionError as e:  # --address names no reachable Ray cluster
        err(f"error: could not join the Ray cluster at {cfg.address!r}: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err(f"interrupted: finished rows are saved in {cfg.output}; run the same command again to resume.", err=True)
        raise typer.Exit(130) from None
    line = (f"{summary.status}: {summary.n_rows} rows ({summary.n_ok} ok, {summary.n_failed} failed"
            + (f", {summary.n_resumed} from an earlier run" if summary.n_resumed else "")
            + f"), {summary.audio_s / 3600:.2f} h audio in {summary.wall_s:.1f} s -> {summary.results}")
    err(line, err=True)
    if cfg.quiet:  # unattended: the summary as JSON on stdout
        typer.echo(json.dumps(summary.to_json(), default=str))


def register(app: typer.Typer) -> None:
    app.command("run", help=HELP, no_args_is_help=True)(run)
