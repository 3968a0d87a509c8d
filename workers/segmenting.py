"""Training segments from speech regions: pieces of min_s–max_s seconds, cut in pauses, long non-speech dropped.

    regions = detect_speech(audio, "vad")                               # workers/vad.py
    seg = segment_speech(regions, len(audio), SegmentOptions(), limit_s=engine_max_s, scores=probs)
    seg.segments   # (k, 2) int64 [start, end) samples: sorted, non-overlapping, each ≤ min(max_s, limit_s)
    seg.dropped    # (d, 2) int64 the non-speech stretches left out; segments ∪ dropped = [0, n) exactly

Every speech sample lies in exactly one segment (speech is never dropped). Neighbouring segments share their cut
where the pause between them is short (≤ 2 × edge_s); from a longer pause each keeps edge_s and the middle is dropped;
a pause of long_pause_s or more always ends a segment. Where several pauses could take a cut, the choice minimises
(dynamic programming over the pauses): the number of segments, segments shorter than min_s, segments too full of
speech to keep their edge_s of silence, and cuts in short pauses (a 40 ms gap between words costs ~15× what a
0.5 s pause does). Only a stretch of speech longer than the
limit with no pause at all is cut inside speech, at its least speech-like frame when per-frame `scores` are given;
those cuts are listed in `forced`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .vad import FRAME, SAMPLE_RATE, VadOptions, speech_probs, speech_regions

SEGMENT_COST = 1.0  # each segment: fewer, longer segments are preferred
SHORT_COST = 4.0  # a segment that stays shorter than min_s even with all the silence it may take
PAUSE_COST = 3.0  # a cut in a pause of length L costs PAUSE_COST × exp(−L / PAUSE_SCALE_S)
PAUSE_SCALE_S = 0.2
FORCED_COST = 50.0  # a cut inside speech (only where no pause is in reach)
TRIM_COST = 2.0  # a segment whose speech leaves no room for its edge_s of silence at both ends
SEARCH_FROM = 0.5  # a forced cut is searched in the last (1 − SEARCH_FROM) of the longest piece


@dataclass(frozen=True)
class SegmentOptions:
    """Bounds of training segments (recipes train on ~1–30 s; NeMo and Lhotse recipes commonly cap at 20 s)."""

    min_s: float = 2.0
    """Segments shorter than this are avoided: merged with a neighbour across a short pause, or given more of the
    silence around them. A lone utterance shorter than this between long pauses stays short (never dropped)."""
    max_s: float = 20.0
    """No segment is longer than this (nor than the engine's own limit, `limit_s` of segment_speech)."""
    long_pause_s: float = 3.0
    """A non-speech stretch at least this long always ends a segment (and its middle is dropped)."""
    edge_s: float = 0.4
    """Non-speech kept at a segment's ends where it was cut in a pause longer than 2 × edge_s. Generous on purpose:
    Silero's onsets lag the first sound by up to 0.3 s (measured on the test recordings), and 0.2 s cut a word
    onset at 6 % of boundaries in benchmarks/splitters.py where 0.4 s cut 1 % (faster-whisper pads 0.4 s too)."""

    def __post_init__(self):
        if not (math.isfinite(self.max_s) and self.max_s > 0):
            raise ValueError(f"SegmentOptions.max_s must be a positive number of seconds, got {self.max_s}")
        if not 0 <= self.min_s <= self.max_s:
            raise ValueError(f"SegmentOptions.min_s must lie in [0, max_s = {self.max_s}], got {self.min_s}")
        if not self.long_pause_s > 0:
            raise ValueError(f"SegmentOptions.long_pause_s must be > 0, got {self.long_pause_s}")
        if not 0 <= self.edge_s < self.max_s / 2:
            raise ValueError(f"SegmentOptions.edge_s must lie in [0, max_s / 2), got {self.edge_s}")


@dataclass(frozen=True)
class Segmentation:
    segments: np.ndarray
    """(k, 2) int64 [start, end) samples: sorted, non-overlapping, within bounds; every speech sample in one."""
    dropped: np.ndarray
    """(d, 2) int64 [start, end) non-speech stretches in no segment; with `segments` they tile [0, n) exactly."""
    forced: np.ndarray
    """(f,) int64 sample positions where a segment boundary had to fall inside speech (no pause within reach)."""


def segment_speech(regions: np.ndarray, n_samples: int, options: SegmentOptions = SegmentOptions(), *,
                   limit_s: float | None = None, scores: np.ndarray | None = None,
                   sr: int = SAMPLE_RATE) -> Segmentation:
    """Segments of [0, n_samples) from speech `regions` ((k, 2) sorted disjoint [start, end) samples, as
    workers/vad.speech_regions gives). `limit_s`: the engine's longest piece (bounds max_s further). `scores`:
    per-frame speech probabilities (FRAME-sample frames) to place cuts inside over-long speech."""
    regions = _check_regions(regions, n_samples)
    max_len = int(math.floor(min(options.max_s, limit_s if limit_s is not None else math.inf) * sr))
    if max_len <= 0:
        raise ValueError(f"the longest segment must be positive, got max_s {options.max_s}, limit_s {limit_s}")
    min_len = min(int(round(options.min_s * sr)), max_len)
    edge, long_pause = int(round(options.edge_s * sr)), options.long_pause_s * sr
    if not len(regions):
        return Segmentation(_ranges([]), _ranges([(0, n_samples)] if n_samples else []), np.zeros(0, np.int64))

    pieces, forced = _presplit(regions, max_len, scores)
    m = len(pieces)
    starts, ends = pieces[:, 0], pieces[:, 1]
    # break k sits before piece k (k = 0: the file's start; k = m: its end); mid[k] is how far either side may reach
    lo = np.concatenate([[0], ends[:-1], [ends[-1]]])
    hi = np.concatenate([[starts[0]], starts[1:], [n_samples]])
    mid = (lo + hi) // 2
    mid[0], mid[m] = 0, n_samples
    pause_s = (hi - lo) / sr
    forced_at = np.zeros(m + 1, bool)
    forced_at[1:m] = np.isin(starts[1:], forced)
    mandatory = np.zeros(m + 1, bool)
    mandatory[1:m] = (hi[1:m] - lo[1:m]) >= long_pause
    cut_cost = np.where(forced_at, FORCED_COST, PAUSE_COST * np.exp(-pause_s / PAUSE_SCALE_S))
    cut_cost[0] = cut_cost[m] = 0.0
    cut_cost[mandatory] = 0.0

    # where a segment starting after break k / ending before break k would begin / end with its full edges
    start_at, end_at = np.maximum(hi - edge, mid), np.minimum(lo + edge, mid)  # (mid is 0 / n at the file's ends)
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    back = np.zeros(m + 1, np.int64)
    for j in range(1, m + 1):
        for i in range(j - 1, -1, -1):  # segment = pieces i .. j-1
            if ends[j - 1] - starts[i] > max_len:
                break
            reach = mid[j] - mid[i]  # the most this segment may span, all the silence it may take included
            cost = best[i] + SEGMENT_COST + (SHORT_COST if reach < min_len else 0.0) + cut_cost[j]
            if end_at[j] - start_at[i] > max_len:  # the edges would be trimmed (onsets are where VADs lag)
                cost += TRIM_COST
            if cost < best[j]:
                best[j], back[j] = cost, i
            if mandatory[i]:
                break
    chosen = [m]
    while chosen[-1] > 0:
        chosen.append(int(back[chosen[-1]]))
    chosen.reverse()

    segments = []
    for i, j in zip(chosen, chosen[1:]):
        s, e = _fit(int(start_at[i]), int(end_at[j]), starts[i], ends[j - 1], mid[i], mid[j], min_len, max_len)
        segments.append((s, e))
    return Segmentation(_ranges(segments), _ranges(_gaps(segments, n_samples)), forced)


def segment_audio(audio: np.ndarray, splitter: str = "vad", *, vad: VadOptions = VadOptions(),
                  options: SegmentOptions = SegmentOptions(), limit_s: float | None = None) -> Segmentation:
    """Segments of 16 kHz mono `audio` ((n,) float32): speech found by `splitter` ("vad" or "energy"), then
    segment_speech with the probabilities as scores for cuts inside over-long speech."""
    probs = speech_probs(audio, splitter)
    return segment_speech(speech_regions(probs, len(audio), vad), len(audio), options, limit_s=limit_s, scores=probs)


def to_seconds(ranges: np.ndarray, sr: int = SAMPLE_RATE, offset_s: float = 0.0) -> list[tuple[float, float]]:
    """(k, 2) sample ranges → [(start_s, end_s)], shifted by `offset_s` (where the audio began in its file)."""
    return [(offset_s + int(s) / sr, offset_s + int(e) / sr) for s, e in np.asarray(ranges).reshape(-1, 2)]


def _fit(s: int, e: int, speech_s: int, speech_e: int, room_s: int, room_e: int, min_len: int,
         max_len: int) -> tuple[int, int]:
    """Grow [s, e) towards min_len within [room_s, room_e) (evenly where both sides allow), or trim its silent
    edges to max_len; the speech [speech_s, speech_e) always stays inside."""
    if e - s > max_len:  # the speech fits (pieces are ≤ max_len): give the edges what is left, in proportion
        left, right, spare = speech_s - s, e - speech_e, max_len - (speech_e - speech_s)
        keep_left = left * spare // max(1, left + right)
        return speech_s - keep_left, speech_e + (spare - keep_left)
    need = min_len - (e - s)
    if need > 0:
        take_l = min(need // 2, s - room_s)
        take_r = min(need - take_l, room_e - e)
        take_l = min(need - take_r, s - room_s)
        s, e = s - take_l, e + take_r
    return int(s), int(e)


def _presplit(regions: np.ndarray, max_len: int, scores: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Regions longer than max_len cut into pieces ≤ max_len at their least speech-like frames: (pieces, cuts)."""
    pieces, cuts = [], []
    for s, e in regions.tolist():
        while e - s > max_len:
            cut = _quietest(s + int(SEARCH_FROM * max_len), s + max_len, scores)
            pieces.append((s, cut))
            cuts.append(cut)
            s = cut
        pieces.append((s, e))
    return np.array(pieces, np.int64).reshape(-1, 2), np.array(cuts, np.int64)


def _quietest(lo: int, hi: int, scores: np.ndarray | None) -> int:
    """A cut in [lo, hi]: the middle of the latest run of frames within 0.05 of the lowest score there (frame
    centres), or hi without scores."""
    if scores is None:
        return hi
    f_lo, f_hi = -(-(lo - FRAME // 2) // FRAME), min(len(scores), (hi - FRAME // 2) // FRAME + 1)
    if f_hi <= f_lo:
        return hi
    seg = np.asarray(scores[f_lo:f_hi], np.float64)
    low = np.flatnonzero(seg <= seg.min() + 0.05)
    breaks = np.flatnonzero(np.diff(low) > 1)
    run = low[breaks[-1] + 1:] if breaks.size else low
    return int(min(max((f_lo + int(run[len(run) // 2])) * FRAME + FRAME // 2, lo), hi))


def _gaps(segments: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    gaps, at = [], 0
    for s, e in segments:
        if s > at:
            gaps.append((at, s))
        at = e
    if n > at:
        gaps.append((at, n))
    return gaps


def _ranges(pairs) -> np.ndarray:
    return np.array(list(pairs), dtype=np.int64).reshape(-1, 2)


def _check_regions(regions, n_samples: int) -> np.ndarray:
    r = np.asarray(regions, dtype=np.int64).reshape(-1, 2)
    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if len(r) and ((r[:, 0] >= r[:, 1]).any() or r[0, 0] < 0 or r[-1, 1] > n_samples
                   or (r[1:, 0] < r[:-1, 1]).any()):
        raise ValueError(f"speech regions must be sorted, non-empty, disjoint [start, end) ranges within "
                         f"[0, {n_samples}), got {r.tolist()[:5]}{' …' if len(r) > 5 else ''}")
    return r
