"""Where `transcribe-batch export` may write (issue 16 items 1, 7, 9): never into, over or above what it reads, never
over anything but an earlier export of the same format; a read-only folder, a full disk, `-o .` or `-o` under a file
are messages; an export that keeps no rows is still a dataset its readers load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from eval_helpers import result_row, write_run
from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.export import ExportError
from transcribe_batch.pipeline.export.export import export
from transcribe_batch.pipeline.export.filters import Filters
from transcribe_batch.pipeline.export.target import MARKER, read_marker, sidecar_of

runner = CliRunner()
FOLDER_FORMATS = ("hf", "lhotse")


def _wavs(folder: Path, n: int = 3) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = folder / f"{i:03d}.wav"
        sf.write(path, (0.1 * rng.standard_normal(16000 + 4000 * i)).astype(np.float32), 16000)
        out.append(path)
    return out


def _make_run(root: Path, n_rows: int = 4) -> Path:
    """A finished run folder (results.parquet, run.json naming its manifest, parts/) over real wav files."""
    wavs = _wavs(root / "audio")
    manifest = root / "data" / "m.jsonl"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_rows):
        wav = wavs[i % len(wavs)]
        r = result_row(f"u{i}", "ref words", f"label {i}", duration=sf.info(wav).duration)
        r.update(audio_filepath=str(wav), confidence=0.9, language="en")
        rows.append(r)
    manifest.write_text("".join(json.dumps({"id": r["id"], "audio_filepath": r["audio_filepath"]}) + "\n"
                                for r in rows))
    run = write_run(root / "runs" / "a", rows, meta={"engine": "simulated", "manifest": str(manifest),
                                                     "status": "complete"})
    (run / "parts").mkdir()
    (run / "parts" / "part-000000-aaaaaaaa.parquet").write_bytes((run / "results.parquet").read_bytes())
    return run


def _snapshot(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else ("<dir>" if p.is_dir() else p.read_bytes())
    return out


def _invoke(args: list[str], cwd: Path | None = None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, ["export", *args], terminal_width=200)
    finally:
        os.chdir(old)


def _refused(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    for w in words:
        assert w in result.output, (w, result.output)


@pytest.fixture
def world(tmp_path):
    """A run, a second run, a user's folder of files, and an earlier export of each format beside them."""
    run = _make_run(tmp_path)
    other = write_run(tmp_path / "runs" / "b", [result_row(f"u{i}", "r", f"label {i}") for i in range(4)])
    stuff = tmp_path / "home" / "stuff"
    stuff.mkdir(parents=True)
    (stuff / "notes.txt").write_text("my notes\n")
    (stuff / "sub").mkdir()
    (stuff / "sub" / "data.bin").write_bytes(b"\x00\x01")
    (tmp_path / "mine.jsonl").write_text('{"audio_filepath": "x.wav", "offset": 0.0, "duration": 1.0, "text": "t"}\n')
    return {"tmp": tmp_path, "run": run, "other": other, "stuff": stuff}


@pytest.mark.parametrize("case", [
    "results", "hf-over-run", "lhotse-over-run", "new-file-in-run", "new-folder-in-run", "in-parts", "user-folder",
    "user-folder-hf", "user-file", "audio-file", "manifest", "run-parent", "agree-with-run", "symlink-to-results",
    "symlink-into-run", "dot", "under-a-file",
])
def test_overwrite_never_destroys_what_is_not_an_earlier_export(world, case):
    """Bug: `-o RUN/results.parquet --overwrite` turned the results into JSONL; `--to hf -o RUN --overwrite` deleted the
    run folder; `-o ~/stuff --overwrite` deleted a user's folder; all exit 0."""
    tmp, run, other, stuff = world["tmp"], world["run"], world["other"], world["stuff"]
    (tmp / "link.parquet").symlink_to(run / "results.parquet")
    (tmp / "runlink").symlink_to(run)
    (tmp / "a-file").write_text("x")
    args, words = {
        "results": (["-o", str(run / "results.parquet")], "is the results of"),
        "hf-over-run": (["--to", "hf", "-o", str(run)], "is the run folder"),
        "lhotse-over-run": (["--to", "lhotse", "-o", str(run)], "is the run folder"),
        "new-file-in-run": (["-o", str(run / "labels.jsonl")], "never writes into a run folder"),
        "new-folder-in-run": (["--to", "hf", "-o", str(run / "hf")], "never writes into a run folder"),
        "in-parts": (["-o", str(run / "parts" / "part-000000-aaaaaaaa.parquet")], "is inside the run folder"),
        "user-folder": (["--to", "lhotse", "-o", str(stuff)], "is not an earlier export"),
        "user-folder-hf": (["--to", "hf", "-o", str(stuff)], "is not an earlier export"),
        "user-file": (["-o", str(tmp / "mine.jsonl")], "is not an earlier export"),
        "audio-file": (["-o", str(tmp / "audio" / "001.wav")], "is not an earlier export"),
        "manifest": (["-o", str(tmp / "data" / "m.jsonl")], "is the manifest of"),
        "run-parent": (["--to", "hf", "-o", str(tmp / "runs")], "holds the run folder"),
        "agree-with-run": (["--agree-with", str(other), "-o", str(other / "x.jsonl")], "never writes into a run"),
        "symlink-to-results": (["-o", str(tmp / "link.parquet")], "is the results of"),
        "symlink-into-run": (["-o", str(tmp / "runlink" / "x.jsonl")], "never writes into a run folder"),
        "dot": (["--to", "hf", "-o", "."], "is not an earlier export"),
        "under-a-file": (["-o", str(tmp / "a-file" / "x.jsonl")], "a-file is a file, not a folder"),
    }[case]
    before = _snapshot(tmp)
    result = _invoke([str(run), *args, "--overwrite"], cwd=stuff)
    _refused(result, words)
    assert _snapshot(tmp) == before


def test_overwrite_replaces_only_an_unchanged_export_of_the_same_format(world):
    tmp, run = world["tmp"], world["run"]
    out = {"nemo": tmp / "e" / "labels.jsonl", "hf": tmp / "e" / "hf", "lhotse": tmp / "e" / "lhotse"}
    for fmt, path in out.items():
        export([run], path, fmt=fmt)
        marker = read_marker(path / MARKER if fmt != "nemo" else sidecar_of(path))
        assert marker is not None and marker["format"] == fmt and marker["n_kept"] == 4
        assert marker["runs"][0]["path"] == str(run)
        with pytest.raises(ExportError, match="already exists .*use --overwrite"):
            export([run], path, fmt=fmt)
        s = export([run], path, fmt=fmt, filters=Filters(max_duration=1.1), overwrite=True)
        assert s.n_kept == 2
        assert read_marker(path / MARKER if fmt != "nemo" else sidecar_of(path))["n_kept"] == 2
    assert len(out["nemo"].read_text().splitlines()) == 2
    for fmt, other_fmt in (("hf", "lhotse"), ("lhotse", "hf")):  # another kind is never replaced
        before = _snapshot(tmp / "e")
        with pytest.raises(ExportError, match=f"is a {other_fmt} export.*--to {fmt} replaces only a {fmt} export"):
            export([run], out[other_fmt], fmt=fmt, overwrite=True)
        assert _snapshot(tmp / "e") == before
    with pytest.raises(ExportError, match="is a folder; --to nemo writes a file"):
        export([run], out["hf"], fmt="nemo", overwrite=True)
    # something the user added to, or changed in, an earlier export: not replaced
    (out["hf"] / "README.md").write_text("my notes about this dataset\n")
    with pytest.raises(ExportError, match="README.md, which the earlier export did not write"):
        export([run], out["hf"], fmt="hf", overwrite=True)
    assert (out["hf"] / "README.md").read_text() == "my notes about this dataset\n"
    with open(out["nemo"], "a") as f:
        f.write('{"audio_filepath": "/my/own.wav", "duration": 1.0, "text": "added by hand"}\n')
    with pytest.raises(ExportError, match="changed since it was exported"):
        export([run], out["nemo"], overwrite=True)
    assert "added by hand" in out["nemo"].read_text()
    taken = tmp / "e" / "new.jsonl"
    sidecar_of(taken).write_text("my own json\n")
    with pytest.raises(ExportError, match="is not an export's sidecar"):
        export([run], taken)
    assert sidecar_of(taken).read_text() == "my own json\n" and not taken.exists()
    empty = tmp / "e" / "empty-folder"
    empty.mkdir()
    export([run], empty, fmt="lhotse")  # an empty folder holds nothing to lose
    assert (empty / "cuts.jsonl.gz").is_file()
    assert not list(tmp.rglob(".tmp-*"))


def test_the_current_folder_and_the_root_are_refused(world, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(_invoke([str(world["run"]), "--to", "lhotse", "-o", "."], cwd=empty), "is the current folder")
    _refused(_invoke([str(world["run"]), "-o", "/"]), "root")
    assert list(empty.iterdir()) == []


def _readonly(monkeypatch, folder: Path) -> None:
    """Make `folder` refuse new entries. chmod does that except for root (tests may run as root): there the two
    calls an export creates entries with (os.mkdir, open for writing) are made to fail as the kernel would."""
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return
    import builtins
    import errno

    real_open, real_mkdir = builtins.open, os.mkdir

    def denied(path) -> bool:
        return Path(os.path.abspath(path)).parent == folder

    def fake_open(file, mode="r", *args, **kw):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wxa") and denied(file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, mode, *args, **kw)

    def fake_mkdir(path, *args, **kw):
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kw)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


@pytest.mark.parametrize("fmt", ["nemo", "hf", "lhotse"])
def test_read_only_folder_is_a_message(world, monkeypatch, fmt):
    if fmt != "nemo":
        pytest.importorskip("datasets" if fmt == "hf" else "lhotse")
    locked = world["tmp"] / "locked"
    locked.mkdir()
    _readonly(monkeypatch, locked)
    try:
        result = _invoke([str(world["run"]), "--to", fmt, "-o", str(locked / "out")])
    finally:
        locked.chmod(0o755)
    _refused(result, f"-o {locked / 'out'}: the export failed", "Permission denied", "nothing was written")
    assert list(locked.iterdir()) == []


def _export_with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    """The real CLI in a child process whose files cannot grow past `limit` bytes (RLIMIT_FSIZE, SIGXFSZ ignored:
    a write fails with EFBIG as a write to a full disk fails with ENOSPC). Works unprivileged, also as root."""
    import resource
    import signal

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    code = "from transcribe_batch.pipeline.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_files, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.mark.parametrize("fmt", ["nemo", pytest.param("hf", marks=pytest.mark.slow),
                                 pytest.param("lhotse", marks=pytest.mark.slow)])  # a child importing them: ~10 s
def test_full_disk_is_a_message_and_keeps_the_earlier_export(tmp_path, fmt):
    if fmt != "nemo":
        pytest.importorskip("datasets" if fmt == "hf" else "lhotse")
    run = _make_run(tmp_path, n_rows=300)
    out = tmp_path / "out" / ("labels.jsonl" if fmt == "nemo" else fmt)
    export([run], out, fmt=fmt, filters=Filters(max_duration=1.1))  # an earlier, smaller export
    before = _snapshot(tmp_path / "out")
    done = _export_with_file_size_limit(["export", str(run), "--to", fmt, "-o", str(out), "--overwrite"], 2048)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"-o {out}: the export failed" in done.stderr and "the earlier export is unchanged" in done.stderr
    assert _snapshot(tmp_path / "out") == before


@pytest.mark.parametrize("fmt", ["nemo", "hf", "lhotse"])
def test_an_export_that_keeps_no_rows_loads_as_an_empty_dataset(world, fmt):
    """Bug: --to hf with no row kept wrote a folder load_from_disk failed on (IndexError); --to lhotse an empty
    folder without cuts.jsonl.gz."""
    out = world["tmp"] / f"empty-{fmt}"
    result = _invoke([str(world["run"]), "--to", fmt, "-o", str(out), "--status", "failed", "--field", "confidence",
                      "--field", "language"])
    assert result.exit_code == 0, result.output
    if fmt == "nemo":
        assert out.read_text() == "" and read_marker(sidecar_of(out))["n_kept"] == 0
    elif fmt == "hf":
        datasets = pytest.importorskip("datasets")
        ds = datasets.load_from_disk(str(out))
        assert len(ds) == 0
        assert ds.column_names == ["id", "audio_filepath", "offset", "duration", "text", "confidence", "language"]
        assert ds.features["confidence"] == datasets.Value("float64")
    else:
        lhotse = pytest.importorskip("lhotse")
        cuts = lhotse.load_manifest(out / "cuts.jsonl.gz")
        assert isinstance(cuts, lhotse.CutSet) and len(cuts) == 0
        assert len(lhotse.RecordingSet.from_jsonl(out / "recordings.jsonl.gz")) == 0
        assert len(lhotse.SupervisionSet.from_jsonl(out / "supervisions.jsonl.gz")) == 0
    assert "no row was kept" in result.output
