"""Long recordings (issue 18): per-segment results, long rows planned as time ranges, resume per range, the row's
record joined from its ranges at the merge; end to end on the simulated engine with real Ray (slow).

The long recordings are built from the real speech in tests/data/audio with pauses and long silences between the
recordings (tests/longform_helpers.py).
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from longform_helpers import speech_clips, write_long_recording
from process_helpers import kill_after_a_new_part
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline.config import build_config
from transcribe_batch.pipeline.plan import build_plan
from transcribe_batch.pipeline.results import PartWriter, RunFolder, merge_results
from transcribe_batch.workers.assemble import DeviceTime, Producer, answered, failed, join_ranges
from transcribe_batch.workers.cleanup import join
from transcribe_batch.workers.contracts import SegmentSettings
from transcribe_batch.workers.engines.base import EngineResult
from transcribe_batch.workers.frontend import FrontEnd
from transcribe_batch.workers.record import Record
from transcribe_batch.workers.work import FINAL, RETRY, Span, WorkItem

RANGE_S = 60.0


@pytest.fixture(scope="module")
def long_recording(tmp_path_factory, audio_dir, audio_rows):
    """A 5-minute recording of real speech with pauses and long silences."""
    clips = speech_clips(audio_rows, audio_dir)
    return write_long_recording(tmp_path_factory.mktemp("long") / "long.wav", 5, clips, seed=3)


def _manifest(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- plan ---------------------------------------------------------------------------------------------------------
def test_a_long_row_is_planned_as_ranges_and_resumed_per_range(tmp_path):
    m = _manifest(tmp_path / "m.jsonl", [
        {"id": "long", "audio_filepath": "a.wav", "duration": 250.0},  # 250 / 60 → 4 ranges of 62.5 s
        {"id": "mid", "audio_filepath": "b.wav", "duration": 80.0},  # round(80 / 60) = 1: whole
        {"id": "short", "audio_filepath": "c.wav", "duration": 5.0}])
    plan = build_plan(m, range_s=RANGE_S)
    assert plan.long_rows.tolist() == [0] and plan.n_ranges(0) == 4 and plan.n_ranges(1) == plan.n_ranges(2) == 1
    items = [plan.work_item(at) for at in range(len(plan.todo))]
    assert [(i.index, i.span.k if i.span else None) for i in items] == [(1, None), (0, 0), (0, 1), (0, 2), (0, 3),
                                                                       (2, None)]  # longest first
    ranges = [i for i in items if i.span]
    assert all(i.span == Span(i.span.k, 4, 250.0) and i.duration == 62.5 for i in ranges)
    assert len({i.input_digest for i in items}) == 6 and plan.inputs[0] not in {i.input_digest for i in ranges}
    assert len({i.key for i in items}) == 6  # the ledger tells the ranges of one row apart
    assert build_plan(m).long_rows.size == 0  # no range length: every row whole

    half = build_plan(m, range_s=RANGE_S, done_inputs=plan.range_inputs[[0, 2]])
    assert sorted((int(i), int(k)) for i, k in zip(half.todo, half.todo_range)) == [(0, 1), (0, 3), (1, 0), (2, 0)]
    assert not half.done[0] and half.n_done == 0 and half.done_audio_s() == pytest.approx(125.0)
    done = build_plan(m, range_s=RANGE_S, done_inputs=np.r_[plan.range_inputs, plan.inputs[2]])
    assert done.done.tolist() == [True, False, True] and done.todo.tolist() == [1]
    assert done.failed_rows(plan.range_inputs[[3]]) == 1 and done.failed_rows(plan.inputs[[1]]) == 0


# -- assembly -----------------------------------------------------------------------------------------------------
def _result(text: str, logprob: float = -0.1, finish: str = "eos") -> EngineResult:
    n = max(1, len(text.split()))
    return EngineResult(token_ids=list(range(n)), finish_reason=finish, ttft_s=0.1, decode_s=0.01 * n, text=text,
                        token_logprobs=[logprob] * n)


def _assemble(fe, item, pieces, texts):
    at = datetime.now(timezone.utc)
    return answered(fe, Producer("simulated", "sim", 0, "here", None), item, pieces,
                    [_result(t) for t in texts], DeviceTime(at, at, 1.0, 0.0, 0.1))


def test_every_piece_is_a_segment_and_the_row_is_ok_only_when_its_pieces_are(audio_dir):
    fe = FrontEnd(None, template="default", max_new_tokens=256, segments=SegmentSettings("energy", 2.0, 20.0))
    row = ManifestRow(id="tc", audio_filepath=str(audio_dir / "two_cities.wav"), offset=1.0)
    item = WorkItem(index=0, line=1, row=row)
    pieces = fe.prepare_pieces(row)
    n = len(pieces.requests)
    assert n >= 3 and all(r.duration_s <= 20.0 for r in pieces.requests)
    texts = [f"piece {k} words here" for k in range(n)]
    out = _assemble(fe, item, pieces, texts)
    rec = out.record
    assert out.decision == FINAL and rec.ok and rec.n_chunks == n == len(rec.segments)
    assert rec.pred_text == join([s["text"] for s in rec.segments])
    assert [(s["start_s"], s["end_s"]) for s in rec.segments] == [(r.start_s, r.end_s) for r in pieces.requests]
    tiles = sorted([(s["start_s"], s["end_s"]) for s in rec.segments] + [(s["start_s"], s["end_s"])
                                                                         for s in rec.skipped])
    assert tiles[0][0] == 1.0 and tiles[-1][1] == pytest.approx(1.0 + rec.duration_s)  # times within the FILE
    assert all(a[1] == b[0] for a, b in zip(tiles, tiles[1:]))
    s0 = rec.segments[0]
    assert (s0["status"], s0["finish_reason"], s0["n_tokens"], s0["language"]) == ("ok", "eos", 4, None)
    assert s0["confidence"] == pytest.approx(math.exp(-0.1)) and s0["raw_text"] == texts[0]

    texts[1] = "la " * 80  # a runaway piece: the row fails (another attempt), the piece says so, the others are ok
    rec = _assemble(fe, item, pieces, texts).record
    assert not rec.ok and rec.error_class == "Repetition" and [s["status"] for s in rec.segments] == \
        ["ok", "failed"] + ["ok"] * (n - 2)
    assert rec.segments[1]["text"] is None and rec.segments[1]["finish_reason"] == "repetition"
    assert _assemble(fe, item, pieces, texts).decision == RETRY
    rec = _assemble(fe, item, pieces, [""] * n).record  # nothing said to audio with speech: every piece failed
    assert rec.error_class == "EmptyOutput" and {s["status"] for s in rec.segments} == {"failed"}


def test_audio_without_speech_has_no_segments_and_says_what_was_left_out(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "quiet.wav", np.zeros(16000 * 30, np.int16), 16000)
    fe = FrontEnd(None, template="default", max_new_tokens=256, segments=SegmentSettings("energy", 2.0, 20.0))
    row = ManifestRow(id="q", audio_filepath=str(tmp_path / "quiet.wav"))
    pieces = fe.prepare_pieces(row)
    assert pieces.requests == [] and pieces.skipped == ((0.0, 30.0),)
    rec = _assemble(fe, WorkItem(index=0, line=1, row=row), pieces, []).record
    assert rec.ok and rec.pred_text == "" and rec.finish_reason == "no_speech" and rec.segments == []
    assert rec.skipped == [{"start_s": 0.0, "end_s": 30.0, "reason": "non_speech"}] and rec.duration_s == 30.0


def test_a_range_that_fails_without_an_answer_records_its_own_length(audio_dir):
    row = ManifestRow(id="long", audio_filepath=str(audio_dir / "two_cities.wav"))
    item = WorkItem(index=0, line=1, row=row, duration=11.0, span=Span(1, 4, 44.0))
    out = failed(Producer("simulated", "sim", 0, "here", None), item, RuntimeError("engine down"), retry=True)
    assert out.span == item.span and out.key == (0, 1, 1) and out.decision == RETRY
    assert out.record.duration_s == 11.0 and out.record.segments is None and not out.ok


def _range_record(k: int, *, ok: bool = True, start: float, end: float) -> Record:
    seg = dict(start_s=start + 0.5, end_s=end - 0.5, text=f"range {k}", raw_text=f"range {k}", confidence=None,
               mean_logprob=-0.2 * (k + 1), min_logprob=-1.0 * (k + 1), n_tokens=2 * (k + 1), language=None,
               finish_reason="eos", status="ok" if ok else "failed")
    return Record(id="long", line=1, audio_filepath="/a.wav", offset=0.0, duration_s=end - start, status="ok" if ok
                  else "failed", pred_text=f"range {k}" if ok else None, raw_text=f"range {k}", attempts=k + 1,
                  engine="simulated", model_id="sim", device=k, n_chunks=1, n_new_tokens=2 * (k + 1),
                  mean_logprob=-0.2 * (k + 1), min_logprob=-1.0 * (k + 1), confidence=math.exp(-0.2 * (k + 1)),
                  total_s=1.0, ttft_s=0.5, decode_s=0.5, finish_reason="eos" if ok else "repetition",
                  error_class=None if ok else "Repetition", error_message=None if ok else "long#r1.0: degenerate",
                  segments=[seg], skipped=[dict(start_s=start, end_s=start + 0.5, reason="non_speech"),
                                           dict(start_s=end - 0.5, end_s=end, reason="non_speech")])


def test_join_ranges_makes_the_row_record_of_its_ranges_in_order():
    recs = [_range_record(0, start=0.0, end=50.0), _range_record(1, start=50.0, end=110.0)]
    row = join_ranges(recs)
    assert row.ok and row.pred_text == "range 0 range 1" and row.duration_s == 110.0 and row.n_chunks == 2
    assert [s["text"] for s in row.segments] == ["range 0", "range 1"]
    assert [(s["start_s"], s["end_s"]) for s in row.skipped] == [(0.0, 0.5), (49.5, 50.5), (109.5, 110.0)]
    assert row.mean_logprob == pytest.approx((-0.2 * 2 - 0.4 * 4) / 6) and row.min_logprob == -2.0
    assert row.confidence == pytest.approx(math.exp(row.mean_logprob)) and row.n_new_tokens == 6
    assert (row.attempts, row.device, row.total_s) == (2, 1, 2.0)
    bad = join_ranges([recs[0], _range_record(1, ok=False, start=50.0, end=110.0)])
    assert not bad.ok and bad.pred_text is None and bad.error_class == "Repetition"
    assert bad.error_message == "range 1 of 2 failed; range 1: long#r1.0: degenerate"
    lost = Record(id="long", line=1, offset=0.0, duration_s=60.0, status="failed", error_class="ActorDied",
                  error_message="actor process died", attempts=3, finish_reason="error")  # no answer: no segments
    bad = join_ranges([recs[0], lost])
    assert not bad.ok and bad.duration_s == 110.0 and [s["text"] for s in bad.segments] == ["range 0"]


def test_the_merge_joins_a_long_rows_ranges_once_every_one_has_a_record(tmp_path):
    m = _manifest(tmp_path / "m.jsonl", [{"id": "long", "audio_filepath": "/a.wav", "duration": 110.0},
                                         {"id": "short", "audio_filepath": "/b.wav", "duration": 5.0}])
    plan = build_plan(m, range_s=55.0)
    assert plan.n_ranges(0) == 2
    folder = RunFolder(tmp_path / "run")
    writer = PartWriter(folder, 0)
    r0, r1 = _range_record(0, start=0.0, end=50.0), _range_record(1, start=50.0, end=110.0)
    short = Record(id="short", line=2, audio_filepath="/b.wav", offset=0.0, duration_s=5.0, status="ok",
                   pred_text="hi", segments=[], skipped=[])
    writer.add([r1, short], [int(plan.range_inputs[1]), int(plan.inputs[1])])  # out of order, in two parts
    writer.flush()
    merged = merge_results(folder, plan)
    assert merged.n_rows == 1  # the long row waits for its other range
    writer.add([r0], [int(plan.range_inputs[0])])
    writer.flush()
    merged = merge_results(folder, plan)
    rows = pq.read_table(folder.results).to_pylist()
    assert merged.n_rows == 2 and [r["id"] for r in rows] == ["long", "short"]
    assert rows[0]["pred_text"] == "range 0 range 1" and rows[0]["duration_s"] == 110.0
    assert [s["text"] for s in rows[0]["segments"]] == ["range 0", "range 1"] and rows[1]["pred_text"] == "hi"


def test_neighbouring_ranges_meet_at_the_same_cut(long_recording):
    fe = FrontEnd(None, template="default", max_new_tokens=256, segments=SegmentSettings("vad", 2.0, 20.0))
    row = ManifestRow(id="long", audio_filepath=str(long_recording.path))
    n = 3
    spans = [fe.prepare_pieces(row, span=Span(k, n, long_recording.duration_s)) for k in range(n)]
    assert spans[0].start_s == 0.0 and spans[-1].end_s == pytest.approx(long_recording.duration_s)
    for a, b in zip(spans, spans[1:]):
        assert a.end_s == b.start_s  # the same cut, computed apart (the same float: segments never overlap)
        assert max([r.end_s for r in a.requests] + [e for _, e in a.skipped]) == a.end_s
        assert not any(s < a.end_s < e for s, e in long_recording.speech)  # in a pause
    for p in spans:
        assert all(p.start_s <= r.start_s < r.end_s <= p.end_s + 1e-9 for r in p.requests)
        assert {r.id.split("#")[0] for r in p.requests} == {"long"}


# -- end to end (real Ray, the simulated engine) ---------------------------------------------------------------
def _check_row(rec: dict, recording, bounds=(2.0, 20.0)):
    segments, skipped = rec["segments"], rec["skipped"]
    assert rec["status"] == "ok" and segments
    times = [(s["start_s"], s["end_s"]) for s in segments]
    assert all(0.0 <= s < e <= recording.duration_s + 1e-6 for s, e in times)  # inside the file
    assert all(a[1] <= b[0] for a, b in zip(times, times[1:]))  # in order, non-overlapping
    assert all(e - s <= bounds[1] + 1e-6 for s, e in times)  # within the bounds
    tiles = sorted(times + [(s["start_s"], s["end_s"]) for s in skipped])
    assert tiles[0][0] == 0.0 and tiles[-1][1] == pytest.approx(recording.duration_s)
    assert all(a[1] == pytest.approx(b[0], abs=1e-6) for a, b in zip(tiles, tiles[1:]))  # nothing unaccounted for
    dropped = sum(max(0.0, min(end, s["end_s"]) - max(start, s["start_s"])) for start, end in recording.speech
                  for s in skipped)  # long pauses inside a recording may be left out; its speech is not
    assert dropped < 0.03 * sum(end - start for start, end in recording.speech)
    assert rec["pred_text"] == join([s["text"] for s in segments])
    assert all(s["status"] == "ok" for s in segments)


def _cfg(manifest, out, **kw):
    settings = dict(engine="simulated", devices="2", sim_speedup=2000, range_s=RANGE_S, quiet=True)
    settings.update(kw)
    return build_config(manifest, out, **settings)


@pytest.mark.slow
def test_a_long_recording_becomes_segments_spread_over_the_devices(tmp_path, long_recording, audio_dir,
                                                                  ray_cluster):
    from transcribe_batch.pipeline.runner import run_job

    m = _manifest(tmp_path / "m.jsonl", [{"id": "long", "audio_filepath": str(long_recording.path)},
                                         {"id": "short", "audio_filepath": str(audio_dir / "001.wav")}])
    summary = run_job(_cfg(m, tmp_path / "run"))
    assert summary.status == "complete" and summary.n_ok == 2
    rows = {r["id"]: r for r in pq.read_table(summary.results).to_pylist()}
    _check_row(rows["long"], long_recording)
    assert rows["long"]["duration_s"] == pytest.approx(long_recording.duration_s, abs=1e-3)
    short = rows["short"]
    assert [(s["start_s"], s["end_s"]) for s in short["segments"]] == [(0.0, short["duration_s"])]
    assert short["skipped"] == [] and short["pred_text"] == short["segments"][0]["text"]
    devices = {p for p in (tmp_path / "run" / "parts").glob("part-*.parquet")
               for p in pq.read_table(p, columns=["device"])["device"].to_pylist()}
    assert devices == {0, 1}  # the ranges went to both devices
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["splitter"] == "vad" and run["identity"]["range_s"] == RANGE_S
    log = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    (said,) = [e for e in log if e["event"] == "segments"]
    assert (said["splitter"], said["long_rows"], said["ranges"]) == ("vad", 1, 5) and "vad splitter" in said["message"]
    assert log[-1]["done"] == log[-1]["total"] == 2  # the long row counted once, when its last range was done


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_long_file_loses_nothing_and_repeats_no_range(tmp_path, long_recording,
                                                                                 ray_cluster):
    from transcribe_batch.pipeline.runner import run_job

    m = _manifest(tmp_path / "m.jsonl", [{"id": "long", "audio_filepath": str(long_recording.path)}])
    reference = run_job(_cfg(m, tmp_path / "ref"))
    assert reference.status == "complete"
    out = tmp_path / "killed"
    kill_after_a_new_part(["run", str(m), "-o", str(out), "--engine", "simulated", "--devices", "2", "--sim-speedup",
                           "40", "--range-s", str(RANGE_S), "--save-every-s", "1", "--quiet", "--address",
                           ray_cluster], out,
                          start_new_session=True)
    before = [d for p in (out / "parts").glob("part-*.parquet")
              for d in pq.read_table(p, columns=["input_digest"])["input_digest"].to_pylist()]
    n_ranges = build_plan(m, range_s=RANGE_S).n_ranges(0)
    assert 0 < len(before) < n_ranges  # killed in the middle of the file
    from transcribe_batch.pipeline.results import open_results

    unfinished = open_results(out, allow_unfinished=True)  # eval/export of the unfinished run: no half a row
    assert unfinished.state == "unfinished" and unfinished.n_rows == 0

    resumed = run_job(_cfg(m, out))
    assert resumed.status == "complete" and resumed.n_ok == 1
    after = [d for p in (out / "parts").glob("part-*.parquet")
             for d in pq.read_table(p, columns=["input_digest"])["input_digest"].to_pylist()]
    assert len(after) == len(set(after)) == n_ranges  # every range once: none lost, none redone
    (row,) = pq.read_table(out / "results.parquet").to_pylist()
    (ref,) = pq.read_table(tmp_path / "ref" / "results.parquet").to_pylist()
    _check_row(row, long_recording)
    key = lambda s: (s["start_s"], s["end_s"], s["text"])  # noqa: E731
    assert [key(s) for s in row["segments"]] == [key(s) for s in ref["segments"]]
    assert row["pred_text"] == ref["pred_text"] and row["skipped"] == ref["skipped"]
    (out / "results.parquet").unlink()  # as if killed while merging: readers join the ranges from the parts
    (read,) = open_results(out, allow_unfinished=True).batches().__next__().to_pylist()
    assert [key(s) for s in read["segments"]] == [key(s) for s in row["segments"]]


@pytest.mark.slow
def test_a_folder_of_long_recordings_goes_manifest_dir_run_export_segments(tmp_path, long_recording, audio_dir,
                                                                           ray_cluster):
    """The long-form workflow end to end: `manifest dir` → `run` → `export --segments`, read back by NeMo's format
    (JSON lines), Lhotse and HF datasets themselves."""
    import shutil

    from typer.testing import CliRunner

    from transcribe_batch.pipeline.cli import app
    from transcribe_batch.pipeline.export.export import export
    from transcribe_batch.pipeline.export.filters import Filters
    from transcribe_batch.pipeline.runner import run_job

    folder = tmp_path / "recordings"
    folder.mkdir()
    shutil.copy(long_recording.path, folder / "lecture.wav")
    shutil.copy(audio_dir / "two_cities.wav", folder / "reading.wav")
    m = tmp_path / "jobs.jsonl"
    done = CliRunner().invoke(app, ["manifest", "dir", str(folder), "--glob", "*.wav", "-o", str(m)])
    assert done.exit_code == 0, done.output
    words = " ".join(f"word{i}" for i in range(60))  # every piece says its share of these
    summary = run_job(_cfg(m, tmp_path / "run", sim_text=words))
    assert summary.status == "complete" and summary.n_ok == 2
    rows = {r["id"]: r for r in pq.read_table(summary.results).to_pylist()}
    _check_row(rows["lecture"], long_recording)
    expected = [(f"{rid}#{k}", s["start_s"], s["end_s"] - s["start_s"], s["text"])
                for rid in ("lecture", "reading") for k, s in enumerate(rows[rid]["segments"]) if s["text"]]
    assert len(expected) > 20
    keep_all = Filters(min_chars_per_s=0.0, max_chars_per_s=0.0, hallucinations=None, repetition=False)

    export([tmp_path / "run"], tmp_path / "nemo.jsonl", segments=True, filters=keep_all)
    lines = [json.loads(line) for line in (tmp_path / "nemo.jsonl").read_text().splitlines()]
    assert [(x["id"], x["text"]) for x in lines] == [(e[0], e[3]) for e in expected]
    assert [x["offset"] for x in lines] == pytest.approx([e[1] for e in expected], abs=1e-3)
    assert [x["duration"] for x in lines] == pytest.approx([e[2] for e in expected], abs=1e-3)

    lhotse = pytest.importorskip("lhotse")
    export([tmp_path / "run"], tmp_path / "lhotse", fmt="lhotse", segments=True, filters=keep_all)
    cuts = lhotse.CutSet.from_file(tmp_path / "lhotse" / "cuts.jsonl.gz").to_eager()
    assert sorted(cuts.ids) == sorted(e[0] for e in expected)
    assert len(lhotse.RecordingSet.from_file(tmp_path / "lhotse" / "recordings.jsonl.gz")) == 2
    cut = cuts[expected[3][0]]
    assert cut.start == pytest.approx(expected[3][1], abs=1e-3) and cut.duration == pytest.approx(expected[3][2],
                                                                                                   abs=1e-3)
    assert cut.supervisions[0].text == expected[3][3]
    assert cut.load_audio().shape[1] == pytest.approx(expected[3][2] * 16000, abs=1)

    datasets = pytest.importorskip("datasets")
    export([tmp_path / "run"], tmp_path / "hf", fmt="hf", segments=True, filters=keep_all)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds["id"] == [e[0] for e in expected] and ds["text"] == [e[3] for e in expected]


@pytest.mark.slow
def test_crashes_are_charged_to_the_range_on_the_device(tmp_path, long_recording, ray_cluster):
    """A crash while a range is on the device costs that range an attempt, no other range of the row: each range's
    attempts are exactly its own crashes + 1 (the simulated engine crashes on a seeded draw per piece and attempt)."""
    from transcribe_batch.pipeline.runner import run_job
    from transcribe_batch.workers.engines.simulated import FaultSpec

    faults = "crash=0.1,seed=2"
    m = _manifest(tmp_path / "m.jsonl", [{"id": "long", "audio_filepath": str(long_recording.path)}])
    summary = run_job(_cfg(m, tmp_path / "run", sim_faults=faults, max_attempts=3, device_max_failures=1000,
                           escalate_min_s=1000.0))  # no retry re-cuts a range: the same pieces at every attempt
    assert summary.status == "complete" and summary.stats["actor_crashes"] >= 1
    plan = build_plan(m, range_s=RANGE_S)
    range_of = {int(d): k for k, d in enumerate(plan.range_inputs)}
    spec = FaultSpec.parse(faults)
    records = [r for p in sorted((tmp_path / "run" / "parts").glob("part-*.parquet"))
               for r in pq.read_table(p).to_pylist()]
    assert sorted(range_of[r["input_digest"]] for r in records) == list(range(plan.n_ranges(0)))
    for r in records:
        k = range_of[r["input_digest"]]
        crashed = [any(spec.draw(f"long#r{k}.{j}", a) == "crash" for j in range(r["n_chunks"])) for a in (1, 2, 3)]
        if all(crashed):
            assert r["status"] == "failed" and r["error_class"] == "ActorDied" and r["attempts"] == 3
        else:
            assert r["status"] == "ok" and r["attempts"] == crashed.index(False) + 1, (k, crashed, r["attempts"])


def test_without_the_silero_model_auto_is_energy_and_vad_is_refused(monkeypatch, tmp_path, audio_dir):
    from transcribe_batch.pipeline.config import ConfigError, worker_config
    from transcribe_batch.workers import vad
    from transcribe_batch.workers.actor import TranscriptionWorker

    assert build_config(tmp_path / "m.jsonl", tmp_path / "o", engine="simulated").resolved_splitter() == "vad"
    worker = TranscriptionWorker(worker_config(engine="simulated", sim_speedup=1e6, splitter="vad"), 0)
    monkeypatch.setattr(vad, "SILERO_PACKAGES", ("no_such_package_here",))
    vad.silero_session.cache_clear()
    try:
        cfg = build_config(tmp_path / "m.jsonl", tmp_path / "o", engine="simulated")
        assert cfg.resolved_splitter() == "energy" and cfg.worker_config().segments.splitter == "energy"
        with pytest.raises(ConfigError, match=r"splitter: .*\[vad\] extra"):
            build_config(tmp_path / "m.jsonl", tmp_path / "o", engine="simulated", splitter="vad")
        # an actor told to use the VAD on a node without it: the row fails for good, saying why (no retries)
        row = ManifestRow(id="tc", audio_filepath=str(audio_dir / "two_cities.wav"))
        (out,) = worker.run_shard([WorkItem(index=0, line=1, row=row)])
        assert out.decision == FINAL and out.record.error_class == "VadUnavailable" and not out.on_device
    finally:
        worker.close()
        vad.silero_session.cache_clear()


def test_an_engine_limit_shorter_than_the_segment_edges_still_cuts(audio_dir):
    from transcribe_batch.workers.engines.base import EngineLimits

    fe = FrontEnd(None, template="default", max_new_tokens=256, limits=EngineLimits(max_audio_s=0.5),
                  segments=SegmentSettings("energy", 2.0, 20.0))
    pieces = fe.prepare_pieces(ManifestRow(id="x", audio_filepath=str(audio_dir / "005.wav")))
    assert len(pieces.requests) >= 7 and all(r.duration_s <= 0.5 for r in pieces.requests)
