"""The base class of every export format, and what the formats share: the row columns, --field names, JSON values.

A format is one module with a `Writer` subclass plus one line in `FORMATS` (export/__init__.py). The subclass only
turns rows into its files: it is handed a private place to build in (`path`), and `target.py` decides where the
export may go, builds it there, marks it as an export and moves it into place when complete.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

ROW_COLUMNS = ("id", "audio_filepath", "offset", "duration_s", "pred_text", "language", "confidence")
BUILT_IN = ("audio_filepath", "offset", "duration_s", "pred_text")  # in every format already: not a --field
RENAMED = {"text": "reference_text"}  # a --field whose name the formats use for the transcript


def field_name(column: str) -> str:
    """The key/column a --field gets in the output."""
    return RENAMED.get(column, column)


@dataclass(frozen=True)
class WriterOptions:
    fields: tuple[str, ...] = ()  # extra result columns to carry (--field), in the order given
    embed_audio: bool = False  # hf: decode each utterance and store its samples (16 kHz mono) in the dataset
    segments: bool = False  # the rows are segments (export --segments): nemo then writes each one's `id` too


class Writer(ABC):
    """One export format. Life cycle: `Writer(path, options, schema)`, `write(table)` for each batch of kept rows,
    then `close()`; after a failure `abort()` instead (the caller then removes `path`)."""

    is_folder: ClassVar[bool]  # the output is a folder (True) or one file (False)

    def __init__(self, path: Path, options: WriterOptions, schema: pa.Schema):
        """path: where to build the output: an empty folder that exists (`is_folder`), else a file name not yet
        created. schema: the columns of every table `write` gets (`ROW_COLUMNS` plus the --field columns), with
        the types of the runs' results (a column a run lacks: nulls)."""
        self.path = path
        self.options = options
        self.schema = schema

    @abstractmethod
    def write(self, table: pa.Table) -> None:
        """Add rows: `table` has the columns of `schema` and at least one row."""

    @abstractmethod
    def close(self) -> None:
        """Finish: afterwards `path` holds the complete output and nothing else, however many rows were written
        (none: still a valid dataset its readers load, with no rows)."""

    def abort(self) -> None:
        """Release open files after a failure; `path` is removed by the caller."""


def json_value(value):
    """A column value as JSON takes it: non-finite floats become null, dates and times ISO 8601 text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
