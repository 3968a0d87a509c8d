"""The run folder: `parts/` written atomically as work finishes, `results.parquet` merged in input order, `run.json`.

Resume reads the parts already there: every id in them is done (failed rows too, unless retry_failed), so only the
rest is planned. Changing the engine/model/prompt against a folder with results is refused unless overwrite.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transcribe_batch.manifests.reader import id_digests
from transcribe_batch.workers.record import COLUMNS, PART_SCHEMA, conform, to_table

PART_RE = re.compile(r"part-(\d{6})(?:-\w+)?\.parquet$")


class ResumeError(RuntimeError):
    pass


@dataclass
class RunFolder:
    path: Path

    @property
    def parts(self) -> Path:
        return self.path / "parts"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def results(self) -> Path:
        return self.path / "results.parquet"

    @property
    def progress_log(self) -> Path:
        return self.path / "progress.jsonl"

    @property
    def logs(self) -> Path:
        """Per-device logs of what native libraries print (libbmrt, the cmodel simulator)."""
        return self.path / "logs"

    def part_files(self) -> list[Path]:
        files = [p for p in self.parts.glob("part-*.parquet") if PART_RE.search(p.name)]
        return sorted(files, key=lambda p: int(PART_RE.search(p.name).group(1)))

    def read_run_json(self) -> dict | None:
        try:
            return json.loads(self.run_json.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise ResumeError(f"{self.run_json}: unreadable ({e}); use --overwrite to start over") from None


def lock_run_folder(folder: RunFolder):
    """Hold DIR/.lock for the whole run so that two runs never write into one folder; the OS drops the lock when the
    process ends, however it ends. Returns the open lock file (keep it referenced)."""
    if folder.path.exists() and not folder.path.is_dir():
        raise ResumeError(f"{folder.path}: exists and is not a folder")
    folder.path.mkdir(parents=True, exist_ok=True)
    handle = open(folder.path / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ResumeError(f"{folder.path} is in use by another run ({holder}); wait for it or use another --output") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {platform.node()}\n")
    handle.flush()
    return handle


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n").encode())


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class ResumeState:
    done_digests: np.ndarray  # int64 digests of ids already recorded
    n_done: int
    n_ok: int
    n_failed: int
    audio_s_done: float
    next_seq: int
    previous: dict | None  # the earlier run.json


def open_run_folder(folder: RunFolder, identity: dict, *, overwrite: bool = False, retry_failed: bool = False) -> ResumeState:
    """Check the folder against this run's identity and read what is already done."""
    previous = folder.read_run_json() if folder.path.exists() else None
    if folder.path.exists() and not folder.path.is_dir():
        raise ResumeError(f"{folder.path}: exists and is not a folder")
    if previous is not None and not overwrite:
        old = previous.get("identity", {})
        changed = {k: (old.get(k), v) for k, v in identity.items() if old.get(k) != v}
        if changed:
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ResumeError(f"{folder.path} holds results of a different run ({what}). Use another --output, or "
                              "--overwrite to delete them and start over.")
    if overwrite and folder.path.exists():
        shutil.rmtree(folder.parts, ignore_errors=True)
        for p in (folder.results, folder.run_json, folder.progress_log):
            p.unlink(missing_ok=True)
        previous = None
    folder.parts.mkdir(parents=True, exist_ok=True)
    for tmp in folder.parts.glob(".tmp-*"):  # a write cut off by a crash
        tmp.unlink(missing_ok=True)
    files = folder.part_files()
    next_seq = int(PART_RE.search(files[-1].name).group(1)) + 1 if files else 0
    if not files:
        return ResumeState(np.zeros(0, np.int64), 0, 0, 0, 0.0, next_seq, previous)
    table = latest_rows(_read_parts(files, ["id", "status", "duration_s"]))
    ok = pc.equal(table["status"], "ok")
    keep = table if not retry_failed else table.filter(ok)
    digests = id_digests(keep["id"].to_pylist())
    n_ok = int(pc.sum(ok).as_py() or 0)
    audio = pc.sum(keep["duration_s"]).as_py() or 0.0
    return ResumeState(np.sort(digests), keep.num_rows, n_ok, keep.num_rows - n_ok if not retry_failed else 0,
                       float(audio), next_seq, previous)


def _read_parts(files: list[Path], columns: list[str] | None = None) -> pa.Table:
    tables = []
    for seq, f in enumerate(files):
        t = pq.read_table(f, columns=columns)
        tables.append(t.append_column("_part", pa.array(np.full(t.num_rows, seq, dtype=np.int64))))
    return pa.concat_tables(tables)


def latest_rows(table: pa.Table) -> pa.Table:
    """One row per id: the one from the latest part (a row redone with retry_failed replaces its failed record)."""
    if table.num_rows == 0:
        return table
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    last = table.group_by("id", use_threads=False).aggregate([("_row", "max")])["_row_max"]
    return table.take(pa.array(np.sort(last.to_numpy()))).drop_columns(["_row"])


class PartWriter:
    """Buffers finished records and writes them as atomic part files (one file per flush)."""

    def __init__(self, folder: RunFolder, next_seq: int, *, flush_rows: int = 512, flush_s: float = 5.0):
        self.folder = folder
        self.seq = next_seq
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.buffer: list[dict] = []
        self.last_flush = time.monotonic()
        self.rows_written = 0

    def add(self, records: list[dict]) -> None:
        self.buffer.extend(records)
        if len(self.buffer) >= self.flush_rows or time.monotonic() - self.last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.monotonic()
        if not self.buffer:
            return
        table = to_table(self.buffer)
        write_parquet_atomic(table, self.folder.parts / f"part-{self.seq:06d}-{uuid.uuid4().hex[:8]}.parquet")
        self.seq += 1
        self.rows_written += len(self.buffer)
        self.buffer = []


MERGE_BUCKET_ROWS = 32_768  # rows sorted in memory at once by the merge (at least; see MERGE_MAX_BUCKETS)
MERGE_MAX_BUCKETS = 256  # temporary bucket files open at once


@dataclass
class MergeSummary:
    n_rows: int
    n_ok: int
    n_failed: int
    audio_s: float


def _output_positions(files: list[Path]) -> tuple[list[np.ndarray], int]:
    """Where each row of each part goes in results.parquet (-1: replaced by a later record of the same id), from the
    id and line columns only: five 8-byte numbers a row at the peak, never the rows. Ids are compared by their 64-bit
    digests, as resume does. Order: by line, ties by record order, the latest record of an id wins."""
    digests, lines, sizes = [], [], []
    for f in files:
        t = pq.read_table(f, columns=["id", "line"])
        digests.append(id_digests(t["id"].to_pylist()))
        lines.append(pc.fill_null(t["line"], np.iinfo(np.int64).max).to_numpy().astype(np.int64, copy=False))
        sizes.append(t.num_rows)
    digest = np.concatenate(digests) if digests else np.zeros(0, np.int64)
    del digests
    order = np.argsort(digest, kind="stable")  # same id: record order kept, the last one is the latest
    digest = digest[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = digest[1:] != digest[:-1]
    del digest
    keep = np.sort(order[last])
    del order, last
    line = np.concatenate(lines) if lines else np.zeros(0, np.int64)
    del lines
    out = keep[np.argsort(line[keep], kind="stable")]
    del line, keep
    pos = np.full(sum(sizes), -1, dtype=np.int64)
    pos[out] = np.arange(len(out), dtype=np.int64)
    return np.split(pos, np.cumsum(sizes)[:-1]) if sizes else [], len(out)


class _ExtraFields:
    """Manifest fields carried in `manifest_extra` (JSON): their order of first appearance in the output and one
    Arrow type each (inferred per part, unified across parts; mixed types become JSON text)."""

    JSON = pa.string()

    def __init__(self):
        self.first: dict[str, tuple[int, int]] = {}
        self.types: dict[str, set] = {}
        self.mixed: set[str] = set()

    def observe(self, extra: pa.ChunkedArray, pos: np.ndarray) -> None:
        if extra.null_count == len(extra):
            return
        columns: dict[str, list] = {}
        for p, v in zip(pos.tolist(), extra.to_pylist()):
            if v is None:
                continue
            for i, (k, value) in enumerate(json.loads(v).items()):
                if k not in self.first or (p, i) < self.first[k]:
                    self.first[k] = (p, i)
                columns.setdefault(k, []).append(value)
        for k, values in columns.items():
            try:
                self.types.setdefault(k, set()).add(pa.array(values).type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                self.mixed.add(k)

    def fields(self) -> list[tuple[str, str, pa.DataType | None]]:
        """(manifest key, column name, type; None: mixed types, kept as JSON text) in order of first appearance."""
        out = []
        for k in sorted(self.first, key=self.first.get):
            name = k if k not in COLUMNS else f"manifest_{k}"
            out.append((k, name, self._type(k)))
        return out

    def _type(self, k: str) -> pa.DataType | None:
        if k in self.mixed:
            return None
        types = self.types.get(k, set())
        try:
            unified = pa.unify_schemas([pa.schema([("x", t)]) for t in types], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None
        t = unified.field("x").type if types else pa.null()
        return pa.string() if pa.types.is_null(t) else t

    @staticmethod
    def columns(extra: pa.ChunkedArray, fields: list[tuple[str, str, pa.DataType | None]]) -> list[pa.Array]:
        values = [json.loads(v) if v is not None else {} for v in extra.to_pylist()]
        out = []
        for k, _, t in fields:
            column = [v.get(k) for v in values]
            if t is None:  # mixed types: keep them readable as JSON text
                out.append(pa.array([None if c is None else json.dumps(c, ensure_ascii=False) for c in column],
                                    type=pa.string()))
            else:
                out.append(pa.array(column, type=t))
        return out


def merge_results(folder: RunFolder) -> MergeSummary:
    """Merge every part into results.parquet (one row per id, input order, manifest fields as columns), streaming:
    a pass over the id/line columns fixes each row's output position; a pass over the parts spreads their rows into
    temporary bucket files of consecutive positions (Arrow IPC); each bucket is then sorted alone and appended to
    results.parquet. Memory: a few numbers per row plus one bucket of rows, whatever the run's size."""
    files = folder.part_files()
    positions, n_out = _output_positions(files)
    bucket_rows = max(MERGE_BUCKET_ROWS, -(-n_out // MERGE_MAX_BUCKETS))
    n_buckets = -(-n_out // bucket_rows)
    bucket_schema = PART_SCHEMA.append(pa.field("_pos", pa.int64()))
    work = folder.path / f".tmp-merge-{uuid.uuid4().hex}"
    work.mkdir()
    extra = _ExtraFields()
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    tmp = folder.path / f".tmp-{uuid.uuid4().hex}-{folder.results.name}"
    n_ok, audio_s = 0, 0.0
    try:
        for f, pos in zip(files, positions):
            rows = np.flatnonzero(pos >= 0)
            if not len(rows):
                continue
            pos = pos[rows]
            by_bucket = np.argsort(pos // bucket_rows, kind="stable")
            pos, rows = pos[by_bucket], rows[by_bucket]
            table = conform(pq.read_table(f)).take(pa.array(rows)).append_column("_pos", pa.array(pos)).cast(bucket_schema)
            extra.observe(table["manifest_extra"], pos)
            buckets = pos // bucket_rows
            cuts = np.flatnonzero(np.diff(buckets)) + 1
            for start, end in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(pos)].tolist()):
                b = int(buckets[start])
                if b not in writers:
                    writers[b] = pa.ipc.new_stream(str(work / f"bucket-{b:06d}.arrows"), bucket_schema)
                writers[b].write_table(table.slice(start, end - start))
            del table
        for w in writers.values():
            w.close()
        writers.clear()
        fields = extra.fields()
        schema = pa.schema([f for f in PART_SCHEMA if f.name != "manifest_extra"]
                           + [pa.field(name, t or pa.string()) for _, name, t in fields])
        with pq.ParquetWriter(tmp, schema) as out:
            for b in range(n_buckets):
                path = work / f"bucket-{b:06d}.arrows"
                with pa.ipc.open_stream(str(path)) as reader:
                    table = reader.read_all()
                path.unlink()
                table = table.take(pa.array(np.argsort(table["_pos"].to_numpy(), kind="stable")))
                columns = _ExtraFields.columns(table["manifest_extra"], fields)
                table = table.drop_columns(["_pos", "manifest_extra"])
                for (_, name, _), column in zip(fields, columns):
                    table = table.append_column(name, column)
                n_ok += int(pc.sum(pc.equal(table["status"], "ok")).as_py() or 0)
                audio_s += float(pc.sum(table["duration_s"]).as_py() or 0.0)
                out.write_table(table.cast(schema))
                del table
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, folder.results)
    finally:
        for w in writers.values():
            w.close()
        shutil.rmtree(work, ignore_errors=True)
        tmp.unlink(missing_ok=True)
    return MergeSummary(n_rows=n_out, n_ok=n_ok, n_failed=n_out - n_ok, audio_s=audio_s)


def versions() -> dict:
    import ray

    from transcribe_batch import pipeline

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "ray": ray.__version__,
           "pyarrow": pa.__version__, "numpy": np.__version__}
    try:
        from importlib.metadata import version

        out["transcribe-batch"] = version("transcribe-batch")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        out["transcribe-batch"] = getattr(pipeline, "__version__", "unknown")
    return out
