"""Where an export may go, and how it gets there: nothing an export reads, and nothing that is not an earlier
export, is ever written into, over or removed.

An export is recognisable as one: a folder export holds `export.json` (`MARKER`), a file export has a sidecar
`NAME.export.json` beside it; either lists the files the export wrote (size and modification time) and says what was
exported (format, runs, filters, counts). `--overwrite` replaces only an earlier export of the same format whose
files are all still as it wrote them, and nothing else in its folder.

The export is built under a hidden `.tmp-…` name beside the target, marked, and renamed into place when complete; a
replaced export is renamed aside first and removed only after the new one is in place.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from . import ExportError

MARKER = "export.json"  # inside a folder export
SIDECAR_SUFFIX = ".export.json"  # beside a file export: labels.jsonl -> labels.jsonl.export.json
MARKER_KEY = "transcribe_batch_export"  # the marker's version, 1
RUN_FOLDER_SIGNS = ("run.json", "parts")  # a .parquet RUN in a folder holding one of these: that is a run folder


@dataclass(frozen=True)
class Input:
    """A path an export reads, which it must never write into or over."""

    path: Path  # resolved
    what: str  # how to name it in a message, e.g. "the run folder runs/a"
    folder: bool  # a run folder (nothing may be written inside it either)


@dataclass(frozen=True)
class Target:
    given: Path  # -o as written
    path: Path  # resolved (symlinks followed): where the export goes
    fmt: str
    is_folder: bool
    replaces: bool  # an earlier export of this format is there and will be replaced (--overwrite)

    @property
    def marker(self) -> Path:
        return self.path / MARKER if self.is_folder else sidecar_of(self.path)


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def run_inputs(run: Path, results: Path) -> list[Input]:
    """What one RUN (a run folder or a results .parquet file) makes off limits: the run folder (or the file and,
    when it sits in a run folder, that folder) and the manifest its run.json names."""
    run = Path(os.path.abspath(run))
    out = [Input(results.resolve(), f"the results of {run}", False)]
    folder = run if run.is_dir() else results.parent
    if run.is_dir() or any((folder / sign).exists() for sign in RUN_FOLDER_SIGNS):
        out.insert(0, Input(folder.resolve(), f"the run folder {folder}", True))
        try:
            manifest = json.loads((folder / "run.json").read_text(encoding="utf-8")).get("manifest")
        except (OSError, ValueError, AttributeError):
            manifest = None
        if isinstance(manifest, str) and manifest:
            out.append(Input(Path(manifest).resolve(), f"the manifest of {run}", False))
    return out


def _check_inputs(given: Path, paths: Sequence[Path], inputs: Sequence[Input]) -> None:
    for path in paths:
        for inp in inputs:
            if path == inp.path:
                raise ExportError(f"-o {given}: is {inp.what}, which this export reads: choose another path")
        for inp in inputs:
            if inp.folder and inp.path in path.parents:
                raise ExportError(f"-o {given}: is inside {inp.what}, which this export reads; an export never "
                                  "writes into a run folder: choose a path outside it")
        for inp in inputs:
            if path in inp.path.parents:
                raise ExportError(f"-o {given}: holds {inp.what}, which this export reads: choose another path")


def _check_parents(given: Path, path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"-o {given}: {parent} is a file, not a folder")
            return


def read_marker(marker: Path) -> dict | None:
    """The marker's content if `marker` is an export marker, else None."""
    try:
        if marker.stat().st_size > 64 << 20:
            return None
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get(MARKER_KEY) == 1 and isinstance(data.get("format"), str)
            and isinstance(data.get("files"), dict)):
        return None
    return data


def _stat(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _folder_files(folder: Path) -> dict[str, Path]:
    """Every entry under `folder` by its relative path ('/'-separated), folders included (as 'name/')."""
    out: dict[str, Path] = {}
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        for d in dirs:
            out[prefix + d + "/"] = Path(root) / d
        for f in files:
            out[prefix + f] = Path(root) / f
    return out


def _describe(data: dict) -> str:
    return f"a {data['format']} export" + (f" of {data['created_at']}" if isinstance(data.get("created_at"), str)
                                            else "")


def _earlier_export(given: Path, path: Path, fmt: str, is_folder: bool) -> dict | None:
    """The marker of the earlier export of `fmt` at `path`, None if nothing is there; refuses anything else."""
    sidecar = sidecar_of(path)
    if not os.path.lexists(path):
        if not is_folder and os.path.lexists(sidecar) and read_marker(sidecar) is None:
            raise ExportError(f"-o {given}: {sidecar} exists and is not an export's sidecar (export writes its "
                              f"record there): choose another name")
        return None
    if is_folder != path.is_dir():
        raise ExportError(f"-o {given}: is a {'file' if path.is_file() else 'folder'}; --to {fmt} writes a "
                          f"{'folder' if is_folder else 'file'}: choose another path")
    if is_folder and not any(path.iterdir()):
        if path == Path.cwd().resolve():
            raise ExportError(f"-o {given}: is the current folder: name a new folder for the export")
        return None  # an empty folder: nothing to lose
    marker = path / MARKER if is_folder else sidecar
    data = read_marker(marker)
    if data is None:
        raise ExportError(f"-o {given}: already exists and is not an earlier export (no {marker.name} "
                          f"{'inside' if is_folder else 'beside it'}); export replaces nothing else, even with "
                          "--overwrite: choose another path")
    if data["format"] != fmt:
        raise ExportError(f"-o {given}: is {_describe(data)}; --to {fmt} replaces only a {fmt} export "
                          "(--overwrite never changes an export's kind): choose another path")
    files = {str(k): v for k, v in data["files"].items()}
    if is_folder:
        present = _folder_files(path)
        present.pop(MARKER)
    else:
        present = {path.name: path}
    for rel, file in present.items():
        if rel.endswith("/"):
            if not any(name.startswith(rel) for name in files):
                raise ExportError(f"-o {given}: holds {file}, which the earlier export did not write; not replacing "
                                  "it: move that out, or choose another path")
            continue
        recorded = files.get(rel)
        if not isinstance(recorded, dict):
            raise ExportError(f"-o {given}: holds {file}, which the earlier export did not write; not replacing it: "
                              "move that out, or choose another path")
        if file.is_symlink() or _stat(file) != {k: recorded.get(k) for k in ("size", "mtime_ns")}:
            raise ExportError(f"-o {given}: {file} changed since it was exported; not replacing it: move it away "
                              "(or delete it yourself), or choose another path")
    return data


def plan_target(output: str | os.PathLike, fmt: str, is_folder: bool, overwrite: bool,
                inputs: Sequence[Input]) -> Target:
    """Check where an export of `fmt` may go before anything is read or written. Refused (ExportError): a path in,
    over or above anything the export reads (`inputs`), a parent that is a file, and an existing path that is not an
    earlier export of the same format (or is one, without `overwrite`). An empty folder counts as free."""
    given = Path(output)
    try:
        path = Path(os.path.abspath(os.path.expanduser(str(output)))).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise ExportError(f"-o {given}: cannot resolve it ({e})") from None
    if path.parent == path:
        raise ExportError(f"-o {given}: is the file system's root: name a file or folder for the export")
    paths = [path] if is_folder else [path, sidecar_of(path)]
    _check_inputs(given, paths, inputs)
    _check_parents(given, path)
    earlier = _earlier_export(given, path, fmt, is_folder)
    if earlier is not None and not overwrite:
        raise ExportError(f"-o {given}: already exists ({_describe(earlier)}): use --overwrite to replace it")
    return Target(given, path, fmt, is_folder, earlier is not None)


def make_parents(target: Target) -> list[Path]:
    """Create the target's missing folders; returns those created (deepest last)."""
    missing = [p for p in reversed(target.path.parents) if not p.exists()]
    for p in missing:
        p.mkdir()
    return missing


def remove_parents(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            break


def _hidden_beside(path: Path) -> Path:
    return path.with_name(f".tmp-{uuid.uuid4().hex[:12]}-{path.name}")


def staging_path(target: Target) -> Path:
    """A new hidden name beside the target to build it under (created, empty, for a folder export)."""
    tmp = _hidden_beside(target.path)
    if target.is_folder:
        tmp.mkdir()
    return tmp


def discard(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, data: dict) -> None:
    with open(path, "x", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def commit(target: Target, tmp: Path, record: dict) -> None:
    """Mark the complete export built at `tmp` (its files, plus `record`: what was exported) and move it into place,
    replacing the earlier export checked by `plan_target` (checked again now: it may have changed meanwhile)."""
    earlier = _earlier_export(target.given, target.path, target.fmt, target.is_folder)
    if (earlier is not None) != target.replaces:
        raise ExportError(f"-o {target.given}: appeared or changed while exporting; nothing was replaced")
    if target.is_folder:
        files = {rel: _stat(p) for rel, p in sorted(_folder_files(tmp).items()) if not rel.endswith("/")}
    else:
        files = {target.path.name: _stat(tmp)}
    marker = {MARKER_KEY: 1, "format": target.fmt,
              "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "files": files, **record}
    if target.is_folder:
        _write_json(tmp / MARKER, marker)
        if target.replaces:
            aside = _hidden_beside(target.path)
            os.replace(target.path, aside)
            try:
                os.replace(tmp, target.path)
            except BaseException:
                os.replace(aside, target.path)
                raise
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(tmp, target.path)  # a rename may replace an empty folder (the one plan_target found)
    else:
        sidecar_tmp = tmp.with_name(tmp.name + SIDECAR_SUFFIX)
        try:
            _write_json(sidecar_tmp, marker)
            os.replace(tmp, target.path)
            os.replace(sidecar_tmp, sidecar_of(target.path))
        finally:
            sidecar_tmp.unlink(missing_ok=True)
