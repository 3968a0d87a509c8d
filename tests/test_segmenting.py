"""Training segments from speech regions: bounds, cuts in pauses, dropped non-speech recorded, nothing spoken lost."""

from __future__ import annotations

import numpy as np
import pytest

from transcribe_batch.workers.audio import load_audio
from transcribe_batch.workers.segmenting import SegmentOptions, Segmentation, segment_audio, segment_speech, to_seconds
from transcribe_batch.workers.vad import FRAME, SAMPLE_RATE, speech_probs, speech_regions

SR = SAMPLE_RATE


def _r(*pairs_s) -> np.ndarray:
    return (np.array(pairs_s, dtype=np.float64).reshape(-1, 2) * SR).astype(np.int64)


def check(seg: Segmentation, regions: np.ndarray, n: int, options: SegmentOptions, limit_s: float | None = None):
    """The invariants every segmentation keeps."""
    s = seg.segments
    max_len = int(min(options.max_s, limit_s or np.inf) * SR)
    assert s.dtype == np.int64 and s.shape[1] == 2
    assert (s[:, 0] < s[:, 1]).all() and (s[:, 1] - s[:, 0] <= max_len).all()
    assert (s[1:, 0] >= s[:-1, 1]).all() and (len(s) == 0 or (s[0, 0] >= 0 and s[-1, 1] <= n))
    tiles = sorted(s.tolist() + seg.dropped.tolist())  # segments and dropped stretches tile [0, n) exactly
    assert tiles[0][0] == 0 and tiles[-1][1] == n and all(a[1] == b[0] for a, b in zip(tiles, tiles[1:]))
    covered = np.zeros(n, bool)
    for a, b in s.tolist():
        covered[a:b] = True
    for a, b in regions.tolist():  # every speech sample is in a segment
        assert covered[a:b].all(), (a / SR, b / SR)
    for a, b in seg.dropped.tolist():  # nothing dropped is speech
        assert not any(ra < b and rb > a for ra, rb in regions.tolist()), (a / SR, b / SR)


def boundaries(seg: Segmentation) -> list[int]:
    return sorted({int(x) for x in seg.segments.ravel()})


def test_cuts_fall_in_the_pauses_and_prefer_the_longer_ones():
    # 29.5 s of talk with a 0.6 s pause (between sentences) and a 0.05 s one (between words); max 25 s → two
    # segments, cut in the long pause although the short one would give more even lengths
    regions = _r((0.5, 6.0), (6.6, 17.0), (17.05, 30.0))
    n, opts = 31 * SR, SegmentOptions(max_s=25.0, min_s=2.0, edge_s=0.2)
    seg = segment_speech(regions, n, opts)
    check(seg, regions, n, opts)
    assert len(seg.segments) == 2
    cut_end, cut_start = seg.segments[0, 1], seg.segments[1, 0]
    assert 6.0 * SR <= cut_end <= cut_start <= 6.6 * SR  # both sides of the 0.6 s pause
    assert cut_start - cut_end == int(0.6 * SR) - 2 * int(0.2 * SR)  # each keeps edge_s, the middle is dropped
    assert len(seg.forced) == 0
    # only the short pause can take the cut: the segments share it, in its middle
    regions = _r((0.5, 3.0), (3.6, 17.0), (17.05, 30.0))
    seg = segment_speech(regions, n, SegmentOptions(max_s=20.0, min_s=2.0, edge_s=0.2))
    assert len(seg.segments) == 2 and seg.segments[0, 1] == seg.segments[1, 0] == (17 * SR + int(17.05 * SR)) // 2


def test_short_pauses_are_shared_cuts_and_long_pauses_always_cut():
    regions = _r((0.0, 12.0), (12.3, 19.0), (23.0, 26.0))  # 0.3 s pause (≤ 2 × edge: shared), 4 s pause (≥ long)
    n, opts = 26 * SR, SegmentOptions(max_s=15.0, min_s=1.0, long_pause_s=3.0, edge_s=0.2)
    seg = segment_speech(regions, n, opts)
    check(seg, regions, n, opts)
    assert seg.segments.tolist() == [[0, int(12.15 * SR)], [int(12.15 * SR), int(19.2 * SR)],
                                     [int(22.8 * SR), 26 * SR]]
    assert seg.dropped.tolist() == [[int(19.2 * SR), int(22.8 * SR)]]  # recorded, so coverage is auditable


def test_long_pause_is_a_cut_even_when_both_sides_would_fit():
    regions = _r((1.0, 3.0), (8.0, 10.0))
    n, opts = 12 * SR, SegmentOptions(max_s=20.0, min_s=0.0, long_pause_s=3.0, edge_s=0.2)
    seg = segment_speech(regions, n, opts)
    check(seg, regions, n, opts)
    assert len(seg.segments) == 2
    assert seg.segments[0, 0] == int(0.8 * SR) and seg.segments[1, 1] == int(10.2 * SR)


def test_short_utterances_merge_or_take_silence_up_to_min_s():
    # three 0.5 s words with 0.8 s pauses merge into one segment; a lone 0.6 s word between long silences takes
    # silence evenly from both sides to reach min_s
    regions = _r((1.0, 1.5), (2.3, 2.8), (3.6, 4.1), (20.0, 20.6))
    n, opts = 40 * SR, SegmentOptions(max_s=20.0, min_s=2.0, long_pause_s=3.0, edge_s=0.2)
    seg = segment_speech(regions, n, opts)
    check(seg, regions, n, opts)
    assert len(seg.segments) == 2
    first, lone = seg.segments.tolist()
    assert first[0] <= 1.0 * SR and first[1] >= 4.1 * SR and first[1] - first[0] >= 2 * SR
    assert lone[1] - lone[0] == 2 * SR and lone[0] == int(19.3 * SR)  # 0.7 s each side


def test_a_segment_keeps_its_edges_rather_than_fill_up_with_speech():
    # 9.8 s of speech fits a 10 s segment only with its silent edges trimmed to 0.1 s; cutting at the 0.6 s pause
    # gives two segments with their full 0.4 s edges (VAD onsets lag, so an edge of 0.1 s risks a word's start)
    regions = _r((1.0, 5.5), (6.1, 10.8))
    n, opts = 12 * SR, SegmentOptions(max_s=10.0, min_s=2.0, edge_s=0.4)
    seg = segment_speech(regions, n, opts)
    check(seg, regions, n, opts)
    assert seg.segments.tolist() == [[int(0.6 * SR), int(5.8 * SR)], [int(5.8 * SR), int(11.2 * SR)]]
    # no pause to cut at: one segment, its edges trimmed to fit
    one = segment_speech(_r((1.0, 10.8)), n, opts)
    assert one.segments.tolist() == [[int(0.9 * SR), int(10.9 * SR)]]


def test_a_lone_short_word_without_room_stays_short():
    regions = _r((0.0, 0.5))
    n = int(0.5 * SR)
    seg = segment_speech(regions, n, SegmentOptions(min_s=2.0))
    assert seg.segments.tolist() == [[0, n]] and len(seg.dropped) == 0


def test_speech_without_pauses_is_cut_at_its_least_speech_like_frame():
    regions = _r((0.0, 50.0))
    n = 50 * SR
    scores = np.full(n // FRAME + 1, 0.99, np.float32)
    dips = [17.0, 33.0]  # where the model was least sure
    for t in dips:
        scores[int(t * SR) // FRAME] = 0.6
    opts = SegmentOptions(max_s=20.0)
    seg = segment_speech(regions, n, opts, scores=scores)
    check(seg, regions, n, opts)
    assert len(seg.segments) == 3 and len(seg.forced) == 2
    for cut, t in zip(seg.forced.tolist(), dips):
        assert abs(cut / SR - t) < FRAME / SR
    assert [int(x) for x in seg.segments[1:, 0]] == seg.forced.tolist()  # contiguous at forced cuts
    hard = segment_speech(regions, n, opts)  # without scores: at the limit
    check(hard, regions, n, opts)
    assert hard.forced.tolist() == [20 * SR, 40 * SR]


def test_engine_limit_bounds_below_max_s():
    regions = _r(*[(k * 3.0, k * 3.0 + 2.5) for k in range(10)])
    n, opts = 30 * SR, SegmentOptions(max_s=20.0, min_s=1.0)
    seg = segment_speech(regions, n, opts, limit_s=8.0)
    check(seg, regions, n, opts, limit_s=8.0)
    assert (seg.segments[:, 1] - seg.segments[:, 0]).max() <= 8 * SR


def test_no_speech_drops_everything_and_says_so():
    seg = segment_speech(np.zeros((0, 2), np.int64), 5 * SR)
    assert seg.segments.shape == (0, 2) and seg.dropped.tolist() == [[0, 5 * SR]]
    assert segment_speech(np.zeros((0, 2), np.int64), 0).dropped.shape == (0, 2)


@pytest.mark.parametrize("seed", range(40))
def test_random_regions_keep_every_invariant(seed):
    rng = np.random.default_rng(seed)
    t, pairs = rng.uniform(0, 2), []
    while t < 200:
        length = rng.choice([rng.uniform(0.1, 3), rng.uniform(3, 15), rng.uniform(20, 45)], p=[0.5, 0.4, 0.1])
        pairs.append((t, t + length))
        t += length + rng.choice([0.0, rng.uniform(0.03, 0.5), rng.uniform(0.5, 2.5), rng.uniform(3, 20)])
    n = int((t + rng.uniform(0, 5)) * SR)
    regions = _r(*pairs)
    opts = SegmentOptions(min_s=float(rng.uniform(0, 4)), max_s=float(rng.uniform(5, 30)),
                          long_pause_s=float(rng.uniform(0.5, 5)), edge_s=float(rng.uniform(0, 0.5)))
    scores = rng.uniform(0.5, 1, n // FRAME + 1)
    seg = segment_speech(regions, n, opts, scores=scores if seed % 2 else None)
    check(seg, regions, n, opts)
    # a cut inside speech only where a region is longer than the longest segment
    long_regions = [(a, b) for a, b in regions.tolist() if b - a > int(opts.max_s * SR)]
    assert all(any(a < c < b for a, b in long_regions) for c in seg.forced.tolist())


def test_real_speech_segments_end_in_pauses(audio_dir):
    audio = np.concatenate([load_audio(audio_dir / "two_cities.wav"), np.zeros(5 * SR, np.float32),
                            load_audio(audio_dir / "endgame.wav")])
    opts = SegmentOptions(max_s=15.0)
    for splitter in ("vad", "energy"):
        probs = speech_probs(audio, splitter)
        regions = speech_regions(probs, audio.size)
        seg = segment_speech(regions, audio.size, opts, scores=probs)
        if splitter == "energy":
            assert np.array_equal(segment_audio(audio, splitter, options=opts).segments, seg.segments)
        check(seg, regions, audio.size, opts)
        assert len(seg.forced) == 0 and len(seg.segments) >= 5
        level = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2))
        for b in boundaries(seg)[1:-1]:  # every boundary is far quieter than the speech around it
            around = audio[max(0, b - 800):b + 800].astype(np.float64)
            assert 10 * np.log10(np.mean(around ** 2) + 1e-12) < level - 15, (splitter, b / SR)
        # the 5 s of silence between the recordings is dropped
        assert any(a <= 45.0 * SR and b >= 48.8 * SR for a, b in seg.dropped.tolist()), splitter
    secs = to_seconds(seg.segments, offset_s=100.0)
    assert secs[0][0] >= 100.0 and secs[-1][1] <= 100.0 + audio.size / SR


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="sorted, non-empty, disjoint"):
        segment_speech(_r((2.0, 1.0)), 3 * SR)
    with pytest.raises(ValueError, match="sorted, non-empty, disjoint"):
        segment_speech(_r((0.0, 2.0), (1.0, 3.0)), 3 * SR)
    with pytest.raises(ValueError, match="sorted, non-empty, disjoint"):
        segment_speech(_r((0.0, 4.0)), 3 * SR)
    with pytest.raises(ValueError, match="min_s"):
        SegmentOptions(min_s=30.0, max_s=20.0)
    with pytest.raises(ValueError, match="max_s"):
        SegmentOptions(max_s=0.0)
    with pytest.raises(ValueError, match="edge_s"):
        SegmentOptions(edge_s=-1)
    with pytest.raises(ValueError, match="longest segment"):
        segment_speech(_r((0.0, 1.0)), SR, limit_s=0.0)
