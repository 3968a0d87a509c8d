import pyarrow.parquet as pq
import pytest

from transcribe_batch.manifests.reader import id_digest
from transcribe_batch.pipeline.results import (PartWriter, ResumeError, RunFolder, lock_run_folder, merge_results,
                                               open_run_folder, write_json)
from transcribe_batch.workers.record import COLUMNS, PART_SCHEMA, base_record, failed_record, now

IDENTITY = {"engine": "simulated", "model_dir": None, "template": "default"}


def _ok(i: int, **extra) -> dict:
    row = {"id": f"u{i}", "audio_filepath": f"/a/{i}.wav", "offset": 0.0, "duration": 1.0 + i, "text": f"ref {i}",
           "prompt": None, "task": None, "language": None, **extra}
    rec = base_record(row, line=i + 1)
    rec.update(status="ok", pred_text=f"hyp {i}", attempts=1, engine="simulated", device=i % 2, node="n",
               started_at=now(), finished_at=now(), n_chunks=1)
    return rec


def test_parts_are_atomic_and_merge_is_in_input_order(tmp_path):
    folder = RunFolder(tmp_path / "run")
    state = open_run_folder(folder, IDENTITY)
    assert state.n_done == 0 and state.next_seq == 0
    w = PartWriter(folder, state.next_seq, flush_rows=3, flush_s=3600)
    for i in (5, 3, 9, 0, 1, 7, 2):  # finishing order != input order
        w.add([_ok(i)])
    w.flush()
    parts = folder.part_files()
    assert len(parts) == 3 and not list(folder.parts.glob(".tmp-*"))
    assert all(pq.read_schema(p).equals(PART_SCHEMA) for p in parts)
    table = merge_results(folder)
    assert table["id"].to_pylist() == ["u0", "u1", "u2", "u3", "u5", "u7", "u9"]
    assert pq.read_table(folder.results).num_rows == 7


def test_manifest_fields_become_columns(tmp_path):
    folder = RunFolder(tmp_path / "run")
    open_run_folder(folder, IDENTITY)
    w = PartWriter(folder, 0)
    w.add([_ok(0, speaker=3, source="a", mixed=1, status="x"), _ok(1, speaker=4, mixed="two"), _ok(2)])
    w.flush()
    t = merge_results(folder)
    assert t["speaker"].to_pylist() == [3, 4, None]
    assert t["source"].to_pylist() == ["a", None, None]
    assert t["mixed"].to_pylist() == ["1", '"two"', None]  # mixed types stay readable as JSON text
    assert t["manifest_status"].to_pylist() == ["x", None, None]  # never shadows a result column
    assert t["status"].to_pylist() == ["ok"] * 3
    assert "manifest_extra" not in t.column_names
    assert t.column_names[: len(COLUMNS) - 1] == [c for c in COLUMNS if c != "manifest_extra"]


def test_resume_reads_done_ids_and_cleans_temp_files(tmp_path):
    folder = RunFolder(tmp_path / "run")
    open_run_folder(folder, IDENTITY)
    write_json(folder.run_json, {"identity": IDENTITY})
    w = PartWriter(folder, 0)
    row = {"id": "u9", "audio_filepath": "/a/9.wav"}
    w.add([_ok(0), _ok(1), failed_record(row, 10, RuntimeError("boom"), attempts=3)])
    w.flush()
    (folder.parts / ".tmp-deadbeef-part-000009.parquet").write_bytes(b"half a file")
    state = open_run_folder(folder, IDENTITY)
    assert not list(folder.parts.glob(".tmp-*"))
    assert state.n_done == 3 and state.n_ok == 2 and state.n_failed == 1 and state.next_seq == 1
    assert set(state.done_digests.tolist()) == {id_digest(i) for i in ("u0", "u1", "u9")}
    again = open_run_folder(folder, IDENTITY, retry_failed=True)
    assert set(again.done_digests.tolist()) == {id_digest(i) for i in ("u0", "u1")}
    # a redone row replaces its failed record in the merge
    w2 = PartWriter(folder, again.next_seq)
    w2.add([_ok(9)])
    w2.flush()
    t = merge_results(folder)
    assert t["id"].to_pylist() == ["u0", "u1", "u9"] and t["status"].to_pylist() == ["ok"] * 3


def test_identity_change_refused_unless_overwrite(tmp_path):
    folder = RunFolder(tmp_path / "run")
    open_run_folder(folder, IDENTITY)
    write_json(folder.run_json, {"identity": IDENTITY})
    w = PartWriter(folder, 0)
    w.add([_ok(0)])
    w.flush()
    other = {**IDENTITY, "engine": "hf", "template": "verbatim"}
    with pytest.raises(ResumeError, match=r"engine: 'simulated' -> 'hf'.*template: 'default' -> 'verbatim'.*--overwrite"):
        open_run_folder(folder, other)
    state = open_run_folder(folder, other, overwrite=True)
    assert state.n_done == 0 and folder.part_files() == [] and not folder.run_json.exists()


def test_empty_run_merges_to_an_empty_table(tmp_path):
    folder = RunFolder(tmp_path / "run")
    open_run_folder(folder, IDENTITY)
    assert merge_results(folder).num_rows == 0
    assert pq.read_table(folder.results).schema.names == [c for c in COLUMNS if c != "manifest_extra"]


def test_one_run_per_folder(tmp_path):
    folder = RunFolder(tmp_path / "run")
    held = lock_run_folder(folder)
    with pytest.raises(ResumeError, match=r"in use by another run \(pid \d+ on "):
        lock_run_folder(folder)
    held.close()  # the run ended (also what the OS does when a process is killed)
    lock_run_folder(folder).close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResumeError, match="not a folder"):
        lock_run_folder(RunFolder(tmp_path / "file"))
