"""`transcribe-batch`: the command line. Each sub-module registers its own commands on `app`."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="transcribe-batch",
    no_args_is_help=True,
    rich_markup_mode="rich",
    help=(
        "Batch speech transcription and dataset labeling with audio LLMs (Qwen2-Audio, Qwen3-ASR) on Sophgo BM1684X "
        "cards (bmodel), GPUs or the CPU.\n\n"
        "Typical flow: [bold]manifest[/bold] (build a JSONL manifest) → [bold]run[/bold] (one Ray actor per card, "
        "Parquet results, resumable) → [bold]eval[/bold] (WER, speed, confidence calibration, side-by-side runs) → "
        "[bold]export[/bold] (labels for NeMo, Hugging Face datasets, Lhotse)."
    ),
)

from . import devices, evaluate, export, manifest, run  # noqa: E402  (each registers its commands)

for _module in (run, devices, evaluate, manifest, export):
    _module.register(app)


def main() -> None:
    app()
