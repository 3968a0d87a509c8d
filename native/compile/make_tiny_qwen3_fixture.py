#!/usr/bin/env python3
"""Regenerate tests/fixtures/tiny-qwen3-asr/: a tiny random Qwen3-ASR built from `qwen-asr`'s own config and model
classes, its test tokenizer configuration, and the reference (qwen-asr's processor ids and `generate` tokens).

Run with the PROJECT venv (transformers 5.24 + `pip install --no-deps qwen-asr==0.0.6`), not the compile venv:

    .venv/bin/python native/compile/make_tiny_qwen3_fixture.py [--shared tests/data]

The fixture was made before the released Qwen3-ASR tokenizer was at hand. Its BPE is Qwen2's, so the fixture's
tokenizer is the Qwen2-Audio folder's vocab.json + merges.txt (copied into the fixture, which is a complete model
folder) plus the added tokens written to tokenizer_config.json.
Ids that public implementations report for the released tokenizer are used where known (<|im_start|> 151644,
<|im_end|> 151645, <|audio_start|> 151669, <|audio_end|> 151670, <|audio_pad|> 151676); the others fill the range
so the added ids stay contiguous, and `<asr_text>` (151677) is this fixture's choice. Nothing in the runner depends
on these numbers: every id is read from the folder.

Written: config.json (model_type qwen3_asr), generation_config.json, preprocessor_config.json, tokenizer_config.json,
chat_template.json, model.safetensors (bf16 values), reference.json (README.md and probe-bmodel-nets.json are kept),
and, compiled by native/compile/convert.py with the compile venv's python (`--compile-python`; `--skip-compile` to
leave them), tiny-qwen3-asr.bmodel (f16, SEQLEN 256) and tiny-qwen3-asr-b4.bmodel (the same with 4 decode rows),
each with its sidecar.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "tiny-qwen3-asr"
SEED = 1234
MAX_NEW = 12
WEIGHT_STD = 1.0  # large enough that the tiny model's greedy answer varies with the audio and the step

# Added tokens after the 151643 BPE entries (ids contiguous from there; see the module docstring).
ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False), ("<|audio_start|>", True), ("<|audio_end|>", True),
    ("<tts_pad>", True), ("<tts_text_bos>", True), ("<tts_text_eod>", True), ("<tts_text_bos_single>", True),
    ("<|reserved_0|>", True), ("<|audio_pad|>", True), ("<asr_text>", False),
]
FIRST_ADDED = 151643
VOCAB_SIZE = 151680  # embedding rows: every added id fits

# The checkpoint's chat template as qwen-asr renders it: system turn (the context), user turn with the audio.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for item in message['content'] %}"
    "{%- if item['type'] == 'audio' %}{{- '<|audio_start|><|audio_pad|><|audio_end|>' }}"
    "{%- elif item['type'] == 'text' %}{{- item['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SUPPORT_LANGUAGES = ["Chinese", "English", "Cantonese", "German", "French", "Spanish", "Japanese", "Korean"]

# (clip, offset, duration, context, forced language)
CLIPS = [
    ("001.wav", 0.0, None, "", None),
    ("003.wav", 0.0, None, "", None),
    ("goforward.wav", 0.4, 1.6, "", None),
    ("005.wav", 0.0, None, "card names: ace, king, queen", None),
    ("001.wav", 0.0, None, "", "English"),
]


def tokenizer_config(shared: Path) -> dict:
    base = json.loads((shared / "tokenizer_config.json").read_text())
    added = {str(FIRST_ADDED + i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                    "single_word": False, "special": special} for i, (t, special) in enumerate(ADDED)}
    return {
        "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": [t for t, special in ADDED[1:] if special],
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 65536, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": base.get("tokenizer_class", "Qwen2Tokenizer"), "unk_token": None,
        "extra_special_tokens": {"audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>",
                                 "audio_eos_token": "<|audio_end|>"},
    }


MODEL_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
               "chat_template.json", "model.safetensors")


def assemble(fixture: Path, shared_model_dir: Path, into: Path) -> Path:
    """A complete model folder: the committed model files + the shared BPE (vocab.json, merges.txt)."""
    into.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy(fixture / name, into / name)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(shared_model_dir / name, into / name)
    return into


def build_model(out: Path):
    import torch

    from transcribe_batch.workers.models.qwen3_asr import import_qwen_asr_backend

    backend = import_qwen_asr_backend()
    added = {t: FIRST_ADDED + i for i, (t, _) in enumerate(ADDED)}
    config = backend.Qwen3ASRConfig(
        thinker_config=dict(
            audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
                              d_model=16, max_source_positions=1500, n_window=50, n_window_infer=800,
                              conv_chunksize=500, downsample_hidden_size=8, output_dim=8),
            text_config=dict(vocab_size=VOCAB_SIZE, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=4, max_position_embeddings=4096,
                             rope_theta=1000000.0, tie_word_embeddings=True,
                             rope_scaling={"rope_type": "default", "mrope_section": [1, 1, 0], "interleaved": True}),
            audio_token_id=added["<|audio_pad|>"], audio_start_token_id=added["<|audio_start|>"],
            tie_word_embeddings=True,
        ),
        support_languages=SUPPORT_LANGUAGES,
    )
    torch.manual_seed(SEED)
    model = backend.Qwen3ASRForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or ".ln" in name or "layer_norm.weight" in name or name.endswith("ln_post.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.05 * torch.randn_like(p))
            else:
                p.copy_(WEIGHT_STD * torch.randn_like(p))
            p.copy_(p.to(torch.bfloat16).to(torch.float32))  # the checkpoint holds exactly these values
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    return backend


def reference(folder: Path, backend, audio_dir: Path) -> dict:
    import numpy as np
    import torch

    from transcribe_batch.workers.audio import load_audio

    processor = backend.Qwen3ASRProcessor.from_pretrained(folder)
    model = backend.Qwen3ASRForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    gen = json.loads((folder / "generation_config.json").read_text())
    clips = []
    for name, offset, duration, context, language in CLIPS:
        audio = load_audio(audio_dir / name, offset, duration)
        messages = [{"role": "system", "content": context},
                    {"role": "user", "content": [{"type": "audio", "audio": ""}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if language:
            text += f"language {language}<asr_text>"
        inputs = processor(text=[text], audio=[audio], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=MAX_NEW, eos_token_id=gen["eos_token_id"], do_sample=False,
                                 num_beams=1, repetition_penalty=1.0, temperature=1.0, top_k=50, top_p=1.0)
        new = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
        feats = inputs["input_features"][0].numpy()
        clips.append({
            "audio_filepath": name, "offset": offset, "duration": duration, "context": context, "language": language,
            "n_samples": int(audio.size), "prompt": text, "input_ids": inputs["input_ids"][0].tolist(),
            "n_frames": int(feats.shape[-1]), "n_valid_frames": int(inputs["feature_attention_mask"][0].sum()),
            "n_audio_tokens": int(inputs["input_ids"][0].eq(model.config.thinker_config.audio_token_id).sum()),
            "features": {k: float(getattr(np, k)(feats)) for k in ("mean", "std", "min", "max")},
            "tokens": new,
        })
    return {"max_new_tokens": MAX_NEW, "stop_token_ids": gen["eos_token_id"], "clips": clips,
            "made_with": {"transformers": __import__("transformers").__version__, "torch": torch.__version__,
                          "qwen_asr": "0.0.6"}}


COMPILE_PYTHON = Path.home() / ".cache" / "transcribe-batch" / "tpu-mlir-venv" / "bin" / "python"
SEQLEN, BATCH = 256, 4


def bmodel_name(batch: int) -> str:
    return "tiny-qwen3-asr.bmodel" if batch == 1 else f"tiny-qwen3-asr-b{batch}.bmodel"


def compile_bmodel(python: Path, folder: Path, out: Path, batch: int) -> None:
    """convert.py on the assembled folder (it needs the tokenizer-less checkpoint only; the model id is the fixture's)."""
    subprocess.run([str(python), str(REPO / "native" / "compile" / "convert.py"), str(folder), "-o",
                    str(out / bmodel_name(batch)), "-q", "f16", "--seqlen", str(SEQLEN), "--batch", str(batch),
                    "--kernel-remove", "--model-id", "tiny-qwen3-asr"], check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO / "tests" / "data",
                    help="a folder holding audio/ and qwen2-audio-7b-instruct/ (the repository's copy: tests/data)")
    ap.add_argument("--out", type=Path, default=FIXTURE)
    ap.add_argument("--compile-python", type=Path, default=COMPILE_PYTHON,
                    help="the compile venv's python (native/compile/setup_venv.sh)")
    ap.add_argument("--skip-compile", action="store_true", help="write the HF folder and reference only")
    args = ap.parse_args(argv)
    shared_model = args.shared / "qwen2-audio-7b-instruct"
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for name in (*MODEL_FILES, "reference.json"):  # README.md and the probe's nets JSON stay
        (out / name).unlink(missing_ok=True)
    backend = build_model(out)
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(shared_model), indent=2) + "\n")
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(shared_model / name, out / name)
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [151645, 151643], "pad_token_id": 151643, "do_sample": False}, indent=2) + "\n")
    pre = json.loads((shared_model / "preprocessor_config.json").read_text())
    pre["processor_class"] = "Qwen3ASRProcessor"
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    with tempfile.TemporaryDirectory() as tmp:
        folder = assemble(out, shared_model, Path(tmp) / "tiny-qwen3-asr")
        ref = reference(folder, backend, args.shared / "audio")
        if not args.skip_compile:
            for batch in (1, BATCH):
                compile_bmodel(args.compile_python, folder, out, batch)
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    sizes = {name: (out / name).stat().st_size for name in (*MODEL_FILES, "reference.json")}
    print(json.dumps(sizes, indent=1), f"total {sum(sizes.values())} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
