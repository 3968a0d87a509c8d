"""Host↔device traffic of the native BM1684X runtime against the existing port's design, and (on a card) its speed.

Measured: the runtime's own byte counters (transcribe_batch_native: prefill and decode phases of `generate`) on the
tiny Qwen2-Audio fixture (tests/fixtures/tiny-qwen2-audio) run on the cmodel simulator, for recordings whose prompts
differ in length. Computed for the same shapes: the existing port (Sophgo LLM-TPU models/Qwen2_Audio), whose runtime
copies every layer's K and V cache to the host after the prefill and, for every generated token, the whole history of
every layer back to the device (and the new K/V row up again). Then both formulas — ours checked against the counters
first — for the real Qwen2-Audio-7B shapes (32 layers, 32 KV heads × 128, SEQLEN 599 and 1024, fp16 and fp32).

With a real card (/dev/bm-sophon*) and a real bmodel (--bmodel, --model-dir) the same script reports TTFT and
decode tokens/s per recording; on the simulator those timings are printed but measure the simulator, not a card.

    make native && .venv/bin/python benchmarks/runtime.py              # simulator + tiny fixture, ≈ 1 min
    .venv/bin/python benchmarks/runtime.py --bmodel qwen2-audio.bmodel --model-dir qwen2-audio-7b-instruct \\
        --clips 001.wav,beckett.wav,two_cities.wav --max-new-tokens 128   # on a card
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURE = REPO / "tests" / "fixtures" / "tiny-qwen2-audio"
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


def ours_prefill(s: Shapes) -> tuple[int, int]:
    """(h2d, d2h) of our prefill: audio inputs, ids, positions, causal mask, the decode mask once; one token id up."""
    S = s.seqlen
    return s.audio_input_bytes + 4 * S + 4 * S + S * S * s.mask_bytes + (S + 1) * s.mask_bytes, 4


def ours_decode(steps: int, s: Shapes) -> tuple[int, int]:
    """(h2d, d2h) of `steps` decode steps: a position (4 B) and, after the first step, one mask slot go down; the
    chosen token id (4 B) comes up. KV stays on the device; the token goes back into embedding_cache d2d."""
    return 4 * steps + s.mask_bytes * max(0, steps - 1), 4 * steps


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
    audio = next(n for n in rt.nets if n["name"] == lay["audio_net"])
    audio_bytes = sum(int(np.prod(t["shape"])) * DTYPE_BYTES[t["dtype"]] for t in audio["inputs"])
    mel = next(t for t in audio["inputs"] if len(t["shape"]) == 3)
    frames = mel["shape"][-1]
    port_audio = int(np.prod(mel["shape"])) * DTYPE_BYTES[mel["dtype"]] + (frames // 2) ** 2 * 4
    return Shapes(name, lay["n_layers"], lay["kv_row_bytes"], lay["seqlen"], DTYPE_BYTES[lay["mask_dtype"]],
                  audio_bytes, port_audio)


def qwen2_audio_7b(seqlen: int, kv_bytes: int) -> Shapes:
    mel = 128 * 3000 * 4
    return Shapes(f"Qwen2-Audio-7B, SEQLEN {seqlen}, KV {'fp32' if kv_bytes == 4 else 'fp16'}", 32, 32 * 128 * kv_bytes,
                  seqlen, 2, mel + 1500 * 4, mel + 1500 * 1500 * 4)


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n:,.0f} B"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bmodel", type=Path, default=FIXTURE / "tiny-qwen2-audio.bmodel")
    ap.add_argument("--model-dir", type=Path, default=FIXTURE, help="tokenizer/configs for the front end")
    ap.add_argument("--audio-dir", type=Path, default=SHARED / "audio")
    ap.add_argument("--clips", default="001.wav,beckett.wav:2",
                    help="recordings in --audio-dir, NAME or NAME:SECONDS (the first SECONDS of it); give prompts of "
                         "different lengths (default 001.wav,beckett.wav:2)")
    ap.add_argument("--max-new-tokens", type=int, default=4, help="tokens to generate per clip (the simulator is slow)")
    ap.add_argument("--device", type=int, default=0)
    args = ap.parse_args()

    try:
        import transcribe_batch_native as tbn
    except ImportError as e:
        sys.exit(f"transcribe_batch_native is not installed ({e}); {BUILD_HINT}")
    if not args.bmodel.is_file():
        sys.exit(f"{args.bmodel}: bmodel not found (the tiny fixture is made by native/compile/make_tiny_fixture.py)")
    from transcribe_batch.workers.frontend import FrontEnd

    # The SDK (and the simulator) chat on stdout, also at exit: send fd 1 to stderr, print our tables to the real stdout.
    real_stdout = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = real_stdout
    cards = sorted(glob.glob("/dev/bm-sophon*"))
    on_card = bool(cards)
    rt = tbn.Runtime(str(args.bmodel), args.device)
    fe = FrontEnd(args.model_dir)
    shapes = shapes_of(rt, f"{args.bmodel.name} (measured)")
    runs = []
    for clip in [c.strip() for c in args.clips.split(",") if c.strip()]:
        name, _, seconds = clip.partition(":")
        row = {"id": name, "audio_filepath": str(args.audio_dir / name), "offset": 0.0,
               "duration": float(seconds) if seconds else None, "text": None, "prompt": None, "task": None,
               "language": None}
        req = fe.prepare(row)[0]  # the first piece: a window the bmodel takes
        before = rt.counters()
        out = rt.generate(req.features, int(req.feature_mask.sum()), list(req.prompt_ids), req.audio_token_id,
                          req.n_audio_tokens, [] if not on_card else list(req.stop_ids), args.max_new_tokens)
        total = {k: rt.counters()[k] - before[k] for k in before}
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
        steps = len(out["step_s"])
        pre, dec = out["prefill"], out["decode"]
        f_pre, f_dec = ours_prefill(shapes), ours_decode(steps, shapes)
        match = (pre["h2d_bytes"], pre["d2h_bytes"]) == f_pre and (dec["h2d_bytes"], dec["d2h_bytes"]) == f_dec
        match &= total["h2d_bytes"] == pre["h2d_bytes"] + dec["h2d_bytes"]
        all_match &= match
        p_pre, p_dec = port_prefill(shapes), port_decode(steps, shapes)
        ours_tok = (dec["h2d_bytes"] + dec["d2h_bytes"]) / max(1, steps)
        port_tok = (p_dec[0] + p_dec[1]) / max(1, steps)
        per_token.add((dec["h2d_bytes"] + shapes.mask_bytes) / max(1, steps))
        ratio = port_tok / ours_tok if ours_tok else float("nan")
        print(f"| {clip} | {out['prompt_len']} | {steps} | {fmt_bytes(pre['h2d_bytes'])} / {fmt_bytes(pre['d2h_bytes'])} | "
              f"{dec['h2d_bytes'] / max(1, steps):.1f} B / {dec['d2h_bytes'] / max(1, steps):.1f} B | "
              f"{'yes' if match else 'NO'} | {fmt_bytes(p_pre[0])} / {fmt_bytes(p_pre[1])} | "
              f"{fmt_bytes(p_dec[0] / max(1, steps))} / {fmt_bytes(p_dec[1] / max(1, steps))} | {ratio:,.0f}× |")
    same = len(per_token) == 1
    print(f"\nBytes per token are {'the same' if same else 'NOT the same'} for prompts of "
          f"{', '.join(str(o['prompt_len']) for _, _, o, _ in runs)} tokens (KV stays on the device; only a position, "
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
        steps = out["step_s"]
        rate = len(steps) / sum(steps) if steps else float("nan")
        ttfts.append(out["ttft_s"])
        rates.append(rate)
        print(f"| {clip} | {req.duration_s:.2f} | {out['encode_s']:.3f} | {out['prefill_s']:.3f} | {out['ttft_s']:.3f} | "
              f"{rate:.2f} | {len(out['tokens'])} |")

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
    print("\n" + " ".join(f"{k}={v}" for k, v in line.items()))


if __name__ == "__main__":
    main()
