"""Split long audio at silences into pieces that fit an engine, and work out how long a piece may be.

Pieces are contiguous and cover every sample (nothing is dropped); each cut is placed in the quietest stretch of the
last part of the allowed span, judged by short-time energy smoothed over ~0.2 s (a pause between words or phrases).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .engines.base import EngineLimits
from .features import FeatureConfig

FRAME_S = 0.025  # energy frame
HOP_S = 0.010
SMOOTH_S = 0.2  # a pause shorter than this is not a place to cut
SEARCH_FROM = 0.5  # cut no earlier than this fraction of the longest allowed piece
MIN_PIECE_S = 1.0  # avoid tiny trailing pieces where the audio allows
NEAR_MIN_DB = 3.0  # among cut candidates within this much of the quietest, take the latest (fewer pieces)


def max_piece_seconds(
    limits: EngineLimits | None,
    features: FeatureConfig,
    n_text_tokens: int = 0,
    answer_budget: Callable[[float], int] | None = None,
    *,
    audio_tokens: Callable[[int], int],
    step_samples: int,
    max_audio_s: float | None = None,
) -> float:
    """Longest audio (seconds) one request may carry.

    Bounded by the engine's max_audio_s, the model's (`max_audio_s`; default the feature window), and, when the
    engine has a sequence limit, by prompt text tokens + audio tokens + the answer budget ≤ max_seq_len and prompt
    text tokens + audio tokens ≤ max_input_len, the audio counted as the engine gets it (padded to a multiple of
    `audio_multiple_s` where the engine says so). `n_text_tokens` counts the prompt without the audio placeholder;
    `audio_tokens(n_samples)` is the model family's count (`ModelFamily.n_audio_tokens`) and `step_samples` its
    samples per audio token (`token_step_samples`).
    """
    model_s = features.max_audio_s if max_audio_s is None else max_audio_s
    longest = model_s if limits is None else min(limits.max_audio_s, model_s)
    if limits is None or (limits.max_seq_len is None and limits.max_input_len is None):
        return longest
    sr = features.sampling_rate

    def fits(n_samples: int) -> bool:
        tokens = n_text_tokens + audio_tokens(padded_samples(n_samples, limits, sr))
        if limits.max_input_len is not None and tokens > limits.max_input_len:
            return False
        budget = answer_budget(n_samples / sr) if answer_budget else 0
        return limits.max_seq_len is None or tokens + budget <= limits.max_seq_len

    bound = min(n for n in (limits.max_seq_len, limits.max_input_len) if n is not None)
    hi = int(longest * sr) // step_samples if math.isfinite(longest) else bound * 2
    lo = 0  # largest k with fits(k * step_samples): token count and budget grow with length, so bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * step_samples):
            lo = mid
        else:
            hi = mid - 1
    if lo <= 0:
        raise ValueError(
            f"the prompt ({n_text_tokens} tokens) leaves no room for audio within max_seq_len {limits.max_seq_len}"
            + ("" if limits.max_input_len is None else f" and max_input_len {limits.max_input_len}")
        )
    return lo * step_samples / sr


def padded_samples(n_samples: int, limits: EngineLimits | None, sr: int) -> int:
    """Samples of a piece of n_samples as the engine gets it: rounded up to a multiple of limits.audio_multiple_s."""
    if limits is None or not limits.audio_multiple_s:
        return n_samples
    step = int(round(limits.audio_multiple_s * sr))
    return -(-n_samples // step) * step


def _smoothed_energy_db(audio: np.ndarray, sr: int) -> np.ndarray:
    frame, hop = int(FRAME_S * sr), int(HOP_S * sr)
    if audio.size < frame:
        return np.full(1, -100.0)
    windows = np.lib.stride_tricks.sliding_window_view(audio, frame)[::hop]
    db = 10 * np.log10(np.mean(windows.astype(np.float64) ** 2, axis=1) + 1e-10)
    k = max(1, int(SMOOTH_S / HOP_S))
    return np.convolve(db, np.ones(k) / k, mode="same")


def split_points(audio: np.ndarray, max_s: float, sr: int = 16000) -> list[tuple[int, int]]:
    """Contiguous (start, end) sample ranges covering all of `audio`, each at most `max_s` seconds long."""
    total, max_len = len(audio), int(math.floor(max_s * sr))
    if max_len <= 0:
        raise ValueError(f"max piece length must be positive, got {max_s} s")
    if total <= max_len:
        return [(0, total)]
    energy = _smoothed_energy_db(audio, sr)
    hop = int(HOP_S * sr)
    centre = int(FRAME_S * sr) // 2
    pieces, start = [], 0
    while total - start > max_len:
        hi = start + max_len
        lo = start + int(SEARCH_FROM * max_len)
        if total - hi < MIN_PIECE_S * sr:  # leave a tail of at least MIN_PIECE_S where possible
            hi = max(lo + 1, total - int(MIN_PIECE_S * sr))
        # energy frames whose centre lies in [lo, hi)
        f_lo = max(0, -(-(lo - centre) // hop))
        f_hi = min(len(energy), (hi - centre) // hop + 1)
        if f_hi > f_lo:
            seg = energy[f_lo:f_hi]
            quiet = np.flatnonzero(seg <= seg.min() + NEAR_MIN_DB)
            breaks = np.flatnonzero(np.diff(quiet) > 1)
            last_run = quiet[breaks[-1] + 1:] if breaks.size else quiet  # the latest quiet stretch: cut in its middle
            cut = (f_lo + int(last_run[len(last_run) // 2])) * hop + centre
            cut = min(max(cut, lo), hi)
        else:
            cut = hi
        pieces.append((start, cut))
        start = cut
    pieces.append((start, total))
    return pieces
