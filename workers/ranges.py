"""Spread one long file over several workers by time range; neighbours agree on their shared cut without talking.

    nominal = range_boundaries(duration_s, range_s)        # on the driver, from the header's duration
    # worker k (of len(nominal) + 1), on its own:
    start = 0.0 if k == 0 else boundary_cut(path, nominal[k - 1], duration_s=duration_s)
    end = duration_s if k == len(nominal) else boundary_cut(path, nominal[k], duration_s=duration_s)
    audio = load_span(path, start, end)                      # only this range is read

`boundary_cut` reads only `window_s` of audio around the nominal boundary and picks the cut from that audio alone
(the speech probabilities start from a fresh model state on the window), so the two workers that share a boundary
compute the same float bit for bit. load_span maps that time to the same file sample for both, so the ranges are
contiguous. The cut is the middle of the best pause in the window: pauses of `good_pause_s` or longer are all
equally good and the one nearest the nominal time wins; a window without any pause is cut at its least speech-like
frame nearest the nominal time.

Bit-for-bit agreement holds for the same onnxruntime/numpy build on the same CPU architecture (tested across
processes). Hosts of different architectures in one job (x86_64 and aarch64) may differ in the last bits of a
probability; a frame exactly at a threshold could then move one worker's cut, so a job should record the cuts it used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE, audio_duration, load_span
from .vad import FRAME, VadOptions, speech_probs, speech_regions


@dataclass(frozen=True)
class CutOptions:
    """Where the shared cut between two ranges goes."""

    window_s: float = 20.0
    """Audio read around the nominal boundary (half before, half after; less at the file's ends)."""
    margin_s: float = 1.0
    """No cut this close to the window's ends (the VAD's state is fresh at its start; pauses there are cut off)."""
    good_pause_s: float = 1.0
    """Pauses at least this long are equally good places to cut; shorter ones rank by length."""

    def __post_init__(self):
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            raise ValueError(f"CutOptions.window_s must be a positive number of seconds, got {self.window_s}")
        if not 0 <= self.margin_s < self.window_s / 2:
            raise ValueError(f"CutOptions.margin_s must lie in [0, window_s / 2), got {self.margin_s}")
        if not self.good_pause_s > 0:
            raise ValueError(f"CutOptions.good_pause_s must be > 0, got {self.good_pause_s}")


def range_boundaries(duration_s: float, range_s: float, window_s: float = CutOptions.window_s) -> list[float]:
    """The inner nominal boundaries splitting [0, duration_s) into n = max(1, round(duration_s / range_s)) equal
    ranges (n − 1 times, ascending). Ranges must be longer than the cut window (else two cuts could cross): n is
    lowered until duration_s / n > window_s."""
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration_s!r}")
    if not (math.isfinite(range_s) and range_s > 0):
        raise ValueError(f"range length must be a positive number of seconds, got {range_s!r}")
    n = max(1, int(round(duration_s / range_s)))
    while n > 1 and duration_s / n <= window_s:
        n -= 1
    return [duration_s * k / n for k in range(1, n)]


def cut_in_window(probs: np.ndarray, n_samples: int, nominal: int, vad: VadOptions = VadOptions(),
                  options: CutOptions = CutOptions()) -> int:
    """The cut (sample index in the window) from the window's per-frame speech probabilities ((n_frames,), see
    workers/vad.py), its length, and the nominal boundary's index in it. Pure: same input, same cut."""
    sr = SAMPLE_RATE
    margin = int(round(options.margin_s * sr))
    lo, hi = min(margin, n_samples // 2), max(n_samples - margin, n_samples // 2)
    regions = speech_regions(probs, n_samples, vad)
    edges = np.concatenate([[0], regions.ravel(), [n_samples]]).reshape(-1, 2)  # the pauses between regions
    pauses = [(max(s, lo), min(e, hi)) for s, e in edges.tolist() if min(e, hi) > max(s, lo)]
    if pauses:
        good = options.good_pause_s * sr

        def rank(p):
            mid = (p[0] + p[1]) // 2
            return -min(p[1] - p[0], good), abs(mid - nominal), mid

        s, e = min(pauses, key=rank)
        return (s + e) // 2
    centres = np.arange(len(probs)) * FRAME + FRAME // 2  # no pause at all: the least speech-like frame
    inside = (centres >= lo) & (centres < hi)
    if not inside.any():
        return min(max(nominal, lo), hi)
    p = np.where(inside, probs, np.inf)
    candidates = np.flatnonzero(p <= p.min() + 1e-6)
    best = candidates[np.argmin(np.abs(centres[candidates] - nominal))]
    return int(centres[best])


def boundary_cut(path: str | os.PathLike, nominal_s: float, *, splitter: str = "vad",
                 duration_s: float | None = None, vad: VadOptions = VadOptions(),
                 options: CutOptions = CutOptions()) -> float:
    """The cut (seconds in the file) near `nominal_s`, from the audio within ±window_s / 2 of it only.

    Deterministic: every process calling it with the same arguments on the same file gets the same float.
    `duration_s`: the file's length from its header (read here when not given)."""
    duration_s = audio_duration(path) if duration_s is None else float(duration_s)
    if not 0 < nominal_s < duration_s:
        raise ValueError(f"{path}: nominal boundary {nominal_s!r} s lies outside the audio (0–{duration_s:.3f} s)")
    w0 = max(0.0, nominal_s - options.window_s / 2)
    w1 = min(duration_s, nominal_s + options.window_s / 2)
    audio = load_span(path, w0, w1)
    nominal = int(round((nominal_s - w0) * SAMPLE_RATE))
    cut = cut_in_window(speech_probs(audio, splitter), audio.size, nominal, vad, options)
    return w0 + cut / SAMPLE_RATE


def range_spans(cuts: list[float], duration_s: float) -> list[tuple[float, float]]:
    """[(start_s, end_s)] of the ranges between consecutive cuts, covering [0, duration_s)."""
    edges = [0.0, *cuts, float(duration_s)]
    if any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"cuts must be ascending inside (0, {duration_s}), got {cuts}")
    return list(zip(edges, edges[1:]))
