"""Long audio is split at silences into pieces that fit the engine; nothing is dropped."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from transcribe_batch.workers.audio import load_audio
from transcribe_batch.workers.engines.base import EngineLimits
from transcribe_batch.workers.models.qwen2_audio import Qwen2Audio
from transcribe_batch.workers.prompts import answer_budget, load_templates
from transcribe_batch.workers.segment import max_piece_seconds, split_points

SR = 16000
QWEN2 = Qwen2Audio(None, load_templates())  # its 30 s window and 25 audio tokens per second


def piece_s(limits, n_text_tokens=0, budget=None):
    """max_piece_seconds with Qwen2-Audio's geometry, as the front end passes it."""
    return max_piece_seconds(limits, QWEN2.features, n_text_tokens, budget, audio_tokens=QWEN2.n_audio_tokens,
                             step_samples=QWEN2.token_step_samples)


def _check_cover(pieces, total, max_s):
    assert pieces[0][0] == 0 and pieces[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))  # contiguous: no sample dropped or repeated
    assert all(0 < e - s <= max_s * SR for s, e in pieces)


def _db(x):
    return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-12)


def test_44s_clip_split_at_silences_for_a_30s_engine(audio_dir):
    audio = load_audio(audio_dir / "two_cities.wav")
    max_s = piece_s(EngineLimits(max_audio_s=30.0))
    assert max_s == 30.0
    pieces = split_points(audio, max_s)
    assert len(pieces) == 2
    _check_cover(pieces, len(audio), max_s)
    for _, cut in pieces[:-1]:
        assert _db(audio[cut - 1600:cut + 1600]) < _db(audio) - 15  # a pause, far quieter than the speech


def test_sequence_limit_of_a_bmodel(audio_dir):
    # SEQLEN 599 with a 44-token prompt (43 text tokens + 1 placeholder): audio tokens + answer must fit
    limits = EngineLimits(max_audio_s=30.0, max_seq_len=599)
    n_text = 43
    budget = functools.partial(answer_budget, cap=256)
    max_s = piece_s(limits, n_text, budget)
    n = int(max_s * SR)
    assert n_text + QWEN2.n_audio_tokens(n) + budget(max_s) <= 599
    more = n + 640  # one audio token more no longer fits
    assert n_text + QWEN2.n_audio_tokens(more) + budget(more / SR) > 599
    assert 15.0 < max_s < 22.2  # without an answer budget it would be (599 - 43) / 25 = 22.24 s
    assert piece_s(limits, n_text) == pytest.approx(22.24)
    audio = load_audio(audio_dir / "two_cities.wav")
    pieces = split_points(audio, max_s)
    assert len(pieces) == 3
    _check_cover(pieces, len(audio), max_s)


def test_cuts_land_in_the_pauses():
    rng = np.random.default_rng(0)
    audio = np.zeros(40 * SR, np.float32)
    pauses = [(7.0, 7.6), (13.0, 13.5), (21.0, 21.8), (33.0, 33.4)]
    edges = [0.0] + [x for p in pauses for x in p] + [40.0]
    for start, end in zip(edges[::2], edges[1::2]):  # "speech": noise bursts between the pauses
        audio[int(start * SR):int(end * SR)] = 0.3 * rng.standard_normal(int(end * SR) - int(start * SR))
    audio += 1e-4 * rng.standard_normal(audio.size).astype(np.float32)
    pieces = split_points(audio, 15.0)
    _check_cover(pieces, len(audio), 15.0)
    for _, cut in pieces[:-1]:
        assert any(a * SR < cut < b * SR for a, b in pauses), cut / SR


def test_no_silence_still_splits_and_keeps_everything():
    audio = np.random.default_rng(1).standard_normal(70 * SR).astype(np.float32)
    pieces = split_points(audio, 30.0)
    assert len(pieces) == 3
    _check_cover(pieces, len(audio), 30.0)


def test_no_tiny_tail():
    audio = np.random.default_rng(2).standard_normal(int(30.2 * SR)).astype(np.float32)
    pieces = split_points(audio, 30.0)
    assert len(pieces) == 2 and pieces[-1][1] - pieces[-1][0] >= SR


def test_short_audio_is_one_piece():
    assert split_points(np.zeros(SR, np.float32), 30.0) == [(0, SR)]
    assert split_points(np.zeros(10, np.float32), 30.0) == [(0, 10)]


def test_limits():
    assert piece_s(None) == 30.0
    assert piece_s(EngineLimits(max_audio_s=60.0)) == 30.0  # the feature window bounds it
    assert piece_s(EngineLimits(max_audio_s=10.0, max_seq_len=None)) == 10.0
    with pytest.raises(ValueError, match="no room"):
        piece_s(EngineLimits(max_audio_s=30.0, max_seq_len=50), 60)
    with pytest.raises(TypeError, match="audio_tokens"):  # no family's token count is built in
        max_piece_seconds(EngineLimits(max_audio_s=30.0, max_seq_len=599), QWEN2.features, 43)
    with pytest.raises(ValueError):
        split_points(np.zeros(SR, np.float32), 0.0)
