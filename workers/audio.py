"""Read one utterance from an audio file: 16 kHz mono float32, honouring offset/duration, with clear typed errors.

soundfile (libsndfile: wav, flac, ogg, mp3, …) seeks to the offset and reads only the requested frames; anything it
cannot open goes through librosa/audioread (ffmpeg: m4a, aac, …). Resampling is soxr's high-quality mode, which is
what `librosa.load(sr=16000)` uses, so the features equal those of the usual Qwen2-Audio recipe.

`load_span(path, start_s, end_s)` reads a time range of a long file for long-form work: spans meeting at the same
time are contiguous in the file's own samples, and memory is proportional to the span, never to the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import errno

import numpy as np
import soundfile as sf
import soxr

from transcribe_batch.manifests.headers import DURATION_TOLERANCE_S

SAMPLE_RATE = 16000


class AudioError(ValueError):
    """Bad audio input; `str(e)` names the file and says what is wrong. Never worth a retry."""

    def __init__(self, path: str | os.PathLike, message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{self.path}: {message}")


class AudioNotFound(AudioError):
    """The path does not exist or is not a regular file."""


class AudioDecodeError(AudioError):
    """The file exists but is not decodable audio (corrupt, truncated header, unsupported codec, not audio)."""


class AudioEmpty(AudioError):
    """The file, or the offset/duration window inside it, holds no samples."""


class AudioRangeError(AudioError):
    """offset/duration are invalid for this file (negative, or the offset lies past the end)."""


class AudioInvalidSamples(AudioError):
    """The decoded samples contain NaN or Inf."""


def _check_path(path: Path) -> None:
    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AudioNotFound(path, "symbolic link loop (the link points back to itself)") from None
        if path.is_symlink():
            raise AudioNotFound(path, f"broken symbolic link (to {os.readlink(path)})") from None
    if not path.exists():
        raise AudioNotFound(path, "file not found")
    if path.is_dir():
        raise AudioNotFound(path, "is a directory, not an audio file")
    if not path.is_file():
        raise AudioNotFound(path, "is not a regular file")
    if not os.access(path, os.R_OK):
        raise AudioDecodeError(path, "permission denied")
    if path.stat().st_size == 0:
        raise AudioEmpty(path, "file is empty (0 bytes)")


def _check_window(path: Path, offset: float, duration: float | None) -> None:
    if not np.isfinite(offset) or offset < 0:
        raise AudioRangeError(path, f"offset must be a finite number >= 0, got {offset!r}")
    if duration is not None:
        if not np.isfinite(duration) or duration < 0:
            raise AudioRangeError(path, f"duration must be a finite number >= 0, got {duration!r}")
        if duration == 0:
            raise AudioEmpty(path, f"zero-length window (offset {offset:g} s, duration 0 s)")


def _riff_truncated(path: Path) -> str | None:
    """libsndfile quietly shortens a WAV whose data was cut off; the RIFF header still says how long it should be."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    declared = int.from_bytes(head[4:8], "little") + 8
    actual = path.stat().st_size
    if declared > actual and declared - 8 not in (0, 0xFFFFFFFF):  # 0/-1: streaming writers that never patch it
        return f"truncated WAV: header declares {declared} bytes, file has {actual}"
    return None


def _read_soundfile(path: Path, offset: float, duration: float | None,
                    end: float | None = None) -> tuple[np.ndarray, int] | None:
    """Partial read through libsndfile; None when libsndfile does not know the format. With `end` (seconds) instead
    of `duration`, the window is the file's samples round(offset × rate) … round(end × rate)."""
    try:
        f = sf.SoundFile(str(path))
    except sf.LibsndfileError as e:
        if "Format not recognised" in str(e) or "unknown format" in str(e).lower():
            return None
        raise AudioDecodeError(path, f"cannot open audio ({e})") from e
    with f:
        truncated = _riff_truncated(path)
        if truncated:
            raise AudioDecodeError(path, truncated)
        sr, total = f.samplerate, f.frames
        if total <= 0:
            raise AudioEmpty(path, "no audio samples in file")
        start = int(round(offset * sr))
        if start >= total:
            raise AudioRangeError(path, f"offset {offset:g} s is at or past the end of the audio ({total / sr:.3f} s)")
        if end is not None:
            duration = end - offset
        if duration is not None and offset + duration > total / sr + DURATION_TOLERANCE_S:
            raise _past_end(path, offset, duration, total / sr)
        if end is not None:
            want = min(int(round(end * sr)), total) - start
        else:
            want = total - start if duration is None else min(int(round(duration * sr)), total - start)
        try:
            if start:
                f.seek(start)
            data = f.read(want, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioDecodeError(path, f"decoding failed at {start / sr:.3f} s ({e})") from e
    if len(data) < want:
        got_end = (start + len(data)) / sr
        raise AudioDecodeError(
            path, f"truncated or corrupt: header promises {total / sr:.3f} s but decoding stopped at {got_end:.3f} s"
        )
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0], sr


def _read_fallback(path: Path, offset: float, duration: float | None) -> tuple[np.ndarray, int]:
    """Formats libsndfile lacks (m4a, aac, wma, …) via librosa/audioread (ffmpeg)."""
    import librosa  # heavy import; only on this path

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa's "PySoundFile failed. Trying audioread instead."
            data, sr = librosa.load(str(path), sr=None, mono=True, offset=offset, duration=duration, dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - audioread raises a zoo of types (NoBackendError, EOFError, …)
        raise AudioDecodeError(path, f"not a decodable audio file or unsupported codec ({type(e).__name__}: {e})") from e
    if data.size == 0:
        total = audio_duration(path) if offset > 0 else 0.0
        if offset > 0 and offset >= total:
            raise AudioRangeError(path, f"offset {offset:g} s is at or past the end of the audio ({total:.3f} s)")
        raise AudioEmpty(path, "no audio samples in file or window")
    if duration is not None and data.size / sr < duration - DURATION_TOLERANCE_S:
        raise _past_end(path, offset, duration, offset + data.size / sr)
    return data, int(sr)


def _read_stream_span(path: Path, start_s: float, end_s: float | None) -> tuple[np.ndarray, int]:
    """The file's samples round(start_s × rate) … round(end_s × rate) through audioread (ffmpeg), for formats
    libsndfile lacks: decoded from the start and discarded up to the span, so memory stays proportional to the span
    (time grows with end_s). Samples equal librosa.load's of the whole file (int16 / 32768, channel mean). ffmpeg's
    own input seek is not used: it is not sample-exact for every codec (WMA: off by 576–1024 samples)."""
    import audioread

    try:
        reader = audioread.audio_open(str(path))
    except Exception as e:  # noqa: BLE001 - audioread raises a zoo of types (NoBackendError, EOFError, …)
        raise AudioDecodeError(path, f"not a decodable audio file or unsupported codec ({type(e).__name__}: {e})") from e
    with reader:
        sr, channels = int(reader.samplerate), int(reader.channels)
        start = int(round(start_s * sr))
        stop = None if end_s is None else int(round(end_s * sr))
        parts, at = [], 0  # at: frames decoded so far
        try:
            for block in reader:
                frames = np.frombuffer(block, "<i2").reshape(-1, channels)
                lo, hi = max(start - at, 0), len(frames) if stop is None else min(stop - at, len(frames))
                if hi > lo:
                    parts.append(frames[lo:hi].astype(np.float32) / 32768.0)
                at += len(frames)
                if stop is not None and at >= stop:
                    break
        except Exception as e:  # noqa: BLE001
            raise AudioDecodeError(path, f"decoding failed ({type(e).__name__}: {e})") from e
    if at <= start:
        raise AudioRangeError(path, f"offset {start_s:g} s is at or past the end of the audio ({at / sr:.3f} s)")
    if stop is not None and at < stop and end_s > at / sr + DURATION_TOLERANCE_S:
        raise _past_end(path, start_s, end_s - start_s, at / sr)
    if not parts:
        raise AudioEmpty(path, f"no audio samples in {start_s:g}–{end_s:g} s")
    data = np.concatenate(parts)
    return (data.mean(axis=1) if channels > 1 else data[:, 0]), sr


def _past_end(path: Path, offset: float, duration: float, length: float) -> AudioRangeError:
    """The same verdict as `manifest validate`: a window past the end is an error, never a silently shorter row."""
    what = "offset + duration" if offset else "duration"
    return AudioRangeError(path, f"{what} = {offset + duration:.3f} s runs past the end of the audio ({length:.3f} s)")


def resample(audio: np.ndarray, sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    if sr == target_sr:
        return audio.astype(np.float32, copy=False)
    out = soxr.resample(audio, sr, target_sr, quality="HQ").astype(np.float32, copy=False)
    n_out = int(np.ceil(audio.size * target_sr / sr))  # the length librosa.resample gives (it pads soxr's output)
    return out[:n_out] if out.size >= n_out else np.pad(out, (0, n_out - out.size))


def load_audio(
    path: str | os.PathLike, offset: float = 0.0, duration: float | None = None, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """Samples of `path` from `offset` for `duration` seconds (None: to the end) as mono float32 at `sr`.

    Raises an AudioError subclass naming the file for every kind of bad input. Digital silence is valid.
    """
    path = Path(path)
    offset = float(offset or 0.0)
    duration = None if duration is None else float(duration)
    _check_path(path)
    _check_window(path, offset, duration)
    read = _read_soundfile(path, offset, duration)
    data, file_sr = read if read is not None else _read_fallback(path, offset, duration)
    if data.size == 0:
        raise AudioEmpty(path, "no audio samples in window")
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioInvalidSamples(path, f"{bad} NaN/Inf samples in the audio")
    audio = resample(data, file_sr, sr)
    if audio.size == 0:
        raise AudioEmpty(path, "window is shorter than one sample at 16 kHz")
    return audio


def load_span(path: str | os.PathLike, start_s: float, end_s: float | None = None,
              sr: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of `path` in [start_s, end_s) (None: to the end) as mono float32 at `sr`, reading only that span.

    Both ends map to the file's own sample index as round(t × file rate), so two spans that meet at t are
    contiguous in the file: no sample is read twice or skipped. Memory is proportional to the span, whatever the
    file's length (libsndfile seeks; other formats are decoded from their start, see _read_stream_span). Each span is
    resampled on its own: within a few ms of its ends (soxr's filter) the samples may differ slightly from the whole
    file's resampled, which is why long files are cut in pauses. Raises an AudioError subclass naming the file.
    """
    path = Path(path)
    start_s = float(start_s)
    _check_path(path)
    _check_window(path, start_s, None)
    if end_s is not None:
        end_s = float(end_s)
        if not np.isfinite(end_s) or end_s <= start_s:
            raise AudioRangeError(path, f"span end must be a finite number after its start ({start_s:g} s), "
                                        f"got {end_s!r}")
    read = _read_soundfile(path, start_s, None, end=end_s)
    data, file_sr = read if read is not None else _read_stream_span(path, start_s, end_s)
    if data.size == 0:
        raise AudioEmpty(path, f"no audio samples in {start_s:g}–{end_s if end_s is not None else 'end'} s")
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise AudioInvalidSamples(path, f"{bad} NaN/Inf samples in the audio")
    return resample(data, file_sr, sr)


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the file's header (no decoding where the format allows)."""
    path = Path(path)
    _check_path(path)
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except sf.LibsndfileError:
        pass
    import librosa

    try:
        return float(librosa.get_duration(path=str(path)))
    except Exception as e:  # noqa: BLE001
        raise AudioDecodeError(path, f"not a decodable audio file or unsupported codec ({type(e).__name__}: {e})") from e
