#!/usr/bin/env python3
"""Compile a (small) Qwen2-Audio checkpoint into the net layout of the existing public BM1684X port
(Sophgo LLM-TPU models/Qwen2_Audio), so the runtime can be tested against bmodels people already have.

The port's route: per-net ONNX export -> model_transform -> model_deploy -> `model_tool --combine`. Its nets:
  embedding [1,SEQ] -> [1,SEQ,H]; embedding_cache [1,1] -> [1,1,H]
  block_i (states, position_ids, mask) -> states, K [1,KV,SEQ,D] (head-major), V [1,SEQ,KV,D]
  block_cache_i (io_alone; states [1,1,H], position_ids [1,1], mask [1,1,1,SEQ+1], history K [1,KV,SEQ,D],
                 history V [1,SEQ,KV,D]) -> states, K [1,KV,1,D], V [1,1,KV,D]
  lm_head [1,1,H] (final norm inside) -> f32 logits [1,1,vocab];  greed [1,1,vocab] -> token id
  audio (mel [1,n_mels,2P], mask [1,1,P,P]) -> [1,P/2,d_model] (encoder + avg-pool + layer_norm);
  projector [1,P/2,d_model] -> [1,P/2,H]
Masks here are the correct ones (causal [1,1,SEQ,SEQ] prefill, [1,1,1,SEQ+1] decode, additive key mask tiled over
the audio rows); the port's own prefill mask was a per-key [1,SEQ] vector (its non-causal bug), which no runtime can
make causal. No sidecar: the port's bmodels have none.

    $PY native/compile/port_layout.py tests/fixtures/tiny-qwen2-audio -o tests/fixtures/tiny-qwen2-audio-port/tiny-qwen2-audio-port.bmodel --seqlen 256
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path


def build_modules(model_dir: Path, seqlen: int):
    import torch
    from torch import nn
    from transformers import Qwen2AudioForConditionalGeneration

    m = Qwen2AudioForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    m.requires_grad_(False)
    tower = getattr(m, "audio_tower", None) or m.model.audio_tower
    projector = getattr(m, "multi_modal_projector", None) or m.model.multi_modal_projector
    lm = getattr(m, "language_model", None) or m.model.language_model
    text = lm.model if hasattr(lm, "model") else lm
    head = m.lm_head if hasattr(m, "lm_head") else lm.lm_head
    cfg = m.config.text_config
    H, nh, kvh = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    D = H // nh
    theta = getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    freqs = torch.outer(torch.arange(seqlen + 1, dtype=torch.float32), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos_table, sin_table = emb.cos(), emb.sin()  # [SEQ+1, D]

    def rms(x, w, eps):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rotate(x, cos, sin):  # x [1,S,heads,D]; cos/sin [1,S,1,D]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    class Layer(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.l = layer
            self.register_buffer("cos", cos_table.clone(), persistent=False)
            self.register_buffer("sin", sin_table.clone(), persistent=False)

        def qkv(self, states, pos):
            a, S = self.l.self_attn, states.shape[1]
            h = rms(states, self.l.input_layernorm.weight, cfg.rms_norm_eps)
            q = a.q_proj(h).view(1, S, nh, D)
            k = a.k_proj(h).view(1, S, kvh, D)
            v = a.v_proj(h).view(1, S, kvh, D)
            cos = self.cos[pos.reshape(-1)].view(1, S, 1, D)
            sin = self.sin[pos.reshape(-1)].view(1, S, 1, D)
            return rotate(q, cos, sin), rotate(k, cos, sin), v

        def attend(self, states, q, k_hm, v, mask):  # k_hm [1,KV,T,D], v [1,T,KV,D]
            S = q.shape[1]
            rep = nh // kvh
            kk = k_hm.repeat_interleave(rep, dim=1)
            vv = v.transpose(1, 2).repeat_interleave(rep, dim=1)
            scores = torch.matmul(q.transpose(1, 2), kk.transpose(2, 3)) * D ** -0.5 + mask
            out = torch.matmul(torch.softmax(scores, dim=-1), vv).transpose(1, 2).reshape(1, S, H)
            states = states + self.l.self_attn.o_proj(out)
            h = rms(states, self.l.post_attention_layernorm.weight, cfg.rms_norm_eps)
            return states + self.l.mlp.down_proj(nn.functional.silu(self.l.mlp.gate_proj(h)) * self.l.mlp.up_proj(h))

    class Block(Layer):
        def forward(self, states, pos, mask):
            q, k, v = self.qkv(states, pos)
            k_hm = k.transpose(1, 2)
            return self.attend(states, q, k_hm, v, mask), k_hm, v

    class BlockCache(Layer):
        def forward(self, states, pos, mask, hist_k, hist_v):
            q, k, v = self.qkv(states, pos)
            k_hm = k.transpose(1, 2)
            out = self.attend(states, q, torch.cat([hist_k, k_hm], dim=2), torch.cat([hist_v, v], dim=1), mask)
            return out, k_hm, v

    class Embedding(nn.Module):
        def forward(self, ids):
            return text.embed_tokens(ids)

    class LmHead(nn.Module):
        def forward(self, states):
            return head(rms(states, text.norm.weight, cfg.rms_norm_eps))

    class Greed(nn.Module):
        def forward(self, logits):
            return torch.topk(logits.float(), 1).indices.int()

    class Audio(nn.Module):
        def forward(self, mel, mask):
            h = nn.functional.gelu(tower.conv1(mel))
            h = nn.functional.gelu(tower.conv2(h)).permute(0, 2, 1) + tower.embed_positions.weight
            for layer in tower.layers:
                h = layer(h, mask)
                h = h[0] if isinstance(h, tuple) else h
            return tower.layer_norm(tower.avg_pooler(h.permute(0, 2, 1)).permute(0, 2, 1))

    class Projector(nn.Module):
        def forward(self, x):
            return projector(x)

    a = m.config.audio_config
    P, dm, n_mels, V = a.max_source_positions, a.d_model, a.num_mel_bins, cfg.vocab_size
    f32, i32 = torch.float32, torch.int32
    S = seqlen
    nets = {
        "embedding": (Embedding(), [torch.zeros(1, S, dtype=i32)], ["input_ids"], "--quant_output", False),
        "embedding_cache": (Embedding(), [torch.zeros(1, 1, dtype=i32)], ["input_ids"], "--quant_output", False),
        "lm_head": (LmHead(), [torch.zeros(1, 1, H)], ["hidden_states"], "--quant_input", False),
        "greed": (Greed(), [torch.zeros(1, 1, V)], ["m_logits"], "", False),
        "audio": (Audio(), [torch.zeros(1, n_mels, 2 * P), torch.zeros(1, 1, P, P)], ["mel", "mask"], "--quant_output",
                  False),
        "projector": (Projector(), [torch.zeros(1, P // 2, dm)], ["audio_features"], "--quant_input --quant_output",
                      False),
    }
    for i, layer in enumerate(text.layers):
        nets[f"block_{i}"] = (Block(layer), [torch.zeros(1, S, H), torch.zeros(1, S, dtype=i32),
                                             torch.zeros(1, 1, S, S)],
                              ["input_states", "position_ids", "attention_mask"], "--quant_input --quant_output", False)
        nets[f"block_cache_{i}"] = (BlockCache(layer), [torch.zeros(1, 1, H), torch.zeros(1, 1, dtype=i32),
                                                        torch.zeros(1, 1, 1, S + 1), torch.zeros(1, kvh, S, D),
                                                        torch.zeros(1, S, kvh, D)],
                                    ["input_states", "position_ids", "attention_mask", "history_k", "history_v"],
                                    "--quant_input --quant_output", True)
    return nets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("-s", "--seqlen", type=int, default=599)
    ap.add_argument("-q", "--quantize", default="F16", choices=["F16", "BF16", "W8F16", "W8BF16", "W4BF16"])
    ap.add_argument("--kernel-remove", action="store_true")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    if os.environ.get("TRANSCRIBE_BATCH_TPU_ENV") != "1":
        import tpu_mlir  # noqa: F401

        os.environ["TRANSCRIBE_BATCH_TPU_ENV"] = "1"
        os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])])
    import torch

    out = args.output.resolve()
    work = (args.work or out.with_suffix(".port-work")).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    nets = build_modules(args.model_dir.resolve(), args.seqlen)
    bmodels = []
    for name, (mod, inputs, names, quant, io_alone) in nets.items():
        d = work / name
        d.mkdir()
        with torch.no_grad():
            torch.onnx.export(mod, tuple(inputs), str(d / f"{name}.onnx"), input_names=names, opset_version=15,
                              do_constant_folding=True, dynamo=False)
        shapes = ",".join("[" + ",".join(str(s) for s in x.shape) + "]" for x in inputs)
        types = ",".join("INT32" if x.dtype == torch.int32 else "F32" for x in inputs)
        run = lambda cmd: subprocess.run(cmd, cwd=d, check=True, stdout=subprocess.DEVNULL)  # noqa: E731
        run(["model_transform.py", "--model_name", name, "--model_def", f"{name}.onnx", "--input_shapes", f"[{shapes}]",
             "--input_types", types, "--mlir", f"{name}.mlir"])
        q = "F16" if name == "greed" else args.quantize
        if name in ("audio", "projector", "embedding", "embedding_cache", "lm_head") and q.startswith("W"):
            q = "BF16" if "BF16" in q else "F16"
        cmd = ["model_deploy.py", "--mlir", f"{name}.mlir", "--quantize", q, "--chip", "bm1684x", "--model",
               f"{name}.bmodel", *quant.split()]
        if io_alone:
            cmd += ["--addr_mode", "io_alone"]
        run(cmd)
        bmodels.append(str(d / f"{name}.bmodel"))
        print(f"compiled {name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["model_tool", "--combine", *bmodels, "-o", str(out)], check=True, stdout=subprocess.DEVNULL)
    if args.kernel_remove:
        subprocess.run(["model_tool", "--kernel_remove", str(out)], check=True, stdout=subprocess.DEVNULL)
    print(subprocess.run(["model_tool", "--info", str(out)], check=True, capture_output=True, text=True).stdout)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
