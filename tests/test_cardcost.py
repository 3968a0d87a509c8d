"""The card cost model (workers/cardcost/): architectures from configs, the fit to Sophgo's published BM1684X figures,
per-request and per-step times, and the decode-slot schedule. Pure computation: fast."""

import json
from dataclasses import replace

import numpy as np
import pytest

from transcribe_batch.workers.cardcost import (ArchitectureError, CardConstants, CardModel, SlotJob, calibration, fit,
                                               from_config, from_model_dir, preset, run_slots)
from transcribe_batch.workers.cardcost.arch import Architecture
from transcribe_batch.workers.cardcost.fit import weight_bytes
from transcribe_batch.workers.cardcost.published import INT4_BITS, POINTS, PublishedPoint

QWEN2_AUDIO_CONFIG = {  # the released Qwen2-Audio-7B-Instruct config.json's shape fields, as shipped
    "model_type": "qwen2_audio",
    "audio_config": {"model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "encoder_layers": 32,
                     "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "d_model": 1280,
                     "max_source_positions": 1500},
    "text_config": {"intermediate_size": 11008, "model_type": "qwen2", "vocab_size": 156032},
    "vocab_size": 156032,
}


# -- architectures -------------------------------------------------------------------------------------------------
def test_published_architectures_have_their_published_sizes():
    """Each calibration model's layer weights + embedding + lm_head against its model card's parameter count."""
    total = {p.model: p.decoder.params + 2 * p.decoder.head_params for p in POINTS}
    for model, billions in [("Qwen-7B", 7.7), ("Baichuan2-7B", 7.5), ("ChatGLM3-6B", 6.2), ("GLM4-9B", 9.4),
                            ("DeepSeek-R1-Distill-Qwen-1.5B", 1.78), ("DeepSeek-R1-Distill-Qwen-7B", 7.6),
                            ("DeepSeek-R1-Distill-Qwen-14B", 14.8), ("Qwen2-7B", 7.6)]:
        assert total[model] == pytest.approx(billions * 1e9, rel=0.03), model
    minicpm = next(p.decoder for p in POINTS if p.model == "MiniCPM-2B")
    assert minicpm.params == pytest.approx(2.4e9, rel=0.03)  # "2.4B parameters excluding embeddings"


def test_architecture_from_the_released_configs():
    q2 = from_config(QWEN2_AUDIO_CONFIG, "q2")
    assert q2 == replace(preset("qwen2-audio-7b"), name="q2")  # the preset is the same config, read the same way
    assert q2.decoder.params == pytest.approx(6.48e9, rel=0.01)  # Qwen2-7B-like decoder, no grouped KV heads
    assert q2.decoder.kv_bytes(1024) == 2 * 32 * 1024 * 4096 * 2  # 537 MB per row at SEQLEN 1024
    assert q2.encoder.params == pytest.approx(0.637e9, rel=0.02)  # Whisper-large-v3's encoder + projector
    assert (q2.encoder.window_s, q2.encoder.rows, q2.audio_tokens_per_s, q2.max_audio_tokens) == (30.0, 1500, 25, 750)
    assert q2.prompt_len(7.3) == 183 + 30 and q2.prompt_len(40) == 750 + 30
    q3 = preset("qwen3-asr-1.7b")
    assert q3.decoder.params == pytest.approx(1.41e9, rel=0.01) and q3.tied  # Qwen3-1.7B: 1.4B non-embedding
    assert preset("qwen3-asr-0.6b").decoder.params == pytest.approx(0.44e9, rel=0.01)
    assert (q3.encoder.window_s, q3.encoder.rows, q3.audio_tokens_per_s) == (8.0, 104, 13)  # n_window_infer 800


def test_architecture_from_a_model_folder_and_its_errors(tmp_path):
    from pathlib import Path

    fixtures = Path(__file__).parent / "fixtures"
    tiny = from_model_dir(fixtures / "tiny-qwen2-audio")
    assert tiny.name == "tiny-qwen2-audio" and tiny.decoder.hidden == 64
    assert tiny.encoder.window_s == 2.0  # max_source_positions 100: the tiny encoder takes a 2 s window
    assert from_model_dir(fixtures / "tiny-qwen3-asr").decoder.head_dim > 0
    with pytest.raises(ArchitectureError, match=r"config.json: not found"):
        from_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ArchitectureError, match=r"config.json: cannot be read as JSON"):
        from_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ArchitectureError, match=r"`model_type` is 'whisper'"):
        from_model_dir(tmp_path)
    bad = json.loads(json.dumps(QWEN2_AUDIO_CONFIG))
    bad["audio_config"]["d_model"] = "wide"
    with pytest.raises(ArchitectureError, match=r"audio_config: field `d_model` is 'wide'"):
        from_config(bad, "x")
    with pytest.raises(ArchitectureError, match="unknown card model 'qwen9'"):
        preset("qwen9")


# -- the fit -------------------------------------------------------------------------------------------------------
def test_fit_reproduces_the_published_points_within_its_error():
    cal = calibration()
    used = [r for r in cal.rows if r.used]
    assert len(used) == 2 * len(POINTS) - 3  # every tokens/s, every first token but ChatGLM3's three
    assert {r.point.model for r in cal.rows if not r.used} == {"ChatGLM3-6B"}
    assert max(abs(r.error) for r in used) == cal.max_error
    # what the fit achieves today: a regression (a wrong architecture, bits or formula) makes these worse
    assert cal.max_error < 0.30 and cal.rms_error < 0.12
    for r in used:
        assert r.fitted == pytest.approx(r.measured, rel=cal.max_error + 1e-9)


def test_fitted_constants_are_physically_plausible():
    c = calibration().constants
    assert 30e9 < c.weight_bytes_per_s < 64e9  # below the LPDDR4X peak of ≈ 64 GB/s
    assert c.kv_bytes_per_s < c.weight_bytes_per_s  # attention over the history is slower per byte than streaming
    assert 5e12 < c.matmul_flops_per_s <= 16e12  # below the bf16 peak
    assert c.attention_flops_per_s < c.matmul_flops_per_s
    assert 0 <= c.call_overhead_s < 0.2 and c.step_overhead_s >= 0


def _points_from(constants: CardConstants) -> tuple[PublishedPoint, ...]:
    """The published points' shapes with the figures a card of these constants would show."""
    out = []
    for p in POINTS:
        w = weight_bytes(p)
        step = w * constants.s_per_weight_byte + p.decoder.kv_bytes(p.seqlen) * constants.s_per_kv_byte \
            + constants.step_overhead_s
        mm, att = p.decoder.prefill_flops(p.seqlen)
        ttft = w * constants.s_per_weight_byte + mm * constants.s_per_matmul_flop \
            + att * constants.s_per_attention_flop + constants.call_overhead_s
        out.append(replace(p, tokens_per_s=1.0 / step, first_token_s=ttft))
    return tuple(out)


@pytest.mark.parametrize("step_overhead", [0.0, 0.004])
def test_fit_recovers_known_constants(step_overhead):
    """Figures made by a known card come back as that card's constants, exactly (a per-step cost too)."""
    truth = CardConstants(1 / 50e9, 1 / 20e9, 1 / 10e12, 1 / 3e12, step_overhead, 0.05)
    cal = fit(_points_from(truth), ())
    for name in ("s_per_weight_byte", "s_per_kv_byte", "s_per_matmul_flop", "s_per_attention_flop",
                 "step_overhead_s", "call_overhead_s"):
        assert getattr(cal.constants, name) == pytest.approx(getattr(truth, name), rel=1e-6, abs=1e-9), name
    assert cal.max_error < 1e-6


def test_fit_needs_enough_points():
    with pytest.raises(ValueError, match="at least 4"):
        fit(POINTS[:3], ())


def test_whisper_figures_are_mostly_decoding():
    """The encoder alone is a small share of Sophgo's Whisper figures: why they are shown, not fitted."""
    for check in calibration().whisper:
        assert 0 < check.encoder_share < 0.05


# -- per-request and per-step times --------------------------------------------------------------------------------
def test_card_model_reproduces_the_fit_for_a_published_point():
    """model.py's formulas agree with fit.py's for a point compiled as convert.py would (w4, 64-weight groups)."""
    cal = calibration()
    p = POINTS[0]  # Qwen-7B int4 seq512, lm_head quantized like the layers
    m = CardModel(Architecture(p.model, p.decoder), "w4bf16", seqlen=p.seqlen, head_bits=INT4_BITS)
    rows = {r.quantity: r.fitted for r in cal.rows if r.point == p}
    assert 1.0 / m.decode_step_s([p.seqlen]) == pytest.approx(rows["tokens/s"], rel=1e-9)
    assert m.prefill_s(10) == pytest.approx(rows["first token s"], rel=1e-9)


def test_a_step_reads_the_weights_once_for_all_rows():
    m = CardModel(preset("qwen2-audio-7b"), "w4bf16", seqlen=1024)
    one, four = m.decode_step_s([1024]), m.decode_step_s([1024] * 4)
    kv = m.arch.decoder.kv_bytes(1024) * m.constants.s_per_kv_byte
    assert four - one == pytest.approx(3 * kv)  # each extra row adds its own K/V history, not the weights
    assert one < four < 4 * one
    assert m.decode_step_rows_s(4, 1024) == pytest.approx(four)
    two, three = m.decode_step_s([1024] * 2), m.decode_step_s([1024] * 3)
    assert m.decode_step_rows_s(2.5, 1024) == pytest.approx((two + three) / 2)
    w8 = CardModel(preset("qwen2-audio-7b"), "w8bf16", seqlen=1024)
    assert w8.decode_step_s([1024]) > one and w8.weight_bytes > m.weight_bytes
    assert m.decode_step_s([]) == 0.0


def test_static_and_dynamic_nets():
    arch = preset("qwen3-asr-1.7b")
    static, dynamic = CardModel(arch, "bf16", seqlen=512), CardModel(arch, "bf16", seqlen=0)
    assert static.prefill_s(50) == static.prefill_s(400)  # a static prefill covers all SEQLEN positions
    assert dynamic.prefill_s(50) < dynamic.prefill_s(400) < static.prefill_s(400)  # 400 positions instead of 512
    assert static.kv_len(100, 7) == 512 and dynamic.kv_len(100, 7) == 107
    assert CardModel(arch, "bf16", seqlen=512, prefill_len=256).prefill_s(10) < static.prefill_s(10)
    for bad in [dict(quant="w3"), dict(seqlen=-1), dict(seqlen=256, prefill_len=512)]:
        with pytest.raises(ValueError):
            CardModel(arch, **{"quant": "bf16", **bad})


def test_encoder_runs_whole_windows():
    q2 = CardModel(preset("qwen2-audio-7b"))
    assert q2.encode_s(3.0) == q2.encode_s(29.9)  # one padded 30 s window
    assert q2.encode_s(31.0) == pytest.approx(2 * q2.encode_s(29.9))
    q3 = CardModel(preset("qwen3-asr-0.6b"), "bf16", seqlen=512)
    assert q3.encode_s(8.0) < q3.encode_s(8.5)  # 8 s windows
    assert CardModel(Architecture("text", preset("qwen3-asr-0.6b").decoder)).encode_s(5.0) == 0.0


def test_device_memory():
    m4 = CardModel(preset("qwen2-audio-7b"), "w4bf16", seqlen=1024)
    assert m4.fits(8) and not CardModel(preset("qwen2-audio-7b"), "bf16", seqlen=1024).fits(8)
    assert m4.device_bytes(8) - m4.device_bytes(1) == pytest.approx(7 * m4.arch.decoder.kv_bytes(1024))


# -- decode slots --------------------------------------------------------------------------------------------------
def test_one_slot_runs_requests_one_after_another():
    jobs = [SlotJob(1.0, 3), SlotJob(2.0, 0), SlotJob(0.5, 1)]
    s = run_slots(jobs, 1, lambda kv: 0.1 * len(kv))
    assert s.total_s == pytest.approx(1.0 + 0.3 + 2.0 + 0.5 + 0.1)
    assert [t.wait_s for t in s.timings] == pytest.approx([0.0, 1.3, 3.3])
    assert [t.steps for t in s.timings] == [3, 0, 1] and s.occupancy(1) == 1.0


def test_slots_share_steps_and_refill_as_requests_finish():
    """B = 2: prefills run alone, one step serves both busy slots; a freed slot takes the next request."""
    jobs = [SlotJob(1.0, 1), SlotJob(1.0, 3), SlotJob(1.0, 1)]
    s = run_slots(jobs, 2, lambda kv: 0.1 + 0.05 * len(kv))
    # t=0 prefill A, t=1 prefill B, t=2 step (A,B) 0.2 -> A done; prefill C t=2.2..3.2; steps (B,C): C done at 3.4;
    # step (B) alone 0.15 -> B done at 3.55
    a, b, c = s.timings
    assert (a.finished_at, c.finished_at, b.finished_at) == pytest.approx((2.2, 3.4, 3.55))
    assert (a.slot, b.slot, c.slot) == (0, 1, 0) and c.wait_s == pytest.approx(2.2)
    assert b.decode_s == pytest.approx(0.2 + 0.2 + 0.15) and s.steps == 3 and s.row_steps == 5
    assert s.occupancy(2) == pytest.approx(5 / 6)
    assert run_slots([], 4, lambda kv: 1.0).occupancy(4) is None
    with pytest.raises(ValueError, match="batch"):
        run_slots(jobs, 0, lambda kv: 1.0)


def test_slot_kv_lengths_follow_the_history():
    seen = []
    run_slots([SlotJob(0.0, 3, prompt_len=10)], 1, lambda kv: seen.append(list(kv)) or 0.0,
              lambda job, generated: job.prompt_len + 1 + generated)
    assert seen == [[11], [12], [13]]
    assert np.isfinite(CardModel(preset("qwen3-asr-0.6b"), "bf16", seqlen=0).decode_step_s([11, 500]))
