"""`transcribe-batch manifest …`: build JSONL manifests from folders, and check a manifest before a run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ...manifests.builders import BuildError, dir_rows, librispeech_rows, write_jsonl
from ...manifests.reader import ManifestError
from ...manifests.validate import Summary, iter_problems
from .helptext import reflowed

manifest_app = typer.Typer(
    name="manifest",
    no_args_is_help=True,
    help="Build JSONL manifests (NeMo fields: audio_filepath, duration, text, id) from folders, and validate them.",
)

OUTPUT_HELP = ("Manifest to write (JSONL; written to a temporary file, then renamed; an existing file only with "
               "--overwrite). Default: stdout.")
OVERWRITE_HELP = "Replace an existing manifest at --output (only a JSONL manifest; never audio or other files)."
RELATIVE_HELP = ("Write audio paths relative to the output manifest's folder (portable: move both together). "
                 "Default: absolute paths.")


def _reporter(err: Console, problems: list[int]):
    def report(message: str) -> None:
        problems[0] += 1
        err.print(f"[yellow]warning[/yellow] {message}", highlight=False, soft_wrap=True)

    return report


def _build(rows_of, output: Optional[Path], relative: bool, strict: bool, overwrite: bool,
           inputs: tuple = ()) -> None:
    err = Console(stderr=True, soft_wrap=True)
    if relative and output is None:
        err.print("[red]error:[/red] --relative needs --output (paths are relative to the manifest's folder)")
        raise typer.Exit(2)
    problems = [0]
    relative_to = output.parent if relative and output is not None else None
    try:
        n = write_jsonl(rows_of(relative_to=relative_to, report=_reporter(err, problems)), output,
                        overwrite=overwrite, inputs=inputs)
    except BuildError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except OSError as exc:  # a full disk, a read-only folder: nothing was written under the name
        where = exc.filename if exc.filename and ".tmp-" not in os.path.basename(str(exc.filename)) else output
        err.print(f"[red]error:[/red] -o {escape(str(output))}: cannot write {escape(str(where))} "
                  f"({escape(exc.strerror or str(exc))}); nothing was written", highlight=False)
        raise typer.Exit(2) from None
    where = f" to {output}" if output else ""
    err.print(f"wrote {n} rows{where}" + (f"; {problems[0]} warning(s) above" if problems[0] else ""), highlight=False)
    if strict and problems[0]:
        raise typer.Exit(1)


@manifest_app.command("librispeech")
@reflowed
def librispeech(
    directory: Path = typer.Argument(..., metavar="DIR", help="A LibriSpeech split folder, e.g. "
                                     "LibriSpeech/test-clean (or a folder holding several splits)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=OUTPUT_HELP),
    relative: bool = typer.Option(False, "--relative", help=RELATIVE_HELP),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if anything was reported (missing audio …)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Manifest of a LibriSpeech split: one row per utterance, id = utterance id (e.g. 1089-134686-0000),
    duration from the flac header, text = the transcript line, plus speaker and chapter.

    Example: transcribe-batch manifest librispeech LibriSpeech/test-clean -o data/test-clean.jsonl
    """
    _build(lambda **kw: librispeech_rows(directory, **kw), output, relative, strict, overwrite)


@manifest_app.command("dir")
@reflowed
def directory_manifest(
    directory: Path = typer.Argument(..., metavar="DIR", help="Folder to scan (recursively, in sorted order)."),
    glob: Optional[str] = typer.Option(
        None, "--glob", "-g", help="Which files: a pattern on the file name ('*.wav') or, with a '/', on the path "
        "relative to DIR ('spk*/**/*.flac'). Default: every file with an audio extension (wav flac mp3 ogg opus "
        "m4a aac wma webm mp4 aif aiff au caf w64)."
    ),
    transcripts: Optional[str] = typer.Option(
        None, "--transcripts", "-t", help="Reference texts: 'sidecar' (NAME.txt or NAME.lab beside each audio "
        "file), or a file: .jsonl ({\"id\"|\"audio_filepath\": …, \"text\": …}), .csv/.tsv with a header (id/file/"
        "path + text/transcript/sentence), or 'KEY TEXT' lines. Keys match the path relative to DIR, with or "
        "without extension, or the file name or stem."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=OUTPUT_HELP),
    relative: bool = typer.Option(False, "--relative", help=RELATIVE_HELP),
    skip_unreadable: bool = typer.Option(False, "--skip-unreadable", help="Leave out files whose header is "
                                         "corrupt (default: keep them; the run records them as failed)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 if anything was reported."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Manifest of every audio file under a folder (labeling jobs): id = path relative to DIR without extension,
    duration from the header where libsndfile can read it, text from --transcripts if given.

    Example: transcribe-batch manifest dir recordings/ --glob '*.wav' -o jobs/recordings.jsonl
    """
    _build(lambda **kw: dir_rows(directory, pattern=glob, transcripts=transcripts,
                                 skip_unreadable=skip_unreadable, **kw), output, relative, strict, overwrite,
           inputs=(transcripts,) if transcripts not in (None, "sidecar") else ())


@manifest_app.command("validate")
@reflowed
def validate(
    manifest: Path = typer.Argument(..., metavar="FILE", help="JSONL manifest to check."),
    no_audio: bool = typer.Option(False, "--no-audio", help="Only parse the lines; don't open the audio files."),
    tolerance: float = typer.Option(0.1, "--tolerance", help="Seconds a duration may exceed the header's."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    max_print: int = typer.Option(1000, "--max-print", help="Print at most this many problems (all are counted)."),
) -> None:
    """Check every row: valid JSON and fields, unique id, audio file exists with a readable header, offset and
    duration inside the audio. Problems are printed as FILE:LINE: severity: field: message; exit 1 if any row
    has an error (a row that would fail in a run).

    Example: transcribe-batch manifest validate data/test-clean.jsonl
    """
    out = Console(soft_wrap=True)
    err = Console(stderr=True, soft_wrap=True)
    summary = Summary()
    printed = 0
    try:
        for problem in iter_problems(manifest, check_audio=not no_audio, tolerance_s=tolerance, summary=summary):
            if printed < max_print:
                out.print(str(problem), highlight=False, markup=False)
            printed += 1
    except ManifestError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    if printed > max_print:
        out.print(f"… {printed - max_print} more problems not printed", highlight=False)
    fields = ", ".join(f"{k} {v}" for k, v in sorted(summary.errors_by_field.items()))
    lines = [
        f"{manifest}: {summary.n_rows} rows, {summary.n_rows - summary.n_bad_rows} ok, "
        f"{summary.n_bad_rows} with errors" + (f" ({fields})" if fields else "") + f", {summary.n_warnings} warnings",
        f"audio in good rows: {summary.audio_s / 3600:.3f} h"
        + (f" ({summary.n_without_duration} rows without a known duration)" if summary.n_without_duration else ""),
    ]
    for line in lines:
        err.print(line, highlight=False)
    if not summary.ok or (strict and summary.n_warnings):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(manifest_app, name="manifest")
