#!/usr/bin/env python3
"""Regenerate tests/fixtures/tiny-qwen2-audio-confident/: the tiny Qwen2-Audio of make_tiny_fixture.py, TRAINED on
the CPU to transcribe four short card-game clips of ../shared/audio ("ten of clubs", ...), so that its greedy
answers lead the runner-up logit by a wide margin at every step; compiled to bf16, w8bf16 and w4bf16 bmodels, plus
the HF transformers (fp32) greedy reference with every step's top-1/top-2 margin.

Why: random-weight fixtures have top-2 gaps of a few hundredths of a logit, which bf16 rounding (let alone 4-bit
weights) flips, so only an f16 build can be token-checked with them. A model that has learned its answers keeps
them through quantization, and the reference margins say by how much.

Run inside the compile venv (native/compile/setup_venv.sh):
    ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python native/compile/make_confident_fixture.py [--shared tests/data]
    ... --skip-compile --measure   # per-step logits of each quantized build vs HF fp32 on the simulator (~20 min)
    ... --batched-only [--convert PATH]   # only the --batch 4 builds, from the existing folder

Training is deterministic (seeded init, fixed clip order, full-batch AdamW, torch deterministic algorithms, one
thread; a re-run wrote a byte-identical model.safetensors) and takes ~85 s on a busy 2-core machine; it is run by
this script, never by CI. The tokenizer, the config and the vocabulary approach are make_tiny_fixture.py's
(imported, not copied).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import make_tiny_fixture as tiny  # noqa: E402  (same tokenizer, config, clip loading and prompt)

REPO = tiny.REPO
NAME = "tiny-qwen2-audio-confident"
DEFAULT_OUT = REPO / "tests" / "fixtures" / NAME
SEED = 7
# The four pocketsphinx card clips: all 16 kHz and under the fixture's 2 s window, each a different answer.
CLIP_FILES = ["001.wav", "002.wav", "003.wav", "004.wav"]
QUANTIZATIONS = ("bf16", "w8bf16", "w4bf16")
Q_GROUP_SIZE = 64  # = the hidden size: the smallest power of two >= 32 that divides every text-layer input width
SEQLEN = 192  # longest prompt: ~90 text ids + 50 audio rows; answers are <= 8 tokens
MAX_NEW_TOKENS = 12
BATCH = 4  # decode rows of the batched builds
TRAIN_STEPS = 300
LEARNING_RATE = 3e-3
TRAIN_THREADS = 1  # one thread: the same order of sums on every run, and no spin-waiting on a busy machine


def clips_with_targets(shared: Path) -> list[dict]:
    """The card clips with their transcripts, read from the shared manifest."""
    rows = {}
    for line in (shared / "audio" / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["audio_filepath"]] = row
    out = []
    for name in CLIP_FILES:
        if name not in rows or not rows[name].get("text"):
            raise SystemExit(f"{shared / 'audio' / 'manifest.jsonl'}: no transcript for {name}")
        out.append({"audio_filepath": name, "offset": 0.0, "duration": None, "target_text": rows[name]["text"]})
    return out


def examples(processor, shared: Path, clips: list[dict], stop_id: int) -> list[dict]:
    """Per clip: the processor's prompt tensors (what the front end and HF generate use) and the answer ids."""
    import torch

    text = tiny.prompt_text(processor.tokenizer)
    out = []
    for clip in clips:
        samples = tiny.load_clip(shared, clip)
        inputs = processor(text=text, audio=samples, sampling_rate=16000, return_tensors="pt")
        answer = processor.tokenizer(clip["target_text"], add_special_tokens=False)["input_ids"] + [stop_id]
        if len(answer) > MAX_NEW_TOKENS:
            raise SystemExit(f"{clip['audio_filepath']}: answer {answer} longer than {MAX_NEW_TOKENS} tokens")
        ids = torch.cat([inputs["input_ids"], torch.tensor([answer[:-1]], dtype=torch.long)], dim=1)
        out.append({"clip": clip, "samples": samples, "inputs": inputs, "answer": answer, "train_ids": ids,
                    "n_prompt": inputs["input_ids"].shape[1]})
    return out


def batch(exs: list[dict], pad_id: int) -> dict:
    """All clips as one right-padded batch (one forward per training step), with per-row answer positions."""
    import torch

    width = max(ex["train_ids"].shape[1] for ex in exs)
    ids = torch.full((len(exs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(exs), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for r, ex in enumerate(exs):
        n = ex["train_ids"].shape[1]
        ids[r, :n] = ex["train_ids"][0]
        attn[r, :n] = 1
        for t, tok in enumerate(ex["answer"]):
            rows.append(r)
            cols.append(ex["n_prompt"] - 1 + t)
            targets.append(tok)
    return {"input_ids": ids, "attention_mask": attn,
            "input_features": torch.cat([ex["inputs"]["input_features"] for ex in exs]),
            "feature_attention_mask": torch.cat([ex["inputs"]["feature_attention_mask"] for ex in exs]),
            "rows": torch.tensor(rows), "cols": torch.tensor(cols), "targets": torch.tensor(targets)}


def train(model, exs: list[dict], pad_id: int, *, steps: int, lr: float, log=print) -> list[float]:
    """Full-batch AdamW on the answer tokens (teacher forcing), all parameters. Returns the loss curve."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    b = batch(exs, pad_id)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       input_features=b["input_features"], feature_attention_mask=b["feature_attention_mask"]).logits
        loss = F.cross_entropy(logits[b["rows"], b["cols"]], b["targets"])
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if step % 25 == 0 or step == steps - 1:
            log(f"step {step}: loss {losses[-1]:.5f}")
    model.eval()
    return losses


def round_to_bf16(model) -> None:
    """The checkpoint is stored in bf16; HF's fp32 reference and the bmodels then hold the same numbers."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
        for name, b in model.named_buffers():
            if b.is_floating_point() and "embed_positions" in name:
                b.copy_(b.to(torch.bfloat16).float())


def hf_reference(out: Path, shared: Path, clips: list[dict], ids: dict[str, int]) -> dict:
    """HF transformers fp32 greedy generate() on each clip, with per-step top-1/top-2 logit margins."""
    import torch
    import transformers
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(out)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    stop = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    text = tiny.prompt_text(processor.tokenizer)
    exs = examples(processor, shared, clips, ids["<|im_end|>"])
    rows = []
    for ex in exs:
        inputs = ex["inputs"]
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=stop,
                                 pad_token_id=ids["<|endoftext|>"], output_logits=True,
                                 return_dict_in_generate=True, repetition_penalty=1.0, top_k=None, top_p=None,
                                 temperature=None)
        tokens = gen.sequences[0, ex["n_prompt"]:].tolist()
        steps = []
        for t, logits in enumerate(gen.logits):
            top = torch.topk(logits[0].float(), 2)
            steps.append({"top1": int(top.indices[0]), "top2": int(top.indices[1]),
                          "top1_logit": float(top.values[0]), "margin": float(top.values[0] - top.values[1])})
            if steps[-1]["top1"] != tokens[t]:
                raise RuntimeError("generate() did not pick the top-1 logit: not a plain greedy run")
        if tokens != ex["answer"]:
            raise SystemExit(f"{ex['clip']['audio_filepath']}: the trained model answers {tokens}, trained on "
                             f"{ex['answer']}: train longer")
        n_valid = int(inputs["feature_attention_mask"].sum())
        rows.append({
            **{k: v for k, v in ex["clip"].items()},
            "n_samples": int(ex["samples"].size),
            "n_valid_frames": n_valid,
            "n_audio_tokens": ((n_valid - 1) // 2 + 1 - 2) // 2 + 1,
            "features": tiny.stats(inputs["input_features"].numpy()),
            "input_ids": inputs["input_ids"][0].tolist(),
            "tokens": tokens,
            "text": processor.tokenizer.decode(tokens, skip_special_tokens=False),
            "finish": "stop" if tokens[-1] in stop else "length",
            "steps": steps,
            "min_margin": min(s["margin"] for s in steps),
        })
    return {
        "about": "HF transformers fp32 greedy generate() on the fixture's trained weights (model.safetensors) for "
                 "the card clips of ../shared/audio; features by the fixture's WhisperFeatureExtractor "
                 "(padding=max_length). Every step's top-1/top-2 logit margin is recorded: the quantized bmodels "
                 "must give these tokens. Made by native/compile/make_confident_fixture.py.",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prompt": text,
        "max_new_tokens": MAX_NEW_TOKENS,
        "stop_token_ids": stop,
        "clips": rows,
        "min_margin": min(r["min_margin"] for r in rows),
    }


def bmodel_name(quantize: str, batch: int = 1) -> str:
    return f"{NAME}-{quantize}.bmodel" if batch == 1 else f"{NAME}-{quantize}-b{batch}.bmodel"


def compile_bmodel(out: Path, dest: Path, quantize: str, *, lm_head: str = "greedy", batch: int = 1,
                   convert: Path = HERE / "convert.py") -> Path:
    cmd = [sys.executable, str(convert), str(out), "-o", str(dest), "-q", quantize, "-g",
           str(Q_GROUP_SIZE), "--seqlen", str(SEQLEN), "--model-id", NAME, "--lm-head", lm_head]
    if batch != 1:
        cmd += ["--batch", str(batch)]
    if lm_head == "greedy":
        cmd.append("--kernel-remove")  # the logits head's greedy_head is dynamic and needs the kernel module
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return dest


def hf_answer_logits(out: Path, shared: Path, ref: dict) -> list[np.ndarray]:
    """Per clip: HF fp32 logits [n_tokens, vocab] at every answer step, teacher-forced on the reference tokens."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(out)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    text = tiny.prompt_text(processor.tokenizer)
    res = []
    for clip in ref["clips"]:
        inputs = processor(text=text, audio=tiny.load_clip(shared, clip), sampling_rate=16000, return_tensors="pt")
        n = inputs["input_ids"].shape[1]
        ids = torch.cat([inputs["input_ids"], torch.tensor([clip["tokens"][:-1]])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           input_features=inputs["input_features"],
                           feature_attention_mask=inputs["feature_attention_mask"]).logits[0]
        res.append(logits[n - 1: n - 1 + len(clip["tokens"])].numpy().astype(np.float64))
    return res


def device_logits(rt, spec: dict, input_ids: list[int], mel: np.ndarray, n_valid: int, forced: list[int],
                  mask_value: float) -> list[np.ndarray]:
    """A logits-head bmodel's scores at every answer step on the simulator, teacher-forced on `forced` (the
    reference tokens), through tpu-mlir's pyruntime (verify_bmodel's host loop)."""
    from verify_bmodel import decode_step, prefill

    last, ks, vs = prefill(rt, spec, input_ids, mel, n_valid, mask_value)
    scores = [rt.run("lm_head", last)[0].reshape(-1).astype(np.float64)]
    length = len(input_ids)
    for token in forced[:-1]:
        h = decode_step(rt, spec, token, length, ks, vs)
        length += 1
        scores.append(rt.run("lm_head", h)[0].reshape(-1).astype(np.float64))
    return scores


def measure(out: Path, shared: Path, ref: dict) -> dict:
    """Per quantization: logits-head builds of the same weights (in a temporary folder) run on the simulator,
    teacher-forced on the reference tokens; per step the max |logit - HF fp32 logit| and the device's own top-2
    margin. Slow (one pyruntime net launch at a time): run it when the fixture changes, not in CI."""
    from verify_bmodel import Runner, features, layout

    hf = hf_answer_logits(out, shared, ref)
    config = json.loads((out / "config.json").read_text())
    result = {}
    with tempfile.TemporaryDirectory(prefix="confident-logits.") as tmp:
        for q in QUANTIZATIONS:
            t0 = time.monotonic()
            bmodel = compile_bmodel(out, Path(tmp) / f"{NAME}-{q}-logits.bmodel", q, lm_head="logits")
            rt = Runner(bmodel)
            spec = layout(rt, config)
            per_clip = []
            for clip, want in zip(ref["clips"], hf):
                mel, n_valid = features(out, tiny.load_clip(shared, clip))
                got = device_logits(rt, spec, clip["input_ids"], mel, n_valid, clip["tokens"], -10000.0)
                got = np.stack(got)[:, : want.shape[1]]
                top2 = np.sort(got, axis=1)[:, -2:]
                per_clip.append({
                    "audio_filepath": clip["audio_filepath"],
                    "max_abs_logit_error": [round(float(e), 4) for e in np.abs(got - want).max(axis=1)],
                    "top1_equal": bool((got.argmax(axis=1) == np.asarray(clip["tokens"])).all()),
                    "device_margin": [round(float(m), 4) for m in top2[:, 1] - top2[:, 0]],
                })
            errs = [e for c in per_clip for e in c["max_abs_logit_error"]]
            result[q] = {"max_abs_logit_error": max(errs), "mean_step_max_abs_logit_error": float(np.mean(errs)),
                         "all_top1_equal": all(c["top1_equal"] for c in per_clip), "clips": per_clip,
                         "net_launches": rt.launches, "seconds": round(time.monotonic() - t0, 1)}
            print(f"{q}: max |logit error| {result[q]['max_abs_logit_error']:.4f}, top-1 equal at every step: "
                  f"{result[q]['all_top1_equal']} [{result[q]['seconds']} s]")
            del rt
    return result


def compile_batched(out: Path, batch: int, convert: Path) -> dict:
    """The same weights with `batch` decode rows (prefill and audio net stay batch 1), one bmodel per mode."""
    names = {}
    for q in QUANTIZATIONS:
        dest = compile_bmodel(out, out / bmodel_name(q, batch), q, batch=batch, convert=convert)
        names[q] = dest.name
        print(f"{dest.name}: {dest.stat().st_size} bytes")
    return {"batch": batch, "bmodels": names}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO / "tests" / "data",
                    help="a folder holding audio/ and qwen2-audio-7b-instruct/ (the repository's copy: tests/data)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--steps", type=int, default=TRAIN_STEPS, help=f"training steps (default {TRAIN_STEPS})")
    ap.add_argument("--skip-compile", action="store_true", help="write the HF folder and reference only")
    ap.add_argument("--batch", type=int, default=BATCH,
                    help=f"also compile bmodels with this many decode rows (convert.py --batch; default {BATCH}, "
                         "1 = none)")
    ap.add_argument("--batched-only", action="store_true",
                    help="only compile the --batch bmodels from the existing --out folder (no training)")
    ap.add_argument("--convert", type=Path, default=HERE / "convert.py", help="the convert.py to compile with")
    ap.add_argument("--measure", action="store_true",
                    help="also run logits-head builds on the simulator and record per-step logit errors vs HF")
    args = ap.parse_args(argv)
    if (args.measure or not args.skip_compile) and "TRANSCRIBE_BATCH_TPU_ENV" not in os.environ:
        import tpu_mlir  # noqa: F401  (sets LD_LIBRARY_PATH etc. for the restarted process)

        os.environ["TRANSCRIBE_BATCH_TPU_ENV"] = "1"
        os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])])

    if args.batched_only:
        out = args.out.resolve()
        ref = json.loads((out / "reference.json").read_text())
        ref["batched_bmodels"] = compile_batched(out, args.batch, args.convert)
        (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
        return 0

    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    t0 = time.monotonic()
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tok = tiny.build_tokenizer(args.shared)
    ids = tiny.write_tokenizer_files(tok, out)
    tiny.write_preprocessor_config(out)
    config = tiny.build_config(ids)
    config.save_pretrained(out)
    tiny.write_generation_config(out, ids)
    processor = AutoProcessor.from_pretrained(out)
    clips = clips_with_targets(args.shared)
    exs = examples(processor, args.shared, clips, ids["<|im_end|>"])

    torch.manual_seed(SEED)
    model = Qwen2AudioForConditionalGeneration(config).float()
    t_train = time.monotonic()
    losses = train(model, exs, ids["<|endoftext|>"], steps=args.steps, lr=LEARNING_RATE)
    train_s = time.monotonic() - t_train
    round_to_bf16(model)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tiny.write_generation_config(out, ids)  # save_pretrained rewrites it from the model's defaults

    ref = hf_reference(out, args.shared, clips, ids)
    ref["training"] = {"steps": args.steps, "learning_rate": LEARNING_RATE, "optimizer": "AdamW (full batch)",
                       "seed": SEED, "threads": TRAIN_THREADS, "first_loss": losses[0], "final_loss": losses[-1],
                       "seconds": round(train_s, 1)}
    ref["bmodels"] = {q: bmodel_name(q) for q in QUANTIZATIONS}
    for c in ref["clips"]:
        print(f"{c['audio_filepath']}: {c['text']!r} tokens {c['tokens']}, margins "
              f"{[round(s['margin'], 2) for s in c['steps']]}")
    print(f"trained {args.steps} steps in {train_s:.1f} s (loss {losses[0]:.3f} -> {losses[-1]:.5f}); "
          f"smallest top-2 margin {ref['min_margin']:.3f}")
    old = out / "reference.json"
    if old.is_file() and not args.measure:  # keep the last measurement if the weights did not change
        prev = json.loads(old.read_text())
        if prev.get("clips") == ref["clips"]:
            for key in ("measured", "batched_bmodels"):
                if key in prev:
                    ref[key] = prev[key]
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    if not args.skip_compile:
        for q in QUANTIZATIONS:
            dest = compile_bmodel(out, out / bmodel_name(q), q)
            print(f"{dest.name}: {dest.stat().st_size} bytes")
        if args.batch != 1:
            ref["batched_bmodels"] = compile_batched(out, args.batch, args.convert)
            (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    if args.measure:
        ref["measured"] = measure(out, args.shared, ref)
        (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"fixture written to {out} in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
