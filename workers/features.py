"""Whisper-style log-mel features exactly as transformers' WhisperFeatureExtractor makes them, in numpy.

The geometry (chunk_length, feature_size, n_fft, hop_length) is read from the model folder's preprocessor_config.json;
what the folder does not say comes from the model family (workers/models/), which also says which of the two ways of
calling the extractor its processor uses (`fixed_window`):
- padded to a fixed window of chunk_length seconds (Qwen2-Audio: `padding="max_length"`);
- unpadded (Qwen3-ASR: `padding=True, truncation=False`): one frame per hop of the clip itself, any length.
How many audio tokens the frames make is the family's business, not this module's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class FeatureConfig:
    """The extractor's settings (WhisperFeatureExtractor's defaults where noted)."""

    feature_size: int  # mel bins
    fixed_window: bool  # pad every clip to chunk_length seconds; False: frames = samples // hop
    chunk_length: int | None = None  # seconds in the fixed window (required with fixed_window)
    sampling_rate: int = 16000  # Whisper's
    hop_length: int = 160  # Whisper's
    n_fft: int = 400  # Whisper's
    padding_value: float = 0.0

    def __post_init__(self):
        if self.fixed_window and not self.chunk_length:
            raise ValueError("a fixed-window feature config needs chunk_length (seconds of the window)")

    def frames_of(self, n_samples: int) -> int:
        """Feature frames `log_mel` returns for a clip of n_samples."""
        return self.n_frames if self.fixed_window else n_samples // self.hop_length

    @property
    def n_samples(self) -> int:
        """Samples in the fixed window."""
        if self.chunk_length is None:
            raise ValueError("this feature config has no fixed window")
        return self.chunk_length * self.sampling_rate

    @property
    def n_frames(self) -> int:
        """Frames of the fixed window."""
        return self.n_samples // self.hop_length

    @property
    def max_audio_s(self) -> float:
        """Longest clip the features can hold (the window; unbounded without one)."""
        return float(self.chunk_length) if self.fixed_window else float("inf")

    @classmethod
    def from_model_dir(cls, model_dir: str | os.PathLike | None, *, fixed_window: bool, feature_size: int,
                       chunk_length: int | None = None) -> "FeatureConfig":
        """The folder's preprocessor_config.json; the family's values (`feature_size` mel bins, a window of
        `chunk_length` seconds) for what it does not say, and when there is no folder or no such file in it."""
        defaults = {"fixed_window": fixed_window, "feature_size": feature_size, "chunk_length": chunk_length}
        if model_dir is None:
            return cls(**defaults)
        path = Path(model_dir) / "preprocessor_config.json"
        if not path.is_file():
            return cls(**defaults)
        cfg = json.loads(path.read_text())
        fields = {k: cfg[k] for k in ("feature_size", "sampling_rate", "hop_length", "n_fft", "chunk_length") if k in cfg}
        if "padding_value" in cfg:
            fields["padding_value"] = float(cfg["padding_value"])
        return cls(**{**defaults, **fields})


def valid_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Frames marked real in the attention mask (the mask is the sample mask taken every hop, capped at the window;
    without a window the extractor trims it to the n_samples // hop frames it returns)."""
    if not cfg.fixed_window:
        return n_samples // cfg.hop_length
    return min(-(-n_samples // cfg.hop_length), cfg.n_frames)


@lru_cache(maxsize=8)
def mel_filters(sampling_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Slaney-scale, Slaney-normalized triangular filters [n_mels, 1 + n_fft // 2] (Whisper's / HF's bank)."""
    import librosa

    return librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sampling_rate / 2,
                               htk=False, norm="slaney", dtype=np.float64)


@lru_cache(maxsize=8)
def _mel_filters32(sampling_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    return mel_filters(sampling_rate, n_fft, n_mels).astype(np.float32)


@lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)  # periodic, as torch.hann_window


def live_frames(n_samples: int, cfg: FeatureConfig) -> int:
    """Frames whose window (centred, n_fft wide) reaches a sample of the audio; the rest see only zero padding."""
    n_frames = cfg.frames_of(n_samples)
    if cfg.padding_value != 0 or not cfg.fixed_window:
        return n_frames
    return min(n_frames, -(-(n_samples + cfg.n_fft // 2) // cfg.hop_length))


def log_mel(audio: np.ndarray, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(features [feature_size, n_frames] float32, mask [n_frames] int32) for 16 kHz mono audio no longer than the window
    (without a fixed window: n_frames = n_samples // hop_length, every frame real).

    Zero-pads to the window (if the config has one), STFT with centre reflect padding, power spectrum, mel, log10 clamped at 1e-10, floor at
    max − 8, then (x + 4) / 4 — WhisperFeatureExtractor with padding="max_length" and return_attention_mask=True.
    Computed in float32 (within 4e-5 of the extractor's float64 on ../shared/audio; tests/test_features.py holds it
    to 1e-4), and the frames that see only zero padding are not transformed: their power is exactly zero anyway.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio [n_samples], got shape {audio.shape}")
    if cfg.fixed_window and audio.size > cfg.n_samples:
        raise ValueError(f"{audio.size / cfg.sampling_rate:.2f} s of audio does not fit the {cfg.chunk_length} s window; split it first")
    n_frames = cfg.frames_of(audio.size)
    if n_frames < 1:
        raise ValueError(f"{audio.size} samples are shorter than one hop ({cfg.hop_length}); no feature frame")
    padded = np.full(cfg.n_samples if cfg.fixed_window else audio.size, cfg.padding_value, dtype=np.float32)
    padded[: audio.size] = audio
    half = cfg.n_fft // 2
    padded = np.pad(padded, (half, half), mode="reflect")
    n_live = live_frames(audio.size, cfg)
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.n_fft)[:: cfg.hop_length][:n_live]
    # scipy's rfft keeps float32 in float32 (numpy's is slower in float32 than in float64); imported here, not at the
    # top: every actor imports this module, and the simulated engine's actors never compute features (~0.25 s a start)
    import scipy.fft

    spectrum = scipy.fft.rfft(frames * _hann(cfg.n_fft), axis=-1)  # [n_live, 1 + n_fft // 2] complex64
    power = spectrum.real ** 2 + spectrum.imag ** 2
    mel = np.zeros((cfg.feature_size, n_frames), dtype=np.float32)
    mel[:, :n_live] = _mel_filters32(cfg.sampling_rate, cfg.n_fft, cfg.feature_size) @ power.T
    log_spec = np.log10(np.maximum(mel, np.float32(1e-10)))
    log_spec = np.maximum(log_spec, log_spec.max() - np.float32(8.0))
    features = (log_spec + np.float32(4.0)) / np.float32(4.0)
    mask = np.zeros(n_frames, dtype=np.int32)
    mask[: valid_frames(audio.size, cfg)] = 1
    return features, mask
