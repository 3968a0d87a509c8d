"""What every format module provides, and the atomic-output helpers they share.

A format module defines `Writer(output, options)`: `write(table)` is called with the kept rows of each batch (the
columns of `ROW_COLUMNS` plus the `--field` columns), `close()` finishes and moves the output into place, `abort()`
removes everything written. Output is built under a hidden `.tmp-…` name beside the target and renamed at the end,
so a crash or Ctrl-C never leaves a half-written file under the target's name.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import ExportError

ROW_COLUMNS = ("id", "audio_filepath", "offset", "duration_s", "pred_text", "language", "confidence")
BUILT_IN = ("audio_filepath", "offset", "duration_s", "pred_text")  # in every format already: not a --field
RENAMED = {"text": "reference_text"}  # a --field whose name the formats use for the transcript


def field_name(column: str) -> str:
    """The key/column a --field gets in the output."""
    return RENAMED.get(column, column)


@dataclass(frozen=True)
class WriterOptions:
    fields: tuple[str, ...] = ()  # extra result columns to carry (--field)
    embed_audio: bool = False  # hf: decode each utterance and store its samples (16 kHz mono) in the dataset
    overwrite: bool = False
    extra: dict = field(default_factory=dict)


def json_value(value):
    """A column value as JSON takes it: non-finite floats become null, dates and times ISO 8601 text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def temp_beside(target: Path) -> Path:
    return target.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{target.name}")


def check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise ExportError(f"{target}: already exists (use --overwrite to replace it)")
    if not target.parent.exists():
        target.parent.mkdir(parents=True, exist_ok=True)


def start_output(target: Path, overwrite: bool, *, folder: bool) -> Path:
    """Check the target, then return the hidden temporary path the output is built under (created if a folder)."""
    check_target(target, overwrite)
    tmp = temp_beside(target)
    if folder:
        tmp.mkdir()
    return tmp


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def move_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`. A file replaces a file atomically; an existing folder is first moved aside and
    removed after the rename (the target name never holds a partial export)."""
    if tmp.is_dir() and target.exists():
        old = temp_beside(target)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp, target)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
