"""Reruns into the same output folder (issue 9): the results are exactly the current manifest's rows, in its order,
with its fields; earlier work is reused only for rows whose id, audio and prompt are unchanged; the folder is checked
before anything is written or deleted."""

import json
import os

import pyarrow.parquet as pq
import pytest

from manifest_helpers import write_manifest
from transcribe_batch.manifests.reader import ManifestError
from transcribe_batch.pipeline import runner as runner_module
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.plan import ManifestChanged
from transcribe_batch.pipeline.results import ResumeError
from transcribe_batch.pipeline.runner import run_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_cluster")]


def _run(manifest, out, **kw):
    settings = dict(engine="simulated", devices="2", sim_speedup=4000, shard_size=3, quiet=True)
    settings.update(kw)
    return run_job(build_config(manifest, out, **settings))


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _results(out):
    return pq.read_table(out / "results.parquet").to_pylist()


def test_removed_inserted_and_edited_rows(tmp_path, audio_dir):
    m, out = tmp_path / "m.jsonl", tmp_path / "out"
    rows = write_manifest(m, audio_dir, limit=8)
    first = _run(m, out)
    assert first.n_ok == 8
    before = {r["id"]: r for r in _results(out)}
    new = [dict(r) for r in rows[2:]]  # two removed
    new.insert(1, {**rows[0], "id": "inserted"})  # a new row in the middle: lines shift
    new[3]["text"] = "a corrected reference"  # the reference changed: reused, new text
    new[4]["offset"], new[4]["duration"] = 0.5, new[4]["duration"] - 0.5  # the audio window changed: redone
    new[5]["speaker"] = "new field"
    _write(m, new)
    again = _run(m, out)
    got = _results(out)
    assert [r["id"] for r in got] == [r["id"] for r in new]
    assert [r["line"] for r in got] == list(range(1, len(new) + 1))
    assert got[3]["text"] == "a corrected reference" and got[3]["pred_text"] == before[new[3]["id"]]["pred_text"]
    assert got[4]["offset"] == 0.5 and got[4]["status"] == "ok"
    assert got[4]["started_at"] > before[new[4]["id"]]["started_at"]
    assert got[5]["speaker"] == "new field"
    assert again.n_rows == len(new) and again.n_resumed == len(new) - 2  # the inserted and the re-cut row
    assert {r["id"] for r in got}.isdisjoint({rows[0]["id"], rows[1]["id"]})


def test_another_manifest_into_the_folder_gives_its_rows_only(tmp_path, audio_dir):
    a, b, out = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "out"
    rows_a = write_manifest(a, audio_dir, limit=4)
    rows_b = write_manifest(b, audio_dir, repeat=2, limit=3)
    _run(a, out)
    summary = _run(b, out)
    assert [r["id"] for r in _results(out)] == [r["id"] for r in rows_b]
    shared = {r["id"] for r in rows_a} & {r["id"] for r in rows_b}  # same id and audio: reused
    assert summary.n_resumed == len(shared) == 3 and summary.n_rows == len(rows_b) != len(rows_a)
    log = (out / "progress.jsonl").read_text()
    assert "other_manifest" in log and "stale" in log


def test_fixed_bad_line_and_ids_that_look_like_bad_line_records(tmp_path, audio_dir):
    m, out = tmp_path / "m.jsonl", tmp_path / "out"
    rows = write_manifest(m, audio_dir, limit=2)
    good = {**rows[0], "id": "bad-line-2"}  # a real id that looks like a bad line's record
    _write(m, [good, "{broken", rows[1]])
    first = _run(m, out, skip_bad_lines=True)
    got = _results(out)
    assert len(got) == 3 == first.n_rows and len({r["id"] for r in got}) == 3
    assert [r["status"] for r in got] == ["ok", "failed", "ok"]
    _write(m, [good, {**rows[0], "id": "fixed"}, rows[1]])  # line 2 fixed
    _run(m, out, skip_bad_lines=True)
    got = _results(out)
    assert [r["id"] for r in got] == ["bad-line-2", "fixed", rows[1]["id"]]
    assert all(r["status"] == "ok" for r in got)


def test_manifest_rewritten_during_the_run_stops_it(tmp_path, audio_dir, monkeypatch):
    """Same line lengths, ids rotated, mtime put back: every row read back is checked against the plan."""
    m, out = tmp_path / "m.jsonl", tmp_path / "out"
    rows = [{**r, "id": f"r{k:02d}"} for k, r in enumerate(write_manifest(m, audio_dir, repeat=2))]
    _write(m, rows)
    build = runner_module.build_plan

    def build_then_rotate(*args, **kw):
        plan = build(*args, **kw)
        st = os.stat(m)
        ids = [r["id"] for r in rows]
        _write(m, [{**r, "id": i} for r, i in zip(rows, ids[1:] + ids[:1])])
        os.utime(m, ns=(st.st_atime_ns, st.st_mtime_ns))
        return plan

    monkeypatch.setattr(runner_module, "build_plan", build_then_rotate)
    with pytest.raises(ManifestChanged, match="changed during the run"):
        _run(m, out)
    assert not (out / "results.parquet").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    monkeypatch.setattr(runner_module, "build_plan", build)
    final = _run(m, out)
    got = _results(out)
    current = [json.loads(line) for line in m.read_text().splitlines()]
    assert [r["id"] for r in got] == [c["id"] for c in current] and final.status == "complete"
    assert [r["text"] for r in got] == [c.get("text") for c in current]
    assert all(r["status"] == "ok" for r in got)


def test_manifest_appended_during_the_run_stops_it(tmp_path, audio_dir, monkeypatch):
    m, out = tmp_path / "m.jsonl", tmp_path / "out"
    rows = write_manifest(m, audio_dir, limit=6)
    build = runner_module.build_plan

    def build_then_append(*args, **kw):
        plan = build(*args, **kw)
        with open(m, "a") as f:
            f.write(json.dumps({**rows[0], "id": "late"}) + "\n")
        return plan

    monkeypatch.setattr(runner_module, "build_plan", build_then_append)
    with pytest.raises(ManifestChanged):
        _run(m, out)
    monkeypatch.setattr(runner_module, "build_plan", build)
    _run(m, out)
    assert [r["id"] for r in _results(out)] == [r["id"] for r in rows] + ["late"]


def test_overwrite_deletes_only_what_runs_write(tmp_path, audio_dir):
    m = tmp_path / "m.jsonl"
    write_manifest(m, audio_dir, limit=3)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "important.csv").write_text("keep me")
    for kw in ({}, {"overwrite": True}):
        with pytest.raises(ResumeError, match=r"not a run folder \(it holds important.csv"):
            _run(m, plain, **kw)
    assert sorted(p.name for p in plain.iterdir()) == ["important.csv"]  # no .lock, no parts/
    out = tmp_path / "out"
    _run(m, out)
    (out / "parts" / "notes.txt").write_text("mine")
    (out / "README.txt").write_text("mine too")
    again = _run(m, out, overwrite=True, sim_text="other")
    assert again.n_resumed == 0 and {r["pred_text"] for r in _results(out)} == {"other"}
    assert (out / "parts" / "notes.txt").read_text() == "mine" and (out / "README.txt").exists()


def test_refused_runs_leave_nothing_behind(tmp_path, audio_dir):
    m = tmp_path / "m.jsonl"
    write_manifest(m, audio_dir, limit=2)
    m.write_text(m.read_text() + "{broken\n")
    with pytest.raises(ManifestError):
        _run(m, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    out = tmp_path / "out"
    _run(m, out, skip_bad_lines=True)
    names = sorted(p.name for p in out.iterdir())
    with pytest.raises(ResumeError, match="different run"):
        _run(m, out, skip_bad_lines=True, sim_text="x")
    assert sorted(p.name for p in out.iterdir()) == names and ".lock" not in names


def test_output_under_a_file_is_a_clear_error(tmp_path, audio_dir):
    m = tmp_path / "m.jsonl"
    write_manifest(m, audio_dir, limit=1)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ResumeError, match=r"cannot make a run folder there, .*/f is a file"):
        _run(m, tmp_path / "f" / "out")


def test_truncated_part_is_set_aside_and_its_rows_redone(tmp_path, audio_dir):
    m, out = tmp_path / "m.jsonl", tmp_path / "out"
    rows = write_manifest(m, audio_dir, limit=6)
    _run(m, out)
    part = sorted((out / "parts").glob("part-*.parquet"))[0]
    n_lost = pq.read_metadata(part).num_rows
    part.write_bytes(part.read_bytes()[:100])
    (out / "results.parquet").unlink()
    again = _run(m, out)
    assert again.n_resumed == len(rows) - n_lost and again.n_ok == len(rows)
    assert (part.parent / (part.name + ".unreadable")).exists()
    assert "renamed to" in (out / "progress.jsonl").read_text()


def test_full_disk_is_a_message_and_run_json_does_not_stay_running(tmp_path, audio_dir, monkeypatch):
    import errno

    from typer.testing import CliRunner

    from transcribe_batch.pipeline.cli import app
    from transcribe_batch.pipeline.results import atomic, parts

    m, out = tmp_path / "m.jsonl", tmp_path / "out"
    write_manifest(m, audio_dir, limit=4)

    def full(table, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def no_room(path, data):  # no room for a temporary copy of run.json either
        if path.name == "run.json" and path.exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data)

    real_write = atomic.atomic_write_bytes
    monkeypatch.setattr(parts, "write_parquet_atomic", full)
    monkeypatch.setattr(atomic, "atomic_write_bytes", no_room)
    result = CliRunner().invoke(app, ["run", str(m), "-o", str(out), "--engine", "simulated", "--devices", "2",
                                      "--sim-speedup", "4000", "-q"])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "failed"
    run = json.loads((out / "run.json").read_text())  # written in place: the atomic copy had no room
    assert run["status"] == "failed" and "No space left" in run["error"]
    assert not list(out.glob(".tmp-*")) and not list((out / "parts").glob(".tmp-*") if (out / "parts").exists() else [])
    monkeypatch.undo()
    assert _run(m, out).status == "complete"


def test_results_of_an_earlier_run_are_never_read_as_current(tmp_path, audio_dir, monkeypatch):
    """Issue 16 item 2: a finished run, then the manifest changes (rows removed, rows added) and the rerun is
    interrupted: eval must not score the old results.parquet (removed rows included) and export must not export it."""
    from typer.testing import CliRunner

    from transcribe_batch.pipeline.cli import app

    m, out = tmp_path / "m.jsonl", tmp_path / "out"
    rows = write_manifest(m, audio_dir, limit=8)
    assert _run(m, out).n_ok == 8
    new = rows[3:] + [{**rows[0], "id": "added-1"}, {**rows[1], "id": "added-2"}]  # 3 removed, 2 added
    _write(m, new)

    def stopped(self):
        raise KeyboardInterrupt("SIGTERM")

    with monkeypatch.context() as patch:
        patch.setattr(runner_module.Scheduler, "run", stopped)
        with pytest.raises(KeyboardInterrupt):
            _run(m, out)
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    cli = CliRunner()
    ev = cli.invoke(app, ["eval", str(out), "-f", "json"])
    assert ev.exit_code == 0, ev.output
    data = json.loads(ev.stdout)["runs"][0]
    assert data["accuracy"]["n_samples"] == 5 and data["n_rows"] == 5  # the current rows that have a result
    assert any("unfinished run" in n for n in data["notes"])
    ex = cli.invoke(app, ["export", str(out), "-o", str(tmp_path / "labels.jsonl")])
    assert ex.exit_code == 2 and "has not finished" in ex.output and not (tmp_path / "labels.jsonl").exists()
    assert _run(m, out).n_rows == 7
    ex = cli.invoke(app, ["export", str(out), "-o", str(tmp_path / "labels.jsonl")])
    assert ex.exit_code == 0, ex.output
    exported = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(exported) == 7


def _damage(part, column: str, at: str) -> None:
    """Overwrite 200 bytes of `part` inside `column`'s chunk: at its page header ("header": the file can no longer be
    parsed there), or in its page data ("data")."""
    meta = pq.ParquetFile(part).metadata.row_group(0)
    chunk = next(meta.column(j) for j in range(meta.num_columns) if meta.column(j).path_in_schema == column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    offset = start if at == "header" else start + chunk.total_compressed_size // 2
    data = bytearray(part.read_bytes())
    size = min(200, chunk.total_compressed_size // 3) if at == "data" else 200
    data[offset:offset + size] = bytes((b + 1) % 256 for b in data[offset:offset + size])
    part.write_bytes(bytes(data))


@pytest.mark.parametrize("at", ["header", "data"])
def test_part_damaged_in_its_middle_is_set_aside_and_its_rows_redone(tmp_path, audio_dir, at):
    """Issue 16 item 3: 200 bytes overwritten inside a part (its input-digest and status columns still read): the
    next run must find it (it reads every page, with checksums), set it aside and redo its rows, not fail at the
    merge for ever, nor merge changed values."""
    m, out = tmp_path / "m.jsonl", tmp_path / "out"
    rows = write_manifest(m, audio_dir, limit=6)
    _run(m, out)
    reference = {r["id"]: r["pred_text"] for r in _results(out)}
    part = sorted((out / "parts").glob("part-*.parquet"))[0]
    n_lost = pq.read_metadata(part).num_rows
    _damage(part, "raw_text", at)
    again = _run(m, out)
    assert again.status == "complete" and again.n_resumed == len(rows) - n_lost and again.n_ok == len(rows)
    assert (part.parent / (part.name + ".unreadable")).exists() and not part.exists()
    assert {r["id"]: r["pred_text"] for r in _results(out)} == reference
    assert "renamed to" in (out / "progress.jsonl").read_text()


def test_bad_devices_in_a_new_folder_leave_nothing(tmp_path, audio_dir, ray_cluster):
    """Issue 16 item 10: --devices is checked against the cluster before the run claims the folder."""
    from typer.testing import CliRunner

    from transcribe_batch.pipeline.cli import app

    m = tmp_path / "m.jsonl"
    write_manifest(m, audio_dir, limit=2)
    result = CliRunner().invoke(app, ["run", str(m), "-o", str(tmp_path / "new"), "--engine", "simulated",
                                      "--devices", "0", "--address", ray_cluster])
    assert result.exit_code == 2 and "need at least one device" in result.output, result.output
    assert not (tmp_path / "new").exists()


def _own_audio(tmp_path, audio_dir, names):
    """Copies of shared recordings in tmp_path (so that a test may replace them) and a manifest of them."""
    import shutil

    (tmp_path / "audio").mkdir()
    rows = []
    for k, name in enumerate(names):
        shutil.copy(audio_dir / name, tmp_path / "audio" / f"a{k}.wav")
        rows.append({"id": f"a{k}", "audio_filepath": f"audio/a{k}.wav", "text": f"words {k}"})
    _write(tmp_path / "m.jsonl", rows)
    return tmp_path / "m.jsonl", [tmp_path / "audio" / f"a{k}.wav" for k in range(len(names))]


def test_audio_replaced_at_the_same_path_is_redone(tmp_path, audio_dir):
    """Issue 16 item 10: a result answers the audio file as it was (size, mtime), not just its path."""
    m, files = _own_audio(tmp_path, audio_dir, ["001.wav", "002.wav", "003.wav"])
    out = tmp_path / "out"
    _run(m, out)
    before = {r["id"]: r for r in _results(out)}
    tmp = files[1].with_suffix(".new")
    tmp.write_bytes((audio_dir / "beckett.wav").read_bytes())
    os.replace(tmp, files[1])  # another recording under the same name
    again = _run(m, out)
    got = {r["id"]: r for r in _results(out)}
    assert again.status == "complete" and again.n_resumed == 2
    assert got["a1"]["started_at"] > before["a1"]["started_at"]  # redone
    assert got["a1"]["duration_s"] != pytest.approx(before["a1"]["duration_s"], abs=0.01)  # on the new audio
    assert [got[k]["started_at"] for k in ("a0", "a2")] == [before[k]["started_at"] for k in ("a0", "a2")]
    os.utime(files[2])  # touched (same bytes, new mtime): redone too, it cannot be told from a replaced file
    assert _run(m, out).n_resumed == 2


def test_audio_replaced_during_the_run_is_not_a_changed_manifest(tmp_path, audio_dir, monkeypatch):
    m, files = _own_audio(tmp_path, audio_dir, ["001.wav", "002.wav"])
    out = tmp_path / "out"
    build = runner_module.build_plan

    def build_then_replace_audio(*args, **kw):
        plan = build(*args, **kw)
        files[0].write_bytes((audio_dir / "003.wav").read_bytes())
        return plan

    monkeypatch.setattr(runner_module, "build_plan", build_then_replace_audio)
    first = _run(m, out)
    assert first.status == "complete" and first.n_ok == 2  # the manifest did not change: no ManifestChanged
    monkeypatch.setattr(runner_module, "build_plan", build)
    assert _run(m, out).n_resumed == 1  # what ran on audio replaced after planning is redone by the next run
