"""Writes audio/front_center_48k.wav: "front ... center" spoken by flite (slt voice, 16 kHz) as two words with a
pause between them (like the recording it replaces: "front" before 0.45 s, "center" from 0.8 s), resampled to 48 kHz
with soxr and mixed with seeded white noise at -70 dBFS RMS so the file has content up to 24 kHz (the resampler's
anti-aliasing filter has something to remove). It stands in for the GPL-2 Debian alsa-utils recording of the same
name in the project's shared folder (see README.md); the tests use it for the 48 kHz path (resampling, offsets and
spans on a 48 kHz file, one cut in the pause and one in a word).

    python tests/data/make_front_center_48k.py      # needs flite (Debian package), soundfile, soxr
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

HERE = Path(__file__).resolve().parent
OUT = HERE / "audio" / "front_center_48k.wav"
RATE = 48000
WORDS = (("front", 0.02), ("center", 0.78))  # (word, start in seconds)
LENGTH_S = 1.43


def spoken(word: str) -> np.ndarray:
    """flite's 16 kHz speech of one word (spoken a little faster), its leading and trailing silence cut off."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.wav"
        subprocess.run(["flite", "-voice", "slt", "--setf", "duration_stretch=0.85", "-t", word, "-o", str(path)],
                       check=True)
        audio, rate = sf.read(path, dtype="float64")
    assert rate == 16000, rate
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    return audio[loud[0]:loud[-1] + 1]


def main() -> None:
    speech = np.zeros(round(LENGTH_S * 16000))
    for word, start in WORDS:
        w = spoken(word)
        at = round(start * 16000)
        speech[at:at + w.size] = w[: speech.size - at]
    up = soxr.resample(speech, 16000, RATE, quality="VHQ")
    up *= 0.5 / np.abs(up).max()
    mixed = up + np.random.default_rng(48000).standard_normal(up.size) * 10 ** (-70 / 20)
    sf.write(OUT, mixed, RATE, subtype="PCM_16")
    info = sf.info(OUT)
    print(json.dumps({"audio_filepath": OUT.name, "duration": round(info.duration, 3), "text": "front center",
                      "sample_rate": info.samplerate, "channels": info.channels}))


if __name__ == "__main__":
    main()
