import json
import tracemalloc

import numpy as np
import pytest

from manifest_helpers import write_manifest
from transcribe_batch.manifests.reader import ManifestError
from transcribe_batch.pipeline.plan import bad_line_id, build_plan, shard_bounds


def test_longest_first_and_every_row_once(tmp_path, audio_dir):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=3)
    plan = build_plan(tmp_path / "m.jsonl", shard_size=4, shard_max_audio_s=60)
    assert plan.n_rows == len(rows) == 54
    order = plan.durations[plan.todo]
    assert np.all(np.diff(order) <= 0)  # longest first
    shards = [plan.shard(k) for k in range(plan.n_shards)]
    flat = np.concatenate(shards)
    assert sorted(flat.tolist()) == list(range(54))
    for s in shards:
        assert 1 <= len(s) <= 4
        assert len(s) == 1 or plan.durations[s].sum() <= 60
    first = plan.rows(shards[0])
    assert first[0].duration == max(r["duration"] for r in rows)
    assert plan.audio_s() == pytest.approx(sum(r["duration"] for r in rows))


def test_shard_bounds_rules():
    d = np.array([100.0, 50, 50, 10, 10, 10, 10, 10, 1])
    b = shard_bounds(d, shard_size=3, max_audio_s=60)
    sizes = np.diff(b).tolist()
    assert b[0] == 0 and b[-1] == len(d)
    assert sizes[0] == 1  # a row longer than the limit is a shard of its own
    assert sizes == [1, 1, 2, 3, 2]  # 50 | 50+10 | 10+10 ... each ≤3 rows and ≤60 s


def test_missing_duration_is_read_from_the_file(tmp_path, audio_dir):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio_filepath": str(audio_dir / "two_cities.wav"), "offset": 4.0}) + "\n"
                 + json.dumps({"audio_filepath": str(tmp_path / "missing.wav")}) + "\n")
    plan = build_plan(m)
    full = json.loads(next(l for l in (audio_dir / "manifest.jsonl").read_text().splitlines() if "two_cities" in l))
    assert plan.durations[0] == pytest.approx(full["duration"] - 4.0, abs=0.01)
    assert np.isnan(plan.durations[1])  # unreadable: the actor reports it as a failed row
    assert plan.todo.tolist() == [0, 1]  # unknown durations go last


def test_resume_skips_done_rows(tmp_path, audio_dir):
    rows = write_manifest(tmp_path / "m.jsonl", audio_dir, repeat=2)
    first = build_plan(tmp_path / "m.jsonl")
    done = np.sort(first.inputs[::3])
    plan = build_plan(tmp_path / "m.jsonl", done_inputs=done)
    assert plan.n_done == len(rows[::3])
    todo_ids = {r.id for k in range(plan.n_shards) for r in plan.rows(plan.shard(k))}
    assert todo_ids == {r["id"] for r in rows} - {r["id"] for r in rows[::3]}


def test_bad_lines_stop_or_are_kept_for_recording(tmp_path, audio_dir):
    m = tmp_path / "m.jsonl"
    write_manifest(m, audio_dir, limit=3)
    m.write_text(m.read_text() + "not json\n" + json.dumps({"audio_filepath": "x.wav", "offset": -1}) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:4: not valid JSON"):
        build_plan(m)
    plan = build_plan(m, skip_bad_lines=True)
    assert plan.n_rows == 5 and [e.line for e in plan.bad] == [4, 5]
    assert [r.id for r in plan.bad_line_records()] == [bad_line_id(4), bad_line_id(5)] == ["#bad-line-4",
                                                                                           "#bad-line-5"]


def test_rows_read_back_must_be_the_planned_rows(tmp_path, audio_dir):
    """Issue 9.3: a manifest rewritten during a run (same line lengths, ids rotated, mtime put back) is caught."""
    import os

    from transcribe_batch.pipeline.plan import ManifestChanged

    m = tmp_path / "m.jsonl"
    rows = [{**r, "id": f"r{k}"} for k, r in enumerate(write_manifest(m, audio_dir, limit=4))]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plan = build_plan(m, shard_size=1)
    assert [r.id for r in plan.rows(np.arange(4))] == ["r0", "r1", "r2", "r3"]
    st = os.stat(m)
    m.write_text("".join(json.dumps({**r, "id": f"r{(k + 1) % 4}"}) + "\n" for k, r in enumerate(rows)))
    os.utime(m, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ManifestChanged, match=r"m.jsonl:1: the manifest changed during the run: line 1 no longer "
                                               r"holds the row that was planned there \(now id 'r1'\)"):
        plan.rows(np.arange(4))
    with open(m, "a") as f:
        f.write("\n")
    with pytest.raises(ManifestChanged, match="size"):
        plan.rows(np.arange(1))


@pytest.mark.slow  # tracemalloc traces every allocation of parsing 40k rows: ~10 s on the shared 2-core VM
def test_40k_rows_plan_in_bounded_memory(tmp_path):
    n = 40_000  # (benchmarks/scale.py plans millions; here the bound per row is what is checked)
    m = tmp_path / "big.jsonl"
    with open(m, "w") as f:
        for i in range(n):
            f.write(json.dumps({"audio_filepath": f"audio/{i // 1000}/utt{i}.flac", "duration": 1 + (i * 7919) % 300 / 10,
                                "text": "some reference words for this utterance " * 2, "speaker": i % 97}) + "\n")
    tracemalloc.start()
    try:
        plan = build_plan(m, shard_size=8, shard_max_audio_s=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan.n_rows == n and plan.n_shards == n // 8
    # 48 bytes of arrays + an 8-byte digest slot in the duplicate table per row, with the arrays' growth: ≈ 97 bytes a
    # row at the peak (3.7 MiB; a Python set of ints took ≈ 110 more a row); one dict per row would need ~1 KB.
    assert peak < n * 105, f"planning {n} rows peaked at {peak / 2**20:.1f} MiB ({peak / n:.0f} bytes a row)"
    rows = plan.rows(plan.shard(0))
    assert all(r.duration == pytest.approx(30.9) for r in rows)


def test_results_from_before_audio_stamps_are_still_reused(tmp_path, audio_dir):
    """Parts written before input digests covered the audio file's size and mtime carry the row digest: an upgrade
    reuses them (and a row they do not answer is planned with today's digest)."""
    from transcribe_batch.manifests.reader import audio_stamp, input_digest, iter_rows, row_digest

    write_manifest(tmp_path / "m.jsonl", audio_dir, limit=3)
    rows = [r for _, r in iter_rows(tmp_path / "m.jsonl")]
    old = np.sort(np.array([row_digest(rows[0])], dtype=np.int64))
    plan = build_plan(tmp_path / "m.jsonl", done_inputs=old)
    assert plan.done.tolist() == [True, False, False]
    assert plan.inputs[0] == row_digest(rows[0])
    assert plan.inputs[1] == input_digest(rows[1], audio_stamp(rows[1].audio_filepath)) != row_digest(rows[1])
