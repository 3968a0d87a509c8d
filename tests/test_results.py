import json

import pyarrow.parquet as pq
import pytest

from transcribe_batch.manifests.reader import audio_stamp, input_digest, parse_line
from transcribe_batch.pipeline.plan import build_plan
from transcribe_batch.pipeline.results import (INPUT_DIGEST, RUN_PART_SCHEMA, PartWriter, ResumeError, RunFolder,
                                               claim_run_folder, lock_run_folder, merge_results, open_run_folder,
                                               write_json)
from transcribe_batch.workers.record import COLUMNS, base_record, failed_record, now

IDENTITY = {"engine": "simulated", "model_dir": None, "template": "default"}


def _line(i: int, **extra) -> dict:
    return {"id": f"u{i}", "audio_filepath": f"/a/{i}.wav", "duration": 1.0 + i, "text": f"ref {i}", **extra}


def _row(i: int, **extra):
    return parse_line(json.dumps(_line(i, **extra)), path="m.jsonl", line=i + 1, base_dir="/")


def _digest(row) -> int:
    return input_digest(row, audio_stamp(row.audio_filepath))


def _ok(i: int, **extra) -> tuple:
    """(record, input digest) of an ok result for row i."""
    row = _row(i, **extra)
    return base_record(row, line=i + 1, status="ok", pred_text=f"hyp {i}", attempts=1, engine="simulated",
                       device=i % 2, node="n", started_at=now(), finished_at=now(), n_chunks=1), _digest(row)


def _failed(i: int, **extra) -> tuple:
    row = _row(i, **extra)
    return failed_record(row, i + 1, "boom", attempts=3), _digest(row)


def _add(writer: PartWriter, *results: tuple) -> None:
    writer.add([rec for rec, _ in results], [digest for _, digest in results])


def _folder(tmp_path) -> RunFolder:
    (tmp_path / "run").mkdir()  # (a run creates it when it takes the lock)
    return RunFolder(tmp_path / "run")


def _run_json(identity=IDENTITY, **fields) -> dict:
    """The keys and types every run.json has (results/run_json.py)."""
    return {"status": "complete", "started_at": "2026-01-01T00:00:00+00:00", "identity": identity, **fields}


def _manifest(path, lines: list) -> "Plan":  # noqa: F821
    """Write manifest lines (dicts, or raw strings for bad lines) and plan it."""
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return build_plan(path, skip_bad_lines=True)


def _plan(tmp_path, ids, **extra_of) -> "Plan":  # noqa: F821
    return _manifest(tmp_path / "m.jsonl", [_line(i, **extra_of.get(f"u{i}", {})) for i in ids])


def test_parts_are_atomic_and_merge_is_in_input_order(tmp_path):
    folder = _folder(tmp_path)
    state = open_run_folder(folder, IDENTITY)
    assert len(state.done_inputs) == 0 and state.next_seq == 0
    w = PartWriter(folder, state.next_seq, flush_rows=3, flush_s=3600)
    for i in (5, 3, 9, 0, 1, 7, 2):  # finishing order != input order
        _add(w, _ok(i))
    w.flush()
    parts = folder.part_files()
    assert len(parts) == 3 and not list(folder.parts.glob(".tmp-*"))
    assert all(pq.read_schema(p).equals(RUN_PART_SCHEMA) for p in parts)
    merged = merge_results(folder, _plan(tmp_path, range(10)))
    table = pq.read_table(folder.results)
    assert table["id"].to_pylist() == ["u0", "u1", "u2", "u3", "u5", "u7", "u9"]
    assert (merged.n_rows, merged.n_ok, merged.n_failed) == (7, 7, 0)
    assert merged.audio_s == pytest.approx(sum(1.0 + i for i in (5, 3, 9, 0, 1, 7, 2)))
    assert not [p for p in folder.path.iterdir() if p.name.startswith(".tmp")]


def test_manifest_fields_become_columns(tmp_path):
    folder = _folder(tmp_path)
    open_run_folder(folder, IDENTITY)
    w = PartWriter(folder, 0)
    extras = {"u0": dict(speaker=3, source="a", mixed=1, status="x"), "u1": dict(speaker=4, mixed="two")}
    _add(w, _ok(0), _ok(1), _ok(2))  # the merge takes the manifest's fields as they are now
    w.flush()
    merge_results(folder, _plan(tmp_path, range(3), **extras))
    t = pq.read_table(folder.results)
    assert t["speaker"].to_pylist() == [3, 4, None]
    assert t["source"].to_pylist() == ["a", None, None]
    assert t["mixed"].to_pylist() == ["1", '"two"', None]  # mixed types stay readable as JSON text
    assert t["manifest_status"].to_pylist() == ["x", None, None]  # never shadows a result column
    assert t["status"].to_pylist() == ["ok"] * 3
    assert "manifest_extra" not in t.column_names
    assert t.column_names[: len(COLUMNS) - 1] == [c for c in COLUMNS if c != "manifest_extra"]


def test_resume_reads_done_ids_and_claiming_cleans_only_run_temp_files(tmp_path):
    folder = _folder(tmp_path)
    open_run_folder(folder, IDENTITY)
    write_json(folder.run_json, _run_json())
    w = PartWriter(folder, 0)
    _add(w, _ok(0), _ok(1), _failed(9))
    w.flush()
    leftover = folder.parts / f".tmp-{'ab' * 16}-part-000009-c0ffee00.parquet"  # a write cut off by a crash
    leftover.write_bytes(b"half a file")
    (folder.parts / ".tmp-mine").write_text("a user's")
    state = open_run_folder(folder, IDENTITY)
    assert leftover.exists()  # checking changes nothing
    assert state.next_seq == 1
    assert set(state.done_inputs.tolist()) == {_digest(_row(i)) for i in (0, 1, 9)}
    assert state.failed_inputs.tolist() == [_digest(_row(9))]
    claim_run_folder(folder, state, _run_json(status="running"))
    assert not leftover.exists() and (folder.parts / ".tmp-mine").read_text() == "a user's"
    again = open_run_folder(folder, IDENTITY, retry_failed=True)
    assert set(again.done_inputs.tolist()) == {_digest(_row(i)) for i in (0, 1)}
    # a redone row replaces its failed record in the merge
    w2 = PartWriter(folder, again.next_seq)
    _add(w2, _ok(9))
    w2.flush()
    merged = merge_results(folder, _plan(tmp_path, (0, 1, 9)))
    t = pq.read_table(folder.results)
    assert t["id"].to_pylist() == ["u0", "u1", "u9"] and t["status"].to_pylist() == ["ok"] * 3
    assert merged.n_rows == 3 and merged.n_ok == 3


def test_identity_change_refused_unless_overwrite(tmp_path):
    folder = _folder(tmp_path)
    open_run_folder(folder, IDENTITY)
    write_json(folder.run_json, _run_json())
    w = PartWriter(folder, 0)
    _add(w, _ok(0))
    w.flush()
    other = {**IDENTITY, "engine": "hf", "template": "verbatim"}
    with pytest.raises(ResumeError, match=r"engine: 'simulated' -> 'hf'.*template: 'default' -> 'verbatim'.*--overwrite"):
        open_run_folder(folder, other)
    state = open_run_folder(folder, other, overwrite=True)
    assert len(state.done_inputs) == 0 and len(folder.part_files()) == 1  # nothing deleted before the run starts
    claim_run_folder(folder, state, _run_json(other, status="running"), overwrite=True)
    assert folder.part_files() == [] and folder.read_run_json()["identity"] == other


def test_empty_run_merges_to_an_empty_table(tmp_path):
    folder = _folder(tmp_path)
    open_run_folder(folder, IDENTITY)
    assert merge_results(folder, _plan(tmp_path, [])).n_rows == 0
    assert pq.read_table(folder.results).num_rows == 0
    assert pq.read_table(folder.results).schema.names == [c for c in COLUMNS if c != "manifest_extra"]


def test_one_run_per_folder(tmp_path):
    folder = _folder(tmp_path)
    held = lock_run_folder(folder)
    with pytest.raises(ResumeError, match=r"in use by another run \(pid \d+ on "):
        lock_run_folder(folder)
    held.close()  # the run ended (also what the OS does when a process is killed)
    lock_run_folder(folder).close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResumeError, match="not a folder"):
        lock_run_folder(RunFolder(tmp_path / "file"))


def test_streaming_merge_matches_the_whole_table_in_memory(tmp_path, monkeypatch):
    """Many small buckets, rows finishing out of order, records replaced by later ones, manifest fields whose types
    differ between parts: the output is what sorting the whole table by line would give."""
    import json
    import random

    from transcribe_batch.pipeline.results import merge

    monkeypatch.setattr(merge, "MERGE_BUCKET_ROWS", 7)
    folder = _folder(tmp_path)
    open_run_folder(folder, IDENTITY)
    order = list(range(60))
    random.Random(3).shuffle(order)
    w = PartWriter(folder, 0, flush_rows=5, flush_s=3600)

    def extra(i):
        fields = {"speaker": i if order.index(i) < 30 else i + 0.5}  # ints in early parts, floats in later ones
        if i % 3 == 0:
            fields["tag"] = "x" if order.index(i) < 30 else 7  # str in early parts, int in later ones
        if i == 41:
            fields["status"] = "manifest says"
        return fields

    for i in order:
        if i % 10 == 4:
            _add(w, _failed(i, **extra(i)))
        else:
            _add(w, _ok(i, **extra(i)))
    for i in (4, 24):  # redone later: these records replace the failed ones
        _add(w, _ok(i, **extra(i)))
    w.flush()
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(_line(i, **extra(i))) + "\n" for i in range(60)))
    merged = merge_results(folder, build_plan(tmp_path / "m.jsonl"))
    t = pq.read_table(folder.results)

    expected = {}
    for rec in pq.read_table(folder.parts).drop_columns([INPUT_DIGEST]).to_pylist():  # every part, in record order: the last record wins
        expected[rec["id"]] = rec
    rows = sorted(expected.values(), key=lambda r: r["line"])
    assert t["id"].to_pylist() == [r["id"] for r in rows]
    assert t["status"].to_pylist() == [r["status"] for r in rows]
    assert t["status"].to_pylist().count("failed") == 4 and merged.n_failed == 4 and merged.n_rows == 60
    assert t.column_names[-3:] == ["speaker", "tag", "manifest_status"]
    assert t.schema.field("speaker").type == "double"
    assert t["speaker"].to_pylist() == [float(json.loads(r["manifest_extra"])["speaker"]) for r in rows]
    assert t["tag"].to_pylist() == [json.dumps(json.loads(r["manifest_extra"])["tag"]) if int(r["id"][1:]) % 3 == 0
                                    else None for r in rows]
    assert t["manifest_status"].to_pylist() == ["manifest says" if r["id"] == "u41" else None for r in rows]
    assert len(pq.ParquetFile(folder.results).metadata.to_dict()["row_groups"]) == 9  # 60 rows in buckets of 7
