"""Writes audio/front_center_48k.wav: "front center" spoken by flite (slt voice, 16 kHz), resampled to 48 kHz with
soxr and mixed with seeded white noise at -50 dBFS RMS so the file has content up to 24 kHz (the resampler's
anti-aliasing filter has something to remove). It stands in for the GPL-2 Debian alsa-utils recording of the same
name in ../shared/audio (see README.md); the tests use it for the 48 kHz path (resampling, offsets on a 48 kHz file).

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
TEXT = "front center"
RATE = 48000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spoken = Path(tmp) / "spoken.wav"
        subprocess.run(["flite", "-voice", "slt", "-t", TEXT, "-o", str(spoken)], check=True)
        audio, rate = sf.read(spoken, dtype="float64")
    up = soxr.resample(audio, rate, RATE, quality="VHQ")
    noise = np.random.default_rng(48000).standard_normal(len(up)) * 10 ** (-50 / 20)
    mixed = up + noise
    mixed *= 0.5 / np.abs(mixed).max()
    sf.write(OUT, mixed, RATE, subtype="PCM_16")
    info = sf.info(OUT)
    print(json.dumps({"audio_filepath": OUT.name, "duration": round(info.duration, 3), "text": TEXT,
                      "sample_rate": info.samplerate, "channels": info.channels}))


if __name__ == "__main__":
    main()
