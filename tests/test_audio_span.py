"""load_span: time ranges of a file that meet exactly, in every format the loader reads, with memory of the range."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from transcribe_batch.workers.audio import (
    SAMPLE_RATE, AudioEmpty, AudioNotFound, AudioRangeError, load_audio, load_span,
)

SR = SAMPLE_RATE
REPO = Path(__file__).resolve().parents[1]
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is installed by `make system-deps`")


def _spans(path, cuts):
    edges = [0.0, *cuts, None]
    return [load_span(path, a, b) for a, b in zip(edges, edges[1:])]


def test_spans_of_a_wav_meet_exactly_and_equal_the_whole(audio_dir):
    path = audio_dir / "two_cities.wav"
    whole = load_audio(path)
    cuts = [3.3, 10.00003, 17.123456, 30.5]  # times between samples map to the same sample for both neighbours
    assert np.array_equal(np.concatenate(_spans(path, cuts)), whole)
    assert np.array_equal(load_span(path, 2.5, 5.5), load_audio(path, 2.5, 3.0))


def test_spans_of_a_48k_file_are_resampled_each_on_its_own(audio_dir):
    path = audio_dir / "front_center_48k.wav"
    whole = load_audio(path)
    joined = np.concatenate(_spans(path, [0.5, 0.91]))
    assert joined.size == whole.size  # 0.5 s and 0.91 s fall on 16 kHz samples: nothing lost or doubled
    diff = np.abs(joined - whole)
    # soxr's filter sees each span's edge: within 4 ms of it the samples differ (by up to ~3 % of full scale where
    # the cut falls in sound, as at 0.91 s here; negligibly in a pause, as at 0.5 s); elsewhere they are the same
    assert diff[8000 - 64:8000 + 64].max() < 1e-3
    assert diff[14560 - 64:14560 + 64].max() > 1e-2
    far = np.ones(whole.size, bool)
    far[8000 - 64:8000 + 64] = far[14560 - 64:14560 + 64] = False
    assert diff[far].max() < 1e-4


@needs_ffmpeg
@pytest.mark.parametrize("ext", ["m4a", "wma"])
def test_spans_through_ffmpeg_equal_the_whole_file(tmp_path, audio_dir, ext):
    """Formats libsndfile lacks are read from a stream decoded from the start (ffmpeg's input seek is off by up to
    1024 samples on WMA): the spans are exactly the whole file's samples."""
    path = tmp_path / f"a.{ext}"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(audio_dir / "beckett.wav"), str(path)], check=True)
    whole = load_audio(path)
    assert np.array_equal(np.concatenate(_spans(path, [1.25, 4.0, 7.77])), whole)
    assert np.array_equal(load_span(path, 2.0, 3.0), whole[2 * SR:3 * SR])
    with pytest.raises(AudioRangeError, match="runs past the end"):
        load_span(path, 2.0, 60.0)
    with pytest.raises(AudioRangeError, match="past the end"):
        load_span(path, 60.0)


SPAN_MEMORY = textwrap.dedent("""
    import json, resource, sys
    from transcribe_batch.workers.audio import load_span
    load_span(sys.argv[1], 0.0, 1.0)  # warm: imports, ffmpeg
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    audio = load_span(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"delta_mb": (peak - base) / 1024, "samples": int(audio.size)}))
""")


@needs_ffmpeg
@pytest.mark.slow
def test_a_span_at_the_end_of_a_long_m4a_costs_memory_of_the_span(tmp_path, audio_dir):
    """The last minute of a 1-hour AAC file: decoded from the start but kept only for the span (1 h of float32
    would be 230 MB; one minute is 3.8 MB)."""
    path = tmp_path / "long.m4a"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-i",
                    str(audio_dir / "beckett.wav"), "-filter_complex", "[1:a]adelay=3550s[s];[0:a][s]amix=inputs=2:duration=first",
                    "-t", "3600", "-c:a", "aac", "-b:a", "32k", str(path)], check=True)
    done = subprocess.run([sys.executable, "-c", SPAN_MEMORY, str(path), "3540", "3600"], capture_output=True,
                          text=True, check=True, cwd=REPO)
    out = json.loads(done.stdout)
    assert abs(out["samples"] - 60 * SR) < SR and out["delta_mb"] < 40, out


def test_bad_spans_are_named(tmp_path, audio_dir):
    path = audio_dir / "beckett.wav"
    with pytest.raises(AudioRangeError, match="after its start"):
        load_span(path, 3.0, 3.0)
    with pytest.raises(AudioRangeError, match="after its start"):
        load_span(path, 3.0, float("nan"))
    with pytest.raises(AudioRangeError, match="offset must be"):
        load_span(path, -1.0, 2.0)
    with pytest.raises(AudioRangeError, match="past the end"):
        load_span(path, 11.0)
    with pytest.raises(AudioRangeError, match="runs past the end"):
        load_span(path, 1.0, 12.0)
    with pytest.raises(AudioNotFound):
        load_span(tmp_path / "missing.wav", 0.0, 1.0)
    with pytest.raises(AudioEmpty):
        load_span(path, 1.0, 1.00001)  # shorter than one sample
    sf.write(tmp_path / "short.wav", np.zeros(SR, np.float32), SR)
    assert load_span(tmp_path / "short.wav", 0.5, 1.05).size == SR // 2  # within the tolerance of the end
