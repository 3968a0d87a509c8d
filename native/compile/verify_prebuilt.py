#!/usr/bin/env python3
"""Drive a bmodel in the layout of Sophgo's prebuilt Qwen3-ASR bmodel (tpu-mlir's own `Qwen3AsrConverter`:
README §8) on the BM1684X simulator with a host loop, and compare with qwen-asr's reference.

A compile-time check like verify_bmodel.py (tpu-mlir's pyruntime, host round trips on every call; not meant to be
fast); the product runtime is the C++ one in native/. What the loop feeds the nets is what README §8 says a faithful
host loop must feed them, read from the nets themselves (no sidecar: Sophgo's bmodels have none):

- `audio` once per 100-frame chunk of the clip's features (the last chunk zero-padded), each launch's first
  conv(w) rows (13 for a whole chunk) spliced over the next audio pads of the prompt, in order;
- `embedding` over the prompt padded to the prefill length (the embedding net's input width = llm_convert's
  `--max_input_length`), `block_i` with positions 0..L−1 and a causal mask over the L real rows (0 visible, −9984
  hidden), each layer's prefill K/V rows copied into a SEQLEN-row history (SEQLEN = the decode nets' history width);
- decode: `embedding_cache`, `block_cache_i` at position p with mask slots 0..p−1 and the last slot visible, the new
  K/V written at row p; `lm_head` gives the id (TopK kind) or f32 logits (llm_convert `--do_sample`: argmax here).

    ~/.cache/transcribe-batch/tpu-mlir-venv/bin/python native/compile/verify_prebuilt.py \\
        tests/fixtures/tiny-qwen3-asr-prebuilt [--shared ../shared] [--clips all|whole|0,2] [--max-new N]

Prints, per clip: the `audio` net's rows against qwen-asr's encoder (this folder's one-chunk window, and the
released 8-chunk window), the greedy tokens against qwen-asr's at every step (first difference and its reference
margin), and the net launches. Exit status 1 if a whole-chunk clip's tokens differ.
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
MASK_HIDDEN = -9984.0  # tpu-mlir's LLM mask value (bf16 0xC61C; also what the f16 nets get)


def conv_rows(frames: int) -> int:
    """Rows three stride-2 convolutions (k3, p1) leave of `frames` frames: qwen-asr's per-chunk output length."""
    for _ in range(3):
        frames = (frames - 1) // 2 + 1
    return frames


def read_layout(rt) -> dict:
    """The prebuilt layout's limits and shapes, from the nets."""
    shape = lambda net, i, out=False: list((rt.nets[net].outputs if out else rt.nets[net].inputs)[i].data.shape)  # noqa: E731
    audio_in, audio_out = shape("audio", 0), shape("audio", 0, out=True)
    if len(rt.nets["audio"].inputs) != 1 or len(audio_in) != 4 or audio_in[:2] != [1, 1]:
        raise SystemExit(f"audio net input {audio_in}: not tpu-mlir's Qwen3AsrConverter layout ([1,1,mels,frames])")
    return {
        "max_input_length": shape("embedding", 0)[-1],
        "seqlen": shape("block_cache_0", 3)[1],
        "num_layers": sum(1 for n in rt.nets if n.startswith("block_") and not n.startswith("block_cache_")),
        "n_mels": audio_in[2], "chunk_frames": audio_in[3], "rows_per_chunk": audio_out[1],
        "k_head_major": False,
        "lm_head_ids": shape("lm_head", 0, out=True)[-1] == 1,
    }


def features(model_dir: Path, samples: np.ndarray) -> np.ndarray:
    """[n_mels, n] log-mel as qwen-asr's processor makes it (padding=True, truncation=False: all frames real)."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(model_dir)
    out = fe(samples, sampling_rate=16000, padding=True, truncation=False, return_attention_mask=True,
             return_tensors="np")
    n = int(out["attention_mask"].sum())
    return out["input_features"][0, :, :n].astype(np.float32)


def encode(rt, spec: dict, mel: np.ndarray) -> np.ndarray:
    """One `audio` launch per chunk; each chunk's conv(w) rows, concatenated: [audio tokens, hidden]."""
    c = spec["chunk_frames"]
    rows = []
    for start in range(0, mel.shape[1], c):
        w = min(c, mel.shape[1] - start)
        chunk = np.zeros((1, 1, spec["n_mels"], c), np.float32)
        chunk[0, 0, :, :w] = mel[:, start:start + w]
        out = rt.run("audio", chunk)[0].reshape(spec["rows_per_chunk"], -1)
        rows.append(out[:conv_rows(w)])
    return np.concatenate(rows)


def prefill(rt, spec: dict, input_ids: list[int], audio: np.ndarray, audio_token_id: int):
    """Splice, causal prefill over the padded input: (last prompt row's hidden [1, H], per-layer K/V histories
    [1, SEQLEN, KV, D] holding the prompt's rows)."""
    width, seq = spec["max_input_length"], spec["seqlen"]
    n = len(input_ids)
    if n > width:
        raise ValueError(f"prompt of {n} tokens > the prefill nets' {width}")
    ids = np.zeros((1, width), np.int32)
    ids[0, :n] = input_ids
    emb = rt.run("embedding", ids)[0]
    at = np.flatnonzero(np.asarray(input_ids) == audio_token_id)
    if at.size != audio.shape[0]:
        raise ValueError(f"{at.size} audio pads in the prompt, {audio.shape[0]} audio rows")
    emb[0, at] = audio
    pos = np.zeros((1, width), np.int32)
    pos[0, :n] = np.arange(n)
    mask = np.full((1, 1, width, width), MASK_HIDDEN, np.float32)
    for i in range(n):
        mask[0, 0, i, : i + 1] = 0.0
    ks, vs, h = [], [], emb
    for i in range(spec["num_layers"]):
        h, k, v = rt.run(f"block_{i}", h, pos, mask)
        hk = np.zeros((1, seq, *k.shape[2:]), np.float32)
        hv = np.zeros_like(hk)
        hk[0, :n], hv[0, :n] = k[0, :n], v[0, :n]
        ks.append(hk)
        vs.append(hv)
    return h[0, n - 1: n], ks, vs


def head(rt, spec: dict, last: np.ndarray) -> tuple[int, float | None]:
    """(token id, its log-softmax where the logits come back, else None)."""
    res = rt.run("lm_head", last)[0].reshape(-1)
    if spec["lm_head_ids"]:
        return int(res[0]), None
    res = res.astype(np.float64)
    top = int(np.argmax(res))
    return top, float(res[top] - res.max() - np.log(np.exp(res - res.max()).sum()))


def greedy(rt, spec: dict, input_ids: list[int], audio: np.ndarray, audio_token_id: int, max_new: int,
           stop: list[int]) -> list[int]:
    from verify_bmodel import decode_step

    last, ks, vs = prefill(rt, spec, input_ids, audio, audio_token_id)
    token, _ = head(rt, spec, last)
    out, length = [token], len(input_ids)
    while len(out) < max_new and token not in stop and length < spec["seqlen"]:
        token, _ = head(rt, spec, decode_step(rt, spec, token, length, ks, vs))
        length += 1
        out.append(token)
    return out


def first_diff(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("fixture", type=Path, help="folder with the bmodel, config.json and reference.json")
    ap.add_argument("--bmodel", type=Path, default=None, help="default: <fixture>/tiny-qwen3-asr-prebuilt.bmodel")
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="folder with preprocessor_config.json (default: the fixture's tiny-qwen3-asr sibling)")
    ap.add_argument("--shared", type=Path, default=HERE.parents[1].parent / "shared")
    ap.add_argument("--clips", default="all",
                    help="all, whole (the whole-chunk clips only) or reference clip indices (0,2)")
    ap.add_argument("--max-new", type=int, default=None, help="tokens per clip (default: the reference's)")
    args = ap.parse_args(argv)
    if os.environ.get("TRANSCRIBE_BATCH_TPU_ENV") != "1":
        import tpu_mlir  # noqa: F401  (sets LD_LIBRARY_PATH etc. for the restarted process)

        os.environ["TRANSCRIBE_BATCH_TPU_ENV"] = "1"
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])])
    sys.path.insert(0, str(HERE))
    from make_tiny_fixture import load_clip
    from verify_bmodel import Runner

    bmodel = args.bmodel or args.fixture / "tiny-qwen3-asr-prebuilt.bmodel"
    model_dir = args.model_dir or args.fixture.parent / "tiny-qwen3-asr"
    ref = json.loads((args.fixture / "reference.json").read_text())
    config = json.loads((args.fixture / "config.json").read_text())
    audio_token_id = int(config["thinker_config"]["audio_token_id"])
    t0 = time.monotonic()
    rt = Runner(bmodel)
    spec = read_layout(rt)
    print(f"layout: {json.dumps(spec)} [load {time.monotonic() - t0:.1f} s]")
    failures = 0
    picked = (None if args.clips in ("all", "whole") else {int(i) for i in args.clips.split(",")})
    for index, clip in enumerate(ref["clips"]):
        if (args.clips == "whole" and not clip["whole_chunks"]) or (picked is not None and index not in picked):
            continue
        t0 = time.monotonic()
        launches = rt.launches
        mel = features(model_dir, load_clip(args.shared, clip))
        if mel.shape[1] != clip["n_valid_frames"]:
            raise SystemExit(f"{clip['audio_filepath']}: {mel.shape[1]} frames, reference has {clip['n_valid_frames']}")
        audio = encode(rt, spec, mel)
        err = {key: float(np.abs(audio - np.asarray(clip[key])).max()) for key in ("audio_rows", "audio_rows_window800")}
        max_new = args.max_new or len(clip["tokens"])
        got = greedy(rt, spec, clip["input_ids"], audio, audio_token_id, max_new, ref["stop_token_ids"])
        want, want800 = clip["tokens"][:max_new], clip["tokens_window800"][:max_new]
        d, d800 = first_diff(got, want), first_diff(got, want800)
        if clip["whole_chunks"] and d is not None:
            failures += 1
        what = f"{clip['audio_filepath']} [{clip['offset']}, +{clip['duration']}] {clip['n_valid_frames']} frames"
        print(f"{what}: audio rows max |diff| vs qwen-asr {err['audio_rows']:.4f} (one-chunk window), "
              f"{err['audio_rows_window800']:.4f} (8-chunk window)")
        same = "EQUAL at every step" if d is None else f"first differ at step {d} (margin {clip['margins'][d]:.4f})"
        same800 = "equal" if d800 is None else f"differ from step {d800}"
        print(f"   tokens: {same} vs qwen-asr with the one-chunk window; {same800} vs the 8-chunk window   {got}  "
              f"[{rt.launches - launches} launches, {time.monotonic() - t0:.1f} s]")
    print(f"{rt.launches} net launches; {failures} whole-chunk clip(s) differ")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
