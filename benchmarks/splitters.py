"""Splitters on long audio: the Silero VAD vs short-time energy, on real speech with known gaps.

Long audio is built from the real recordings (each normalised to the same speech level, placed at known times)
with gaps between them: silence (over a -70 dBFS room-noise floor), synthetic music (chords of harmonic tones with
a rhythm: kick, hi-hat, bass) and noise bursts (white, pink, brown), and in the noisy scenarios stationary pink
background noise over everything at a given SNR. Ground truth: a recording's speech is where its own clean signal's
short-time energy above 100 Hz (25 ms frames, 10 ms hop) lies within 30 dB of its loud level (95th percentile), at least 12 dB
above its own noise floor (5th percentile) and above -60 dBFS, with holes under 150 ms filled (pauses inside words) and bursts under 50 ms dropped; everything else, inserted
gaps included, is non-speech. Each splitter runs the whole long-form path: speech probabilities → regions →
training segments (workers/segmenting.py, defaults: 2–20 s), and range cuts (workers/ranges.py: one nominal
boundary per minute, cut from its 20 s window alone).

Figures per splitter and scenario: cuts (segment boundaries, range cuts apart) inside true gaps (%), words cut (cuts
inside ground-truth speech), speech dropped (ground-truth speech in no segment, %), music/noise kept (inserted
music and noise gaps inside segments, %), and CPU seconds per audio hour (process time: a ratio-type figure on a
shared machine, compare the two side by side).

    .venv/bin/python benchmarks/splitters.py                    # 5 scenarios × 6 min, ≈ 2 min on 2 cores
    .venv/bin/python benchmarks/splitters.py --minutes 1 --scenarios clean,bg10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transcribe_batch.workers.segmenting import SegmentOptions

REPO = Path(__file__).resolve().parents[1]
SR = 16000
SPEECH_DBFS = -25.0  # every recording is scaled to this active speech level
FLOOR_DBFS = -70.0  # room noise under everything
GT_RANGE_DB = 30.0  # ground truth: speech lies within this of a recording's loud level (95th percentile) ...
GT_ABOVE_FLOOR_DB = 12.0  # ... and at least this far above its own noise floor (5th percentile)
GT_HIGHPASS_HZ = 100.0  # ... measured above this: rumble (beckett.wav ends in a second of 30–80 Hz) is not speech
SCENARIOS = {  # name: (gap kinds, background SNR dB or None)
    "clean": (("silence",), None),
    "mixed": (("silence", "music", "noise"), None),
    "bg20": (("silence", "music", "noise"), 20.0),
    "bg10": (("silence", "music", "noise"), 10.0),
    "bg5": (("silence", "music", "noise"), 5.0),
}


def default_audio_dir() -> Path:
    """The repository's copy of the test recordings, else the shared data ($TRANSCRIBE_BATCH_SHARED or ../shared)."""
    repo_copy = REPO / "tests" / "data" / "audio"
    shared = Path(os.environ.get("TRANSCRIBE_BATCH_SHARED", REPO.parent / "shared"))
    return repo_copy if (repo_copy / "manifest.jsonl").is_file() else shared / "audio"


# -- building the long audio ---------------------------------------------------------------------------------------
def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2) + 1e-20))


def truth_mask(clip: np.ndarray) -> np.ndarray:
    """Ground-truth speech per sample of a clean recording (see the module docstring)."""
    from scipy.signal import butter, sosfiltfilt

    clip = sosfiltfilt(butter(4, GT_HIGHPASS_HZ, "highpass", fs=SR, output="sos"), clip)
    frame, hop = 400, 160
    n = max(1, 1 + (clip.size - frame) // hop)
    idx = np.arange(n)[:, None] * hop + np.arange(frame)[None, :]
    level = 10 * np.log10(np.mean(np.pad(clip, (0, frame)).astype(np.float64)[idx] ** 2, axis=1) + 1e-20)
    active = level > max(np.percentile(level, 95) - GT_RANGE_DB, np.percentile(level, 5) + GT_ABOVE_FLOOR_DB, -60.0)
    active = _fill(active, 15, True)  # holes < 150 ms: inside words
    active = _fill(active, 5, False)  # bursts < 50 ms: clicks
    mask = np.zeros(clip.size, bool)
    for i in np.flatnonzero(active):
        mask[i * hop + (frame - hop) // 2:i * hop + (frame + hop) // 2] = True
    return mask


def _fill(active: np.ndarray, shorter_than: int, value: bool) -> np.ndarray:
    """Runs of `not value` shorter than `shorter_than` frames between runs of `value` become `value`."""
    out = active.copy()
    edges = np.flatnonzero(np.diff(np.concatenate([[value], active == value, [value]]).astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):  # runs where active != value
        if b - a < shorter_than and a > 0 and b < active.size:
            out[a:b] = value
    return out


def active_level_db(clip: np.ndarray, mask: np.ndarray) -> float:
    return db(clip[mask]) if mask.any() else db(clip)


def music(n: int, rng: np.random.Generator) -> np.ndarray:
    """Rhythmic synthetic music: chord changes every beat, harmonic tones with decaying envelopes, bass, kick on the
    beat, hi-hat on the off-beat."""
    bpm = rng.uniform(90, 140)
    beat = int(SR * 60 / bpm)
    t = np.arange(n) / SR
    out = np.zeros(n)
    root = 220 * 2 ** (rng.integers(0, 12) / 12)
    chords = [(0, 4, 7), (5, 9, 12), (7, 11, 14), (-3, 0, 4)]
    for k, start in enumerate(range(0, n, beat)):
        end = min(n, start + beat)
        tt = t[start:end] - t[start]
        env = np.exp(-tt * 3) * np.minimum(1, tt / 0.01)
        for semis in chords[(k // 2) % 4]:
            f = root * 2 ** (semis / 12)
            out[start:end] += env * sum(np.sin(2 * np.pi * f * h * tt) / h ** 1.5 for h in range(1, 7))
        out[start:end] += 1.5 * env * np.sin(2 * np.pi * root / 2 * 2 ** (chords[(k // 2) % 4][0] / 12) * tt)
        kick = np.sin(2 * np.pi * (50 + 60 * np.exp(-tt * 30)) * tt) * np.exp(-tt * 12)
        out[start:end] += 3 * kick
        h0 = start + beat // 2
        if h0 < n:
            hh = min(n, h0 + int(0.05 * SR)) - h0
            out[h0:h0 + hh] += 0.8 * rng.standard_normal(hh) * np.exp(-np.arange(hh) / (0.01 * SR))
    return out


def colored_noise(n: int, rng: np.random.Generator, kind: str) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)
    spectrum /= f ** (0.5 if kind == "pink" else 1.0)
    return np.fft.irfft(spectrum, n)


def at_level(x: np.ndarray, level_db: float) -> np.ndarray:
    return x * 10 ** ((level_db - db(x)) / 20)


@dataclass
class LongAudio:
    audio: np.ndarray
    speech: np.ndarray  # bool per sample: ground-truth speech
    other: np.ndarray  # bool per sample: inserted music or noise
    kinds: dict = field(default_factory=dict)  # gap kind -> seconds
    placed: list = field(default_factory=list)  # (start sample, recording index) of each placed recording


def build(clips: list[np.ndarray], masks: list[np.ndarray], minutes: float, gaps: tuple[str, ...],
          snr_db: float | None, rng: np.random.Generator) -> LongAudio:
    n = int(minutes * 60 * SR)
    audio = np.zeros(n)
    speech = np.zeros(n, bool)
    other = np.zeros(n, bool)
    kinds: dict[str, float] = {}
    placed: list[tuple[int, int]] = []
    at = int(rng.uniform(0.5, 2) * SR)
    while True:
        fits = [k for k, c in enumerate(clips) if at + c.size <= n]
        if not fits:
            break
        k = fits[int(rng.integers(len(fits)))]
        clip, mask = clips[k], masks[k]
        audio[at:at + clip.size] = at_level(clip, SPEECH_DBFS + db(clip) - active_level_db(clip, mask))
        speech[at:at + clip.size] = mask
        placed.append((at, k))
        at += clip.size
        kind = gaps[int(rng.integers(len(gaps)))]
        length = {"silence": rng.choice([rng.uniform(0.3, 3.0), rng.uniform(3.0, 10.0)], p=[0.8, 0.2]),
                  "music": rng.uniform(2.0, 12.0), "noise": rng.uniform(1.0, 8.0)}[kind]
        m = min(int(length * SR), n - at)
        if kind == "music":
            audio[at:at + m] = at_level(music(m, rng), SPEECH_DBFS - rng.uniform(0, 10))
        elif kind == "noise":
            audio[at:at + m] = at_level(colored_noise(m, rng, rng.choice(["white", "pink", "brown"])),
                                        SPEECH_DBFS - rng.uniform(5, 20))
        if kind != "silence":
            other[at:at + m] = True
        kinds[kind] = kinds.get(kind, 0.0) + m / SR
        at += m
    audio += at_level(rng.standard_normal(n), FLOOR_DBFS)
    if snr_db is not None:
        audio += at_level(colored_noise(n, rng, "pink"), SPEECH_DBFS - snr_db)
    return LongAudio(audio.astype(np.float32), speech, other, kinds, placed)


# -- running and scoring -------------------------------------------------------------------------------------------
def run_splitter(long: LongAudio, splitter: str, options, range_every_s: float = 60.0, vad=None) -> dict:
    from transcribe_batch.workers.ranges import CutOptions, cut_in_window
    from transcribe_batch.workers.segmenting import segment_speech
    from transcribe_batch.workers.vad import VadOptions, speech_probs, speech_regions

    vad = vad or VadOptions()

    audio = long.audio
    t0 = time.process_time()
    probs = speech_probs(audio, splitter)
    regions = speech_regions(probs, audio.size, vad)
    seg = segment_speech(regions, audio.size, options, scores=probs)
    cpu_s = time.process_time() - t0
    window = int(CutOptions().window_s * SR)
    range_cuts = []
    every = int(range_every_s * SR)
    for nominal in range(every, audio.size - window // 2, every):  # a nominal range boundary every range_every_s
        w0 = nominal - window // 2
        part = audio[w0:w0 + window]
        range_cuts.append(w0 + cut_in_window(speech_probs(part, splitter), part.size, nominal - w0, vad))
    cuts = sorted({int(x) for x in seg.segments.ravel()} - {0, audio.size})
    covered = np.zeros(audio.size, bool)
    for a, b in seg.segments.tolist():
        covered[a:b] = True
    in_speech = [c for c in cuts if long.speech[c]]
    range_in_speech = [c for c in range_cuts if long.speech[c]]
    return {
        "segments": len(seg.segments),
        "forced": len(seg.forced),
        "cuts": len(cuts),
        "cuts_in_gaps": len(cuts) - len(in_speech),
        "words_cut": len(in_speech),
        "range_cuts": len(range_cuts),
        "range_cuts_in_gaps": len(range_cuts) - len(range_in_speech),
        "speech_s": long.speech.sum() / SR,
        "speech_dropped_s": (long.speech & ~covered).sum() / SR,
        "other_s": long.other.sum() / SR,
        "other_kept_s": (long.other & covered).sum() / SR,
        "audio_s": audio.size / SR,
        "cpu_s": cpu_s,
        "seg_len_s": [(b - a) / SR for a, b in seg.segments.tolist()],
    }


def pct(a: float, b: float) -> float:
    return 100.0 * a / b if b else float("nan")


def cell(a: float, b: float, digits: int = 1) -> str:
    return f"{pct(a, b):.{digits}f}%" if b else "–"


def summary(rows: list[dict]) -> dict:
    total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "seg_len_s"}
    total["seg_len_s"] = [x for r in rows for x in r["seg_len_s"]]
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio-dir", type=Path, default=default_audio_dir(),
                    help="recordings with a manifest.jsonl (default: tests/data/audio, else $TRANSCRIBE_BATCH_SHARED/audio or ../shared/audio)")
    ap.add_argument("--minutes", type=float, default=6.0, help="long audio per scenario (default 6)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma list of {', '.join(SCENARIOS)}")
    ap.add_argument("--splitters", default="vad,energy")
    ap.add_argument("--max-s", type=float, default=SegmentOptions.max_s)
    ap.add_argument("--min-s", type=float, default=SegmentOptions.min_s)
    ap.add_argument("--edge-s", type=float, default=SegmentOptions.edge_s)
    ap.add_argument("--threshold", type=float, default=0.5, help="speech probability threshold (VadOptions)")
    ap.add_argument("--range-every-s", type=float, default=60.0, help="a nominal range boundary this often (default 60)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from transcribe_batch.workers.audio import load_audio

    from transcribe_batch.workers.vad import VadOptions

    options = SegmentOptions(min_s=args.min_s, max_s=args.max_s, edge_s=args.edge_s)
    vad_options = VadOptions(threshold=args.threshold)
    manifest = args.audio_dir / "manifest.jsonl"
    if not manifest.is_file():
        sys.exit(f"{manifest}: not found (pass --audio-dir, a folder of recordings with a manifest.jsonl)")
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        sys.exit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    splitters = [s for s in args.splitters.split(",") if s]
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    clips = [load_audio(args.audio_dir / r["audio_filepath"]) for r in rows]
    clips = [c.astype(np.float64) for c in clips if c.size >= SR // 2]
    masks = [truth_mask(c) for c in clips]

    results: dict[str, list[dict]] = {s: [] for s in splitters}
    print(f"\n## Splitters on long audio: {len(clips)} recordings from {args.audio_dir}, {args.minutes:g} min per "
          f"scenario, segments {args.min_s:g}–{args.max_s:g} s, edges {args.edge_s:g} s\n")
    print("| scenario | splitter | segments | cuts in true gaps | words cut | range cuts in gaps | speech dropped "
          "| music/noise kept | CPU s per audio h |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, name in enumerate(scenarios):
        gaps, snr = SCENARIOS[name]
        long = build(clips, masks, args.minutes, gaps, snr, np.random.default_rng(args.seed + k))
        for splitter in splitters:
            r = run_splitter(long, splitter, options, args.range_every_s, vad_options)
            results[splitter].append(r)
            print(f"| {name} | {splitter} | {r['segments']} | {cell(r['cuts_in_gaps'], r['cuts'])} "
                  f"({r['cuts_in_gaps']}/{r['cuts']}) | {r['words_cut']} | "
                  f"{cell(r['range_cuts_in_gaps'], r['range_cuts'], 0)} ({r['range_cuts_in_gaps']}/{r['range_cuts']}) "
                  f"| {cell(r['speech_dropped_s'], r['speech_s'], 2)} | {cell(r['other_kept_s'], r['other_s'], 0)} "
                  f"| {3600 * r['cpu_s'] / r['audio_s']:.1f} |")
    print()
    for splitter in splitters:
        t = summary(results[splitter])
        lengths = np.array(t["seg_len_s"]) if t["seg_len_s"] else np.zeros(1)
        print(f"splitter={splitter} cuts={t['cuts']} cuts_in_gaps_pct={pct(t['cuts_in_gaps'], t['cuts']):.2f} "
              f"words_cut={t['words_cut']} range_cuts={t['range_cuts']} range_cuts_in_gaps_pct={pct(t['range_cuts_in_gaps'], t['range_cuts']):.1f} "
              f"speech_dropped_pct={pct(t['speech_dropped_s'], t['speech_s']):.3f} "
              f"music_noise_kept_pct={pct(t['other_kept_s'], t['other_s']):.1f} "
              f"cpu_s_per_audio_h={3600 * t['cpu_s'] / t['audio_s']:.1f} segments={len(t['seg_len_s'])} "
              f"segment_median_s={np.median(lengths):.1f} forced_cuts={t['forced']}")


if __name__ == "__main__":
    main()
