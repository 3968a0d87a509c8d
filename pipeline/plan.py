"""Plan a run: stream the manifest once into compact arrays, order the work longest first, cut it into small shards.

Memory is a few numeric arrays (line, byte offset, duration, id digest: 32 bytes a row) plus the reader's
duplicate-id set; no row objects are kept. A shard's rows are read back from the manifest (by byte offset) only
when the shard is handed to a device.
"""

from __future__ import annotations

import math
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transcribe_batch.manifests.reader import ManifestError, id_digest, iter_rows_with_offsets, read_rows_at
from transcribe_batch.manifests.headers import read_header


@dataclass
class Plan:
    manifest: Path
    lines: np.ndarray  # int64, every good row in input order
    offsets: np.ndarray  # int64 byte offset of the row's line
    durations: np.ndarray  # float64 seconds (NaN: unknown / unreadable)
    digests: np.ndarray  # int64 id digests
    done: np.ndarray  # bool: already in the output folder (resume)
    todo: np.ndarray  # int64 indices into the arrays above, longest first
    bounds: np.ndarray  # int64 shard k = todo[bounds[k]:bounds[k+1]]
    bad: list[ManifestError] = field(default_factory=list)  # bad lines (with skip_bad_lines) not yet recorded
    n_bad_total: int = 0  # bad lines in the manifest, recorded or not

    @property
    def n_rows(self) -> int:
        """Result rows the run will end with: good rows + bad lines."""
        return len(self.lines) + self.n_bad_total

    @property
    def n_shards(self) -> int:
        return max(0, len(self.bounds) - 1)

    def shard(self, k: int) -> np.ndarray:
        return self.todo[self.bounds[k]:self.bounds[k + 1]]

    def rows(self, indices: np.ndarray) -> list[dict]:
        return read_rows_at(self.manifest, zip(self.lines[indices].tolist(), self.offsets[indices].tolist()))

    def audio_s(self, indices: np.ndarray | None = None) -> float:
        d = self.durations if indices is None else self.durations[indices]
        return float(np.nansum(d))

    @property
    def n_done(self) -> int:
        return int(self.done.sum()) + (self.n_bad_total - len(self.bad))


def _duration(row: dict) -> float:
    if row["duration"] is not None:
        return row["duration"]
    # The manifest didn't say: the file header (no decoding on the driver), minus the offset. Unknown (foreign
    # format, missing or broken file) is NaN: planned last; the actor decodes it or reports it as a failed row.
    duration = read_header(row["audio_filepath"]).duration
    return math.nan if duration is None else max(0.0, duration - row["offset"])


def bad_line_id(line: int) -> str:
    return f"bad-line-{line}"


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


def build_plan(manifest: str | os.PathLike, *, skip_bad_lines: bool = False, done_digests: np.ndarray | None = None,
               shard_size: int = 4, shard_max_audio_s: float = 120.0) -> Plan:
    """Stream the manifest (ManifestError on the first bad line unless skip_bad_lines) and plan what's left to do.
    `done_digests`: id digests already in the output folder (resume)."""
    manifest = Path(manifest)
    lines, offsets, digests = array("q"), array("q"), array("q")
    durations = array("d")
    bad: list[ManifestError] = []
    for line_no, start, row in iter_rows_with_offsets(manifest, skip_bad_lines=skip_bad_lines):
        if isinstance(row, ManifestError):
            bad.append(row)
            continue
        lines.append(line_no)
        offsets.append(start)
        durations.append(_duration(row))
        digests.append(id_digest(row["id"]))
    lines_a, offsets_a, durations_a, digests_a = (
        np.array(a, dtype=np.int64 if a.typecode == "q" else np.float64) for a in (lines, offsets, durations, digests))
    del lines, offsets, durations, digests
    done_digests = np.zeros(0, dtype=np.int64) if done_digests is None else np.asarray(done_digests, dtype=np.int64)
    done = np.isin(digests_a, done_digests)
    n_bad_total = len(bad)
    if len(done_digests) and bad:  # bad lines recorded by an earlier run
        bad_digests = np.array([id_digest(bad_line_id(e.line)) for e in bad], dtype=np.int64)
        bad = [e for e, seen in zip(bad, np.isin(bad_digests, done_digests)) if not seen]
    todo = np.flatnonzero(~done)
    key = np.nan_to_num(durations_a[todo], nan=-1.0)  # unknown durations go last
    todo = todo[np.argsort(-key, kind="stable")]
    bounds = shard_bounds(durations_a[todo], shard_size, shard_max_audio_s)
    return Plan(manifest=manifest, lines=lines_a, offsets=offsets_a, durations=durations_a, digests=digests_a,
                done=done, todo=todo, bounds=bounds, bad=bad, n_bad_total=n_bad_total)
