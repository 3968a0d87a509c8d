"""Part files: finished records written as they come (PartWriter), and read back whole or not at all.

Every record in a part carries the input digest of the manifest row it answers (manifests.reader.input_digest: id,
audio path/offset/duration and the audio file's size/mtime, prompt/task/language) in the INPUT_DIGEST column. Parts are written with Parquet page
checksums and read with their verification, so a damaged part is found when it is read (`read_part` raises
PartUnreadable), never merged as silently wrong values.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transcribe_batch.config.settings import default
from transcribe_batch.workers.record import PART_SCHEMA, Record, to_table

from .atomic import write_parquet_atomic
from .folder import SET_ASIDE_SUFFIX, RunFolder

INPUT_DIGEST = "input_digest"  # parts only: which manifest row (as it read then) a record answers
RUN_PART_SCHEMA = PART_SCHEMA.append(pa.field(INPUT_DIGEST, pa.int64()))


class PartUnreadable(OSError):
    """A part file that cannot be read whole (truncated, damaged, vanished); the message names it and why."""


def read_part(path: Path, columns: list[str] | None = None) -> pa.Table:
    """The part's rows (only `columns` that it has, if given), after reading and checking every page of the file
    (all columns: a damaged page anywhere means the file's records cannot be trusted); PartUnreadable otherwise."""
    try:
        table = pq.read_table(path, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PartUnreadable(f"{path}: unreadable ({reason})") from None
    return table.select([c for c in columns if c in table.column_names]) if columns else table


def read_parts(files: list[Path], columns: list[str] | None = None) -> tuple[pa.Table | None, list[Path], list[str]]:
    """The readable parts' rows (plus column `_part`: the file's rank in `files`), which files were readable, and
    a line for each unreadable one; (None, [], lines) when none was."""
    tables, readable, skipped = [], [], []
    for seq, f in enumerate(files):
        try:
            t = read_part(f, columns)
        except PartUnreadable as e:
            skipped.append(str(e))
            continue
        readable.append(f)
        tables.append(t.append_column("_part", pa.array(np.full(t.num_rows, seq, dtype=np.int64))))
    if not tables:
        return None, readable, skipped
    return pa.concat_tables(tables, promote_options="permissive"), readable, skipped


def set_aside(path: Path) -> Path:
    """Rename an unreadable part to *.unreadable (kept for inspection; no reader takes it for a part again)."""
    target = path.with_name(path.name + SET_ASIDE_SUFFIX)
    path.rename(target)
    return target


def last_of_each(keys: np.ndarray) -> np.ndarray:
    """Indices of the last occurrence of each key (in input order), sorted."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    return np.sort(order[last])


def latest_rows(table: pa.Table) -> pa.Table:
    """One row per id: the latest (a row redone with retry_failed replaces its failed record)."""
    if table.num_rows == 0:
        return table
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    last = table.group_by("id", use_threads=False).aggregate([("_row", "max")])["_row_max"]
    return table.take(pa.array(np.sort(last.to_numpy()))).drop_columns(["_row"])


class PartWriter:
    """Buffers finished records and writes them as atomic part files (one file per flush), each with the input
    digest of the manifest row it answers in the part's INPUT_DIGEST column."""

    def __init__(self, folder: RunFolder, next_seq: int, *, flush_rows: int = 512, flush_s: float | None = None):
        """`flush_s`: the run's save_every_s (None: its default in config/defaults.toml)."""
        self.folder = folder
        self.seq = next_seq
        self.flush_rows = flush_rows
        self.flush_s = default("save_every_s") if flush_s is None else flush_s
        self.buffer: list[Record] = []
        self.digests: list[int | None] = []
        self.last_flush = time.monotonic()

    def add(self, records: list[Record], input_digests: list[int | None]) -> None:
        """`input_digests[k]`: what records[k] answers (manifests.reader.input_digest; None for a bad line)."""
        self.buffer.extend(records)
        self.digests.extend(input_digests)
        if len(self.buffer) >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        table = to_table(self.buffer).append_column(INPUT_DIGEST, pa.array(self.digests, type=pa.int64()))
        self.folder.parts.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, self.folder.parts / f"part-{self.seq:06d}-{uuid.uuid4().hex[:8]}.parquet")
        self.seq += 1
        self.buffer, self.digests = [], []
