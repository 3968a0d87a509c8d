"""Synthetic work for the benchmarks: LibriSpeech-like durations, reference texts of matching length, manifests.

Shared by pipeline.py (small manifests with real audio files) and scale.py (huge manifests, no audio needed).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np

# LibriSpeech test-clean: mean ≈ 7.4 s, median ≈ 5.8 s, 1.3–35 s; ≈ 2.7 words/s, ≈ 15 characters/s.
MIN_S, MAX_S = 1.0, 35.0
CHARS_PER_S = 15.0
WORDS = ("the of and to a in that he was it his her you as had with for she not at but be my on have him is said "
         "me which by so this all from they no were if would or when what there been one could very an who them "
         "mister we now more out do are up their your will little than then some into any well much about time "
         "know should man did like upon such never only good how before other see must am own come down say after "
         "think made might being mistress day great long again can over").split()


def rss_bytes() -> int:
    """This process's resident memory now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_in_child(script: str, *args: str) -> dict:
    """Runs `script --child ARGS` in a fresh interpreter (its memory is its own) and returns the JSON object its
    last line prints."""
    done = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def durations(n: int, seed: int = 0) -> np.ndarray:
    """n utterance lengths (s): log-normal around 6 s, clipped to 1–35 s (LibriSpeech-like spread)."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(6.0), 0.65, n), MIN_S, MAX_S).round(3)


def text_for(duration_s: float, rng: np.random.Generator) -> str:
    """A reference transcript of plausible length for `duration_s` seconds of read speech."""
    want = int(CHARS_PER_S * duration_s)
    words, size = [], 0
    while size < want:
        w = WORDS[int(rng.integers(len(WORDS)))]
        words.append(w)
        size += len(w) + 1
    return " ".join(words)


def speech_like(duration_s: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Voiced-sounding audio: a few harmonics with a wandering pitch, syllable-rate envelope, pauses, light noise."""
    n = int(round(duration_s * sr))
    t = np.arange(n) / sr
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.3 * t + rng.uniform(0, 6.28))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    voice = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5))
    envelope = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28)), 0, None)
    pauses = (np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6.28)) > -0.8).astype(np.float64)
    audio = 0.2 * voice * envelope * pauses + 0.003 * rng.standard_normal(n)
    return audio.astype(np.float32)


def write_manifest(path: Path, rows) -> int:
    """Write rows (dicts) as JSONL, streaming; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n
