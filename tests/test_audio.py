"""Audio loading: real recordings, offset/duration windows, other containers, and a corpus of broken inputs."""

from __future__ import annotations

import shutil
import subprocess

import librosa
import numpy as np
import pytest
import soundfile as sf

from transcribe_batch.workers.audio import (
    SAMPLE_RATE, AudioDecodeError, AudioEmpty, AudioError, AudioInvalidSamples, AudioNotFound, AudioRangeError,
    audio_duration, load_audio,
)


def test_real_recordings_load_as_16k_mono_float32(audio_dir, audio_rows):
    for row in audio_rows:
        path = audio_dir / row["audio_filepath"]
        audio = load_audio(path)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) / SAMPLE_RATE - row["duration"]) < 0.002, path
        assert abs(audio_duration(path) - row["duration"]) < 0.002
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.01


def test_48k_is_resampled_like_librosa(audio_dir):
    path = audio_dir / "front_center_48k.wav"
    ours = load_audio(path)
    ref, _ = librosa.load(path, sr=SAMPLE_RATE)  # librosa's default soxr_hq: the usual Qwen2-Audio recipe
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-5


def test_offset_and_duration_read_only_the_window(audio_dir):
    path = audio_dir / "beckett.wav"
    full = load_audio(path)
    part = load_audio(path, offset=2.5, duration=3.0)
    assert np.array_equal(part, full[40000:88000])
    tail = load_audio(path, offset=9.0)
    assert np.array_equal(tail, full[144000:])
    with pytest.raises(AudioRangeError, match="runs past the end"):  # as `manifest validate` says (issue 9)
        load_audio(path, offset=9.0, duration=100.0)


def test_offset_on_48k_file(audio_dir):
    path = audio_dir / "front_center_48k.wav"
    full = load_audio(path)
    part = load_audio(path, offset=0.5, duration=0.5)
    assert len(part) == 8000
    # resampling a window and windowing the resampled file agree away from the window's edges
    assert np.abs(part[500:-500] - full[8500:15500]).max() < 1e-3


def test_flac_and_ogg_and_misnamed_wav(tmp_path, audio_dir):
    data, sr = sf.read(audio_dir / "goforward.wav", dtype="float32")
    sf.write(tmp_path / "a.flac", data, sr)
    sf.write(tmp_path / "a.ogg", data, sr, format="OGG", subtype="VORBIS")
    shutil.copy(audio_dir / "goforward.wav", tmp_path / "really_a_wav.mp3")  # content decides, not the name
    ref = load_audio(audio_dir / "goforward.wav")
    assert np.abs(load_audio(tmp_path / "a.flac") - ref).max() < 1e-4  # 16-bit lossless
    assert np.array_equal(load_audio(tmp_path / "really_a_wav.mp3"), ref)
    ogg = load_audio(tmp_path / "a.ogg")
    assert abs(len(ogg) - len(ref)) < 800


def test_stereo_is_mixed_down(tmp_path):
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    left, right = 0.5 * np.sin(2 * np.pi * 440 * t), np.zeros_like(t)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    assert np.allclose(load_audio(tmp_path / "st.wav"), left / 2, atol=1e-6)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is installed by `make system-deps`")
@pytest.mark.parametrize("ext", ["m4a", "mp3"])
def test_compressed_formats(tmp_path, audio_dir, ext):
    """mp3 goes through libsndfile, m4a (AAC) through the librosa/audioread (ffmpeg) fallback."""
    src, dst = audio_dir / "goforward.wav", tmp_path / f"a.{ext}"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(src), str(dst)], check=True)
    audio = load_audio(dst)
    assert abs(len(audio) / SAMPLE_RATE - 2.786) < 0.1
    part = load_audio(dst, offset=1.0, duration=1.0)
    assert abs(len(part) - SAMPLE_RATE) < 400
    with pytest.raises(AudioRangeError, match=f"a.{ext}"):
        load_audio(dst, offset=10.0)


def test_silence_is_valid(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(SAMPLE_RATE * 2, dtype=np.int16), SAMPLE_RATE)
    audio = load_audio(tmp_path / "silence.wav")
    assert len(audio) == 2 * SAMPLE_RATE and not audio.any()


def _broken_corpus(tmp, audio_dir):
    wav = (audio_dir / "beckett.wav").read_bytes()
    (tmp / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    (tmp / "header_only.wav").write_bytes(wav[:30])
    (tmp / "zero.wav").write_bytes(b"")
    (tmp / "notes.wav").write_text("these are meeting notes, not audio\n" * 20)
    (tmp / "a_folder.wav").mkdir()
    nan = np.sin(np.arange(SAMPLE_RATE, dtype=np.float32) / 10)
    nan[1000:1010] = np.nan
    sf.write(tmp / "nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    sf.write(tmp / "a.flac", sf.read(audio_dir / "beckett.wav")[0], SAMPLE_RATE)
    flac = (tmp / "a.flac").read_bytes()
    (tmp / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    return {
        "missing": (tmp / "missing.wav", {}, AudioNotFound),
        "directory": (tmp / "a_folder.wav", {}, AudioNotFound),
        "zero_bytes": (tmp / "zero.wav", {}, AudioEmpty),
        "truncated_wav": (tmp / "truncated.wav", {}, AudioDecodeError),
        "truncated_flac": (tmp / "truncated.flac", {}, AudioDecodeError),
        "header_only": (tmp / "header_only.wav", {}, AudioDecodeError),
        "not_audio_wrong_extension": (tmp / "notes.wav", {}, AudioDecodeError),
        "nan_samples": (tmp / "nan.wav", {}, AudioInvalidSamples),
        "zero_length_window": (audio_dir / "beckett.wav", {"offset": 1.0, "duration": 0.0}, AudioEmpty),
        "offset_past_end": (audio_dir / "beckett.wav", {"offset": 60.0}, AudioRangeError),
        "negative_offset": (audio_dir / "beckett.wav", {"offset": -1.0}, AudioRangeError),
        "nan_duration": (audio_dir / "beckett.wav", {"duration": float("nan")}, AudioRangeError),
    }


CASES = ["missing", "directory", "zero_bytes", "truncated_wav", "truncated_flac", "header_only",
         "not_audio_wrong_extension", "nan_samples", "zero_length_window", "offset_past_end", "negative_offset",
         "nan_duration"]


@pytest.mark.parametrize("case", CASES)
def test_broken_input_gives_typed_error_naming_the_file(case, tmp_path, audio_dir):
    path, window, error = _broken_corpus(tmp_path, audio_dir)[case]
    with pytest.raises(error) as info:
        load_audio(path, **window)
    assert isinstance(info.value, AudioError)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert info.value.reason and info.value.reason in str(info.value)
