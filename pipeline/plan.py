"""Plan a run: stream the manifest once into compact arrays, order the work longest first, cut it into small shards.

Memory is a few numeric arrays (line, byte offset, duration, id digest, row digest, input digest: 48 bytes a row)
plus the reader's duplicate-id set; no row objects are kept. A shard's rows are read back from the manifest (by byte
offset) only when the shard is handed to a device, and again when results are merged; each row read back must still
be the row that was planned (same row digest), and the file must still have the size and mtime it had when it was
planned, else `ManifestChanged` stops the run (what finished is saved; the next run re-plans).

A row's input digest (what a result answers) also covers its audio file's size and mtime, taken when the run is
planned (one stat a row; rows of one file in a row share one): a file replaced at the same path is redone by the
next run, and a file replaced during a run is not taken for a changed manifest.

Long rows: a row whose duration (the manifest's, else the file header's: nothing is decoded here) is about 1.5 ×
`range_s` or more is planned as n ≈ duration / range_s work items, one per time range (workers/ranges.py
range_boundaries; workers/work.py Span), so that one long file is spread over all the devices and each actor reads
only its range. Each range has an input digest of its own (`range_digest`: the row's, the range's number and count):
resume is per range (a range done is never redone), and the merge joins a row's ranges, in order, into its record
(workers/assemble.py join_ranges) once every range has one. Memory: 4 bytes per work item (its range number) and
17 bytes per range.
"""

from __future__ import annotations

import hashlib
import math
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transcribe_batch.manifests.headers import read_header
from transcribe_batch.manifests.reader import (ManifestError, audio_stamp, id_digest, input_digest,
                                               iter_rows_with_offsets, read_rows_at, row_digest)
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.workers.ranges import range_boundaries
from transcribe_batch.workers.record import Record, failed_record
from transcribe_batch.workers.work import Span, WorkItem


class ManifestChanged(ManifestError):
    """The manifest on disk is no longer the one the run planned."""


@dataclass(frozen=True)
class Fingerprint:
    """What the planned manifest looked like: size, mtime and a BLAKE2b of its bytes (recorded in run.json)."""

    size: int
    mtime_ns: int
    blake2b: str = ""

    @classmethod
    def of(cls, path: Path, *, content: bool = False) -> "Fingerprint":
        st = os.stat(path)
        digest = ""
        if content:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "blake2b").hexdigest()
        return cls(st.st_size, st.st_mtime_ns, digest)

    def same_stat(self, other: "Fingerprint") -> bool:
        return (self.size, self.mtime_ns) == (other.size, other.mtime_ns)


@dataclass
class Plan:
    manifest: Path
    lines: np.ndarray  # int64, every good row in input order
    offsets: np.ndarray  # int64 byte offset of the row's line
    durations: np.ndarray  # float64 seconds (NaN: unknown / unreadable)
    digests: np.ndarray  # int64 id digests
    row_digests: np.ndarray  # int64 row digests (manifests.reader.row_digest): what each line says, for read-back
    inputs: np.ndarray  # int64 input digests (manifests.reader.input_digest): what each row's result must answer
    done: np.ndarray  # bool: a result for exactly this input (every range of a long row) is already in the output
    #                   folder (resume)
    todo: np.ndarray  # int64 indices into the arrays above, one per work item (a long row once per range to do),
    #                   longest first
    bounds: np.ndarray  # int64 shard k = todo[bounds[k]:bounds[k+1]]
    bad: list[ManifestError] = field(default_factory=list)  # bad lines (with skip_bad_lines): recorded every run
    fingerprint: Fingerprint | None = None  # the file as planned
    todo_range: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # int32: the range of todo[j]
    #                   (0 for a whole row)
    long_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 sorted indices of the rows
    #                   planned in ranges
    range_first: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))  # int64: long_rows[j]'s ranges
    #                   are range_inputs[range_first[j]:range_first[j + 1]]
    range_inputs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # int64 input digest of each
    #                   range (range_digest)
    range_done: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # bool: that range's result is there

    @property
    def n_rows(self) -> int:
        """Result rows the run will end with: good rows + bad lines."""
        return len(self.lines) + len(self.bad)

    def n_ranges(self, index: int) -> int:
        """How many ranges row `index` is planned in (1: a whole row)."""
        j = int(np.searchsorted(self.long_rows, index))
        if j < len(self.long_rows) and self.long_rows[j] == index:
            return int(self.range_first[j + 1] - self.range_first[j])
        return 1

    def work_item(self, at: int) -> WorkItem:
        """The first attempt of work item todo[at] (a whole row, or one range of a long row), without its row."""
        i, k = int(self.todo[at]), int(self.todo_range[at])
        duration = None if self.durations[i] != self.durations[i] else float(self.durations[i])
        n = self.n_ranges(i)
        if n == 1:
            return WorkItem(index=i, line=int(self.lines[i]), input_digest=int(self.inputs[i]), duration=duration)
        j = int(np.searchsorted(self.long_rows, i))
        return WorkItem(index=i, line=int(self.lines[i]), input_digest=int(self.range_inputs[self.range_first[j] + k]),
                        duration=duration / n, span=Span(k, n, duration))

    def range_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(row index, range number) of every range of every long row, in range_inputs' order."""
        counts = np.diff(self.range_first)
        rows = np.repeat(self.long_rows, counts)
        k = np.arange(len(self.range_inputs), dtype=np.int64) - np.repeat(self.range_first[:-1], counts)
        return rows, k

    def failed_rows(self, failed_inputs: np.ndarray) -> int:
        """Rows done whose result failed, given the input digests whose latest record failed (a long row: any of
        its ranges)."""
        whole = self.done.copy()
        whole[self.long_rows] = False
        n = int(np.isin(self.inputs[whole], failed_inputs).sum())
        if len(self.long_rows):
            rows, _ = self.range_rows()
            failed = np.isin(self.range_inputs, failed_inputs) & self.done[rows]
            n += len(np.unique(rows[failed]))
        return n

    def done_audio_s(self) -> float:
        """Audio seconds already done: whole rows done, and the ranges done of long rows (nominally)."""
        whole = self.done.copy()
        whole[self.long_rows] = False
        total = self.audio_s(np.flatnonzero(whole))
        if len(self.long_rows):
            rows, _ = self.range_rows()
            n = np.repeat(np.diff(self.range_first), np.diff(self.range_first))
            total += float(np.sum(self.durations[rows][self.range_done] / n[self.range_done]))
        return total

    @property
    def n_shards(self) -> int:
        return max(0, len(self.bounds) - 1)

    def shard(self, k: int) -> np.ndarray:
        return self.todo[self.bounds[k]:self.bounds[k + 1]]

    def check_unchanged(self) -> None:
        """ManifestChanged if the file's size or mtime differ from when it was planned."""
        if self.fingerprint is None:
            return
        try:
            now = Fingerprint.of(self.manifest)
        except OSError as e:
            raise ManifestChanged(self.manifest, 0, None, f"{_CHANGED}: it can no longer be read ({e}){_AGAIN}") from None
        if not self.fingerprint.same_stat(now):
            raise ManifestChanged(self.manifest, 0, None, f"{_CHANGED} (size {self.fingerprint.size} -> {now.size} "
                                  f"bytes, or its modification time){_AGAIN}")

    def rows(self, indices: np.ndarray) -> list[ManifestRow]:
        """The planned rows at `indices`, read back from the manifest. ManifestChanged if any is not the row that
        was planned (another id, audio or prompt on that line: the file was edited during the run)."""
        indices = np.asarray(indices, dtype=np.int64)
        self.check_unchanged()
        lines = self.lines[indices].tolist()
        try:
            rows = read_rows_at(self.manifest, zip(lines, self.offsets[indices].tolist()))
        except (ManifestError, OSError) as e:
            raise ManifestChanged(self.manifest, 0, None, f"{_CHANGED}: a planned line no longer reads as a row ({e})"
                                  f"{_AGAIN}") from None
        for row, line, i in zip(rows, lines, indices.tolist()):
            if row_digest(row) != self.row_digests[i]:
                raise ManifestChanged(self.manifest, line, None, f"{_CHANGED}: line {line} no longer holds the row "
                                      f"that was planned there (now id {row.id!r}){_AGAIN}")
        return rows

    def bad_line_records(self) -> list[Record]:
        """One failed record per bad manifest line (ids that no manifest row can have: see bad_line_id)."""
        return [failed_record(None, e.line, e, error_class="ManifestError", attempts=0, id=bad_line_id(e.line),
                              offset=None) for e in self.bad]

    def audio_s(self, indices: np.ndarray | None = None) -> float:
        d = self.durations if indices is None else self.durations[indices]
        return float(np.nansum(d))

    @property
    def n_done(self) -> int:
        """Good rows whose result an earlier run already recorded (for exactly this input)."""
        return int(self.done.sum())


_CHANGED = "the manifest changed during the run"
_AGAIN = "; what finished is saved: run the same command again to plan against the manifest as it is now"


def _duration(row: ManifestRow, read_headers: bool = True) -> float:
    if row.duration is not None:
        return row.duration
    if not read_headers:
        return math.nan
    # The manifest didn't say: the file header (no decoding on the driver), minus the offset. Unknown (foreign
    # format, missing or broken file) is NaN: planned last; the actor decodes it or reports it as a failed row.
    duration = read_header(row.audio_filepath).duration
    return math.nan if duration is None else max(0.0, duration - row.offset)


def range_digest(row_input: int, k: int, n: int) -> int:
    """The input digest of range k of n of a row whose input digest is `row_input`: what that range's record
    answers (resume and merge match range records by it)."""
    return id_digest(f"range {row_input} {k} {n}")


def n_ranges(duration: float, range_s: float | None) -> int:
    """How many ranges a row of `duration` seconds is planned in (1: a whole row; unknown durations: 1)."""
    if range_s is None or not (duration == duration and duration > 0):
        return 1
    return len(range_boundaries(duration, range_s)) + 1


def bad_line_id(line: int) -> str:
    """Manifest ids never contain '#' (the reader refuses them: it marks pieces of split audio), so this id can't
    collide with a real row's."""
    return f"#bad-line-{line}"


def shard_bounds(durations: np.ndarray, shard_size: int, max_audio_s: float) -> np.ndarray:
    """Boundaries cutting an ordered duration array into shards of ≤ shard_size rows and ≤ max_audio_s audio
    (a single longer row still forms its own shard)."""
    bounds = [0]
    n = len(durations)
    d = np.nan_to_num(durations, nan=0.0)
    i = 0
    while i < n:
        end = min(n, i + shard_size)
        if max_audio_s > 0:
            cum = np.cumsum(d[i:end])
            fits = int(np.searchsorted(cum, max_audio_s, side="right"))
            end = i + max(1, fits)
        bounds.append(end)
        i = end
    return np.asarray(bounds, dtype=np.int64)


def build_plan(manifest: str | os.PathLike, *, skip_bad_lines: bool = False, done_inputs: np.ndarray | None = None,
               shard_size: int = 4, shard_max_audio_s: float = 120.0, read_headers: bool = True,
               range_s: float | None = None) -> Plan:
    """Stream the manifest (ManifestError on the first bad line unless skip_bad_lines) and plan what's left to do.
    `done_inputs`: input digests whose results are already in the output folder (resume). `read_headers=False`:
    durations the manifest does not give stay unknown (NaN) instead of being read from the audio files' headers
    (readers of a run folder need the rows, not the work's order). `range_s`: rows of about 1.5 × this or longer
    are planned in ranges (None: every row whole)."""
    manifest = Path(manifest)
    try:
        before = Fingerprint.of(manifest, content=True) if manifest.is_file() else None
    except OSError:
        before = None
    lines, offsets, digests, row_digests, inputs = array("q"), array("q"), array("q"), array("q"), array("q")
    durations = array("d")
    bad: list[ManifestError] = []
    stamp_of = (None, ())  # (path, audio_stamp): rows of one file in a row share its stat
    for line_no, start, row in iter_rows_with_offsets(manifest, skip_bad_lines=skip_bad_lines):
        if isinstance(row, ManifestError):
            bad.append(row)
            continue
        lines.append(line_no)
        offsets.append(start)
        durations.append(_duration(row, read_headers))
        digests.append(id_digest(row.id))
        row_digests.append(row_digest(row))
        if stamp_of[0] != row.audio_filepath:
            stamp_of = (row.audio_filepath, audio_stamp(row.audio_filepath))
        inputs.append(input_digest(row, stamp_of[1]))
    lines_a, offsets_a, durations_a, digests_a, rows_a, inputs_a = (
        np.array(a, dtype=np.int64 if a.typecode == "q" else np.float64)
        for a in (lines, offsets, durations, digests, row_digests, inputs))
    del lines, offsets, durations, digests, row_digests, inputs
    if before is None or not before.same_stat(Fingerprint.of(manifest)):
        raise ManifestChanged(manifest, 0, None, "the manifest changed while it was being planned; run again once "
                              "it is written")
    done_inputs = np.zeros(0, dtype=np.int64) if done_inputs is None else np.asarray(done_inputs, dtype=np.int64)
    # Results written before input digests covered the audio file's size and mtime carry the row digest: a row
    # such a result answers keeps matching it by that (so an upgrade does not redo finished work).
    legacy = np.isin(rows_a, done_inputs)
    inputs_a[legacy] = rows_a[legacy]
    done = np.isin(inputs_a, done_inputs)
    # long rows (only those: nothing per short row) and their ranges
    candidates = np.flatnonzero(durations_a >= 1.5 * range_s) if range_s is not None else np.zeros(0, np.int64)
    counts = np.array([n_ranges(float(durations_a[i]), range_s) for i in candidates.tolist()], dtype=np.int64)
    long_rows, counts = candidates[counts > 1], counts[counts > 1]
    range_first = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    range_inputs = np.fromiter((range_digest(int(inputs_a[i]), k, int(n)) for i, n in zip(long_rows.tolist(),
                                counts.tolist()) for k in range(n)), dtype=np.int64, count=int(range_first[-1]))
    range_done = np.isin(range_inputs, done_inputs)
    done[long_rows] = True  # (for the whole rows' work below; set from the ranges after it)
    todo = np.flatnonzero(~done)
    key = np.nan_to_num(durations_a[todo], nan=-1.0)  # unknown durations go last
    todo = todo[np.argsort(-key, kind="stable")]
    todo_range = np.zeros(len(todo), np.int32)
    unit_s = durations_a[todo]
    if len(long_rows):
        done[long_rows] = np.logical_and.reduceat(range_done, range_first[:-1])
        range_rows = np.repeat(long_rows, counts)
        range_k = np.arange(len(range_inputs), dtype=np.int64) - np.repeat(range_first[:-1], counts)
        left = ~range_done
        r_todo, r_k = range_rows[left], range_k[left].astype(np.int32)
        r_s = durations_a[r_todo] / np.repeat(counts, counts)[left]
        order = np.argsort(-r_s, kind="stable")
        at = np.searchsorted(-np.nan_to_num(unit_s, nan=-1.0), -r_s[order], side="right")  # longest first
        todo = np.insert(todo, at, r_todo[order])
        todo_range = np.insert(todo_range, at, r_k[order])
        unit_s = np.insert(unit_s, at, r_s[order])
    bounds = shard_bounds(unit_s, shard_size, shard_max_audio_s)
    return Plan(manifest=manifest, lines=lines_a, offsets=offsets_a, durations=durations_a, digests=digests_a,
                row_digests=rows_a, inputs=inputs_a, done=done, todo=todo, bounds=bounds, bad=bad, fingerprint=before,
                todo_range=todo_range, long_rows=long_rows, range_first=range_first, range_inputs=range_inputs,
                range_done=range_done)
