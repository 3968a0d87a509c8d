#!/usr/bin/env python3
"""Check a compiled Qwen2-Audio bmodel against the fixture's HF reference on the BM1684X simulator.

A compile-time check, like model_deploy's own validation: it drives the nets one by one through tpu-mlir's
pyruntime (host round trips on every call; nothing here is meant to be fast) and compares the greedy tokens with
reference.json. The product runtime is the C++ one in native/.

    ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python native/compile/verify_bmodel.py tests/fixtures/tiny-qwen2-audio
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MASK_HIDDEN = -9984.0  # bf16 0xC61C, tpu-mlir's LLM mask value


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (round to nearest even)."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


class Runner:
    def __init__(self, bmodel: Path):
        sys.path.insert(0, os.path.join(os.environ["TPUC_ROOT"], "python", "tools"))
        from model_runner import bind_cmodel_so, link_bmlib_so, link_cmodel_so

        link_cmodel_so("BM1684X", False)
        link_bmlib_so("BM1684X")
        import pyruntime_bm

        bind_cmodel_so("BM1684X", False)
        self.model = pyruntime_bm.Model(str(bmodel), 0, "")
        self.nets = {name: self.model.Net(name) for name in self.model.networks}
        self.launches = 0

    def run(self, name: str, *inputs: np.ndarray) -> list[np.ndarray]:
        net = self.nets[name]
        for t, x in zip(net.inputs, inputs):
            if t.dtype == "bf16":
                t.data[:] = to_bf16(x).reshape(t.data.shape)
            else:
                t.data[:] = np.asarray(x, dtype=t.data.dtype).reshape(t.data.shape)
        net.forward()
        self.launches += 1
        return [from_bf16(t.data) if t.dtype == "bf16" else np.array(t.data) for t in net.outputs]


def features(model_dir: Path, samples: np.ndarray):
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(model_dir)
    out = fe(samples, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="np")
    return out["input_features"].astype(np.float32), int(out["attention_mask"].sum())


def layout(rt: Runner, config: dict) -> dict:
    """What the loop needs, read from the nets themselves (works for our layout and the public port's)."""
    shape = lambda net, i, out=False: list((rt.nets[net].outputs if out else rt.nets[net].inputs)[i].data.shape)  # noqa: E731
    seq = shape("embedding", 0)[-1]
    layers = sum(1 for n in rt.nets if n.startswith("block_") and not n.startswith("block_cache_"))
    k_shape = shape("block_0", 1, out=True)
    return {
        "seqlen": seq,
        "num_layers": layers,
        "k_head_major": k_shape[1] != seq,  # [1,KV,SEQ,D] (port) vs [1,SEQ,KV,D] (tpu-mlir)
        "audio_positions": shape("audio", 1)[-1],
        "audio_mask_shape": shape("audio", 1),
        "projector": "projector" in rt.nets,
        "audio_token_index": config.get("audio_token_index", config.get("audio_token_id")),
    }


def prefill(rt: Runner, spec: dict, input_ids: list[int], mel: np.ndarray, n_valid: int,
            mask_value: float = -10000.0) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Audio net (+ projector), splice, causal prefill: (the last prompt row's hidden state [1, hidden], per layer
    K and V history filled for the prompt's positions)."""
    seq, layers = spec["seqlen"], spec["num_layers"]
    conv_len = (n_valid - 1) // 2 + 1
    key_mask = np.zeros((spec["audio_positions"],), np.float32)
    key_mask[conv_len:] = mask_value
    key_mask = np.broadcast_to(key_mask, spec["audio_mask_shape"])
    audio = rt.run("audio", mel, key_mask)[0]
    if spec["projector"]:
        audio = rt.run("projector", audio)[0]
    audio = audio.reshape(-1, audio.shape[-1])  # [rows, hidden]

    n = len(input_ids)
    ids = np.zeros((1, seq), np.int32)
    ids[0, :n] = input_ids
    emb = rt.run("embedding", ids)[0]
    at = np.flatnonzero(np.asarray(input_ids) == spec["audio_token_index"])
    emb[0, at] = audio[: at.size]
    pos = np.arange(seq, dtype=np.int32)[None]
    mask = np.full((1, 1, seq, seq), MASK_HIDDEN, np.float32)
    for i in range(n):
        mask[0, 0, i, : i + 1] = 0.0
    ks, vs = [], []
    h = emb
    for i in range(layers):
        h, k, v = rt.run(f"block_{i}", h, pos, mask)
        ks.append(k)
        vs.append(v)
    return h[0, n - 1 : n], ks, vs


def decode_step(rt: Runner, spec: dict, token: int, length: int, ks: list[np.ndarray],
                vs: list[np.ndarray]) -> np.ndarray:
    """One token through embedding_cache and the block_cache nets at position `length` (its K/V written into the
    history); returns its hidden state [1, hidden]."""
    seq = spec["seqlen"]
    h = rt.run("embedding_cache", np.array([[token]], np.int32))[0]
    dmask = np.full((1, 1, 1, seq + 1), MASK_HIDDEN, np.float32)
    dmask[..., :length] = 0.0
    dmask[..., seq] = 0.0
    for i in range(spec["num_layers"]):
        h, k, v = rt.run(f"block_cache_{i}", h, np.array([[length]], np.int32), dmask, ks[i], vs[i])
        if spec["k_head_major"]:
            ks[i][0, :, length] = k[0, :, 0]
        else:
            ks[i][0, length] = k[0, 0]
        vs[i][0, length] = v[0, 0]
    return h.reshape(1, -1)


def greedy(rt: Runner, spec: dict, input_ids: list[int], mel: np.ndarray, n_valid: int, max_new: int,
           stop: list[int], mask_value: float = -10000.0) -> list[int]:
    last, ks, vs = prefill(rt, spec, input_ids, mel, n_valid, mask_value)
    token = head(rt, last)
    out = [token]
    length = len(input_ids)
    while len(out) < max_new and token not in stop and length < spec["seqlen"]:
        token = head(rt, decode_step(rt, spec, token, length, ks, vs))
        length += 1
        out.append(token)
    return out


def head(rt: Runner, last: np.ndarray) -> int:
    """lm_head's token id (greedy kind), else the argmax of its scores."""
    res = rt.run("lm_head", last)[0]
    if res.size == 1:
        return int(res.reshape(-1)[0])
    return int(np.argmax(res.reshape(-1)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", type=Path, help="fixture folder with the bmodel, its sidecar and reference.json")
    ap.add_argument("--bmodel", type=Path, default=None, help="default: the sidecar-described bmodel in model_dir")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2].parent / "shared")
    args = ap.parse_args(argv)
    if os.environ.get("TRANSCRIBE_BATCH_TPU_ENV") != "1":
        import tpu_mlir  # noqa: F401  (sets LD_LIBRARY_PATH etc. for the restarted process)

        os.environ["TRANSCRIBE_BATCH_TPU_ENV"] = "1"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])])
    sys.path.insert(0, str(HERE))
    import sidecar
    from make_tiny_fixture import load_clip

    bmodel = args.bmodel or next(args.model_dir.glob("*.bmodel"))
    side = sidecar.read_sidecar(bmodel) if sidecar.sidecar_path(bmodel).exists() else None
    ref = json.loads((args.model_dir / "reference.json").read_text())
    rt = Runner(bmodel)
    spec = layout(rt, json.loads((args.model_dir / "config.json").read_text()))
    if side:
        assert (spec["seqlen"], spec["num_layers"]) == (side["seqlen"], side["num_layers"]), "sidecar disagrees"
    mask_value = side["audio_mask_value"] if side else -10000.0
    failures = 0
    for clip in ref["clips"]:
        t0 = time.monotonic()
        mel, n_valid = features(args.model_dir, load_clip(args.shared, clip))
        if n_valid != clip["n_valid_frames"]:
            raise SystemExit(f"{clip['audio_filepath']}: {n_valid} valid frames, reference has {clip['n_valid_frames']}")
        got = greedy(rt, spec, clip["input_ids"], mel, n_valid, len(clip["tokens"]), ref["stop_token_ids"],
                     mask_value)
        want = clip["tokens"]
        first_diff = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        ok = got == want
        failures += not ok
        note = "" if ok else (f" FIRST DIFF at step {first_diff} (reference margin "
                              f"{clip['steps'][first_diff]['margin']:.4f})")
        print(f"{clip['audio_filepath']}: {'OK' if ok else 'MISMATCH'} {got} vs reference {want}{note} "
              f"[{time.monotonic() - t0:.1f} s]")
    print(f"{rt.launches} net launches; {failures} clip(s) differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
