"""`transcribe-batch export RUN [RUN …]`: transcripts as training labels (NeMo manifest, HF dataset, Lhotse cuts)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from transcribe_batch.config.settings import section, section_helps

from ..evaluate.normalize import NORMALIZERS
from ..export import FORMATS, ExportError
from ..export.filters import REASONS, STATUSES, Filters
from .helptext import reflowed

To = Enum("To", {name: name for name in FORMATS}, type=str)
Status = Enum("Status", {name: name for name in STATUSES}, type=str)
Normalizer = Enum("Normalizer", {name: name for name in NORMALIZERS}, type=str)


def _h(name: str) -> str:
    """A sanity filter's help: its line in config/defaults.toml [export] (the one source), then the default."""
    value = section("export")[name]
    shown = f"config/{value}" if name == "hallucinations" and value else value
    return section_helps("export")[name] + "." + ("" if value in ("", False) else f" \\[default: {shown}]")


@reflowed
def export_command(
    runs: List[Path] = typer.Argument(..., metavar="RUN...", help="Run folders (or their results.parquet). Several "
                                      "runs are concatenated in the order given; an id in two of them is refused."),
    output: Path = typer.Option(..., "--output", "-o", help="nemo: a .jsonl file (and NAME.export.json beside it); "
                                "hf: a folder (datasets' save_to_disk); lhotse: a folder with "
                                "cuts/recordings/supervisions .jsonl.gz. Folders get an export.json: what was "
                                "exported. Never inside a run folder it reads."),
    to: To = typer.Option("nemo", "--to", help="Output format: nemo, hf (Hugging Face datasets) or lhotse "  # type: ignore[valid-type]
                          "(CutSet)."),
    status: Status = typer.Option("ok", "--status", help="Keep rows with this status: ok, failed or any."),  # type: ignore[valid-type]
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="Keep rows whose confidence "
                                                   "(exp of the mean token log-probability, 0–1) is at least X; pick X "
                                                   "from `eval`'s confidence-threshold table."),
    min_duration: Optional[float] = typer.Option(None, "--min-duration", help="Keep utterances of at least S seconds."),
    max_duration: Optional[float] = typer.Option(None, "--max-duration", help="Keep utterances of at most S seconds."),
    agree_with: Optional[Path] = typer.Option(None, "--agree-with", help="A second run over the same ids (another "
                                              "model or engine): keep a row only if both transcripts agree."),
    max_disagreement: Optional[float] = typer.Option(None, "--max-disagreement", help="With --agree-with: the "
                                                     "largest normalized WER between the two transcripts (the "
                                                     "--agree-with run's as reference) to keep a row, e.g. 0.1."),
    normalizer: Normalizer = typer.Option("whisper", "--normalizer", help="Text normalization for --agree-with "  # type: ignore[valid-type]
                                          "(as in eval): whisper, basic or none."),
    fields: List[str] = typer.Option([], "--field", help="Also carry this result column (repeatable), e.g. "
                                     "--field confidence --field id --field language; `text` (the reference) "
                                     "is written as reference_text."),
    embed_audio: bool = typer.Option(False, "--embed-audio", help="hf only: decode each utterance (16 kHz mono, "
                                     "its offset/duration) into the dataset's audio column instead of paths."),
    segments: bool = typer.Option(False, "--segments", help="One output row per segment of each result row (its "
                                  "own start, end, text, confidence, language), id '<row id>#<k>'; every filter "
                                  "then applies to each segment. Rows without segments count as one segment."),
    language: Optional[str] = typer.Option(None, "--language", help="Keep what the model detected as this "
                                           "language (name or code: English, en). Refused for a run whose model "
                                           "never says (Qwen2-Audio; Qwen3-ASR with a forced language)."),
    min_chars_per_s: float = typer.Option(section("export")["min_chars_per_s"], "--min-chars-per-s",
                                          help=_h("min_chars_per_s"), show_default=False),
    max_chars_per_s: float = typer.Option(section("export")["max_chars_per_s"], "--max-chars-per-s",
                                          help=_h("max_chars_per_s"), show_default=False),
    hallucinations: Optional[str] = typer.Option(None, "--hallucinations", metavar="FILE", show_default=False,
                                                 help=_h("hallucinations")),
    repetition: bool = typer.Option(section("export")["repetition"], "--repetition/--no-repetition",
                                    help=_h("repetition"), show_default=False),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export of the same format at -o "
                                   "(one this command wrote, unchanged since). Nothing else is ever replaced: not a "
                                   "run folder or anything in it, an input, or other files and folders."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Export what runs produced as training labels, keeping only the rows that pass the filters.

    The transcript (`pred_text`) becomes the label. Rows are streamed in batches: memory stays flat however big
    the runs are, and the output appears under its name only when complete. A summary says how many rows were kept
    and how many were dropped for each reason (status, empty transcript, language, no/low confidence, duration,
    characters per second, repetition, hallucination phrases, agreement). With --segments each segment of a long
    recording is a row of its own (docs/export.md).

    Examples:

      transcribe-batch export runs/x --to nemo -o labels.jsonl --min-confidence 0.9

      transcribe-batch export runs/x --to hf -o labels-hf --embed-audio --field confidence

      transcribe-batch export runs/x --to lhotse -o labels-lhotse --agree-with runs/y --max-disagreement 0.1

      transcribe-batch export runs/long --segments --to nemo -o segments.jsonl --language en --min-confidence 0.8
    """
    from ..export.export import export

    err = Console(stderr=True, soft_wrap=True)
    if agree_with is not None and max_disagreement is None:
        max_disagreement = 0.1
    sanity = {} if hallucinations is None else {"hallucinations": hallucinations or None}
    filters = Filters(status=status.value, min_confidence=min_confidence, min_duration=min_duration,
                      max_duration=max_duration, max_disagreement=max_disagreement, language=language,
                      min_chars_per_s=min_chars_per_s, max_chars_per_s=max_chars_per_s, repetition=repetition,
                      **sanity)
    try:
        summary = export(runs, output, fmt=to.value, filters=filters, fields=fields, agree_with=agree_with,
                         normalizer=normalizer.value, embed_audio=embed_audio, overwrite=overwrite,
                         segments=segments)
    except ExportError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    data = summary.to_dict()
    unit = data["unit"]
    if not data["n_kept"]:
        err.print(f"[yellow]note[/yellow] no {unit} was kept: {escape(str(output))} is an empty {to.value} export",
                  highlight=False)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title=f"export → {escape(str(output))} ({to.value})", title_justify="left")
    table.add_column(f"{unit}s")
    table.add_column("count", justify="right")
    table.add_row("rows read", str(data["n_rows"]))
    if "n_segments" in data:
        table.add_row("segments in them", str(data["n_segments"]))
    table.add_row("kept", f"{data['n_kept']} ({data['hours_kept']:.3f} h)")
    for reason, count in data["dropped"].items():
        table.add_row(f"dropped: {REASONS[reason]}", str(count))
    err.print(table)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
