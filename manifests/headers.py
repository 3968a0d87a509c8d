"""Audio durations from file headers (soundfile.info: no decoding), for the manifest builders and validator."""

from __future__ import annotations

import os
from dataclasses import dataclass

import soundfile as sf

# How far offset + duration may run past the end of the audio (header length) before a row is an error, in
# `manifest validate` and in `run` alike (encoders pad or trim the last frame; manifests round).
DURATION_TOLERANCE_S = 0.1

# Formats libsndfile owns: if it cannot parse one of these, the file is broken, not merely foreign.
LIBSNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff", ".au", ".caf", ".w64")


@dataclass(frozen=True)
class Header:
    duration: float | None  # seconds; None when unknown
    problem: str | None = None  # why the file is unreadable (corrupt / empty / not audio); None when fine

    @property
    def foreign(self) -> bool:
        """A format libsndfile does not read (m4a, aac, …): no duration here, the runner decodes it via ffmpeg."""
        return self.duration is None and self.problem is None


def read_header(path: str | os.PathLike) -> Header:
    path = os.fspath(path)  # a str, not a Path: pathlib interns path parts, unbounded over millions of files
    try:
        info = sf.info(path)
    except sf.LibsndfileError as exc:
        text = " ".join(str(exc).split())
        if ("Format not recognised" in text or "unknown format" in text.lower()) and (
            os.path.splitext(path)[1].lower() not in LIBSNDFILE_EXTENSIONS
        ):
            return Header(None)
        return Header(None, f"unreadable audio header ({text})")
    except RuntimeError as exc:  # older soundfile raises RuntimeError
        return Header(None, f"unreadable audio header ({' '.join(str(exc).split())})")
    if info.frames <= 0 or info.samplerate <= 0:
        return Header(None, "the header declares no audio samples")
    return Header(round(info.frames / info.samplerate, 6))
