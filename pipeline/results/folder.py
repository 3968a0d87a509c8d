"""The run folder: its layout, the names a run writes there (and only those are ever deleted), and its lock.

    DIR/run.json                 what the run is (run_json.py); its presence, valid, makes DIR a run folder
    DIR/results.parquet          the merged results of the folder's latest complete run
    DIR/progress.jsonl           progress events
    DIR/.lock                    held while a run writes DIR
    DIR/parts/part-NNNNNN-XXXXXXXX.parquet        records as they finish (parts.py)
    DIR/parts/part-….parquet.unreadable           a part that could not be read, set aside (its rows are redone)
    DIR/logs/<engine>-device<N>.log               what native libraries print, per device
    DIR/.tmp-<32 hex>-<name>, DIR/parts/.tmp-<32 hex>-<name>, DIR/.tmp-merge-<32 hex>/bucket-NNNNNN.arrows
                                 writes in progress (atomic.py, merge.py); leftovers of a crash

Those exact patterns are what a run writes; anything else in DIR is the user's and is never deleted, not even by
--overwrite. A folder without run.json holding anything else is not a run folder.
"""

from __future__ import annotations

import fcntl
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

from .atomic import TEMP_RE
from .run_json import NotARunJson, read_run_json

PART_RE = re.compile(r"part-(?P<seq>\d{6})-[0-9a-f]{8}\.parquet")
SET_ASIDE_SUFFIX = ".unreadable"
LOG_RE = re.compile(r"[a-z0-9_]+-device\d+\.log")  # e.g. bm1684x-device0.log (workers/engines/bm1684x.py)
MERGE_DIR_RE = re.compile(r"\.tmp-merge-[0-9a-f]{32}")
BUCKET_RE = re.compile(r"bucket-\d{6}\.arrows")
RUN_FILES = ("run.json", "results.parquet", "progress.jsonl", ".lock")


class ResumeError(RuntimeError):
    """The output folder cannot take this run (someone else's folder, another run's, in use, unwritable)."""


def is_part_name(name: str) -> bool:
    return bool(PART_RE.fullmatch(name))


def _is_temp(name: str, targets) -> bool:
    m = TEMP_RE.fullmatch(name)
    return bool(m) and targets(m.group("target"))


def _run_part_entry(name: str) -> bool:
    """A name a run writes in parts/."""
    return (is_part_name(name) or (name.endswith(SET_ASIDE_SUFFIX) and is_part_name(name[:-len(SET_ASIDE_SUFFIX)]))
            or _is_temp(name, is_part_name))


def _run_top_entry(name: str) -> bool:
    """A file name a run writes at the top of its folder (not parts/, logs/ or a merge's work folder)."""
    return name in RUN_FILES or _is_temp(name, lambda target: target in ("run.json", "results.parquet"))


@dataclass(frozen=True)
class RunFolder:
    path: Path  # the folder (-o DIR)

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
    def lock_file(self) -> Path:
        return self.path / ".lock"

    @property
    def logs(self) -> Path:
        """Per-device logs of what native libraries print (libbmrt, the cmodel simulator)."""
        return self.path / "logs"

    def part_files(self) -> list[Path]:
        """The finished part files, in write order (not crash leftovers, not parts set aside)."""
        if not self.parts.is_dir():
            return []
        files = [p for p in self.parts.iterdir() if is_part_name(p.name) and p.is_file()]
        return sorted(files, key=lambda p: int(PART_RE.fullmatch(p.name).group("seq")))

    def read_run_json(self) -> dict | None:
        """run.json if it is a run's, None if there is none; NotARunJson otherwise."""
        return read_run_json(self.run_json)

    def foreign_entries(self) -> list[str]:
        """Entries no run writes (a user's files), relative to the folder."""
        if not self.path.is_dir():
            return []
        out = []
        for p in sorted(self.path.iterdir()):
            if _run_top_entry(p.name) and p.is_file():
                continue
            if p.is_dir() and not p.is_symlink() and p.name in ("parts", "logs"):
                ok = _run_part_entry if p.name == "parts" else LOG_RE.fullmatch
                out += [f"{p.name}/{q.name}" for q in sorted(p.iterdir()) if not (ok(q.name) and q.is_file())]
            elif p.is_dir() and not p.is_symlink() and MERGE_DIR_RE.fullmatch(p.name):
                out += [f"{p.name}/{q.name}" for q in sorted(p.iterdir()) if not BUCKET_RE.fullmatch(q.name)]
            else:
                out.append(p.name)
        return out

    def remove_leftovers(self) -> None:
        """Delete what writes cut off by a crash left (temporary files and merge folders of the exact names runs
        use); nothing else."""
        for d, ok in ((self.path, lambda n: _is_temp(n, lambda t: t in ("run.json", "results.parquet"))),
                      (self.parts, lambda n: _is_temp(n, is_part_name))):
            if d.is_dir():
                for p in d.iterdir():
                    if ok(p.name) and p.is_file() and not p.is_symlink():
                        p.unlink(missing_ok=True)
        if self.path.is_dir():
            for d in self.path.iterdir():
                if MERGE_DIR_RE.fullmatch(d.name) and d.is_dir() and not d.is_symlink():
                    for q in d.iterdir():
                        if BUCKET_RE.fullmatch(q.name) and q.is_file():
                            q.unlink(missing_ok=True)
                    _rmdir_if_empty(d)

    def delete_run_files(self) -> None:
        """--overwrite: remove what runs write, by exact name (never anything else; parts/ and logs/ go only once
        empty)."""
        self.remove_leftovers()
        for name in RUN_FILES:
            if name != ".lock":
                (self.path / name).unlink(missing_ok=True)
        for d, ok in ((self.parts, _run_part_entry), (self.logs, LOG_RE.fullmatch)):
            if d.is_dir() and not d.is_symlink():
                for q in d.iterdir():
                    if ok(q.name) and q.is_file() and not q.is_symlink():
                        q.unlink(missing_ok=True)
                _rmdir_if_empty(d)


def _rmdir_if_empty(d: Path) -> None:
    try:
        d.rmdir()
    except OSError:
        pass


def check_output_path(path: Path) -> None:
    """ResumeError if `path` cannot be a run folder: a file, a dangling link, or under a file."""
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            if p.is_symlink() and not p.exists():
                raise ResumeError(f"{path}: {p} is a broken symbolic link")
            if not p.is_dir():
                raise ResumeError(f"{path}: {p} exists and is not a folder" if p == path
                                  else f"{path}: cannot make a run folder there, {p} is a file")
            return


def check_run_folder(folder: RunFolder) -> dict | None:
    """The folder's run.json (None: a new or empty folder, or one holding only what runs write). ResumeError for
    anything that is not a run folder: a run.json no run wrote, or files no run writes and no run.json."""
    try:
        previous = folder.read_run_json()
    except NotARunJson as e:
        raise ResumeError(f"{folder.path} is not a run folder ({e}); choose another -o (--overwrite deletes only "
                          "what runs write, and this run.json is not a run's)") from None
    if previous is None:
        foreign = folder.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ResumeError(f"{folder.path} is not a run folder (it holds {shown}, which no run wrote); choose a "
                              "new or empty folder for -o (--overwrite deletes only what runs write)")
    return previous


class RunLock:
    """DIR/.lock held for the whole run so that two runs never write into one folder; the OS drops the lock when the
    process ends, however it ends. `release()` also removes the lock file and, for a run that never claimed the
    folder (refused or stopped before it started), the folder if the run created it."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        check_output_path(folder.path)
        self.created_folder = not folder.path.exists()
        try:
            folder.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ResumeError(f"{folder.path}: cannot create the run folder ({e.strerror or e})") from None
        path = folder.lock_file
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
        self.released = False

    def _undo_folder(self) -> None:
        if self.created_folder:
            _rmdir_if_empty(self.folder.path)

    def release(self, *, refused: bool = False) -> None:
        """Drop the lock (and its file). `refused`: the run never claimed the folder; remove it if it made it."""
        if self.released:
            return
        self.released = True
        try:
            self.folder.lock_file.unlink(missing_ok=True)
        except OSError:
            pass
        self.handle.close()
        if refused:
            self._undo_folder()

    def close(self) -> None:
        self.release()


def lock_holder(folder: RunFolder) -> str | None:
    """Who holds the folder's lock, as the lock file says ("pid N on HOST"), if that process is alive (on this host;
    on another host it is taken at its word); None if no run is writing the folder. Takes no lock."""
    try:
        holder = folder.lock_file.read_text().strip()
    except OSError:
        return None
    m = re.fullmatch(r"pid (\d+) on (.*)", holder)
    if not m:
        return None
    if m.group(2) == platform.node():
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
    return holder


def lock_run_folder(folder: RunFolder) -> RunLock:
    return RunLock(folder)
