"""`transcribe-batch eval`: where a traceback or a lost file used to be, a clear message (issue 9 items 8, 9)."""

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from eval_helpers import result_row, write_run
from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.results import INPUT_DIGEST

runner = CliRunner()


def _run(tmp_path, name="a"):
    rows = [result_row(f"u{i}", "the cat sat on the mat", "the cat sat on a mat", device=i % 2, start=i)
            for i in range(4)]
    return write_run(tmp_path / "runs" / name, rows), rows


def test_report_targets_are_checked(tmp_path):
    run, _ = _run(tmp_path)
    before = (run / "results.parquet").read_bytes()
    for args, words in [(["--html", str(tmp_path / "runs")], "is a folder"),
                        (["--html", str(run / "results.parquet")], "would overwrite a run's results"),
                        (["-o", str(run / "run.json"), "-f", "json"], "would overwrite a run's results"),
                        (["-o", str(run / "results.parquet" / "x.md")], "is a file, not a folder")]:
        result = runner.invoke(app, ["eval", str(run), *args])
        assert result.exit_code == 2 and words in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert (run / "results.parquet").read_bytes() == before
    assert not [p for p in (tmp_path / "runs").rglob(".tmp-*")]
    result = runner.invoke(app, ["eval", str(run), "-f", "json", "-o", str(tmp_path / "new" / "dir" / "m.json")])
    assert result.exit_code == 0 and (tmp_path / "new" / "dir" / "m.json").is_file()


def test_unreadable_part_is_named_and_skipped(tmp_path):
    run, rows = _run(tmp_path)
    parts = run / "parts"
    parts.mkdir()
    table = pq.read_table(run / "results.parquet")
    table = table.append_column(INPUT_DIGEST, pa.array([1, 2, 3, 4], pa.int64()))
    pq.write_table(table.slice(0, 2), parts / "part-000000-aaaaaaaa.parquet")
    pq.write_table(table.slice(2, 2), parts / "part-000001-bbbbbbbb.parquet")
    data = (parts / "part-000001-bbbbbbbb.parquet").read_bytes()
    (parts / "part-000001-bbbbbbbb.parquet").write_bytes(data[: len(data) // 2])
    (run / "results.parquet").unlink()
    result = runner.invoke(app, ["eval", str(run), "-f", "json"])
    assert result.exit_code == 0, result.output
    assert "part-000001-bbbbbbbb.parquet: unreadable" in result.output and '"n_samples": 2' in result.output.replace(
        '"n_samples":2', '"n_samples": 2')


def test_runs_table_fits_80_columns(tmp_path):
    long = tmp_path / "runs" / ("a-rather-long-folder-name-" * 3) / "run-one"
    run_a, rows = _run(tmp_path)
    shutil.copytree(run_a, long)
    result = runner.invoke(app, ["eval", str(run_a), str(long)], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0
    runs_block = result.output.split("\n\n")[0].splitlines()
    assert all(len(line) <= 80 for line in result.output.splitlines())
    header = next(line for line in runs_block if "run-one" in line)
    assert "folder" not in header  # one column per run: the header names the runs, not attributes


def test_markup_in_ids_texts_and_paths_is_shown_as_text(tmp_path):
    """Bug: an id or transcript holding `[/noise]` or `[/]` crashed `eval` (read as rich markup), and a transcript
    holding `[bold red]` restyled the report."""
    rows = [result_row(f"u{i}[/]", "the [/noise] cat", "the [/noise] cat [bold red]sat", device=i % 2, start=i)
            for i in range(4)]
    rows[1].update(status="failed", pred_text=None, error_message="EngineError: [/x] gone")
    run = write_run(tmp_path / "runs" / "[red]odd", rows)
    result = runner.invoke(app, ["eval", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for literal in ("u0[/]", "the [/noise] cat [bold red]sat", "[/x] gone", "Per device — [red]odd"):
        assert literal in result.output, literal
    md = runner.invoke(app, ["eval", str(run), "-f", "markdown"]).output
    assert r"the \[/noise\] cat \[bold red\]sat" in md and r"u0\[/\]" in md
    missing = runner.invoke(app, ["eval", str(tmp_path / "runs" / "[red]nope")])
    assert missing.exit_code == 2 and "[red]nope" in missing.output, missing.output
    assert missing.exception is None or isinstance(missing.exception, SystemExit)


def test_header_words_are_never_split_at_80_columns(tmp_path):
    """Bug: at 80 columns the per-device table printed "latenc/y" and "p50/p9/0/p99" over two lines."""
    import io

    from rich.console import Console

    from transcribe_batch.pipeline.evaluate.render_text import print_rich
    from transcribe_batch.pipeline.evaluate.report import evaluate_paths
    from transcribe_batch.pipeline.evaluate.tables import all_tables

    rows = [result_row(f"u{i}", "the cat sat on the mat", "the cat sat on a mat", device=i % 3, start=i,
                       total=12.345 + i) for i in range(9)]
    a = write_run(tmp_path / "runs" / "a", rows)
    b = write_run(tmp_path / "runs" / "b", rows)
    report = evaluate_paths([a, b])
    buffer = io.StringIO()
    print_rich(report, Console(file=buffer, width=80, no_color=True))
    text = buffer.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines())
    tables = all_tables(report)
    assert any(t.key.startswith("devices-") for t in tables)
    for t in tables:
        start = text.index(t.title + " ")  # the title line, padded to the width
        section = text[start:text.index("\n\n", start)]
        for word in {w for h in t.headers for w in h.split()}:
            assert word in section, (t.title, word, section)


def test_a_failed_write_names_the_target_not_its_temporary_file(tmp_path, monkeypatch):
    """Bug: `eval -o` on a full disk said "cannot write …/.tmp-<hex>-m.json"."""
    import builtins
    import errno

    run, _ = _run(tmp_path)
    real_open = builtins.open

    def full_disk(file, mode="r", *args, **kw):
        if "w" in mode and ".tmp-" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(builtins, "open", full_disk)
    for args, target in [(["-f", "json", "-o", str(tmp_path / "m.json")], tmp_path / "m.json"),
                         (["--html", str(tmp_path / "r.html")], tmp_path / "r.html")]:
        result = runner.invoke(app, ["eval", str(run), *args])
        assert result.exit_code == 2, result.output
        assert f"cannot write {target}: No space left on device" in result.output and ".tmp-" not in result.output
        assert not target.exists()
