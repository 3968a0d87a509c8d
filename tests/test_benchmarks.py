"""The benchmark scripts still run against the current code (tiny sizes; no timing is asserted, only that each script
completes, prints its table and ends with one line of key=value figures that add up)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(script: str, *args: str, timeout: float = 600) -> tuple[str, dict]:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    figures = dict(pair.split("=", 1) for pair in lines[-1].split())
    return done.stdout, figures


def test_scale_benchmark_plans_resumes_and_merges(tmp_path):
    out, figures = _run("scale.py", "--sizes", "3000", "--keep", str(tmp_path))
    assert "| plan | 3,000 |" in out and "| resume | 3,000 |" in out and "3,000 done, 0 left" in out
    assert {"plan_s_3k", "resume_s_3k", "resume_scan_s_3k", "merge_s_3k"} <= set(figures)


def test_pipeline_benchmark_accounts_for_every_row(tmp_path):
    out, figures = _run("pipeline.py", "--utterances", "24", "--devices", "1,2", "--sim-speedup", "4000",
                        "--sim-faults", "error=0.1,seed=3", "--keep", str(tmp_path))
    assert "| 1 | 24/0 |" in out and "| 2 | 24/0 |" in out, out  # every row ok after retries, in both runs
    # runs this short are all noise: only check that the figures exist and are sane, not how good they are
    assert float(figures["scaling_efficiency_2"]) > 0 and 0 <= float(figures["idle_fraction_2"]) < 1, out
    assert float(figures["wall_over_ideal_2"]) >= 1 and float(figures["speedup_vs_sequential"]) > 0, out


def test_pipeline_benchmark_with_the_card_cost_model_and_decode_slots(tmp_path):
    """The runs themselves use the card cost model with B = 2 slots; the projection uses their measured overhead."""
    out, figures = _run("pipeline.py", "--cost-model", "card", "--sim-batch", "2", "--utterances", "16", "--devices",
                        "1", "--sim-speedup", "400", "--no-baseline", "--sim-faults", "", "--keep", str(tmp_path))
    assert "| 1 | 16/0 |" in out and "card cost model (qwen2-audio-7b w4bf16, B=2)" in out, out
    assert "measured here: 1 device(s)" in out and float(figures["calibration_max_error"]) < 0.3
    assert float(figures["proj_rtfx_qwen2-audio-7b_w4bf16_b4"]) > float(figures["proj_rtfx_qwen2-audio-7b_w4bf16_b1"])
    # the runs' B = 2 slots, as run.json reports them: full while rows remained, drained at the end
    assert "slot occ. while rows remain" in out
    assert 0 < float(figures["slot_occupancy_1"]) <= float(figures["slot_occupancy_queued_1"]) <= 1, out


def test_roofline_projection_covers_both_families_with_published_sizes():
    """benchmarks/runtime.py --projection-only: the decoders' non-embedding parameters are the published ones
    (Qwen3-1.7B ≈ 1.4 B, Qwen3-0.6B ≈ 0.44 B, Qwen2-Audio-7B's LLM ≈ 6.5 G layer weights), and the smaller model is
    the faster one at every B (all memory-bound)."""
    out, line = _run("runtime.py", "--projection-only", timeout=120)
    BENCH = str(REPO / "benchmarks")
    sys.path.insert(0, BENCH)
    try:
        import runtime as bench
    finally:
        sys.path.remove(BENCH)
    sizes = {m.name: m.layers * m.layer_params for m in (bench.Model(), bench.qwen3_asr("1.7B"), bench.qwen3_asr("0.6B"))}
    assert sizes["Qwen3-ASR-1.7B"] == pytest.approx(1.41e9, rel=0.02)
    assert sizes["Qwen3-ASR-0.6B"] == pytest.approx(0.44e9, rel=0.02)
    assert sizes["Qwen2-Audio-7B"] == pytest.approx(6.48e9, rel=0.02)
    for name in ("Qwen2-Audio-7B", "Qwen3-ASR-1.7B", "Qwen3-ASR-0.6B"):
        assert f"PROJECTION (roofline, not measured): {name}" in out
    for b in (1, 4, 16):
        rates = [float(line[f"{p}_w4bf16_b{b}_tokens_per_s"]) for p in ("proj", "proj_q3_1.7b", "proj_q3_0.6b")]
        assert rates == sorted(rates), (b, rates)


def test_ledger_benchmark_compares_file_and_actor():
    out, figures = _run("ledger.py", "-n", "50", timeout=300)
    assert "| file: hold (before each engine call) | 50 |" in out, out
    assert float(figures["ledger_hold_median_us"]) > 0 and float(figures["actor_hold_median_us"]) > 0


def test_longform_benchmark_measures_memory_and_the_spread_over_devices(tmp_path):
    out, figures = _run("longform.py", "--hours", "0.05", "--whole", "0.05", "--wall-hours", "0.05", "--range-s",
                        "60", "--wall-range-s", "60", "--speedup", "4000", "--splitter", "energy", "--keep",
                        str(tmp_path))
    assert "| 0.05h | ranges | 3 |" in out and "| 0.05h | whole row | 1 |" in out, out
    assert "| 1 |" in out and "| 4 |" in out and "rows ok/failed" in out, out
    assert int(figures["items_0.05h_ranges"]) == 3 and float(figures["wall_ratio_4_over_1"]) > 0
    assert int(figures["mem_over_baseline_mb_0.05h_ranges"]) >= 0 and figures["splitter"] in ("vad", "energy")


def test_export_segments_benchmark_runs(tmp_path):
    out, figures = _run("export_segments.py", "--rows", "2000", "--long", "4,16")
    assert "rows 2000: sanity filters off" in out and "long rows 16 (1 h, 360 segments each): 5760 segments" in out
    assert {"sanity_cost", "segments_per_s", "peak_mb_small", "peak_mb_big"} <= set(figures)
    assert figures["rows_growth"] == "4"
