"""Stream a NeMo-style JSONL manifest: one normalized row per line, or a ManifestError that names file, line and field.

Rows are never collected: `iter_rows` yields them one at a time, and `iter_rows_with_offsets` also yields each
line's byte offset so that a planner can keep only compact arrays and read the rows of one shard back later with
`read_rows_at`. Duplicate ids are caught with a flat table of 64-bit id digests (`DigestSet`: 11-21 bytes a row, where
a Python set of ints takes ~140).

Rows are `ManifestRow`s (manifests/row.py): `id` (given, else a stable digest of audio_filepath+offset+duration as
written in the manifest), `audio_filepath` (absolute, resolved against the manifest's folder), `offset` (float,
default 0.0), `duration` (float or None), `text`, `prompt`, `task`, `language` (str or None), and every other field
as is in `extra`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from array import array
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .row import KNOWN_FIELDS, ManifestRow

_TEXT_FIELDS = ("text", "prompt", "task", "language")


class ManifestError(ValueError):
    """A bad manifest line. `str(e)` reads `FILE:LINE: field 'F': message`."""

    def __init__(self, path: str | os.PathLike, line: int, field: str | None, message: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        what = f"field {field!r}: " if field else ""
        super().__init__(f"{where}: {what}{message}")

    def __reduce__(self):  # keep the fields across pickling (Ray, multiprocessing)
        return (ManifestError, (self.path, self.line, self.field, self.message))


def stable_id(audio_filepath: str, offset: float, duration: float | None) -> str:
    """An id derived from what the line says (not from the absolute path, so a moved manifest keeps its ids)."""
    key = f"{audio_filepath}|{offset!r}|{duration!r}".encode()
    stem = os.path.splitext(os.path.basename(audio_filepath))[0][:40].replace("#", "_") or "row"  # '#': pieces
    return f"{stem}-{hashlib.blake2b(key, digest_size=6).hexdigest()}"


def id_digest(row_id: str) -> int:
    """64-bit digest of an id; used for duplicate detection and compact id arrays."""
    return int.from_bytes(hashlib.blake2b(row_id.encode(), digest_size=8).digest(), "little", signed=True)


def row_digest(row: ManifestRow) -> int:
    """64-bit digest of what a manifest row says it asks for: its id, audio (resolved path, offset, duration) and the
    fields that shape the prompt (prompt, task, language). The reference `text` and other fields are not part of it
    (they are taken fresh). A planned line read back must still have it (pipeline/plan.py)."""
    key = json.dumps([row.id, row.audio_filepath, row.offset, row.duration, row.prompt, row.task, row.language],
                     ensure_ascii=False)
    return id_digest(key)


AudioStamp = tuple  # (size in bytes, mtime in ns) of an audio file, or () when it cannot be read


def audio_stamp(path: str) -> AudioStamp:
    """What tells one version of an audio file from another without reading it: (size, mtime_ns); () if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return st.st_size, st.st_mtime_ns


def input_digest(row: ManifestRow, stamp: AudioStamp) -> int:
    """64-bit digest of what a row asks for: `row_digest`'s fields plus the audio file's `audio_stamp`, so that an
    audio file replaced at the same path is not taken for the one an earlier result answered. A result is reused on
    resume only while its row's input digest is unchanged."""
    key = json.dumps([row.id, row.audio_filepath, row.offset, row.duration, row.prompt, row.task, row.language,
                      list(stamp)], ensure_ascii=False)
    return id_digest(key)


def id_digests(ids: list[str]) -> np.ndarray:
    """`id_digest` of each id, as an int64 array."""
    return np.fromiter((id_digest(i) for i in ids), dtype=np.int64, count=len(ids))


class DigestSet:
    """A set of 64-bit id digests in one flat array (open addressing, linear probing, at most 3/4 full). Digests are
    uniform hashes, so their low bits pick the slot."""

    def __init__(self, capacity: int = 1024):
        capacity = 1 << max(4, (capacity - 1).bit_length())
        self._slots = array("q", [0]) * capacity  # 0 marks a free slot; digest 0 itself is kept aside
        self._n = 0
        self._zero = False

    def __len__(self) -> int:
        return self._n + self._zero

    def add(self, digest: int) -> bool:
        """Add a digest; False when it was already there."""
        if digest == 0:
            new, self._zero = not self._zero, True
            return new
        slots = self._slots
        mask = len(slots) - 1
        i = digest & mask
        while True:
            v = slots[i]
            if v == 0:
                break
            if v == digest:
                return False
            i = (i + 1) & mask
        slots[i] = digest
        self._n += 1
        if 4 * self._n > 3 * len(slots):
            self._grow()
        return True

    def __contains__(self, digest: int) -> bool:
        if digest == 0:
            return self._zero
        slots = self._slots
        mask = len(slots) - 1
        i = digest & mask
        while (v := slots[i]) != 0:
            if v == digest:
                return True
            i = (i + 1) & mask
        return False

    def _grow(self) -> None:
        old = self._slots
        slots = self._slots = array("q", [0]) * (2 * len(old))
        mask = len(slots) - 1
        for v in old:
            if v:
                i = v & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = v


def _number(obj: dict, key: str, path, line: int, default: float | None) -> float | None:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ManifestError(path, line, key, f"must be a number of seconds, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ManifestError(path, line, key, f"must be a number of seconds, got {value!r}") from None
    if not math.isfinite(number):
        raise ManifestError(path, line, key, f"must be finite, got {value!r}")
    if number < 0:
        raise ManifestError(path, line, key, f"must be >= 0, got {value!r}")
    return number


def parse_line(raw: bytes | str, *, path: str | os.PathLike, line: int, base_dir: str | os.PathLike) -> ManifestRow:
    """Parse and normalize one manifest line; raises ManifestError. Blank lines are the caller's business."""
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(path, line, None, f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ManifestError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    audio = obj.get("audio_filepath")
    if audio is None:
        raise ManifestError(path, line, "audio_filepath", "missing (every line needs the path of its audio file)")
    if not isinstance(audio, str) or not audio.strip():
        raise ManifestError(path, line, "audio_filepath", f"must be a non-empty string, got {audio!r}")
    offset = _number(obj, "offset", path, line, 0.0)
    duration = _number(obj, "duration", path, line, None)
    if duration == 0:
        raise ManifestError(path, line, "duration", "must be > 0 (a zero-length utterance cannot be transcribed)")
    for key in _TEXT_FIELDS:
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise ManifestError(path, line, key, f"must be a string, got {type(value).__name__} {value!r}")
    row_id = obj.get("id")
    if row_id is None:
        row_id = stable_id(audio, offset, duration)
    elif isinstance(row_id, bool) or not isinstance(row_id, (str, int)):
        raise ManifestError(path, line, "id", f"must be a string or integer, got {row_id!r}")
    else:
        row_id = str(row_id)
        if not row_id.strip():
            raise ManifestError(path, line, "id", "must not be empty")
        if "#" in row_id:
            raise ManifestError(path, line, "id", f"must not contain '#' (reserved for pieces of split audio): {row_id!r}")
    resolved = os.path.expanduser(audio) if audio.startswith("~") else audio
    if not os.path.isabs(resolved):
        resolved = os.path.join(base_dir, resolved)
    return ManifestRow(id=row_id, audio_filepath=os.path.normpath(resolved), offset=offset, duration=duration,
                       text=obj.get("text"), prompt=obj.get("prompt"), task=obj.get("task"),
                       language=obj.get("language"),
                       extra=tuple((k, v) for k, v in obj.items() if k not in KNOWN_FIELDS))


def _iter_raw_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line_no starting at 1, byte offset, raw bytes without newline) for every non-blank line."""
    with open(path, "rb") as f:
        pos = 0
        for line_no, raw in enumerate(f, start=1):
            start = pos
            pos += len(raw)
            stripped = raw.strip()
            if stripped:
                yield line_no, start, stripped


def _first_line_with_id(path: Path, row_id: str, base_dir: Path) -> int | None:
    for line_no, _, raw in _iter_raw_lines(path):
        try:
            if parse_line(raw, path=path, line=line_no, base_dir=base_dir).id == row_id:
                return line_no
        except ManifestError:
            continue
    return None


def iter_rows_with_offsets(
    path: str | os.PathLike, *, skip_bad_lines: bool = False
) -> Iterator[tuple[int, int, ManifestRow | ManifestError]]:
    """Like `iter_rows`, also yielding each line's byte offset: `(line_no, byte_offset, row_or_error)`."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, 0, None, "manifest not found" if not path.exists() else "not a regular file")
    base_dir = path.resolve().parent
    seen = DigestSet()
    for line_no, start, raw in _iter_raw_lines(path):
        try:
            row = parse_line(raw, path=path, line=line_no, base_dir=base_dir)
            if not seen.add(id_digest(row.id)):
                first = _first_line_with_id(path, row.id, base_dir)
                earlier = f" (first on line {first})" if first and first != line_no else ""
                raise ManifestError(path, line_no, "id", f"duplicate id {row.id!r}{earlier}")
        except ManifestError as e:
            if not skip_bad_lines:
                raise
            yield line_no, start, e
            continue
        yield line_no, start, row


def iter_rows(path: str | os.PathLike, *, skip_bad_lines: bool = False
              ) -> Iterator[tuple[int, ManifestRow | ManifestError]]:
    """Yield `(line_no, row)` for every non-blank line. A bad line raises ManifestError, or with `skip_bad_lines`
    is yielded as `(line_no, ManifestError)` so the caller can record it as a failed row."""
    for line_no, _, row in iter_rows_with_offsets(path, skip_bad_lines=skip_bad_lines):
        yield line_no, row


def read_rows_at(path: str | os.PathLike, positions: Iterable[tuple[int, int]]) -> list[ManifestRow]:
    """Read back the rows at `(line_no, byte_offset)` positions (from `iter_rows_with_offsets`), in the given order."""
    path = Path(path)
    base_dir = path.resolve().parent
    rows = []
    with open(path, "rb") as f:
        for line_no, start in positions:
            f.seek(start)
            rows.append(parse_line(f.readline().strip(), path=path, line=line_no, base_dir=base_dir))
    return rows
