#!/usr/bin/env python3
"""A random-weight checkpoint with Qwen2-Audio-7B-Instruct's real shapes, to measure the real compile without the
real weights: the full audio encoder (32 layers, d_model 1280, 3000 mel frames) + projector, and N real-size text
layers (hidden 4096, intermediate 11008, 32 heads). The vocabulary defaults to a small one (the real 156032-row
embedding and lm_head only add two big matmul-free/one-matmul nets whose cost scales linearly).

    $PY native/compile/make_shape_probe.py /tmp/probe --text-layers 1 [--real-vocab]
    $PY native/compile/convert.py /tmp/probe -o /tmp/probe.bmodel -q w4bf16 --seqlen 1024 --keep-work

Configs come from ../shared/qwen2-audio-7b-instruct (the real config.json and tokenizer files); weights are
N(0, 0.02) bf16 (norm weights 1), written straight to safetensors without building the model in memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--shared", type=Path, default=REPO / "tests" / "data",
                    help="a folder holding audio/ and qwen2-audio-7b-instruct/ (the repository's copy: tests/data)")
    ap.add_argument("--text-layers", type=int, default=1)
    ap.add_argument("--real-vocab", action="store_true", help="156032-row embedding and lm_head (+2.5 GB)")
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig

    real = args.shared / "qwen2-audio-7b-instruct"
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "preprocessor_config.json",
              "generation_config.json"):
        shutil.copy(real / f, out / f)
    cfg = AutoConfig.from_pretrained(real).to_dict()
    text = cfg["text_config"]
    text["num_hidden_layers"] = args.text_layers
    text.pop("layer_types", None)
    vocab = text["vocab_size"] if args.real_vocab else 1024
    text["vocab_size"] = cfg["vocab_size"] = vocab
    cfg["audio_token_index"] = min(cfg["audio_token_index"], vocab - 1)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))

    a = cfg["audio_config"]
    D, F, M, P, L = a["d_model"], a["encoder_ffn_dim"], a["num_mel_bins"], a["max_source_positions"], a["encoder_layers"]
    H, I = text["hidden_size"], text["intermediate_size"]
    kv = text["num_key_value_heads"] * (H // text["num_attention_heads"])
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    def ones(n):
        return torch.ones(n, dtype=torch.bfloat16)

    t = {}
    A = "audio_tower"
    t.update({f"{A}.conv1.weight": r(D, M, 3), f"{A}.conv1.bias": r(D), f"{A}.conv2.weight": r(D, D, 3),
              f"{A}.conv2.bias": r(D), f"{A}.embed_positions.weight": r(P, D), f"{A}.layer_norm.weight": ones(D),
              f"{A}.layer_norm.bias": r(D)})
    for i in range(L):
        p = f"{A}.layers.{i}"
        for n in ("q_proj", "v_proj", "out_proj"):
            t[f"{p}.self_attn.{n}.weight"], t[f"{p}.self_attn.{n}.bias"] = r(D, D), r(D)
        t[f"{p}.self_attn.k_proj.weight"] = r(D, D)
        t[f"{p}.fc1.weight"], t[f"{p}.fc1.bias"] = r(F, D), r(F)
        t[f"{p}.fc2.weight"], t[f"{p}.fc2.bias"] = r(D, F), r(D)
        for n in ("self_attn_layer_norm", "final_layer_norm"):
            t[f"{p}.{n}.weight"], t[f"{p}.{n}.bias"] = ones(D), r(D)
    t["multi_modal_projector.linear.weight"], t["multi_modal_projector.linear.bias"] = r(H, D), r(H)
    T = "language_model.model"
    t[f"{T}.embed_tokens.weight"], t["language_model.lm_head.weight"] = r(vocab, H), r(vocab, H)
    t[f"{T}.norm.weight"] = ones(H)
    for i in range(args.text_layers):
        p = f"{T}.layers.{i}"
        t[f"{p}.self_attn.q_proj.weight"], t[f"{p}.self_attn.q_proj.bias"] = r(H, H), r(H)
        for n in ("k_proj", "v_proj"):
            t[f"{p}.self_attn.{n}.weight"], t[f"{p}.self_attn.{n}.bias"] = r(kv, H), r(kv)
        t[f"{p}.self_attn.o_proj.weight"] = r(H, H)
        t[f"{p}.mlp.gate_proj.weight"], t[f"{p}.mlp.up_proj.weight"] = r(I, H), r(I, H)
        t[f"{p}.mlp.down_proj.weight"] = r(H, I)
        t[f"{p}.input_layernorm.weight"], t[f"{p}.post_attention_layernorm.weight"] = ones(H), ones(H)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    print(f"{sum(v.numel() for v in t.values()) / 1e6:.1f} M parameters written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
