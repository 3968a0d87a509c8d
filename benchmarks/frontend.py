"""Front-end speed: audio decode + resample + log-mel + prompt tokens, in audio-seconds per CPU-second.

Ours (workers/audio.py, workers/features.py, workers/prompts.py, as FrontEnd.prepare runs them) against the usual
Qwen2-Audio recipe with transformers (librosa.load(sr=16000), WhisperFeatureExtractor, Qwen2AudioProcessor with
the chat template), on the same recordings (tests/data/audio, windows of at most 30 s, one 48 kHz file among them),
with the real tokenizer and configs (tests/data/qwen2-audio-7b-instruct). Both sides run in this process, interleaved
round by round, and are charged the process CPU time they use (torch may use more than one thread; numpy's FFT uses
one), so "audio-s per CPU-s" is what a core buys. The last column compares with what 8 cards running the existing
port consume (its cost model: TTFT 24 s + 0.8 s per generated token on LibriSpeech-like utterances).

    .venv/bin/python benchmarks/frontend.py               # ≈ 1 min on 2 cores
    .venv/bin/python benchmarks/frontend.py --rounds 10
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic import CHARS_PER_S, durations  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # the recordings and the released Qwen2-Audio tokenizer the repository carries
N_CARDS = 8


def port_audio_s_per_s(n: int = 20000) -> float:
    """Audio seconds one card running the existing port transcribes per second, on LibriSpeech-like utterances."""
    from transcribe_batch.workers.engines.simulated import CHARS_PER_TOKEN, DEFAULT_S_PER_TOKEN, DEFAULT_TTFT_S

    d = durations(n, seed=1)
    tokens = np.ceil(CHARS_PER_S * d / CHARS_PER_TOKEN)  # generated tokens; the stop token costs no extra step
    return float(d.sum() / (DEFAULT_TTFT_S * n + DEFAULT_S_PER_TOKEN * tokens.sum()))


def clips(audio_dir: Path, max_s: float) -> list:
    from transcribe_batch.manifests.row import ManifestRow

    rows = [json.loads(line) for line in (audio_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    return [ManifestRow(id=Path(r["audio_filepath"]).stem, audio_filepath=str(audio_dir / r["audio_filepath"]),
                        duration=min(float(r["duration"]), max_s)) for r in rows]


def timed(fn, *args) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio-dir", type=Path, default=DATA / "audio")
    ap.add_argument("--model-dir", type=Path, default=DATA / "qwen2-audio-7b-instruct")
    ap.add_argument("--rounds", type=int, default=4, help="passes over the recordings per side (default 4)")
    args = ap.parse_args()

    import librosa
    import torch
    from transformers import AutoProcessor, WhisperFeatureExtractor

    from transcribe_batch.pipeline.config import worker_config
    from transcribe_batch.workers.audio import load_audio
    from transcribe_batch.workers.features import log_mel
    from transcribe_batch.workers.frontend import FrontEnd

    warnings.filterwarnings("ignore")
    rows = clips(args.audio_dir, 30.0)
    audio_s = sum(r.duration for r in rows)
    ours = FrontEnd.for_worker(worker_config(engine="simulated", model_dir=args.model_dir))  # the run defaults
    cfg = ours.family.features
    instruction = ours.templates.instruction(None, "default")
    extractor = WhisperFeatureExtractor.from_pretrained(args.model_dir)
    processor = AutoProcessor.from_pretrained(args.model_dir)
    conversation = [{"role": "system", "content": ours.templates.system},
                    {"role": "user", "content": [{"type": "audio", "audio_url": "x.wav"},
                                                 {"type": "text", "text": instruction}]}]

    def ref_load(r):
        return librosa.load(r.audio_filepath, sr=16000, offset=r.offset, duration=r.duration)[0]

    def our_load(r):
        return load_audio(r.audio_filepath, r.offset, r.duration)

    def ref_features(audio):
        return extractor(audio, sampling_rate=16000, padding="max_length", return_attention_mask=True,
                         return_tensors="np")

    def ref_all(r):  # the usual recipe: load, chat template, processor (features + tokens + audio-token expansion)
        audio = ref_load(r)
        text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return processor(text=text, audio=[audio], sampling_rate=16000, return_tensors="np", padding=True)

    loaded = {r.id: our_load(r) for r in rows}
    for r in rows:  # warm both sides (lazy imports, filter banks, tokenizer caches) and check they agree
        ref = ref_all(r)
        req = ours.prepare(r)[0]
        assert list(req.expanded_ids) == ref["input_ids"][0].tolist(), r.id
        assert np.abs(req.features - ref["input_features"][0]).max() < 1e-3, r.id

    stages = {
        "decode + resample": (lambda r: our_load(r), lambda r: ref_load(r)),
        "log-mel": (lambda r: log_mel(loaded[r.id], cfg), lambda r: ref_features(loaded[r.id])),
        "prompt ids": (lambda r: ours.family.expand(ours.family.prompt_ids(ours.family.prompt_spec(None, "default")),
                                                    ours.family.n_audio_tokens(len(loaded[r.id]))),
                       lambda r: processor.tokenizer(processor.apply_chat_template(conversation, add_generation_prompt=True,
                                                                                  tokenize=False).replace(
                           "<|AUDIO|>", "<|AUDIO|>" * ours.family.n_audio_tokens(len(loaded[r.id]))))["input_ids"]),
        "all (FrontEnd.prepare vs librosa + processor)": (lambda r: ours.prepare(r), ref_all),
    }
    totals = {name: [[0.0, 0.0], [0.0, 0.0]] for name in stages}  # [ours, ref] x [wall, cpu]
    gc.disable()
    for _ in range(args.rounds):
        for name, fns in stages.items():
            for side, fn in enumerate(fns):
                for r in rows:
                    w, c = timed(fn, r)
                    totals[name][side][0] += w
                    totals[name][side][1] += c
    gc.enable()

    demand = N_CARDS * port_audio_s_per_s()
    total_audio = audio_s * args.rounds
    print(f"\n## Front end: {len(rows)} recordings, {audio_s:.1f} s of audio (windows ≤ 30 s) × {args.rounds} rounds; "
          f"torch threads {torch.get_num_threads()}\n")
    print("| stage | ours audio-s/CPU-s | transformers audio-s/CPU-s | ours / transformers | ours ms per audio-min (CPU) "
          "| transformers ms per audio-min (CPU) | ours wall audio-s/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rates = {}
    for name, ((ow, oc), (rw, rc)) in totals.items():
        ours_rate, ref_rate = total_audio / oc, total_audio / rc
        rates[name] = (ours_rate, ref_rate)
        print(f"| {name} | {ours_rate:,.0f} | {ref_rate:,.0f} | {ours_rate / ref_rate:.2f}× | {60000 * oc / total_audio:.1f} | "
              f"{60000 * rc / total_audio:.1f} | {total_audio / ow:,.0f} |")
    ours_all, ref_all_rate = rates["all (FrontEnd.prepare vs librosa + processor)"]
    print(f"\n8 cards running the existing port consume {demand:.2f} audio-s/s (one card: {demand / N_CARDS:.3f}); "
          f"one CPU core running our front end supplies {ours_all:,.0f} audio-s/s = {ours_all / demand:,.0f}× that.")
    print(f"\nfrontend_audio_s_per_cpu_s={ours_all:.0f} reference_audio_s_per_cpu_s={ref_all_rate:.0f} "
          f"speedup_vs_reference={ours_all / ref_all_rate:.2f} logmel_speedup_vs_reference="
          f"{rates['log-mel'][0] / rates['log-mel'][1]:.2f} headroom_vs_8_port_cards={ours_all / demand:.0f}")


if __name__ == "__main__":
    main()
