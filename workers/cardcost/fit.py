"""Fit the card cost model's constants to Sophgo's published BM1684X figures (published.py), by least squares on
relative errors with every constant ≥ 0 (scipy nnls), and say how well each point is reproduced.

Decode step (batch 1, memory-bound):  1 / tokens_per_s = weight bytes · a_w + K/V bytes · a_kv + t_step
First token (prefill over SEQLEN):    first_token_s = weight bytes · a_w + matmul FLOPs · a_mm
                                                      + attention FLOPs · a_att + t_call
a_w (s per weight byte) comes from the decode fit and is held fixed in the prefill fit (the prefill reads the weights
once too); a constant the data do not support (e.g. a negative per-step cost) comes out 0 and drops out."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .published import POINTS, WHISPER, PublishedPoint, WhisperPoint


@dataclass(frozen=True)
class CardConstants:
    """One BM1684X chip, as the fit sees it: seconds per byte or FLOP of each kind of work, and fixed costs."""

    s_per_weight_byte: float  # weights streamed from device memory (decode steps, prefill, encoder)
    s_per_kv_byte: float  # K/V history read by a decode step's attention
    s_per_matmul_flop: float  # prefill and encoder matmuls
    s_per_attention_flop: float  # prefill and encoder attention (QKᵀ, softmax, PV)
    step_overhead_s: float  # fixed cost per decode step (launches)
    call_overhead_s: float  # fixed cost per prefill (host: embedding, inputs, launches)

    @staticmethod
    def _rate(coef: float) -> float:
        return 1.0 / coef if coef > 0 else float("inf")

    @property
    def weight_bytes_per_s(self) -> float:
        return self._rate(self.s_per_weight_byte)

    @property
    def kv_bytes_per_s(self) -> float:
        return self._rate(self.s_per_kv_byte)

    @property
    def matmul_flops_per_s(self) -> float:
        return self._rate(self.s_per_matmul_flop)

    @property
    def attention_flops_per_s(self) -> float:
        return self._rate(self.s_per_attention_flop)


@dataclass(frozen=True)
class CalibrationRow:
    """One published figure against the fitted model."""

    point: PublishedPoint
    quantity: str  # "tokens/s" | "first token s"
    measured: float
    fitted: float
    used: bool  # part of the fit (else shown with its error only)

    @property
    def error(self) -> float:
        """Relative error of the fitted value (fitted / measured − 1)."""
        return self.fitted / self.measured - 1.0


@dataclass(frozen=True)
class WhisperCheck:
    """A Whisper figure next to what the fitted model gives for its encoder alone (30 s windows)."""

    point: WhisperPoint
    encoder_ms_per_audio_s: float

    @property
    def encoder_share(self) -> float:
        return self.encoder_ms_per_audio_s / self.point.ms_per_audio_s


@dataclass(frozen=True)
class Calibration:
    constants: CardConstants
    rows: tuple[CalibrationRow, ...]
    whisper: tuple[WhisperCheck, ...]

    @property
    def max_error(self) -> float:
        """Largest |relative error| over the points the fit used."""
        return max(abs(r.error) for r in self.rows if r.used)

    @property
    def max_error_all(self) -> float:
        return max(abs(r.error) for r in self.rows)

    @property
    def rms_error(self) -> float:
        return float(np.sqrt(np.mean([r.error ** 2 for r in self.rows if r.used])))


def _relative_nnls(features: np.ndarray, target: np.ndarray, offset: np.ndarray | None = None) -> np.ndarray:
    """Coefficients c ≥ 0 minimising Σ ((features·c + offset − target) / target)²."""
    offset = np.zeros_like(target) if offset is None else offset
    from scipy.optimize import nnls  # here: the simulated engine imports this package in every actor, fits rarely

    coef, _ = nnls(features / target[:, None], (target - offset) / target)
    return coef


def weight_bytes(p: PublishedPoint) -> float:
    return p.decoder.params * p.bits / 8 + p.decoder.head_params * p.head_bits / 8


def fit(points: tuple[PublishedPoint, ...] = POINTS, whisper: tuple[WhisperPoint, ...] = WHISPER) -> Calibration:
    if len(points) < 4:
        raise ValueError(f"the fit needs at least 4 published points, got {len(points)}")
    w = np.array([weight_bytes(p) for p in points])
    kv = np.array([p.decoder.kv_bytes(p.seqlen) for p in points], dtype=float)
    step = np.array([1.0 / p.tokens_per_s for p in points])
    a_w, a_kv, t_step = _relative_nnls(np.column_stack([w, kv, np.ones_like(w)]), step)

    flops = np.array([p.decoder.prefill_flops(p.seqlen) for p in points])
    ttft = np.array([p.first_token_s for p in points])
    used = np.array([p.prefill_fit for p in points])
    x = np.column_stack([flops, np.ones(len(points))])
    a_mm, a_att, t_call = _relative_nnls(x[used], ttft[used], a_w * w[used])
    constants = CardConstants(float(a_w), float(a_kv), float(a_mm), float(a_att), float(t_step), float(t_call))

    step_fit = w * a_w + kv * a_kv + t_step
    ttft_fit = w * a_w + x @ np.array([a_mm, a_att, t_call])
    rows = []
    for i, p in enumerate(points):
        rows.append(CalibrationRow(p, "tokens/s", p.tokens_per_s, 1.0 / step_fit[i], True))
        rows.append(CalibrationRow(p, "first token s", p.first_token_s, float(ttft_fit[i]), bool(used[i])))
    checks = []
    for wp in whisper:
        lin, att = wp.encoder.flops(30.0)
        s = wp.encoder.params * 2 * a_w + lin * a_mm + att * a_att  # F16 weights, one 30 s window
        checks.append(WhisperCheck(wp, 1000.0 * s / 30.0))
    return Calibration(constants, tuple(rows), tuple(checks))


@lru_cache(maxsize=1)
def calibration() -> Calibration:
    """The fit to the published points (computed once per process: milliseconds)."""
    return fit()
