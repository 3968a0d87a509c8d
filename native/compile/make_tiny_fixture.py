#!/usr/bin/env python3
"""Regenerate tests/fixtures/tiny-qwen2-audio/: a seeded random-weight Qwen2-Audio small enough for the
BM1684X simulator, compiled by our own converter, plus the HF transformers (fp32) greedy reference.

Run inside the compile venv (native/compile/setup_venv.sh):
    ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python native/compile/make_tiny_fixture.py [--shared tests/data]

What it writes (an HF-style model folder):
  config.json, model.safetensors (bf16-exact weights), tokenizer.json, tokenizer_config.json,
  preprocessor_config.json (2 s window), generation_config.json,
  tiny-qwen2-audio.bmodel (+ .bmodel.json sidecar), reference.json;
and ../tiny-qwen2-audio-port/tiny-qwen2-audio-port.bmodel: the same weights in the public port's net layout;
and ../tiny-qwen2-audio-b4/tiny-qwen2-audio-b4.bmodel (+ sidecar): the same weights with 4 decode rows
(convert.py --batch 4). `--batched-only` compiles just that one from the existing fixture folder.

The model has its own byte-level BPE vocabulary (a few hundred tokens) with Qwen2-Audio's special-token
strings, so the bmodel stays well under 1 MB; the ids are whatever this tokenizer assigns and are written to
config.json / generation_config.json, never assumed elsewhere. transformers version: the one the compile
venv pins (tpu-mlir 1.30.2 -> transformers 5.6.2); the reference is recorded with it and checked against the
project venv's transformers by tests/test_compile_toolchain.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "tiny-qwen2-audio"
NAME = "tiny-qwen2-audio"
SEED = int(os.environ.get("TINY_FIXTURE_SEED", "4"))

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
BPE_VOCAB = 384  # regular (byte-level BPE) tokens; the special tokens follow them
MODEL_VOCAB = 392  # embedding rows (padded past the tokenizer, as the real model's 156032 is)
SYSTEM = "You are a helpful assistant."
INSTRUCTION = "Transcribe the speech in this audio exactly as spoken. Output only the transcript."
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Clips of ../shared/audio no longer than the 2 s window, all 16 kHz (no resampler in the loop).
CLIPS = [
    {"audio_filepath": "001.wav", "offset": 0.0, "duration": None},
    {"audio_filepath": "003.wav", "offset": 0.0, "duration": None},
    {"audio_filepath": "goforward.wav", "offset": 0.4, "duration": 1.6},
]
MAX_NEW_TOKENS = 12
SEQLEN = 256
# f16 keeps 10 mantissa bits (bf16: 7): with random weights the top-2 logit gaps are a few hundredths of a ~5
# logit, and bf16 rounding noise flips some of them (seen on the simulator); f16 noise is ~8x smaller.
QUANTIZE = "f16"
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus(shared: Path) -> list[str]:
    texts = [SYSTEM, INSTRUCTION, "Recognize the speech and give me the transcription.",
             "Translate the speech in this audio into English.", "Audio 1: ", "system", "user", "assistant",
             "listen the audio, output the audio content with format {\"content\": \"\"}",
             "one two three four five six seven eight nine ten zero hundred",
             "The quick brown fox jumps over the lazy dog. 0123456789"]
    manifest = shared / "audio" / "manifest.jsonl"
    for line in manifest.read_text().splitlines():
        if line.strip():
            t = json.loads(line).get("text")
            if t:
                texts += [t, t.capitalize() + "."]
    return texts


def build_tokenizer(shared: Path):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(shared), trainer=trainer)
    if tok.get_vocab_size() != BPE_VOCAB:
        raise RuntimeError(f"BPE trained {tok.get_vocab_size()} tokens, wanted {BPE_VOCAB}: grow the corpus")
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def write_tokenizer_files(tok, out: Path) -> dict[str, int]:
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for t, i in ids.items()}
    cfg = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": SEQLEN,
        "pad_token": "<|endoftext|>",
        "padding_side": "left",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
        "processor_class": "Qwen2AudioProcessor",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return ids


def write_preprocessor_config(out: Path) -> dict:
    cfg = {
        "chunk_length": 2,
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": 128,
        "hop_length": 160,
        "n_fft": 400,
        "n_samples": 32000,
        "nb_max_frames": 200,
        "padding_side": "right",
        "padding_value": 0.0,
        "processor_class": "Qwen2AudioProcessor",
        "return_attention_mask": True,
        "sampling_rate": 16000,
    }
    (out / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return cfg


def build_config(ids: dict[str, int]):
    from transformers import Qwen2AudioConfig

    return Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "encoder_layers": 2,
            "encoder_attention_heads": 4, "encoder_ffn_dim": 128, "d_model": 64,
            "activation_function": "gelu", "scale_embedding": False, "max_source_positions": 100,
        },
        text_config={
            "model_type": "qwen2", "vocab_size": MODEL_VOCAB, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 1024, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"], "torch_dtype": "bfloat16", "use_sliding_window": False,
        },
        audio_token_index=ids["<|AUDIO|>"],
        vocab_size=MODEL_VOCAB,
        tie_word_embeddings=False,
    )


def build_model(config):
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    torch.manual_seed(SEED)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name
            if name.endswith("bias"):
                v = torch.randn(p.shape, generator=gen) * 0.05
            elif is_norm:
                v = 1.0 + torch.randn(p.shape, generator=gen) * 0.1
            else:
                v = torch.randn(p.shape, generator=gen) * 0.2
            p.copy_(v.to(torch.bfloat16).to(torch.float32))  # bf16-exact: the bmodel holds the same weights
        for name, b in model.named_buffers():
            if "embed_positions" in name:
                b.copy_((torch.randn(b.shape, generator=gen) * 0.2).to(torch.bfloat16).float())
    return model


def write_generation_config(out: Path, ids: dict[str, int]) -> None:
    # The real folder's generation_config.json with this vocabulary's ids (engines decode greedily regardless).
    cfg = {
        "chat_format": "chatml",
        "eos_token_id": [ids["<|endoftext|>"], ids["<|im_end|>"]],
        "pad_token_id": ids["<|endoftext|>"],
        "do_sample": True,
        "top_k": 20,
        "top_p": 0.5,
        "temperature": 0.7,
        "repetition_penalty": 1.1,
    }
    (out / "generation_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def load_clip(shared: Path, clip: dict) -> np.ndarray:
    """16 kHz mono float32 samples of a clip window, sliced as workers/audio.py slices (round(offset * sr))."""
    import soundfile as sf

    path = shared / "audio" / clip["audio_filepath"]
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    if sr != 16000:
        raise RuntimeError(f"{path}: {sr} Hz; fixture clips must be 16 kHz")
    data = data.mean(axis=1)
    start = int(round(clip["offset"] * sr))
    n = data.size - start if clip["duration"] is None else min(int(round(clip["duration"] * sr)), data.size - start)
    return np.ascontiguousarray(data[start:start + n], dtype=np.float32)


def prompt_text(tokenizer) -> str:
    user = "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n" + INSTRUCTION
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


def stats(a) -> dict:
    a = np.asarray(a, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max()),
            "sum": float(a.sum())}


def config_audio_id(model) -> int:
    c = model.config
    return int(getattr(c, "audio_token_id", None) or c.audio_token_index)


def hf_reference(out: Path, shared: Path, ids: dict[str, int]) -> dict:
    """HF transformers fp32 greedy generate on each clip, with per-step top-1/top-2 logit margins and the chosen
    token's log-probability (log-softmax over the whole vocabulary, fp32: what the bmodel's head reports)."""
    import torch
    import transformers
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(out)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    stop = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    text = prompt_text(processor.tokenizer)
    tower = getattr(model, "audio_tower", None) or model.model.audio_tower
    projector = getattr(model, "multi_modal_projector", None) or model.model.multi_modal_projector
    clips = []
    for clip in CLIPS:
        samples = load_clip(shared, clip)
        inputs = processor(text=text, audio=samples, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=stop,
                                 pad_token_id=ids["<|endoftext|>"], output_logits=True,
                                 return_dict_in_generate=True, repetition_penalty=1.0, top_k=None, top_p=None,
                                 temperature=None)
        n_prompt = inputs["input_ids"].shape[1]
        tokens = gen.sequences[0, n_prompt:].tolist()
        steps = []
        for t, logits in enumerate(gen.logits):
            top = torch.topk(logits[0].float(), 2)
            logprob = torch.log_softmax(logits[0].float(), dim=-1)[top.indices[0]]
            steps.append({"top1": int(top.indices[0]), "top2": int(top.indices[1]),
                          "top1_logit": float(top.values[0]), "margin": float(top.values[0] - top.values[1]),
                          "logprob": float(logprob)})
            if steps[-1]["top1"] != tokens[t]:
                raise RuntimeError("generate() did not pick the top-1 logit: not a plain greedy run")
        finish = "stop" if tokens and tokens[-1] in stop else "length"
        n_valid = int(inputs["feature_attention_mask"].sum())
        conv_len = (n_valid - 1) // 2 + 1
        n_audio = (conv_len - 2) // 2 + 1
        mask = torch.zeros(1, tower.config.max_source_positions)
        mask[:, conv_len:] = -10000.0
        with torch.no_grad():
            # The audio net's math (additive key mask) checked against the HF model's own audio path:
            emb_ids = model.get_input_embeddings()(inputs["input_ids"])
            feats = inputs["input_features"]
            h = torch.nn.functional.gelu(tower.conv1(feats))
            h = torch.nn.functional.gelu(tower.conv2(h)).permute(0, 2, 1) + tower.embed_positions.weight
            for layer in tower.layers:
                h = layer(h, mask[:, None, None, :].expand(1, 1, h.shape[1], h.shape[1]))
                h = h[0] if isinstance(h, tuple) else h
            h = tower.layer_norm(tower.avg_pooler(h.permute(0, 2, 1)).permute(0, 2, 1))
            audio_rows = projector(h)[0, :n_audio]
            # ... and against the embeddings HF itself splices in at the <|AUDIO|> positions.
            seen = {}
            lm = getattr(model, "language_model", None) or model.model.language_model
            hook = lm.register_forward_pre_hook(lambda m, a, kw: seen.update(e=kw["inputs_embeds"]),
                                                with_kwargs=True)
            model(**inputs)
            hook.remove()
            at = inputs["input_ids"][0] == config_audio_id(model)
            err = float((seen["e"][0, at] - audio_rows).abs().max())
            if err > 1e-4:
                raise RuntimeError(f"additive-mask audio path differs from HF's by {err}")
        del emb_ids
        clips.append({
            **clip,
            "n_samples": int(samples.size),
            "n_valid_frames": n_valid,
            "n_audio_tokens": n_audio,
            "features": stats(feats.numpy()),
            "audio_embeds": stats(audio_rows.numpy()),
            "input_ids": inputs["input_ids"][0].tolist(),
            "tokens": tokens,
            "text": processor.tokenizer.decode(tokens, skip_special_tokens=False),
            "finish": finish,
            "steps": steps,
            "min_margin": min(s["margin"] for s in steps),
            "token_logprobs": [s["logprob"] for s in steps],
        })
    return {
        "about": "HF transformers fp32 greedy generate() on the fixture's weights (model.safetensors) for clips of "
                 "../shared/audio; features by the fixture's WhisperFeatureExtractor (padding=max_length). Made by "
                 "native/compile/make_tiny_fixture.py.",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "prompt": text,
        "max_new_tokens": MAX_NEW_TOKENS,
        "stop_token_ids": stop,
        "clips": clips,
    }


def compile_fixture(out: Path, work: Path | None) -> None:
    cmd = [sys.executable, str(HERE / "convert.py"), str(out), "-o", str(out / f"{NAME}.bmodel"), "-q", QUANTIZE,
           "--seqlen", str(SEQLEN), "--kernel-remove", "--model-id", NAME]
    if work is not None:
        cmd += ["--work", str(work), "--keep-work"]
    subprocess.run(cmd, check=True)


def compile_port_fixture(out: Path, port_out: Path) -> None:
    """The same weights in the existing public port's net layout (native/compile/port_layout.py)."""
    cmd = [sys.executable, str(HERE / "port_layout.py"), str(out), "-o", str(port_out / f"{NAME}-port.bmodel"),
           "-q", QUANTIZE.upper(), "--seqlen", str(SEQLEN), "--kernel-remove"]
    subprocess.run(cmd, check=True)


BATCH = 4


def compile_batched_fixture(out: Path, batched_out: Path, batch: int = BATCH) -> None:
    """The same checkpoint with `batch` decode rows, in its own folder (the model folder stays `out`)."""
    batched_out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / "convert.py"), str(out), "-o", str(batched_out / f"{NAME}-b{batch}.bmodel"),
           "-q", QUANTIZE, "--seqlen", str(SEQLEN), "--batch", str(batch), "--kernel-remove", "--model-id", NAME]
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO / "tests" / "data",
                    help="a folder holding audio/ and qwen2-audio-7b-instruct/ (the repository's copy: tests/data)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--skip-compile", action="store_true", help="write the HF folder and reference only")
    ap.add_argument("--work", type=Path, default=None, help="keep the compile's build folder here")
    ap.add_argument("--port-out", default=str(DEFAULT_OUT.parent / f"{NAME}-port"),
                    help="where the public-port-layout bmodel goes ('' to skip it)")
    ap.add_argument("--batched-out", default=str(DEFAULT_OUT.parent / f"{NAME}-b{BATCH}"),
                    help=f"where the {BATCH}-row batched bmodel goes ('' to skip it)")
    ap.add_argument("--batched-only", action="store_true",
                    help="only compile the batched bmodel from the existing --out folder")
    args = ap.parse_args(argv)
    if args.batched_only:
        compile_batched_fixture(args.out.resolve(), Path(args.batched_out).resolve())
        return 0

    t0 = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(args.shared)
    ids = write_tokenizer_files(tok, out)
    write_preprocessor_config(out)
    config = build_config(ids)
    model = build_model(config)
    import torch

    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    write_generation_config(out, ids)
    ref = hf_reference(out, args.shared, ids)
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    for c in ref["clips"]:
        print(f"{c['audio_filepath']}: {len(c['input_ids'])} prompt ids, {c['n_audio_tokens']} audio tokens, "
              f"tokens {c['tokens']} ({c['finish']}), min top-2 margin {c['min_margin']:.4f}")
    if not args.skip_compile:
        compile_fixture(out, args.work)
        if args.port_out:
            compile_port_fixture(out, Path(args.port_out).resolve())
        if args.batched_out:
            compile_batched_fixture(out, Path(args.batched_out).resolve())
    print(f"fixture written to {out} in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
