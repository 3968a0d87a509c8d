"""`transcribe-batch`: the command line. Each sub-module registers its own commands on `app`."""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

MANIFEST_SUFFIXES = (".jsonl", ".json")


def manifest_first(arg: str, commands) -> bool:
    """Whether the first argument is a manifest (`transcribe-batch m.jsonl -o out` means `run m.jsonl -o out`): not a
    command name or an option, and an existing file, a .jsonl/.json name, or a path with a folder in it. A command's
    name always wins: a manifest file called `eval` is `./eval` (or `run eval`)."""
    if not arg or arg in commands or arg.startswith("-"):
        return False
    return os.path.isfile(arg) or arg.lower().endswith(MANIFEST_SUFFIXES) or "/" in arg or os.sep in arg


class _Commands(TyperGroup):
    def parse_args(self, ctx, args: list[str]) -> list[str]:
        if args and manifest_first(args[0], self.commands):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="transcribe-batch",
    cls=_Commands,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help=(
        "Batch speech transcription and dataset labeling with audio LLMs (Qwen2-Audio, Qwen3-ASR) on Sophgo BM1684X "
        "cards (bmodel), GPUs or the CPU.\n\n"
        "Typical flow: [bold]manifest[/bold] (build a JSONL manifest) → [bold]run[/bold] (one Ray actor per card, "
        "Parquet results, resumable) → [bold]eval[/bold] (WER, speed, confidence calibration, side-by-side runs) → "
        "[bold]export[/bold] (labels for NeMo, Hugging Face datasets, Lhotse).\n\n"
        "A manifest as the first argument means [bold]run[/bold]: [bold]transcribe-batch m.jsonl -o runs/x[/bold] "
        "is [bold]transcribe-batch run m.jsonl -o runs/x[/bold] (a command's name wins: a manifest file named like "
        "a command is given as ./NAME)."
    ),
)

from . import devices, evaluate, export, manifest, run  # noqa: E402  (each registers its commands)

for _module in (run, devices, evaluate, manifest, export):
    _module.register(app)


def main() -> None:
    app()
