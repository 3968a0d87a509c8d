"""The run folder's life cycle without Ray: which folders are run folders, what --overwrite may delete, parts that
are damaged, and the one reader (eval, export) that never takes an earlier run's results for the folder's."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from transcribe_batch.manifests.reader import audio_stamp, input_digest, parse_line
from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.results import PartWriter, RunFolder, RunLock
from transcribe_batch.pipeline.runner import run_job
from transcribe_batch.workers.record import base_record, now

IDENTITY = {"engine": "simulated", "model_dir": None, "bmodel": None, "template": "default"}
cli = CliRunner()


def _run_json(**fields) -> dict:
    return {"status": "complete", "started_at": "2026-01-01T00:00:00+00:00", "identity": IDENTITY, "runs": [],
            **fields}


def _records(n: int, text="the quick brown fox") -> tuple[list, list]:
    """(records, their input digests) of n ok rows."""
    records, digests = [], []
    for i in range(n):
        row = parse_line(json.dumps({"id": f"u{i}", "audio_filepath": f"/a/{i}.wav", "duration": 1.0, "text": "ref"}),
                         path="m.jsonl", line=i + 1, base_dir="/")
        records.append(base_record(row, line=i + 1, status="ok", pred_text=f"{text} {i}", attempts=1,
                                   engine="simulated", started_at=now(), finished_at=now(), n_chunks=1))
        digests.append(input_digest(row, audio_stamp(row.audio_filepath)))
    return records, digests


def _results_file(path, n: int, run_id: str | None):
    table = pa.table({"id": [f"u{i}" for i in range(n)], "status": ["ok"] * n, "pred_text": ["x"] * n,
                      "audio_filepath": ["/a.wav"] * n, "offset": [0.0] * n, "duration_s": [1.0] * n})
    if run_id:
        table = table.replace_schema_metadata({"transcribe_batch.run_id": run_id})
    pq.write_table(table, path)


@pytest.mark.parametrize("content", [
    '{"my": "config"}', "null", "[1, 2]", '"a string"', '{"status": 5, "started_at": "x", "identity": {}}',
    '{"status": "complete", "started_at": "x", "identity": "engine=hf"}', '{"status": "done", "started_at": "x", '
    '"identity": {}}', '{"status": "complete", "started_at": "x", "identity": {}, "runs": [1]}', '{"status": "comp',
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_run_json_no_run_wrote_makes_the_folder_someone_elses(tmp_path, content, overwrite):
    """A user's folder with its own run.json, or a run.json that is null, an array, a string, of wrong types or cut
    off: refused with a message naming the file and the problem (never a traceback), with or without --overwrite,
    and nothing in the folder changes."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "run.json").write_text(content)
    (folder / "data.csv").write_text("keep me")
    result = cli.invoke(app, ["run", str(manifest), "-o", str(folder), "--engine", "simulated", "--devices", "1",
                              *(["--overwrite"] if overwrite else [])])
    assert result.exit_code == 2, result.output
    assert "is not a run folder" in result.output and "run.json: not a run's run.json" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in folder.iterdir()) == ["data.csv", "run.json"]
    assert (folder / "run.json").read_text() == content


def test_overwrite_deletes_only_names_runs_write(tmp_path):
    """--overwrite in a run folder deletes run.json, results.parquet, progress.jsonl, parts/part-…, logs/<engine>-
    device<N>.log and the exact temporary names runs use, and nothing else: not a user's .tmp-mine, .tmp-userdir/,
    logs/mine.log or parts/notes.txt."""
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")  # no rows: the run needs no Ray
    out = RunFolder(tmp_path / "out")
    out.path.mkdir()
    (out.run_json).write_text(json.dumps(_run_json(identity={**IDENTITY, "engine": "hf"})))
    PartWriter(out, 0).flush()
    w = PartWriter(out, 0)
    w.add(*_records(3))
    w.flush()
    part = out.part_files()[0]
    run_files = [out.progress_log, out.logs / "bm1684x-device0.log", out.path / f".tmp-{'a' * 32}-run.json",
                 out.parts / f".tmp-{'b' * 32}-part-000007-0123abcd.parquet",
                 out.path / f".tmp-merge-{'c' * 32}" / "bucket-000000.arrows",
                 out.parts / "part-000003-00ff00ff.parquet.unreadable"]
    user_files = [out.path / ".tmp-mine", out.path / ".tmp-userdir" / "important", out.logs / "mine.log",
                  out.parts / "notes.txt", out.path / "README.txt", out.logs / "bm1684x-device0.log.bak"]
    for p in run_files + user_files:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    _results_file(out.results, 3, None)
    summary = run_job(build_config(manifest, out.path, engine="simulated", devices="1", overwrite=True, quiet=True))
    assert summary.status == "complete" and summary.n_resumed == 0
    assert all(p.read_text() == "x" for p in user_files)
    assert [p for p in run_files + [part, run_files[4].parent] if p.exists() and p != out.progress_log] == []
    assert out.progress_log.read_text() != "x"  # this run's own
    assert json.loads(out.run_json.read_text())["identity"]["engine"] == "simulated"


def test_a_refused_run_changes_nothing_in_a_run_folder(tmp_path):
    """A bad manifest after --overwrite was asked: the refusal comes before anything is deleted."""
    out = RunFolder(tmp_path / "out")
    out.path.mkdir()
    out.run_json.write_text(json.dumps(_run_json()))
    w = PartWriter(out, 0)
    w.add(*_records(2))
    w.flush()
    _results_file(out.results, 2, None)
    before = {p: p.read_bytes() for p in out.path.rglob("*") if p.is_file()}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("{not json\n")
    result = cli.invoke(app, ["run", str(manifest), "-o", str(out.path), "--engine", "simulated", "--overwrite"])
    assert result.exit_code == 2 and "m.jsonl:1" in result.output, result.output
    assert {p: p.read_bytes() for p in out.path.rglob("*") if p.is_file()} == before


def test_a_damaged_page_is_found_never_read_as_other_values(tmp_path):
    """Parts carry page checksums: one flipped bit in a transcript ('quick' -> 'Quick') is an unreadable part, where
    a reader that does not verify them gets the changed text."""
    from transcribe_batch.pipeline.results import PartUnreadable, read_part

    folder = RunFolder(tmp_path / "run")
    w = PartWriter(folder, 0)
    w.add(*_records(20))
    w.flush()
    part = folder.part_files()[0]
    data = bytearray(part.read_bytes())
    at = data.find(b"quick")
    data[at] ^= 0x20
    part.write_bytes(bytes(data))
    assert pq.read_table(part)["pred_text"][0].as_py() == "the Quick brown fox 0"
    with pytest.raises(PartUnreadable, match="CRC checksum verification failed"):
        read_part(part)


def test_results_of_an_earlier_run_are_not_the_folders(tmp_path):
    """results.parquet carries the run_id of the run that merged it; a folder whose latest run is another (it did
    not complete) has no results to export."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(_run_json(status="interrupted", run_id="b" * 32,
                                                       counts={"rows": 1, "total": 3})))
    _results_file(run / "results.parquet", 3, "a" * 32)
    result = cli.invoke(app, ["export", str(run), "-o", str(tmp_path / "labels.jsonl")])
    assert result.exit_code == 2 and "is not the results of its latest run" in result.output
    from transcribe_batch.pipeline.results import ResultsError, open_results

    with pytest.raises(ResultsError, match=r"results.parquet is not the results of its latest run .*interrupted, 1 of "
                                           r"3 rows have a result: run the same `transcribe-batch run"):
        open_results(run)
    (run / "run.json").write_text(json.dumps(_run_json(status="complete", run_id="b" * 32)))  # complete, other id
    with pytest.raises(ResultsError, match="not the results of its latest run"):
        open_results(run / "results.parquet")
    (run / "run.json").write_text(json.dumps(_run_json(status="complete", run_id="a" * 32)))
    assert open_results(run).state == "complete" and open_results(run).n_rows == 3


def test_a_folder_from_before_run_ids_is_read_when_its_run_completed(tmp_path):
    from transcribe_batch.pipeline.results import ResultsError, open_results

    run = tmp_path / "run"
    run.mkdir()
    _results_file(run / "results.parquet", 2, None)
    (run / "run.json").write_text(json.dumps(_run_json(status="complete")))
    assert open_results(run).state == "complete"
    (run / "run.json").write_text(json.dumps(_run_json(status="interrupted")))
    with pytest.raises(ResultsError, match="not the results of its latest run"):
        open_results(run)


def test_a_folder_a_run_is_writing_now(tmp_path):
    """While a run holds the folder (.lock of a live process), export refuses with 'wait for it'; eval reads the rows
    finished so far and says a run is writing the folder."""
    from transcribe_batch.pipeline.results import ResultsError, open_results

    manifest = tmp_path / "m.jsonl"
    rows = [{"id": f"u{i}", "audio_filepath": f"/a/{i}.wav", "duration": 1.0, "text": "ref"} for i in range(4)]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = RunFolder(tmp_path / "run")
    lock = RunLock(folder)
    try:
        folder.run_json.write_text(json.dumps(_run_json(status="running", run_id="c" * 32, manifest=str(manifest))))
        w = PartWriter(folder, 0)
        w.add(*_records(2, text="ref"))
        w.flush()
        result = cli.invoke(app, ["eval", str(folder.path), "-f", "json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["runs"][0]["accuracy"]["n_samples"] == 2
        assert any("a run is writing" in n for n in data["runs"][0]["notes"])
        with pytest.raises(ResultsError, match=f"a run is writing .* now \\(pid {os.getpid()} on .*wait for it"):
            open_results(folder.path)
    finally:
        lock.release()
    # the process holding the lock is gone (a killed run): what is left is an unfinished run, not one in progress
    (folder.path / ".lock").write_text("pid 999999999 on " + os.uname().nodename + "\n")
    with pytest.raises(ResultsError, match="stopped without a word"):
        open_results(folder.path)
