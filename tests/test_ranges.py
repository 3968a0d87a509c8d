"""Long files by time range: nominal boundaries, cuts that neighbours compute alike, bounded-memory range reads.

The long files are built here from the real recordings: a 1-hour FLAC and a 3-hour WAV of silence with a minute of
talk (real clips with pauses) around every nominal boundary, which is where the cuts are made. Silence writes fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from transcribe_batch.workers.audio import AudioRangeError, audio_duration, load_audio, load_span
from transcribe_batch.workers.ranges import CutOptions, boundary_cut, cut_in_window, range_boundaries, range_spans
from transcribe_batch.workers.vad import FRAME, SAMPLE_RATE, detect_speech

SR = SAMPLE_RATE
REPO = Path(__file__).resolve().parents[1]


def build_long_file(path: Path, duration_s: float, talk_at: list[float], clips: list[np.ndarray],
                    seed: int = 0) -> list[tuple[float, float]]:
    """Silence of `duration_s` with ~60 s of talk centred on each time in `talk_at` (clips in random order, pauses
    of 0.3–1.5 s, one clip always straddling the centre); returns where each clip lies (seconds). Written in blocks:
    memory stays small whatever the length."""
    rng = np.random.default_rng(seed)
    placed: list[tuple[int, np.ndarray]] = []
    for centre in talk_at:
        order = rng.permutation(len(clips))
        first = clips[order[0]]
        at = int(centre * SR) - first.size // 2  # straddles the nominal boundary: the cut must move off it
        back, fwd = at, at
        placed.append((at, first))
        fwd = at + first.size
        k = 1
        while fwd < (centre + 30) * SR or back > (centre - 30) * SR:
            clip = clips[order[k % len(order)]]
            k += 1
            if fwd - centre * SR <= centre * SR - back:
                fwd += int(rng.uniform(0.3, 1.5) * SR)
                placed.append((fwd, clip))
                fwd += clip.size
            else:
                back -= int(rng.uniform(0.3, 1.5) * SR) + clip.size
                placed.append((back, clip))
    placed.sort(key=lambda p: p[0])
    n = int(duration_s * SR)
    block = np.zeros(60 * SR, np.float32)
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        at = 0
        for start, clip in placed:
            while at < start:
                step = min(block.size, start - at)
                f.write(block[:step])
                at += step
            f.write(clip)
            at += clip.size
        while at < n:
            step = min(block.size, n - at)
            f.write(block[:step])
            at += step
    return [(s / SR, (s + c.size) / SR) for s, c in placed]


@pytest.fixture(scope="module")
def clips(audio_dir, audio_rows):
    out = [load_audio(audio_dir / r["audio_filepath"]) for r in audio_rows]
    return [c for c in out if 1.0 <= c.size / SR <= 45.0]


@pytest.fixture(scope="module")
def long_files(tmp_path_factory, clips):
    """{name: (path, duration_s, range_s, clip placements)}: a 1-hour FLAC and a 3-hour WAV."""
    root = tmp_path_factory.mktemp("long")
    out = {}
    for name, hours, range_s, fmt in (("1h", 1, 600.0, "flac"), ("3h", 3, 1800.0, "wav")):
        duration = hours * 3600.0
        path = root / f"long_{name}.{fmt}"
        placed = build_long_file(path, duration, range_boundaries(duration, range_s), clips, seed=hours)
        out[name] = (path, duration, range_s, placed)
    return out


CUTS_SCRIPT = textwrap.dedent("""
    import json, sys
    from transcribe_batch.workers.ranges import boundary_cut
    path, duration, nominal = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
    print(json.dumps([boundary_cut(path, t, duration_s=duration).hex() for t in nominal]))
""")


def test_range_boundaries():
    assert range_boundaries(3600.0, 600.0) == [600.0, 1200.0, 1800.0, 2400.0, 3000.0]
    assert range_boundaries(100.0, 30.0) == pytest.approx([100 / 3, 200 / 3])  # equal ranges, round(100 / 30) = 3
    assert range_boundaries(50.0, 600.0) == []  # one range
    assert range_boundaries(100.0, 10.0, window_s=20.0) == [25.0, 50.0, 75.0]  # ranges kept longer than the window
    for bad in ((0.0, 10.0), (float("nan"), 10.0), (100.0, 0.0), (100.0, float("inf"))):
        with pytest.raises(ValueError):
            range_boundaries(*bad)


def test_cut_in_window_picks_the_best_pause_nearest_the_boundary():
    n = 20 * SR
    probs = np.full(n // FRAME, 0.95, np.float32)

    def pause(a, b):
        probs[int(a * SR) // FRAME:int(b * SR) // FRAME] = 0.02

    pause(3.0, 3.4)  # short
    pause(6.0, 7.5)  # good (≥ 1 s)
    pause(14.0, 16.0)  # good, but farther from the nominal 10 s
    cut = cut_in_window(probs, n, 10 * SR)
    assert 6.0 * SR < cut < 7.5 * SR
    probs[:] = 0.95
    pause(3.0, 3.4)
    pause(12.0, 12.3)  # nearer but shorter: the longer one wins
    assert 3.0 * SR < cut_in_window(probs, n, 10 * SR) < 3.4 * SR
    probs[:] = 0.95  # no pause at all: the least speech-like frame, the one nearest the boundary among equals
    probs[100] = probs[400] = 0.6
    assert cut_in_window(probs, n, 10 * SR) == 400 * FRAME + FRAME // 2
    probs[:] = 0.95
    pause(0.0, 0.9)  # pauses inside the margin (1 s) are not used
    assert cut_in_window(probs, n, 10 * SR, options=CutOptions(margin_s=1.0)) >= SR


@pytest.mark.slow  # builds a 1-hour and a 3-hour file (~0.5 GB on disk) and runs the VAD in two processes
def test_neighbours_agree_on_every_cut_and_cuts_fall_in_pauses(long_files):
    for name, (path, duration, range_s, placed) in long_files.items():
        assert audio_duration(path) == duration
        nominal = range_boundaries(duration, range_s)
        here = [boundary_cut(path, t, duration_s=duration) for t in nominal]
        other = subprocess.run([sys.executable, "-c", CUTS_SCRIPT, str(path), repr(duration), json.dumps(nominal)],
                               capture_output=True, text=True, check=True, cwd=REPO)
        assert [c.hex() for c in here] == json.loads(other.stdout), name  # bit for bit, in another process
        for t, cut in zip(nominal, here):
            assert abs(cut - t) <= CutOptions().window_s / 2
            around = load_span(path, cut - 0.1, cut + 0.1)  # a pause: between clips or inside one
            assert 20 * np.log10(np.sqrt(np.mean(around.astype(np.float64) ** 2)) + 1e-9) < -50, (name, cut)
        spans = range_spans(here, duration)
        for (a, b), (c, d) in zip(spans, spans[1:]):  # neighbouring ranges meet exactly at the cut
            left, right, both = load_span(path, b - 1.0, b), load_span(path, c, c + 1.0), load_span(path, b - 1.0, c + 1.0)
            assert np.array_equal(np.concatenate([left, right]), both)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from transcribe_batch.workers.audio import load_span
    from transcribe_batch.workers.ranges import boundary_cut
    from transcribe_batch.workers.segmenting import segment_audio
    boundary_cut(sys.argv[1], 60.0, duration_s=float(sys.argv[2]))  # warm: onnxruntime's arena, imports
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start, end = float(sys.argv[3]), float(sys.argv[4])
    cut = boundary_cut(sys.argv[1], start, duration_s=float(sys.argv[2]))
    audio = load_span(sys.argv[1], cut, end)
    seg = segment_audio(audio, "vad")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"delta_mb": (peak - base) / 1024, "samples": int(audio.size), "segments": len(seg.segments)}))
""")


@pytest.mark.slow
def test_reading_a_range_of_a_3_hour_file_costs_memory_of_the_range(long_files):
    """Cut, read and segment a 10-minute range near the end of the 3-hour file (from its last nominal boundary): the
    peak grows by what the range needs (10 min of float32 is 38 MB; the VAD holds a padded copy: ~74 MB measured),
    not by the file (3 h of float32 would be 691 MB)."""
    path, duration, range_s, _ = long_files["3h"]
    start = range_boundaries(duration, range_s)[-1]
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(path), repr(duration), repr(start),
                           repr(start + 600)], capture_output=True, text=True, check=True, cwd=REPO)
    out = json.loads(done.stdout)
    assert abs(out["samples"] / SR - 600) < 10 and out["segments"] >= 2, out
    assert out["delta_mb"] < 120, out


def test_a_range_is_what_the_whole_file_holds_there(tmp_path, clips):
    """load_span of neighbouring ranges of a short real-speech file: contiguous, and equal to the whole file's
    samples (16 kHz: no resampling)."""
    audio = np.concatenate(clips[:4])
    path = tmp_path / "talk.flac"
    sf.write(path, audio, SR, subtype="PCM_16")
    whole = load_audio(path)
    total = whole.size / SR
    nominal = range_boundaries(total, total / 3, window_s=2.0)
    cuts = [boundary_cut(path, t, duration_s=total, options=CutOptions(window_s=2.0, margin_s=0.2)) for t in nominal]
    parts = [load_span(path, a, b) for a, b in range_spans(cuts, total)]
    assert np.array_equal(np.concatenate(parts), whole)
    regions = detect_speech(whole)
    for c in cuts:  # each cut is in a pause the VAD sees in the whole file, too
        assert not any(a < c * SR < b for a, b in regions.tolist()), c
    with pytest.raises(ValueError, match="outside the audio"):
        boundary_cut(path, total + 1, duration_s=total)
    with pytest.raises(AudioRangeError, match="runs past the end"):
        load_span(path, 1.0, total + 5)
