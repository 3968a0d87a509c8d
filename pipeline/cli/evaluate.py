"""`transcribe-batch eval RUN [RUN …]`: WER, speed and side-by-side comparison of run folders."""

from __future__ import annotations

import io
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..evaluate.normalize import NORMALIZERS
from ..evaluate.report import evaluate_paths
from ..evaluate.runs import RunError
from ..results import atomic_write_bytes
from .helptext import reflowed


class Format(str, Enum):
    table = "table"
    markdown = "markdown"
    json = "json"


Normalizer = Enum("Normalizer", {name: name for name in NORMALIZERS}, type=str)


@reflowed
def eval_command(
    runs: List[Path] = typer.Argument(
        ..., metavar="RUN...", help="Run folders written by `transcribe-batch run -o DIR` (or their results.parquet). "
        "Several runs are compared side by side on the utterance ids they all hold."
    ),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table (terminal), markdown, or json."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write the --format output to this file instead of the terminal."
    ),
    html: Optional[Path] = typer.Option(
        None, "--html", help="Also write a self-contained HTML report with figures (WER by duration, latency "
        "histogram, per-device timeline)."
    ),
    normalizer: Normalizer = typer.Option(  # type: ignore[valid-type]
        "whisper", "--normalizer", help="Text normalization on both sides before scoring: whisper (Whisper's "
        "English normalizer: case, punctuation, contractions, numbers, spelling), basic (language-neutral), none."
    ),
    top: int = typer.Option(10, "--top", min=0, help="How many disagreeing (several runs) or worst (one run) "
                            "utterances to list."),
) -> None:
    """Score run folders: WER/CER with S/D/I, exact-match, complete-error, speed (TTFT, tokens/s, latency, RTFx).

    [bold]WER[/bold] is corpus WER = Σ word edits / Σ reference words after normalization, shown two ways: over all
    rows (a failed row counts as all deletions) and over successful rows only (the way the BM1684X port and
    UltraEval-Audio publish it). Rows without a reference, or whose reference is empty after normalization, are left
    out of the rates and counted in the notes.

    Examples:

      transcribe-batch eval runs/test-clean

      transcribe-batch eval runs/bmodel-w4 runs/gpu-fp16 --html report.html

      transcribe-batch eval runs/a --format json -o metrics.json
    """
    err = Console(stderr=True, soft_wrap=True)
    try:
        for target, flag in ((output, "--output"), (html, "--html")):
            if target is not None:
                _check_target(target, flag, runs)
        report = evaluate_paths(runs, normalizer=normalizer.value, top=top)
    except RunError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    writing = output or "the terminal"
    try:
        if fmt == Format.table:
            from ..evaluate.render_text import print_rich

            if output:
                buffer = io.StringIO()
                print_rich(report, Console(file=buffer, width=160, no_color=True))
                atomic_write_bytes(output, buffer.getvalue().encode("utf-8"))
            else:
                print_rich(report)
        else:
            from ..evaluate.render_text import to_json, to_markdown

            text = to_markdown(report) if fmt == Format.markdown else to_json(report)
            if output:
                atomic_write_bytes(output, (text + "\n").encode("utf-8"))
            else:
                typer.echo(text)
        if output:
            err.print(f"wrote {escape(str(output))}", highlight=False)
        if html:
            from ..evaluate.render_html import write_html

            writing = html
            write_html(report, html)
            err.print(f"wrote {escape(str(html))}", highlight=False)
    except OSError as exc:  # a full disk, a folder without write permission: named as given, not its temporary file
        err.print(f"[red]error:[/red] cannot write {escape(str(writing))}: {escape(exc.strerror or str(exc))}; "
                  "nothing was written under that name", highlight=False)
        raise typer.Exit(2) from None


_RUN_FILES = {"results.parquet", "run.json", "progress.jsonl"}


def _check_target(target: Path, flag: str, runs: List[Path]) -> None:
    """A report never replaces a folder, a run's own files, or any Parquet file (e.g. `--html runs/x/results.parquet`);
    a missing folder for it is created."""
    if target.is_dir():
        raise RunError(f"{flag} {target}: is a folder; give a file name (e.g. {target / ('report.html' if flag == '--html' else 'report.md')})")
    resolved = target.resolve()
    inputs = set()
    for run in runs:
        run = run.resolve()
        inputs |= {run} if run.is_file() else {run / name for name in _RUN_FILES}
    if resolved in inputs or resolved.suffix == ".parquet" or resolved.name in _RUN_FILES:
        raise RunError(f"{flag} {target}: would overwrite a run's results; write the report somewhere else")
    for parent in [target.parent, *target.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise RunError(f"{flag} {target}: {parent} is a file, not a folder")
            break
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"{flag} {target}: cannot create its folder ({exc.strerror or exc})") from None


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
