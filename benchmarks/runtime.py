"""Host↔device traffic of the native BM1684X runtime against the existing port's design, and (on a card) its speed.

Measured: the runtime's own byte counters (transcribe_batch_native: prefill and decode phases of `generate`) on the
tiny Qwen2-Audio fixture (tests/fixtures/tiny-qwen2-audio) run on the cmodel simulator, for recordings whose prompts
differ in length. Computed for the same shapes: the existing port (Sophgo LLM-TPU models/Qwen2_Audio), whose runtime
copies every layer's K and V cache to the host after the prefill and, for every generated token, the whole history of
every layer back to the device (and the new K/V row up again). Then both formulas — ours checked against the counters
first — for the real Qwen2-Audio-7B shapes (32 layers, 32 KV heads × 128, SEQLEN 599 and 1024, fp16 and fp32).

Batched decode (--batched-bmodel, default the B=4 fixture tests/fixtures/tiny-qwen2-audio-b4): the same recordings,
repeated to fill the slots, through the runtime steps (start a request in a free slot, one step for all busy slots,
finish and refill), measured per B side by side with the B=1 runs above: net launches and host↔device bytes per
generated token, and on a card tokens/s and audio-seconds per card-second.

With a real card (/dev/bm-sophon*) and a real bmodel (--bmodel, --model-dir) the same script reports TTFT and
decode tokens/s per recording; on the simulator those timings are printed but measure the simulator, not a card.

    make native && .venv/bin/python benchmarks/runtime.py              # simulator + tiny fixtures, ≈ 2 min
    .venv/bin/python benchmarks/runtime.py --bmodel qwen2-audio.bmodel --model-dir qwen2-audio-7b-instruct \\
        --clips 001.wav,beckett.wav,two_cities.wav --max-new-tokens 128   # on a card
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"  # the recordings and the released Qwen2-Audio tokenizer the repository carries
FIXTURE = REPO / "tests" / "fixtures" / "tiny-qwen2-audio"
BATCHED_FIXTURE = REPO / "tests" / "fixtures" / "tiny-qwen2-audio-b4" / "tiny-qwen2-audio-b4.bmodel"
BUILD_HINT = ("build it with: make native   (= bash native/scripts/fetch_sim_sdk.sh $SIM_SDK && "
              "LIBSOPHON_ROOT=$SIM_SDK .venv/bin/pip install ./native)")
DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "INT32": 4, "UINT32": 4, "INT8": 1, "UINT8": 1, "INT16": 2, "UINT16": 2}


@dataclass(frozen=True)
class Shapes:
    """What the traffic depends on."""

    name: str
    layers: int
    kv_row_bytes: int  # one position's K (or V) in one layer: kv_heads × head_dim × dtype bytes
    seqlen: int
    mask_bytes: int  # bytes of one attention-mask element
    audio_input_bytes: int  # the audio net's inputs (log-mel window + our key mask)
    port_audio_input_bytes: int  # the port's audio net inputs (log-mel + a full [frames/2]² mask)
    up_bytes: int = 8  # per token up: the id (4 B) + its f32 log-probability (4 B) from a logprob head; 4 without


def ours_prefill(s: Shapes) -> tuple[int, int]:
    """(h2d, d2h) of our prefill: audio inputs, ids, positions, causal mask, the decode mask once; one token id (+ its
    log-probability) up."""
    S = s.seqlen
    return s.audio_input_bytes + 4 * S + 4 * S + S * S * s.mask_bytes + (S + 1) * s.mask_bytes, s.up_bytes


def ours_decode(steps: int, s: Shapes) -> tuple[int, int]:
    """(h2d, d2h) of `steps` decode steps: a position (4 B) and, after the first step, one mask slot go down; the
    chosen token id (4 B) and its log-probability (4 B) come up. KV stays on the device; the token goes back into
    embedding_cache d2d."""
    return 4 * steps + s.mask_bytes * max(0, steps - 1), s.up_bytes * steps


def port_prefill(s: Shapes) -> tuple[int, int]:
    """The port's prefill: the same prompt inputs (with its full audio mask), then every layer's K and V to the host."""
    S = s.seqlen
    h2d = s.port_audio_input_bytes + 4 * S + 4 * S + S * S * s.mask_bytes
    return h2d, 2 * s.layers * S * s.kv_row_bytes + 4


def port_decode(steps: int, s: Shapes) -> tuple[int, int]:
    """Per step the port sends every layer's whole K and V history (SEQLEN rows) down with the token, position and
    mask, and brings the new K/V row of every layer and the token back up."""
    S = s.seqlen
    h2d = steps * (2 * s.layers * S * s.kv_row_bytes + 4 + 4 + (S + 1) * s.mask_bytes)
    return h2d, steps * (2 * s.layers * s.kv_row_bytes + 4)


def shapes_of(rt, name: str) -> Shapes:
    lay = rt.layout
    audio = next(n for n in rt.nets if n.name == lay.audio_net)
    audio_bytes = sum(int(np.prod(t.shape)) * DTYPE_BYTES[t.dtype] for t in audio.inputs)
    mel = next(t for t in audio.inputs if len(t.shape) == 3)
    frames = mel.shape[-1]
    port_audio = int(np.prod(mel.shape)) * DTYPE_BYTES[mel.dtype] + (frames // 2) ** 2 * 4
    return Shapes(name, lay.n_layers, lay.kv_row_bytes, lay.seqlen, DTYPE_BYTES[lay.mask_dtype],
                  audio_bytes, port_audio, 8 if lay.token_logprob == "head" else 4)


def qwen2_audio_7b(seqlen: int, kv_bytes: int) -> Shapes:
    mel = 128 * 3000 * 4
    return Shapes(f"Qwen2-Audio-7B, SEQLEN {seqlen}, KV {'fp32' if kv_bytes == 4 else 'fp16'}", 32, 32 * 128 * kv_bytes,
                  seqlen, 2, mel + 1500 * 4, mel + 1500 * 1500 * 4)


def run_slots(rt, audio_of, requests: list, max_new_tokens: int, stop: bool) -> dict:
    """All requests through the runtime's slots (refilled as answers finish); counters and wall time of the run."""
    before = rt.counters()
    pending = list(requests)
    busy: dict[int, object] = {}
    outs, steps, decode_launches = [], 0, 0
    t0 = time.perf_counter()
    while pending or busy:
        while pending and rt.free_slots():
            req = pending.pop(0)
            slot = rt.start(req.features, audio_of(req), list(req.prompt_ids), req.audio_token_id,
                            list(req.stop_ids) if stop else [], max_new_tokens)
            busy[slot] = req
            if rt.state(slot) != "decoding":
                busy.pop(slot)
                outs.append(rt.finish(slot))
        if busy:
            c = rt.counters().launches
            done = rt.step()
            decode_launches += rt.counters().launches - c
            steps += 1
            for slot in done:
                busy.pop(slot)
                outs.append(rt.finish(slot))
    wall = time.perf_counter() - t0
    total = rt.counters() - before
    decode_tokens = sum(len(o.step_s) for o in outs)  # tokens that came from decode steps (not the prefill)
    return {"outs": outs, "steps": steps, "decode_launches": decode_launches, "total": total, "wall_s": wall,
            "decode_tokens": decode_tokens, "tokens": sum(len(o.tokens) for o in outs),
            "decode_h2d": sum(o.decode.h2d_bytes for o in outs),
            "decode_d2h": sum(o.decode.d2h_bytes for o in outs),
            "audio_s": sum(r.duration_s for r in requests)}


# ---- PROJECTION (not measured): roofline of batched decode on one BM1684X, per model family ----------------------
BM1684X_BYTES_PER_S = 64e9  # LPDDR4X bandwidth
BM1684X_FLOPS = 16e12       # fp16/bf16 peak (32 TOPS int8); w4/w8 weights are dequantized to bf16 for the matmuls


@dataclass(frozen=True)
class Model:
    """A decoder's shapes from its published config.json, plus its audio encoder (params, rows per request)."""

    name: str = "Qwen2-Audio-7B"
    layers: int = 32
    hidden: int = 4096
    q_dim: int = 4096       # query heads x head_dim (Qwen3-0.6B: 16 x 128 = 2048 > hidden 1024)
    intermediate: int = 11008
    kv_dim: int = 32 * 128  # 32 KV heads (no GQA) x head_dim 128
    vocab: int = 156032
    seqlen: int = 1024      # static nets attend over every history slot, masked or not
    audio_params: float = 0.64e9  # encoder weights: read once per request (bf16), run over audio_positions
    audio_positions: int = 1500   # encoder positions per request (Qwen2-Audio: the 30 s window, whatever the clip)
    audio_net_bytes: float = 1.31e9  # the encoder as one bf16 net (measured compile, native/compile/README.md)
    tied: bool = False  # embedding = lm_head (one bf16 copy in the bmodel: convert.py merges them)

    @property
    def layer_params(self) -> int:
        return 2 * self.hidden * self.q_dim + 2 * self.hidden * self.kv_dim + 3 * self.hidden * self.intermediate

    def weight_bytes(self, bits: float) -> float:
        """Bytes read per decode step: the text layers at `bits` per weight (incl. group scales) + the bf16 lm_head
        (our converter keeps it in half precision; the embedding is a one-row gather)."""
        return self.layers * self.layer_params * bits / 8 + self.vocab * self.hidden * 2

    @property
    def kv_bytes_per_row(self) -> float:
        """K and V history of every layer, bf16, all SEQLEN slots: read once per step per row."""
        return 2 * self.layers * self.seqlen * self.kv_dim * 2

    @property
    def flops_per_row(self) -> float:
        """Matmul FLOPs of one row's step: 2 per weight + QK^T and PV over SEQLEN."""
        return 2 * (self.layers * self.layer_params + self.vocab * self.hidden) + 4 * self.layers * self.seqlen * self.q_dim


Model7B = Model  # the defaults are Qwen2-Audio-7B's


def qwen3_asr(size: str, audio_s: float = 7.3) -> Model:
    """Qwen3-ASR-1.7B / -0.6B: Qwen3 decoders (28 layers, 8 KV heads x 128, tied 151936-row embedding) and the AuT
    encoder (1.7B: 24 layers, d_model 1024, ffn 4096; 0.6B: 18 layers, 896, 3584), which runs over 13 rows per second of
    the clip only (one launch per 4 s window), not a fixed 30 s window."""
    rows = int(round(13 * audio_s))
    if size == "1.7B":
        enc = 24 * (4 * 1024**2 + 2 * 1024 * 4096)
        return Model("Qwen3-ASR-1.7B", 28, 2048, 2048, 6144, 8 * 128, 151936, audio_params=enc,
                     audio_positions=rows, audio_net_bytes=2 * enc, tied=True)
    enc = 18 * (4 * 896**2 + 2 * 896 * 3584)
    return Model("Qwen3-ASR-0.6B", 28, 1024, 2048, 3072, 8 * 128, 151936, audio_params=enc, audio_positions=rows,
                 audio_net_bytes=2 * enc, tied=True)


def roofline_step_s(m: Model, bits: float, batch: int) -> tuple[float, float, float]:
    """(memory s, compute s, step s = the larger) for one decode step of `batch` rows."""
    mem = (m.weight_bytes(bits) + batch * m.kv_bytes_per_row) / BM1684X_BYTES_PER_S
    comp = batch * m.flops_per_row / BM1684X_FLOPS
    return mem, comp, max(mem, comp)


def prefill_s(m: Model) -> float:
    """Per request, not batched: audio encoder over its positions + a SEQLEN-wide prefill, at peak FLOPs (a lower
    bound: real utilisation is lower)."""
    text = 2 * (m.layers * m.layer_params) * m.seqlen + 4 * m.layers * m.seqlen * m.seqlen * m.q_dim
    audio = 2 * m.audio_params * m.audio_positions
    return (text + audio) / BM1684X_FLOPS


def print_projection(batches=(1, 2, 4, 8, 16), tokens_per_request: float = 25.0, audio_s: float = 7.3) -> dict:
    out = {}
    for m, prefix in ((Model(), "proj"), (qwen3_asr("1.7B", audio_s), "proj_q3_1.7b"),
                      (qwen3_asr("0.6B", audio_s), "proj_q3_0.6b")):
        out.update(print_model_projection(m, prefix, batches, tokens_per_request, audio_s))
    return out


def print_model_projection(m: Model, prefix: str, batches, tokens_per_request: float, audio_s: float) -> dict:
    pre = prefill_s(m)
    print(f"\n## PROJECTION (roofline, not measured): {m.name} decode on one BM1684X\n")
    print(f"Per step: weights read once for all rows + each row's K/V history ({fmt_bytes(m.kv_bytes_per_row)} at "
          f"SEQLEN {m.seqlen}); {m.flops_per_row / 1e9:.1f} GFLOP per row; {BM1684X_BYTES_PER_S / 1e9:.0f} GB/s, "
          f"{BM1684X_FLOPS / 1e12:.0f} TFLOPS. Per request a prefill + audio encode of ≥ {pre:.2f} s (peak FLOPs). "
          f"A request: {audio_s} s of audio, {tokens_per_request:.0f} generated tokens (LibriSpeech-like).\n")
    print("| weights | B | bytes per step | memory ms | compute ms | step ms | tokens/s | × B=1 | "
          "audio-h per card-h | device memory (weights + audio net + K/V) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = {}
    for name, bits in (("w4bf16", 4.25), ("w8bf16", 8.25)):  # + a bf16 scale per 64-weight group
        base = None
        for b in batches:
            mem, comp, step = roofline_step_s(m, bits, b)
            rate = b / step
            base = base or rate
            per_request = pre + tokens_per_request * step / b  # slots full: a step serves b requests
            audio_h = audio_s / per_request
            out[f"{prefix}_{name}_b{b}_tokens_per_s"] = f"{rate:.1f}"
            print(f"| {name} | {b} | {fmt_bytes(m.weight_bytes(bits) + b * m.kv_bytes_per_row)} | {mem * 1e3:.1f} | "
                  f"{comp * 1e3:.1f} | {step * 1e3:.1f} | {rate:.1f} | {rate / base:.2f} | {audio_h:.1f} | "
                  f"{fmt_bytes(m.weight_bytes(bits) + (0 if m.tied else m.vocab * m.hidden * 2) + m.audio_net_bytes + b * m.kv_bytes_per_row)} |")
    return out


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bmodel", type=Path, default=FIXTURE / "tiny-qwen2-audio.bmodel")
    ap.add_argument("--model-dir", type=Path, default=FIXTURE, help="tokenizer/configs for the front end")
    ap.add_argument("--audio-dir", type=Path, default=DATA / "audio")
    ap.add_argument("--clips", default="001.wav,beckett.wav:2",
                    help="recordings in --audio-dir, NAME or NAME:SECONDS (the first SECONDS of it); give prompts of "
                         "different lengths (default 001.wav,beckett.wav:2)")
    ap.add_argument("--max-new-tokens", type=int, default=4, help="tokens to generate per clip (the simulator is slow)")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--batched-bmodel", type=Path, default=BATCHED_FIXTURE,
                    help="a bmodel compiled with convert.py --batch B, run with the same clips side by side ('' to skip)")
    ap.add_argument("--projection-only", action="store_true",
                    help="print the roofline PROJECTION for Qwen2-Audio-7B and Qwen3-ASR-1.7B/0.6B on BM1684X and exit "
                         "(no runtime needed)")
    ap.add_argument("--requests", type=int, default=0,
                    help="requests in the batched comparison (default: the clips repeated to B + 1)")
    args = ap.parse_args()
    if args.projection_only:
        figures = print_projection()
        print(" ".join(f"{k}={v}" for k, v in figures.items()))
        return

    try:
        import transcribe_batch_native as tbn
    except ImportError as e:
        sys.exit(f"transcribe_batch_native is not installed ({e}); {BUILD_HINT}")
    if not args.bmodel.is_file():
        sys.exit(f"{args.bmodel}: bmodel not found (the tiny fixture is made by native/compile/make_tiny_fixture.py)")
    from transcribe_batch.manifests.row import ManifestRow
    from transcribe_batch.pipeline.config import worker_config
    from transcribe_batch.workers.engines.bm1684x import native_audio
    from transcribe_batch.workers.frontend import FrontEnd

    # The SDK (and the simulator) chat on stdout, also at exit: send fd 1 to stderr, print our tables to the real stdout.
    real_stdout = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = real_stdout
    cards = sorted(glob.glob("/dev/bm-sophon*"))
    on_card = bool(cards)
    rt = tbn.Runtime(str(args.bmodel), args.device)
    fe = FrontEnd.for_worker(worker_config(engine="simulated", model_dir=args.model_dir))  # the run defaults
    shapes = shapes_of(rt, f"{args.bmodel.name} (measured)")

    def audio_of(req):  # the model family's chunks of the request's valid frames, as the engine passes them
        return native_audio(tbn, fe.family, int(req.feature_mask.sum()))

    runs = []
    for clip in [c.strip() for c in args.clips.split(",") if c.strip()]:
        name, _, seconds = clip.partition(":")
        row = ManifestRow(id=name, audio_filepath=str(args.audio_dir / name),
                          duration=float(seconds) if seconds else None)
        req = fe.prepare(row)[0]  # the first piece: a window the bmodel takes
        before = rt.counters()
        out = rt.generate(req.features, audio_of(req), list(req.prompt_ids), req.audio_token_id,
                          [] if not on_card else list(req.stop_ids), args.max_new_tokens)
        total = rt.counters() - before
        runs.append((clip, req, out, total))

    print(f"\n## Host↔device traffic — {args.bmodel.name}: {shapes.layers} layers, SEQLEN {shapes.seqlen}, "
          f"K/V row {shapes.kv_row_bytes} B; {'card ' + cards[0] if on_card else 'cmodel simulator'}\n")
    print("| recording | prompt tokens | decode steps | ours prefill h2d / d2h | ours per token h2d / d2h | "
          "formula matches counters | port prefill h2d / d2h | port per token h2d / d2h | port ÷ ours per token |")
    print("|---|---:|---:|---:|---:|:---:|---:|---:|---:|")
    per_token = set()
    ratio = 0.0
    all_match = True
    for clip, req, out, total in runs:
        steps = len(out.step_s)
        pre, dec = out.prefill, out.decode
        f_pre, f_dec = ours_prefill(shapes), ours_decode(steps, shapes)
        match = (pre.h2d_bytes, pre.d2h_bytes) == f_pre and (dec.h2d_bytes, dec.d2h_bytes) == f_dec
        match &= total.h2d_bytes == pre.h2d_bytes + dec.h2d_bytes
        all_match &= match
        p_pre, p_dec = port_prefill(shapes), port_decode(steps, shapes)
        ours_tok = (dec.h2d_bytes + dec.d2h_bytes) / max(1, steps)
        port_tok = (p_dec[0] + p_dec[1]) / max(1, steps)
        per_token.add((dec.h2d_bytes + shapes.mask_bytes) / max(1, steps))
        ratio = port_tok / ours_tok if ours_tok else float("nan")
        print(f"| {clip} | {out.prompt_len} | {steps} | {fmt_bytes(pre.h2d_bytes)} / {fmt_bytes(pre.d2h_bytes)} | "
              f"{dec.h2d_bytes / max(1, steps):.1f} B / {dec.d2h_bytes / max(1, steps):.1f} B | "
              f"{'yes' if match else 'NO'} | {fmt_bytes(p_pre[0])} / {fmt_bytes(p_pre[1])} | "
              f"{fmt_bytes(p_dec[0] / max(1, steps))} / {fmt_bytes(p_dec[1] / max(1, steps))} | {ratio:,.0f}× |")
    same = len(per_token) == 1
    print(f"\nBytes per token are {'the same' if same else 'NOT the same'} for prompts of "
          f"{', '.join(str(o.prompt_len) for _, _, o, _ in runs)} tokens (KV stays on the device; only a position, "
          "one mask slot and the token id cross per step).")

    print("\n## How the traffic scales (ours: the formula above, checked against the counters; port: its design)\n")
    print("| shapes | layers | SEQLEN | K/V row | ours per token | port per token | ours prefill | port prefill |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    table = [shapes]
    for layers in (8, 32):  # the fixture's geometry with more layers: only the port's traffic grows
        table.append(Shapes(f"fixture geometry, {layers} layers", layers, shapes.kv_row_bytes, shapes.seqlen,
                            shapes.mask_bytes, shapes.audio_input_bytes, shapes.port_audio_input_bytes))
    big = [qwen2_audio_7b(599, 2), qwen2_audio_7b(599, 4), qwen2_audio_7b(1024, 2), qwen2_audio_7b(1024, 4)]
    for s in table + big:
        o_tok, p_tok = sum(ours_decode(101, s)) / 101, sum(port_decode(101, s)) / 101
        print(f"| {s.name} | {s.layers} | {s.seqlen} | {s.kv_row_bytes:,} B | {o_tok:.1f} B | {fmt_bytes(p_tok)} | "
              f"{fmt_bytes(sum(ours_prefill(s)))} | {fmt_bytes(sum(port_prefill(s)))} |")

    print("\n## Timings" + (" (card)" if on_card else " (simulator: these measure the cmodel simulator, not a card)") + "\n")
    print("| recording | audio s | encode s | prefill s | TTFT s | decode tokens/s | tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ttfts, rates = [], []
    for clip, req, out, _ in runs:
        steps = list(out.step_s)
        rate = len(steps) / sum(steps) if steps else float("nan")
        ttfts.append(out.ttft_s)
        rates.append(rate)
        print(f"| {clip} | {req.duration_s:.2f} | {out.encode_s:.3f} | {out.prefill_s:.3f} | {out.ttft_s:.3f} | "
              f"{rate:.2f} | {len(out.tokens)} |")

    batched = {}
    if str(args.batched_bmodel) not in ("", ".") and args.batched_bmodel.is_file():
        batched = compare_batches(tbn, args, rt, audio_of, [req for _, req, _, _ in runs], on_card)

    s599 = qwen2_audio_7b(599, 4)
    line = {
        "bytes_per_token_ours": f"{sum(ours_decode(101, shapes)) / 101:.1f}",
        "bytes_per_token_port": f"{sum(port_decode(101, shapes)) / 101:.0f}",
        "port_over_ours_per_token": f"{ratio:.0f}",
        "counters_match_formula": str(all_match).lower(),
        "constant_in_prompt_length": str(same).lower(),
        "bytes_per_token_ours_7b": f"{sum(ours_decode(101, s599)) / 101:.1f}",
        "bytes_per_token_port_7b_seq599_fp32": f"{sum(port_decode(101, s599)) / 101:.0f}",
    }
    if on_card:
        line.update(ttft_s=f"{float(np.mean(ttfts)):.3f}", tokens_per_s=f"{float(np.nanmean(rates)):.2f}")
    line.update(batched)
    print_projection()
    print("\n" + " ".join(f"{k}={v}" for k, v in line.items()))


def compare_batches(tbn, args, rt1, audio_of, reqs: list, on_card: bool) -> dict:
    """The same requests through the B=1 runtime and the batched one, one after the other in this process."""
    rtb = tbn.Runtime(str(args.batched_bmodel), args.device)
    B = rtb.batch
    n = args.requests or B + 1  # one refill
    work = [reqs[i % len(reqs)] for i in range(n)]
    print(f"\n## Batched decode — {args.batched_bmodel.name} (B={B}) vs {args.bmodel.name} (B=1): {n} requests, "
          f"{args.max_new_tokens} tokens each, slots refilled as answers finish\n")
    print("| B | decode steps | generated tokens (decode) | net launches per decode token | h2d B per decode token | "
          "d2h B per decode token | wall s | tokens/s | audio s per device s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    figures = {}
    for b, rt in ((1, rt1), (B, rtb)):
        r = run_slots(rt, audio_of, work, args.max_new_tokens, stop=on_card)
        dt = max(1, r["decode_tokens"])
        per_launch = r["decode_launches"] / dt
        rate = r["tokens"] / r["wall_s"]
        print(f"| {b} | {r['steps']} | {r['decode_tokens']} | {per_launch:.2f} | {r['decode_h2d'] / dt:.1f} | "
              f"{r['decode_d2h'] / dt:.1f} | {r['wall_s']:.1f} | {rate:.2f} | {r['audio_s'] / r['wall_s']:.3f} |")
        figures[f"launches_per_token_b{b}"] = f"{per_launch:.2f}"
        figures[f"bytes_per_token_b{b}"] = f"{(r['decode_h2d'] + r['decode_d2h']) / dt:.1f}"
        if on_card:
            figures[f"tokens_per_s_b{b}"] = f"{rate:.2f}"
            figures[f"audio_s_per_card_s_b{b}"] = f"{r['audio_s'] / r['wall_s']:.3f}"
    print(f"\nLaunches per generated token fall by about B (every decode net serves all busy slots in one launch); "
          f"bytes per token stay those of one slot. Wall time and tokens/s here "
          f"{'are the card' if on_card else 'measure the cmodel simulator (its cost grows with B), not a card'}.")
    return figures


if __name__ == "__main__":
    main()
