"""Log-mel features equal transformers' WhisperFeatureExtractor (the families' audio-token counts:
tests/test_model_families.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from transcribe_batch.workers.audio import load_audio
from transcribe_batch.workers.features import FeatureConfig, live_frames, log_mel

WINDOW_30S = FeatureConfig(feature_size=128, fixed_window=True, chunk_length=30)  # the released Qwen2-Audio's


@pytest.fixture(scope="module")
def extractor(model_dir):
    return WhisperFeatureExtractor.from_pretrained(model_dir)


def _hf(extractor, audio):
    out = extractor(audio, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="np")
    return out["input_features"][0], out["attention_mask"][0]


def test_matches_whisper_feature_extractor_on_every_recording(extractor, model_dir, audio_dir, audio_rows):
    cfg = FeatureConfig.from_model_dir(model_dir, fixed_window=True, feature_size=80)  # the folder says 128 bins
    assert cfg == WINDOW_30S and (cfg.feature_size, cfg.n_fft, cfg.hop_length, cfg.n_frames) == (128, 400, 160, 3000)
    for row in audio_rows:
        audio = load_audio(audio_dir / row["audio_filepath"])[: cfg.n_samples]
        ours, mask = log_mel(audio, cfg)
        ref, ref_mask = _hf(extractor, audio)
        assert ours.shape == ref.shape == (128, 3000) and ours.dtype == np.float32
        assert np.abs(ours - ref).max() <= 1e-4, row["audio_filepath"]
        assert np.array_equal(mask, ref_mask)


@pytest.mark.parametrize("n", [1, 161, 16037, 479_640, 479_641, 479_950, 480_000])
def test_every_length_matches_including_the_frames_that_see_only_padding(extractor, n):
    """Frames past the audio are not transformed (their power is exactly zero): lengths around frame and window
    edges, with the loudest samples at the very end, still match the extractor."""
    audio = (np.random.default_rng(n).standard_normal(n) * np.linspace(0.01, 0.9, n)).astype(np.float32)
    ours, mask = log_mel(audio, WINDOW_30S)
    ref, ref_mask = _hf(extractor, audio)
    assert np.abs(ours - ref).max() <= 1e-4 and np.array_equal(mask, ref_mask)
    assert live_frames(n, WINDOW_30S) <= WINDOW_30S.n_frames


def test_small_window_read_from_the_model_folder(tmp_path, audio_dir):
    config = {"chunk_length": 2, "feature_size": 128, "hop_length": 160, "n_fft": 400, "sampling_rate": 16000,
              "feature_extractor_type": "WhisperFeatureExtractor", "padding_value": 0.0}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    cfg = FeatureConfig.from_model_dir(tmp_path, fixed_window=True, feature_size=128, chunk_length=30)
    assert (cfg.n_frames, cfg.max_audio_s) == (200, 2.0)  # the folder's window, not the caller's default
    audio = load_audio(audio_dir / "003.wav")  # 1.54 s
    ours, mask = log_mel(audio, cfg)
    ref, ref_mask = _hf(WhisperFeatureExtractor.from_pretrained(tmp_path), audio)
    assert ours.shape == (128, 200) and np.abs(ours - ref).max() <= 1e-4 and np.array_equal(mask, ref_mask)
    with pytest.raises(ValueError, match="does not fit"):
        log_mel(load_audio(audio_dir / "005.wav"), cfg)


def test_what_the_folder_does_not_say_comes_from_the_model_family(tmp_path):
    """No model's window or mel bins are built in: the family passes its own (Qwen2-Audio: 128 bins, 30 s)."""
    family_defaults = dict(fixed_window=True, feature_size=128, chunk_length=30)
    assert FeatureConfig.from_model_dir(None, **family_defaults) == FeatureConfig.from_model_dir(
        tmp_path, **family_defaults) == WINDOW_30S
    unpadded = FeatureConfig.from_model_dir(None, fixed_window=False, feature_size=80)
    assert unpadded.frames_of(16000) == 100 and unpadded.max_audio_s == float("inf")
    with pytest.raises(ValueError, match="needs chunk_length"):
        FeatureConfig.from_model_dir(tmp_path, fixed_window=True, feature_size=128)
    with pytest.raises(ValueError, match="no fixed window"):
        unpadded.n_frames


def test_silence_and_clipping_are_finite():
    for audio in (np.zeros(16000, np.float32), np.ones(16000, np.float32), np.zeros(1, np.float32)):
        feats, _ = log_mel(audio, WINDOW_30S)
        assert np.isfinite(feats).all()


def test_starting_an_actor_does_not_import_scipy():
    """Every actor start imports the worker modules; scipy (~0.25 s of CPU) is imported only when features are
    computed or the card cost model is fitted, which the simulated engine's actors never do."""
    import subprocess
    import sys

    code = ("import sys, transcribe_batch.workers.actor, transcribe_batch.workers.engines.simulated; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
