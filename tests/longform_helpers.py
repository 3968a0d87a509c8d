"""Long recordings for the long-form tests and benchmarks, built from the real speech in tests/data/audio.

`write_long_recording` lays the recordings end to end with pauses between them (0.3–1.5 s) and, every few
recordings, a long silence (4–8 s, which the segmenter leaves out), over a -70 dBFS noise floor, and writes a
16 kHz 16-bit WAV in blocks (memory stays small whatever the length). It returns where each recording lies, so a
test knows where speech is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 16000
FLOOR = 10 ** (-70 / 20)  # -70 dBFS room noise under everything


@dataclass(frozen=True)
class LongRecording:
    path: Path
    duration_s: float
    speech: list[tuple[float, float]]  # (start_s, end_s) of each recording laid in, in time order
    text: str  # the laid-in recordings' reference transcripts, in order (those that have one)


def speech_clips(audio_rows: list[dict], audio_dir: Path) -> list[tuple[np.ndarray, str]]:
    """(samples, transcript) of the recordings of 1–45 s (those without a transcript get ''), each trimmed to its
    speech: leading and trailing 10 ms frames more than 35 dB below its loud level (95th percentile) cut off."""
    from transcribe_batch.workers.audio import load_audio

    out = []
    for r in audio_rows:
        if 1.0 <= r["duration"] <= 45.0:
            out.append((_trimmed(load_audio(audio_dir / r["audio_filepath"])), r.get("text") or ""))
    return out


def _trimmed(clip: np.ndarray) -> np.ndarray:
    hop = SR // 100
    n = clip.size // hop
    level = 10 * np.log10(np.mean(clip[:n * hop].reshape(n, hop).astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(level > np.percentile(level, 95) - 35.0)
    return clip[loud[0] * hop:(loud[-1] + 1) * hop]


def write_long_recording(path: Path, minutes: float, clips: list[tuple[np.ndarray, str]], *, seed: int = 0,
                         long_gap_every: int = 4) -> LongRecording:
    rng = np.random.default_rng(seed)
    n_total = int(minutes * 60 * SR)
    speech, words = [], []
    at = int(rng.uniform(0.5, 2.0) * SR)
    k = 0
    with sf.SoundFile(path, "w", samplerate=SR, channels=1, subtype="PCM_16") as f:
        f.write(_floor(at, rng))
        while True:
            clip, text = clips[rng.integers(len(clips))]
            if at + clip.size > n_total:
                break
            f.write(clip + _floor(clip.size, rng))
            speech.append((at / SR, (at + clip.size) / SR))
            if text:
                words.append(text)
            at += clip.size
            k += 1
            gap = int((rng.uniform(4.0, 8.0) if k % long_gap_every == 0 else rng.uniform(0.3, 1.5)) * SR)
            gap = min(gap, n_total - at)
            f.write(_floor(gap, rng))
            at += gap
        f.write(_floor(n_total - at, rng))
    return LongRecording(path, n_total / SR, speech, " ".join(words))


def _floor(n: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(max(0, n)) * FLOOR).astype(np.float32)
