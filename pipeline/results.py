"""The run folder: `parts/` written atomically as work finishes, `results.parquet` merged in input order, `run.json`.

Every record in a part carries the input digest of the manifest row it answers (manifests.reader.input_digest: id,
audio path/offset/duration, prompt/task/language). Resume counts a row as done only when the latest record for its
exact input is there (failed ones too, unless retry_failed); the merge writes exactly the current manifest's rows,
in its order, each with its latest matching record and the manifest's current line number, reference text and
other fields. Records of rows the manifest no longer has (or has changed) stay in parts/ but never reach the
results. Changing the engine/model/prompt against a folder with results is refused unless overwrite; a folder that
is not a run folder is refused always, and --overwrite deletes only what a run writes.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transcribe_batch.workers.record import COLUMNS, PART_SCHEMA, Record, conform, to_table

PART_RE = re.compile(r"part-(\d{6})(?:-\w+)?\.parquet$")
INPUT_DIGEST = "input_digest"  # parts only: which manifest row (as it read then) a record answers
RUN_PART_SCHEMA = PART_SCHEMA.append(pa.field(INPUT_DIGEST, pa.int64()))
# What a run writes at the top of its folder (and all --overwrite may delete); logs/ holds only *.log files.
RUN_FILES = ("run.json", "results.parquet", "progress.jsonl", ".lock")
RUN_DIRS = ("parts", "logs")


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
        files = [p for p in self.parts.glob("part-*.parquet") if PART_RE.fullmatch(p.name) and p.is_file()]
        return sorted(files, key=lambda p: int(PART_RE.search(p.name).group(1)))

    def foreign_entries(self) -> list[str]:
        """Entries a run never writes (a user's files): a folder holding any is not a run folder."""
        if not self.path.is_dir():
            return []
        out = []
        for p in sorted(self.path.iterdir()):
            if p.name in RUN_FILES or p.name.startswith(".tmp-"):
                continue
            if p.name == "parts" and p.is_dir():
                out += [f"parts/{q.name}" for q in sorted(p.iterdir()) if not _run_part_name(q.name)]
            elif p.name == "logs" and p.is_dir():
                out += [f"logs/{q.name}" for q in sorted(p.iterdir()) if not q.name.endswith(".log")]
            else:
                out.append(p.name)
        return out

    def delete_run_files(self) -> None:
        """--overwrite: remove what runs write (never anything else; parts/ and logs/ go only once empty)."""
        for name in RUN_FILES:
            if name != ".lock":
                (self.path / name).unlink(missing_ok=True)
        for p in self.path.glob(".tmp-*"):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        for d, keep in ((self.parts, _run_part_name), (self.logs, lambda n: n.endswith(".log"))):
            if d.is_dir():
                for q in d.iterdir():
                    if keep(q.name) and not q.is_dir():
                        q.unlink(missing_ok=True)
                try:
                    d.rmdir()
                except OSError:
                    pass

    def read_run_json(self) -> dict | None:
        try:
            return json.loads(self.run_json.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as e:
            raise ResumeError(f"{self.run_json}: unreadable ({e}); use --overwrite to start over") from None


def _run_part_name(name: str) -> bool:
    return bool(PART_RE.fullmatch(name)) or name.startswith(".tmp-") or name.endswith(".unreadable")


def _check_output_path(path: Path) -> None:
    for p in [path, *path.parents]:  # -o under a file, or a dangling link
        if p.exists() or p.is_symlink():
            if p.is_symlink() and not p.exists():
                raise ResumeError(f"{path}: {p} is a broken symbolic link")
            if not p.is_dir():
                raise ResumeError(f"{path}: {p} exists and is not a folder" if p == path
                                  else f"{path}: cannot make a run folder there, {p} is a file")
            return


class RunLock:
    """DIR/.lock held for the whole run so that two runs never write into one folder; the OS drops the lock when the
    process ends, however it ends. `release()` also removes the lock file and, for a run that was refused before it
    wrote anything, the folder it created."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        _check_output_path(folder.path)
        self.created_folder = not folder.path.exists()
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ResumeError(f"{folder.path}: cannot create the run folder ({e.strerror or e})") from None
        path = folder.path / ".lock"
        while True:
            try:
                handle = open(path, "a+")
            except OSError as e:
                self._undo_folder()
                raise ResumeError(f"{folder.path}: cannot write in the run folder ({e.strerror or e})") from None
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise ResumeError(f"{folder.path} is in use by another run ({holder}); wait for it or use another "
                                  "--output") from None
            try:  # the holder before us may have removed the file after we opened it: lock the file that is there
                same = os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {platform.node()}\n")
        handle.flush()
        self.handle = handle

    def _undo_folder(self) -> None:
        if self.created_folder:
            try:
                self.folder.path.rmdir()
            except OSError:
                pass

    def release(self, *, refused: bool = False) -> None:
        """Drop the lock (and its file). `refused`: the run wrote nothing; remove what it created."""
        try:
            (self.folder.path / ".lock").unlink(missing_ok=True)
        except OSError:
            pass
        self.handle.close()
        if refused:
            for d in (self.folder.parts, self.folder.logs):
                try:
                    d.rmdir()  # only if empty
                except OSError:
                    pass
            self._undo_folder()

    def close(self) -> None:
        self.release()


def lock_run_folder(folder: RunFolder) -> RunLock:
    return RunLock(folder)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `path` as a whole or not at all (a temporary file in the same folder, then a rename; the temporary file
    is removed if anything fails, e.g. a full disk)."""
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
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
    the file already has (dropping its bulkiest keys if needed: the status, counts and error stay); never raises
    then. True if written."""
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


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class ResumeState:
    done_inputs: np.ndarray  # sorted int64 input digests whose latest record counts as done
    failed_inputs: np.ndarray  # sorted: those of them whose latest record failed (empty with retry_failed)
    next_seq: int
    previous: dict | None  # the earlier run.json
    set_aside: list[str] = field(default_factory=list)  # unreadable part files renamed *.unreadable (what and why)


def open_run_folder(folder: RunFolder, identity: dict, *, overwrite: bool = False, retry_failed: bool = False) -> ResumeState:
    """Check the folder against this run's identity and read what is already done. Refuses (ResumeError) a folder
    that holds files a run never writes; with overwrite, deletes only what runs write."""
    _check_output_path(folder.path)
    foreign = [] if folder.run_json.exists() else folder.foreign_entries()  # a run folder may hold a user's notes
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ResumeError(f"{folder.path} is not a run folder (it holds {shown}, which no run wrote); choose a new "
                          "or empty folder for -o" + (" (--overwrite deletes only what runs write)" if overwrite else ""))
    previous = folder.read_run_json() if folder.path.exists() else None
    if previous is not None and not overwrite:
        old = previous.get("identity", {})
        changed = {k: (old.get(k), v) for k, v in identity.items() if old.get(k) != v}
        if changed:
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ResumeError(f"{folder.path} holds results of a different run ({what}). Use another --output, or "
                              "--overwrite to delete them and start over.")
    if overwrite and folder.path.exists():
        folder.delete_run_files()
        previous = None
    if folder.parts.is_dir():
        for tmp in folder.parts.glob(".tmp-*"):  # a write cut off by a crash
            tmp.unlink(missing_ok=True)
    files = folder.part_files()
    next_seq = int(PART_RE.search(files[-1].name).group(1)) + 1 if files else 0
    empty = np.zeros(0, np.int64)
    if not files:
        return ResumeState(empty, empty, next_seq, previous)
    table, set_aside = read_parts(files, [INPUT_DIGEST, "status"], set_aside=True)
    if table is None or INPUT_DIGEST not in table.column_names:  # none readable, or parts of an older version
        return ResumeState(empty, empty, next_seq, previous, set_aside)
    inputs = table[INPUT_DIGEST]
    keep = pc.is_valid(inputs)  # bad-line records have none: they are made afresh by every run
    digests = pc.filter(inputs, keep).to_numpy().astype(np.int64, copy=False)
    ok = pc.equal(pc.filter(table["status"], keep), "ok").to_numpy(zero_copy_only=False)
    last = _last_of_each(digests)  # the latest record of each input counts
    digests, ok = digests[last], ok[last]
    if retry_failed:
        digests, ok = digests[ok], ok[ok]
    return ResumeState(np.sort(digests), np.sort(digests[~ok]), next_seq, previous, set_aside)


def _last_of_each(keys: np.ndarray) -> np.ndarray:
    """Indices of the last occurrence of each key (in input order)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_keys[1:] != sorted_keys[:-1]
    return np.sort(order[last])


def read_parts(files: list[Path], columns: list[str] | None = None, *, set_aside: bool = False
               ) -> tuple[pa.Table | None, list[str]]:
    """The parts' rows (column `_part`: the file's rank), skipping unreadable files (a truncated file written by
    something else, a damaged disk). Returns (table or None if nothing was readable, what was skipped and why);
    `set_aside` renames each unreadable file to *.unreadable so that later runs and readers skip it too."""
    tables, skipped = [], []
    for seq, f in enumerate(files):
        try:
            names = pq.read_schema(f).names
            t = pq.read_table(f, columns=[c for c in columns if c in names] if columns else None)
        except (pa.ArrowException, OSError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if set_aside:
                f.rename(f.with_name(f.name + ".unreadable"))
                skipped.append(f"{f}: unreadable ({reason}); renamed to {f.name}.unreadable, its rows are redone")
            else:
                skipped.append(f"{f}: unreadable ({reason}); skipped")
            continue
        tables.append(t.append_column("_part", pa.array(np.full(t.num_rows, seq, dtype=np.int64))))
    if not tables:
        return None, skipped
    return pa.concat_tables(tables, promote_options="permissive"), skipped


def latest_rows(table: pa.Table) -> pa.Table:
    """One row per id: the one from the latest part (a row redone with retry_failed replaces its failed record)."""
    if table.num_rows == 0:
        return table
    table = table.append_column("_row", pa.array(np.arange(table.num_rows, dtype=np.int64)))
    last = table.group_by("id", use_threads=False).aggregate([("_row", "max")])["_row_max"]
    return table.take(pa.array(np.sort(last.to_numpy()))).drop_columns(["_row"])


class PartWriter:
    """Buffers finished records and writes them as atomic part files (one file per flush), each with the input
    digest of the manifest row it answers in the part's INPUT_DIGEST column."""

    def __init__(self, folder: RunFolder, next_seq: int, *, flush_rows: int = 512, flush_s: float = 5.0):
        self.folder = folder
        self.seq = next_seq
        self.flush_rows = flush_rows
        self.flush_s = flush_s
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


MERGE_BUCKET_ROWS = 32_768  # rows sorted in memory at once by the merge (at least; see MERGE_MAX_BUCKETS)
MERGE_MAX_BUCKETS = 256  # temporary bucket files open at once


@dataclass
class MergeSummary:
    n_rows: int
    n_ok: int
    n_failed: int
    audio_s: float


def _output_positions(files: list[Path], plan) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, int]:
    """Where each record of each part goes in results.parquet (-1: left out) and which plan row it answers, and
    where each bad line's record goes, from the parts' input digests only (a few 8-byte numbers a row at the peak,
    never the rows). A record goes in when its input digest is that of a current manifest row and it is the latest
    record for that input; output order is the manifest's line order."""
    by_input = np.argsort(plan.inputs, kind="stable")
    sorted_inputs = plan.inputs[by_input]
    indices, sizes = [], []
    for f in files:
        names = pq.read_schema(f).names
        if INPUT_DIGEST in names and len(sorted_inputs):
            d = pq.read_table(f, columns=[INPUT_DIGEST])[INPUT_DIGEST]
            valid = pc.is_valid(d).to_numpy(zero_copy_only=False)
            d = pc.fill_null(d, 0).to_numpy().astype(np.int64, copy=False)
            at = np.minimum(np.searchsorted(sorted_inputs, d), len(sorted_inputs) - 1)
            idx = np.where(valid & (sorted_inputs[at] == d), by_input[at], -1)
        else:  # parts written before records carried input digests: never reused
            idx = np.full(pq.read_metadata(f).num_rows, -1, dtype=np.int64)
        indices.append(idx.astype(np.int64, copy=False))
        sizes.append(len(idx))
    idx_all = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    matched = np.flatnonzero(idx_all >= 0)
    chosen = matched[_last_of_each(idx_all[matched])]  # record numbers, one per answered plan row
    bad_lines = np.array([e.line for e in plan.bad], dtype=np.int64)
    lines = np.concatenate([plan.lines[idx_all[chosen]], bad_lines])
    rank = np.empty(len(lines), dtype=np.int64)
    rank[np.argsort(lines, kind="stable")] = np.arange(len(lines), dtype=np.int64)
    pos = np.full(len(idx_all), -1, dtype=np.int64)
    pos[chosen] = rank[:len(chosen)]
    split = np.cumsum(sizes)[:-1] if sizes else []
    return (np.split(pos, split) if sizes else [], np.split(idx_all, split) if sizes else [], rank[len(chosen):],
            len(lines))


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


def _with_current_fields(table: pa.Table, rows: list, lines: np.ndarray) -> pa.Table:
    """A record answers a row (manifests.row.ManifestRow) as the manifest says it now: its line number, reference
    text and other fields."""
    updates = {"line": pa.array(lines, type=PART_SCHEMA.field("line").type),
               "text": pa.array([r.text for r in rows], type=pa.string()),
               "manifest_extra": pa.array([r.extra_json() for r in rows], type=pa.string())}
    for name, column in updates.items():
        table = table.set_column(table.schema.get_field_index(name), name, column)
    return table


def merge_results(folder: RunFolder, plan) -> MergeSummary:
    """Merge the parts into results.parquet: exactly the rows of `plan` (pipeline.plan.Plan: the current manifest)
    that have a record, plus its bad lines, in line order, manifest fields as columns; streaming: a pass over the
    input-digest columns fixes each record's output position; a pass over the parts spreads the chosen records
    (with the manifest's current fields, read back by byte offset and checked against the plan) into temporary
    bucket files of consecutive positions (Arrow IPC); each bucket is then sorted alone and appended to
    results.parquet. Memory: a few numbers per row plus one bucket of rows, whatever the run's size."""
    files = folder.part_files()
    positions, indices, bad_pos, n_out = _output_positions(files, plan)
    bucket_rows = max(MERGE_BUCKET_ROWS, -(-n_out // MERGE_MAX_BUCKETS))
    n_buckets = -(-n_out // bucket_rows)
    bucket_schema = PART_SCHEMA.append(pa.field("_pos", pa.int64()))
    work = folder.path / f".tmp-merge-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    extra = _ExtraFields()
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    tmp = folder.path / f".tmp-{uuid.uuid4().hex}-{folder.results.name}"
    n_ok, audio_s = 0, 0.0

    def sources():
        for f, pos, idx in zip(files, positions, indices):
            rows = np.flatnonzero(pos >= 0)
            if len(rows):
                table = conform(pq.read_table(f)).take(pa.array(rows))  # an older part may lack newer columns
                current = plan.rows(idx[rows])
                yield _with_current_fields(table, current, plan.lines[idx[rows]]), pos[rows]
        if plan.bad:
            yield to_table(plan.bad_line_records()), bad_pos

    try:
        for table, pos in sources():
            by_bucket = np.argsort(pos // bucket_rows, kind="stable")
            pos = pos[by_bucket]
            table = table.take(pa.array(by_bucket)).append_column("_pos", pa.array(pos)).cast(bucket_schema)
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
