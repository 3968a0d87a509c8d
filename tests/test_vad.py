"""Speech probabilities (the real Silero model via onnxruntime, and energy) and speech regions."""

from __future__ import annotations

import numpy as np
import pytest

from transcribe_batch.workers import vad
from transcribe_batch.workers.audio import load_audio
from transcribe_batch.workers.vad import (
    FRAME, SAMPLE_RATE, VadOptions, VadUnavailable, detect_speech, energy_probs, n_frames, resolve_splitter,
    silero_probs, speech_probs, speech_regions,
)

SR = SAMPLE_RATE


@pytest.fixture(scope="module")
def speech(audio_dir):
    """Real speech with a silent stretch between two recordings and an odd length (a partial last frame)."""
    a = load_audio(audio_dir / "two_cities.wav")
    b = load_audio(audio_dir / "beckett.wav")
    return np.concatenate([a, np.zeros(2 * SR, np.float32), b[:5 * SR + 123]])


def _frames(probs_per_frame) -> np.ndarray:
    return np.asarray(probs_per_frame, np.float32)


@pytest.mark.slow  # torch and three runs of Silero's own code: ~8 s
def test_silero_run_equals_silero_own_code(speech):
    """Our onnxruntime loop gives Silero's own OnnxWrapper probabilities exactly, and our regions are its
    get_speech_timestamps' (default and non-default options)."""
    torch = pytest.importorskip("torch")
    from silero_vad import get_speech_timestamps, load_silero_vad

    model = load_silero_vad(onnx=True)
    speech = speech[30 * SR:]  # 14 s of speech, 2 s of silence, 5 s of speech: enough, and three model runs are slow
    ours = silero_probs(speech)
    model.reset_states()
    theirs = model.audio_forward(torch.from_numpy(speech), SR).numpy()[0]
    assert ours.shape == theirs.shape == (n_frames(speech.size),)
    assert np.array_equal(ours, theirs)
    for opts, kw in [(VadOptions(), {}),
                     (VadOptions(threshold=0.6, neg_threshold=0.3, min_speech_s=0.5, min_silence_s=0.3,
                                 speech_pad_s=0.2),
                      dict(threshold=0.6, neg_threshold=0.3, min_speech_duration_ms=500, min_silence_duration_ms=300,
                           speech_pad_ms=200))]:
        ref = get_speech_timestamps(torch.from_numpy(speech), model, **kw)
        assert speech_regions(ours, speech.size, opts).tolist() == [[d["start"], d["end"]] for d in ref]


def test_fresh_state_makes_probabilities_a_function_of_the_samples(speech):
    window = speech[10 * SR:30 * SR]
    first = silero_probs(window)
    silero_probs(speech[:5 * SR])  # anything in between must not leak into the next call
    assert np.array_equal(silero_probs(window.copy()), first)


def test_vad_finds_the_speech_and_not_the_silence(speech, audio_dir):
    regions = detect_speech(speech, "vad")
    assert len(regions) >= 3
    silent = (44.5 * SR, 46.3 * SR)  # the 2 s of zeros after two_cities (44.37 s)
    assert not any(s < silent[1] and e > silent[0] for s, e in regions.tolist())
    speech_s = sum(e - s for s, e in regions.tolist()) / SR
    assert 30 < speech_s < speech.size / SR - 2
    assert len(detect_speech(np.zeros(5 * SR, np.float32), "vad")) == 0
    for row in ("goforward.wav", "arctic_a0007.wav"):  # short recordings: speech found
        assert len(detect_speech(load_audio(audio_dir / row), "vad")) >= 1


def test_noise_is_speech_to_energy_but_not_to_the_vad(audio_dir):
    rng = np.random.default_rng(0)
    a, b = load_audio(audio_dir / "goforward.wav"), load_audio(audio_dir / "arctic_a0007.wav")
    noise = 0.1 * rng.standard_normal(6 * SR).astype(np.float32)
    mix = np.concatenate([a, noise, b])
    at = a.size
    in_noise = lambda regions: sum(max(0, min(e, at + 6 * SR) - max(s, at)) for s, e in regions.tolist())
    assert in_noise(detect_speech(mix, "vad")) < 0.5 * SR
    assert in_noise(detect_speech(mix, "energy")) > 5 * SR  # energy cannot tell noise from speech


def test_energy_regions_on_bursts():
    rng = np.random.default_rng(1)
    audio = 1e-4 * rng.standard_normal(10 * SR).astype(np.float32)
    bursts = [(1.0, 3.0), (3.5, 4.0), (6.0, 8.5)]
    for s, e in bursts:
        audio[int(s * SR):int(e * SR)] += 0.2 * rng.standard_normal(int(e * SR) - int(s * SR)).astype(np.float32)
    probs = energy_probs(audio)
    assert probs.shape == (n_frames(audio.size),) and probs.dtype == np.float32
    regions = speech_regions(probs, audio.size) / SR
    assert len(regions) == 3
    for (s, e), (ts, te) in zip(regions, bursts):
        assert abs(s - ts) < 0.1 and abs(e - te) < 0.1
    assert len(speech_regions(energy_probs(np.zeros(3 * SR, np.float32)), 3 * SR)) == 0  # digital silence


def test_regions_hysteresis_min_speech_min_silence_and_padding():
    o = VadOptions(threshold=0.5, min_speech_s=0.1, min_silence_s=0.1, speech_pad_s=0.0)
    # speech 10 frames, a 2-frame dip (64 ms < 100 ms: not a pause), speech, then a long pause, a 2-frame blip
    p = _frames([0] * 5 + [0.9] * 10 + [0.1] * 2 + [0.9] * 10 + [0.0] * 20 + [0.9] * 2 + [0.0] * 10)
    n = p.size * FRAME
    assert speech_regions(p, n, o).tolist() == [[5 * FRAME, 27 * FRAME]]  # the 64 ms blip (< 100 ms) is dropped
    # between the thresholds speech goes on (hysteresis: 0.4 is above neg_threshold 0.35)
    p2 = _frames([0.9] * 10 + [0.4] * 20 + [0.0] * 10)
    assert speech_regions(p2, p2.size * FRAME, o).tolist() == [[0, 30 * FRAME]]
    # padding: 30 ms each side, clipped to the audio
    o_pad = VadOptions(min_speech_s=0.1, speech_pad_s=0.03)
    p3 = _frames([0.9] * 10 + [0.0] * 20 + [0.9] * 10)
    n3 = p3.size * FRAME - 100  # a partial last frame: the last region ends at the audio's end
    assert speech_regions(p3, n3, o_pad).tolist() == [[0, 10 * FRAME + 480], [30 * FRAME - 480, n3]]
    assert speech_regions(np.zeros(0, np.float32), 0).shape == (0, 2)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="expected 2 frame probabilities"):
        speech_regions(np.zeros(3), 600)
    with pytest.raises(ValueError, match="mono audio"):
        energy_probs(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="unknown splitter 'webrtc'"):
        speech_probs(np.zeros(100, np.float32), "webrtc")
    with pytest.raises(ValueError, match="threshold"):
        VadOptions(threshold=1.5)
    with pytest.raises(ValueError, match="neg_threshold"):
        VadOptions(threshold=0.5, neg_threshold=0.7)
    with pytest.raises(ValueError, match="min_silence_s"):
        VadOptions(min_silence_s=-1)


def test_missing_or_unknown_model_is_a_clear_error(monkeypatch, tmp_path):
    assert resolve_splitter("auto") == "vad" and resolve_splitter("energy") == "energy"
    vad.silero_session.cache_clear()
    try:
        monkeypatch.setattr(vad, "SILERO_PACKAGES", ("no_such_package_here",))
        with pytest.raises(VadUnavailable, match=r"\[vad\] extra"):
            resolve_splitter("vad")
        assert resolve_splitter("auto") == "energy"  # the fallback without the model
        vad.silero_session.cache_clear()
        fake = tmp_path / "pkg"
        (fake / "data").mkdir(parents=True)
        (fake / "data" / "silero_vad.onnx").write_bytes(b"not the model")
        monkeypatch.setattr(vad, "silero_model_path", lambda: fake / "data" / "silero_vad.onnx")
        with pytest.raises(VadUnavailable, match="unknown Silero model file"):
            silero_probs(np.zeros(FRAME, np.float32))
    finally:
        vad.silero_session.cache_clear()
    with pytest.raises(ValueError, match="unknown splitter"):
        resolve_splitter("silero")
