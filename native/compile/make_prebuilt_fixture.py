#!/usr/bin/env python3
"""Regenerate tests/fixtures/tiny-qwen3-asr-prebuilt/: the tiny Qwen3-ASR (tests/fixtures/tiny-qwen3-asr) compiled
by tpu-mlir 1.30.2's OWN converter in the layout of Sophgo's prebuilt Qwen3-ASR bmodel, and qwen-asr's reference.

Run with the PROJECT venv (transformers 5.24 + qwen-asr 0.0.6 --no-deps); the compile runs in the compile venv:

    .venv/bin/python native/compile/make_prebuilt_fixture.py [--shared tests/data] [--skip-compile]

Sophgo's command, scaled down (README §8 says why each choice):
`llm_convert.py -m tiny -s 256 --max_input_length 128 -q f16 -c bm1684x [--do_sample]` through
`llm_convert_qwen3_asr.py` (tpu-mlir's own llm_convert.py with its two 1.30.2 Qwen3-ASR bugs worked around), then
`model_tool --kernel_remove` (every net it runs is static):

- `tiny-qwen3-asr-prebuilt.bmodel`: `--do_sample`, so `lm_head` returns the logits (argmax and log-softmax on the
  host: tpu-mlir's fused TopK `lm_head` takes ~3–9 min per launch on the cmodel simulator at this 151680-row
  vocabulary, its `greedy_head` is dynamic and needs the kernel module);
- `tiny-qwen3-asr-prebuilt-topk.bmodel`: no `--do_sample`, exactly the head Sophgo's README command builds (the id
  only; ids-only confidence path). Loaded by the tests, not decoded (the TopK head is the slow one).

config.json: tiny-qwen3-asr's with ONE change, `audio_config.n_window_infer` = 2·n_window (one 1 s chunk per
attention window), the model tpu-mlir's audio net computes: its `audio` net encodes one 100-frame chunk per launch
and attends over that chunk's 13 rows only, whatever n_window_infer says. The other model files (tokenizer, chat
template, preprocessor, weights) are tiny-qwen3-asr's, not copied.

reference.json, for clips of tests/data/audio (whole seconds: the inputs on which the net is exact, see README §8),
and for comparison clips that are not:
- the prompt ids of qwen-asr's Qwen3ASRProcessor, frames, audio tokens, feature statistics;
- qwen-asr's greedy tokens (fp32 `generate`, 12 new tokens) with this folder's config (`tokens`, per-step top-1/top-2
  margins `margins`) and with the released window (tiny-qwen3-asr's n_window_infer 800: `tokens_window800`);
- qwen-asr's audio rows (`audio_rows`: the encoder output spliced into the prompt) with this config and with the
  released window (`audio_rows_window800`), rounded to 1e-5, for checking the `audio` net by itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import make_tiny_qwen3_fixture as tiny  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "tiny-qwen3-asr-prebuilt"
SEQLEN, MAX_INPUT_LENGTH = 256, 128  # Sophgo's 512 / 256, halved: the same ratio, decode runs past the input length
MAX_NEW = 12
BMODELS = {"tiny-qwen3-asr-prebuilt.bmodel": ["--do_sample"], "tiny-qwen3-asr-prebuilt-topk.bmodel": []}

# (clip, offset, duration, exact): whole seconds (exact=True) are whole 100-frame chunks
CLIPS = [
    ("goforward.wav", 0.4, 1.0, True),   # 1 chunk
    ("005.wav", 0.0, 3.0, True),         # 3 chunks
    ("endgame.wav", 0.0, 8.0, True),     # 8 chunks: 104 audio + 15 prompt tokens = 119 of 128; decode past 128
    ("001.wav", 0.0, None, False),       # 109 frames: a full chunk + 9 frames
    ("005.wav", 0.0, None, False),       # 350 frames
    ("goforward.wav", 0.4, 0.7, False),  # 70 frames: one partial chunk
]


def prebuilt_config(base: dict) -> dict:
    config = json.loads(json.dumps(base))
    audio = config["thinker_config"]["audio_config"]
    audio["n_window_infer"] = 2 * int(audio["n_window"])
    return config


def reference(folder: Path, window800: Path, audio_dir: Path) -> dict:
    import numpy as np
    import torch

    from transcribe_batch.workers.audio import load_audio
    from transcribe_batch.workers.models.qwen3_asr import import_qwen_asr_backend

    backend = import_qwen_asr_backend()
    processor = backend.Qwen3ASRProcessor.from_pretrained(folder)
    models = {key: backend.Qwen3ASRForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
              for key, path in (("", folder), ("_window800", window800))}
    gen = json.loads((folder / "generation_config.json").read_text())
    audio_id = models[""].config.thinker_config.audio_token_id
    clips = []
    for name, offset, duration, exact in CLIPS:
        audio = load_audio(audio_dir / name, offset, duration)
        messages = [{"role": "system", "content": ""}, {"role": "user", "content": [{"type": "audio", "audio": ""}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], audio=[audio], return_tensors="pt", padding=True)
        feats = inputs["input_features"][0].numpy()
        clip = {"audio_filepath": name, "offset": offset, "duration": duration, "whole_chunks": exact,
                "n_samples": int(audio.size), "prompt": text, "input_ids": inputs["input_ids"][0].tolist(),
                "n_frames": int(feats.shape[-1]), "n_valid_frames": int(inputs["feature_attention_mask"][0].sum()),
                "n_audio_tokens": int(inputs["input_ids"][0].eq(audio_id).sum()),
                "features": {k: float(getattr(np, k)(feats)) for k in ("mean", "std", "min", "max")}}
        for key, model in models.items():
            with torch.inference_mode():
                rows = model.thinker.get_audio_features(inputs["input_features"], inputs["feature_attention_mask"])
                out = model.generate(**inputs, max_new_tokens=MAX_NEW, eos_token_id=gen["eos_token_id"],
                                     do_sample=False, num_beams=1, repetition_penalty=1.0, temperature=1.0, top_k=50,
                                     top_p=1.0, output_scores=True)
            clip["tokens" + key] = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
            clip["audio_rows" + key] = np.round(rows.numpy().astype(np.float64), 5).tolist()
            if key == "":
                top2 = [torch.topk(s[0].float(), 2).values for s in out.scores]
                clip["margins"] = [round(float(v[0] - v[1]), 5) for v in top2]
        clips.append(clip)
    return {"max_new_tokens": MAX_NEW, "stop_token_ids": gen["eos_token_id"], "seqlen": SEQLEN,
            "max_input_length": MAX_INPUT_LENGTH, "clips": clips,
            "made_with": {"transformers": __import__("transformers").__version__, "torch": torch.__version__,
                          "qwen_asr": "0.0.6"}}


def compile_bmodels(python: Path, folder: Path, out: Path) -> None:
    """tpu-mlir's llm_convert.py (through llm_convert_qwen3_asr.py) per head kind, then --kernel_remove."""
    for name, extra in BMODELS.items():
        with tempfile.TemporaryDirectory(prefix="prebuilt-build-") as tmp:
            build = Path(tmp)
            subprocess.run([str(python), str(HERE / "llm_convert_qwen3_asr.py"), "-m", str(folder), "-s", str(SEQLEN),
                            "--max_input_length", str(MAX_INPUT_LENGTH), "-q", "f16", "-c", "bm1684x", *extra,
                            "-o", str(build)], check=True, cwd=build)
            made = sorted(build.glob("*.bmodel"))
            if len(made) != 1:
                raise SystemExit(f"llm_convert.py left {len(made)} bmodels in {build}")
            target = out / name
            shutil.move(made[0], target)
        model_tool = python.parent / "model_tool"
        subprocess.run([str(python), str(model_tool), "--kernel_remove", str(target)], check=True,
                       stdout=subprocess.DEVNULL)
        print(f"{target.name}: {target.stat().st_size} bytes")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO / "tests" / "data",
                    help="a folder holding audio/ and qwen2-audio-7b-instruct/ (the repository's copy: tests/data)")
    ap.add_argument("--out", type=Path, default=FIXTURE)
    ap.add_argument("--compile-python", type=Path, default=tiny.COMPILE_PYTHON,
                    help="the compile venv's python (native/compile/setup_venv.sh)")
    ap.add_argument("--skip-compile", action="store_true", help="write config.json and reference.json only")
    args = ap.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    base = json.loads((tiny.FIXTURE / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(prebuilt_config(base), indent=2) + "\n")
    shared_model = args.shared / "qwen2-audio-7b-instruct"
    with tempfile.TemporaryDirectory() as tmp:
        # not named *qwen*asr*: tpu-mlir's llm_convert.py would try to import qwen-asr for such a path
        folder = tiny.assemble(tiny.FIXTURE, shared_model, Path(tmp) / "tiny-prebuilt")
        shutil.copy(out / "config.json", folder / "config.json")
        window800 = tiny.assemble(tiny.FIXTURE, shared_model, Path(tmp) / "tiny-window800")
        ref = reference(folder, window800, args.shared / "audio")
        if not args.skip_compile:
            compile_bmodels(args.compile_python, folder, out)
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
