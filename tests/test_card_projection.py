"""benchmarks/pipeline.py --cost-model card: the calibration table and the per-card RTFx projection lines (run with
--projection-only: no Ray, seconds), and the projection's arithmetic (benchmarks/card_projection.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import card_projection as proj  # noqa: E402

from transcribe_batch.workers.cardcost import CardModel, calibration, preset  # noqa: E402


def _run(*args: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pipeline.py"), "--cost-model", "card",
                           "--projection-only", "--utterances", "24", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    figures = dict(pair.split("=", 1) for pair in lines[-1].split()) if done.returncode == 0 else {}
    return done, figures


def test_pipeline_benchmark_prints_calibration_and_projection_lines():
    done, line = _run()
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    cal = calibration()
    assert float(line["calibration_max_error"]) == pytest.approx(cal.max_error, abs=5e-4)
    assert "| Qwen-7B | int4 | 512 | tokens/s | 9.840 |" in out and "| ChatGLM3-6B | f16 | 512 | first token s |" in out
    assert "PROJECTION (not measured)" in out and "Whisper-medium" in out
    keys = {f"proj_rtfx_{t.key}_b{b}" for t in proj.TARGETS for b in proj.BATCHES}
    assert keys == {k for k in line if k.startswith("proj_rtfx_")}
    assert {"proj_rtfx_qwen2-audio-7b_w4bf16_b1", "proj_rtfx_qwen2-audio-7b_w8bf16_b8",
            "proj_rtfx_qwen3-asr-1.7b_bf16_b4", "proj_rtfx_qwen3-asr-0.6b_bf16_b8"} <= keys
    rtfx = {k: float(v) for k, v in line.items() if k.startswith("proj_rtfx_")}
    for t in proj.TARGETS:  # more slots never cost throughput here (memory-bound decode, slots nearly full)
        assert 0 < rtfx[f"proj_rtfx_{t.key}_b1"] < rtfx[f"proj_rtfx_{t.key}_b4"] < rtfx[f"proj_rtfx_{t.key}_b8"]
    assert rtfx["proj_rtfx_qwen2-audio-7b_w8bf16_b1"] < rtfx["proj_rtfx_qwen2-audio-7b_w4bf16_b1"] \
        < rtfx["proj_rtfx_qwen3-asr-1.7b_bf16_b1"] < rtfx["proj_rtfx_qwen3-asr-0.6b_bf16_b1"]
    assert "proj_not_fitting" not in line  # these all fit one chip's memory


def test_projection_takes_a_measured_occupancy(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"devices": [{"batch_size": 4, "slot_occupancy": 0.5},
                                                          {"batch_size": 4, "slot_occupancy": 0.7},
                                                          {"batch_size": 1}]}))
    measured = proj.measured_occupancy(run)
    assert measured == {4: pytest.approx(0.6)}
    utts = [proj.Utterance(2.0 + i, 5 + 3 * i) for i in range(12)]
    free = proj.print_projection(utts, 1.0, overhead_source="test")
    line = proj.print_projection(utts, 1.0, overhead_source="test", measured=measured)
    assert "0.60 (measured)" in capsys.readouterr().out
    for t in proj.TARGETS:  # B = 4 now at occupancy 0.6 instead of the simulated one; B = 1 and 8 unchanged
        assert float(line[f"proj_rtfx_{t.key}_b4"]) < float(free[f"proj_rtfx_{t.key}_b4"])
        assert line[f"proj_rtfx_{t.key}_b8"] == free[f"proj_rtfx_{t.key}_b8"]
    given = proj.print_projection(utts, 1.0, overhead_source="test", given=1.0)
    assert all(float(given[k]) >= float(free[k]) for k in free)  # full slots: the best case
    (run / "run.json").write_text(json.dumps({"devices": [{"batch_size": 4}]}))
    with pytest.raises(SystemExit, match="no device carries `slot_occupancy`"):
        proj.measured_occupancy(run)
    with pytest.raises(SystemExit, match="run.json: cannot read"):
        proj.measured_occupancy(tmp_path / "nowhere")
    wrong, _ = _run("--occupancy", "1.5")
    assert wrong.returncode != 0 and "--occupancy 1.5" in wrong.stderr


def test_card_time_adds_prefills_shared_steps_and_overhead():
    model = CardModel(preset("qwen2-audio-7b"), "w4bf16", seqlen=1024)
    utts = [proj.Utterance(7.0, 20), proj.Utterance(40.0, 100)]  # the second is two 20 s requests
    target = proj.TARGETS[0]
    reqs = proj.requests_of(utts, target, model)
    jobs = [j for _, j in reqs]
    assert [a for a, _ in reqs] == [7.0, 20.0, 20.0] and [j.decode_tokens for j in jobs] == [20, 50, 50]
    r = proj.card_time(model, jobs, 4, 0.5, len(utts), 0.002)
    assert r["first_s"] == pytest.approx(3 * model.first_token_s(7.0, model.arch.prompt_len(7.0)))  # static: equal
    assert r["steps"] == pytest.approx(120 / 2)
    assert r["decode_s"] == pytest.approx(60 * model.decode_step_s([1024, 1024]))
    assert r["card_s"] == pytest.approx(r["first_s"] + r["decode_s"] + 0.004)
    full = proj.occupancy(model, reqs, 4, continuous=True)
    assert 0 < proj.occupancy(model, reqs, 4, continuous=False) <= full <= 1
    assert proj.occupancy(model, reqs, 1, continuous=False) == 1.0


def test_device_busy_time_counts_overlapping_batched_rows_once():
    """benchmarks/pipeline.py: rows of one batched engine call overlap in time; a device is busy for their union."""
    import numpy as np
    import pipeline as bench

    start, finish = np.array([0.0, 0.0, 0.0, 5.0, 6.0]), np.array([3.0, 4.0, 2.0, 6.0, 7.5])
    assert bench.busy_union(start, finish) == pytest.approx(4.0 + 1.0 + 1.5)
    assert bench.busy_union(np.array([0.0, 1.0]), np.array([1.0, 2.5])) == pytest.approx(2.5)  # one at a time: the sum
