#!/usr/bin/env bash
# The demo job, end to end on this machine (no card, no GPU needed):
#   1. speak our own sentences with flite into demo/audio/ (the manifest that ships refers to these files),
#   2. run the real bm1684x engine - the C++ runtime on the BM1684X cmodel simulator - with the tiny
#      random-weight Qwen2-Audio fixture on two of the utterances (demo/simulator.jsonl; the simulator takes
#      ~1 s per net launch; the answers are nonsense by design: random weights, real code path),
#   3. run the whole manifest through the simulated engine (Qwen2-Audio's 30 s window, the port's cost model,
#      injected errors and actor crashes that are retried),
#   4. the same two utterances through the bm1684x engine with the tiny random Qwen3-ASR fixture (the second model
#      family: its chunked audio net on the simulator),
#   5. score the runs side by side and write an HTML report (with confidence calibration),
#   6. export the simulated run's confident transcripts as a NeMo training manifest,
#   7. long-form labeling: a 3-minute recording made from the demo's sentences with pauses and long silences goes
#      manifest dir -> run (4 devices, 60 s ranges, the Silero VAD where installed) -> export --segments (one NeMo
#      training row per segment, with its offset and duration in the file). The simulated engine answers each piece
#      with its share of a fixed text (--sim-text: the sentences' first 120 words): the point is the cutting, the ranges and
#      the export.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
venv="${VENV:-$repo/.venv}"
tb="$venv/bin/transcribe-batch"
runs="${RUNS:-$repo/runs}"
fixture="$repo/tests/fixtures/tiny-qwen2-audio"
q3_fixture="$repo/tests/fixtures/tiny-qwen3-asr"

mkdir -p "$here/audio"
while IFS=$'\t' read -r id voice text; do
  [[ -z "$id" || "$id" == \#* ]] && continue
  [[ -s "$here/audio/$id.wav" ]] || flite -voice "$voice" -t "$text" -o "$here/audio/$id.wav"
done < "$here/sentences.tsv"

"$tb" manifest validate "$here/manifest.jsonl"

"$tb" run "$here/simulator.jsonl" -o "$runs/demo-bm1684x-sim" --engine bm1684x \
  --bmodel "$fixture/tiny-qwen2-audio.bmodel" --model-dir "$fixture" --devices 0, --max-new-tokens 4

"$tb" run "$here/manifest.jsonl" -o "$runs/demo-simulated" --engine simulated \
  --devices 4 --sim-speedup 50 --sim-faults error=0.1,crash=0.05,garble=0.15,seed=7

"$tb" run "$here/simulator.jsonl" -o "$runs/demo-qwen3-bm1684x-sim" --engine bm1684x \
  --bmodel "$q3_fixture/tiny-qwen3-asr.bmodel" --model-dir "$q3_fixture" --devices 0, --max-new-tokens 4

compared=("$runs/demo-simulated" "$runs/demo-bm1684x-sim" "$runs/demo-qwen3-bm1684x-sim")
"$tb" eval "${compared[@]}" --html "$runs/demo-report.html"
"$tb" export "$runs/demo-simulated" --to nemo -o "$runs/demo-labels.jsonl" --min-confidence 0.9 --overwrite

mkdir -p "$here/audio/long"
[[ -s "$here/audio/long/meeting.wav" ]] || "$venv/bin/python" - "$here/audio" "$here/audio/long/meeting.wav" <<'PY'
import sys
from pathlib import Path
import numpy as np, soundfile as sf, soxr
src, out = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(0)
clips = []
for p in sorted(src.glob("*.wav")):
    audio, sr = sf.read(p, dtype="float32", always_2d=True)
    clips.append(soxr.resample(audio.mean(axis=1), sr, 16000).astype(np.float32))
parts, total, k = [], 0, 0
while total < 180 * 16000:  # three minutes: sentences with 0.3-1.2 s pauses, and a 5 s silence every fifth one
    gap = 5.0 if k % 5 == 4 else rng.uniform(0.3, 1.2)
    parts += [clips[k % len(clips)], np.zeros(int(gap * 16000), np.float32)]
    total += parts[-2].size + parts[-1].size
    k += 1
audio = np.concatenate(parts) + rng.normal(0, 3e-4, total).astype(np.float32)
sf.write(out, audio, 16000, subtype="PCM_16")
PY
"$tb" manifest dir "$here/audio/long" -o "$runs/demo-long.jsonl" --overwrite
"$tb" run "$runs/demo-long.jsonl" -o "$runs/demo-longform" --engine simulated --devices 4 --sim-speedup 50 \
  --range-s 60 --sim-text "$(grep -v '^#' "$here/sentences.tsv" | cut -f3 | tr '\n' ' ' | cut -d' ' -f1-120)"
"$tb" export "$runs/demo-longform" --segments --to nemo -o "$runs/demo-segments.jsonl" --overwrite

echo "demo finished: results in ${compared[*]} $runs/demo-longform, report $runs/demo-report.html," \
  "labels $runs/demo-labels.jsonl, training segments $runs/demo-segments.jsonl"
