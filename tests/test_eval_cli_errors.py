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
