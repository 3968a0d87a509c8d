"""Files written whole or not at all: a temporary file beside the target, then a rename.

The temporary names are `.tmp-<32 hex digits>-<target name>` (TEMP_RE): the run folder recognises exactly those as
its own leftovers (a write cut off by a crash) and never touches other `.tmp-*` names.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TEMP_RE = re.compile(r"\.tmp-[0-9a-f]{32}-(?P<target>.+)")


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place (matches TEMP_RE)."""
    return path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` as a whole or not at all (the temporary file is removed if anything fails, e.g. a full disk)."""
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: dict, *, in_place_fallback: bool = False) -> bool:
    """Write `obj` as JSON atomically. `in_place_fallback` (a run's final status): if that fails (a full disk has no
    room for the temporary copy), overwrite the existing file in place with a compact copy that fits in the bytes
    the file already has (dropping its bulkiest keys if needed: the status, run id, counts and error stay); never
    raises then. True if written."""
    data = json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n"
    try:
        atomic_write_bytes(path, data.encode())
        return True
    except OSError:
        if not in_place_fallback:
            raise
    try:
        with open(path, "r+b") as f:
            room = os.fstat(f.fileno()).st_size
            obj = dict(obj)
            compact = (json.dumps(obj, default=str, ensure_ascii=False) + "\n").encode()
            for bulky in ("devices", "stats", "versions", "config", "runs"):  # least needed first; status stays
                if len(compact) <= room:
                    break
                obj.pop(bulky, None)
                compact = (json.dumps(obj, default=str, ensure_ascii=False) + "\n").encode()
            if len(compact) > room:
                return False
            f.write(compact)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        return False


def write_parquet_atomic(table: pa.Table, path: Path, *, metadata: dict[str, str] | None = None) -> None:
    """Write `table` to `path` whole or not at all, with page checksums (readers verify them: a damaged page is an
    error, never silently wrong values). `metadata`: key-value pairs added to the file's schema metadata."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    tmp = temp_path(path)
    try:
        pq.write_table(table, tmp, write_page_checksum=True)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
