"""The whole pipeline on the BM1684X simulator: `transcribe-batch run ... --engine bm1684x` with the tiny fixture,
then the raw answers in results.parquet are exactly the HF reference's greedy tokens, decoded, and the confidence
columns come from the card's per-token log-probabilities. (A batch-1 bmodel goes through the same pipeline in
tests/test_qwen3_asr_bmodel.py and tests/test_prebuilt_layout.py; the runtime's batch-1 tokens and log-probabilities
are checked step by step in tests/test_native_runtime.py and tests/test_bm1684x_engine.py.)"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from bm1684x_support import LOGPROB_ATOL_F16, fixture_dir, native, reference
from manifest_helpers import write_reference_manifest

N_TOKENS = 3  # the simulator is slow; the runtime tests compare all reference steps


@pytest.mark.slow
def test_run_with_a_batched_bmodel_and_batch_size_4(tmp_path, audio_dir):
    """The B=4 bmodel through `transcribe-batch run --batch-size 4`: the actor hands the engine both clips at once,
    they decode in one batch, and every answer is the HF reference's. Two of the three reference clips (each one
    more prefill, ~8 s on the simulator; every clip's tokens in B=4 slots are checked in test_native_runtime.py and
    test_bm1684x_engine.py): the first, and the one cut from a longer file (manifest offset and duration)."""
    from bm1684x_support import BATCH, batched_bmodel_path

    native()
    clips = [reference()["clips"][0], reference()["clips"][-1]]
    assert clips[1]["offset"] and clips[1]["duration"]
    manifest = tmp_path / "manifest.jsonl"
    write_reference_manifest(manifest, clips, audio_dir)
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("transcribe-batch")), "run", str(manifest), "-o", str(out),
           "--engine", "bm1684x", "--model-dir", str(fixture_dir()), "--bmodel", str(batched_bmodel_path()),
           "--devices", "0,", "--batch-size", str(BATCH), "--max-new-tokens", str(N_TOKENS), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the simulator's chatter (stdout of the actor process) lands in the run folder's device log, not the console
    assert "cmodel" in (out / "logs" / "bm1684x-device0.log").read_text()
    assert "do_allreduce" not in proc.stdout + proc.stderr
    rows = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    from transcribe_batch.workers.frontend import FrontEnd

    fe = FrontEnd(fixture_dir(), template="default", max_new_tokens=256)
    assert set(rows) == {c["audio_filepath"] for c in clips}
    for clip in clips:
        row = rows[clip["audio_filepath"]]
        assert row["status"] == "ok" and row["engine"] == "bm1684x", row
        assert row["raw_text"].strip() == fe.decode(clip["tokens"][:N_TOKENS]).strip()  # the record strips whitespace
        assert row["n_new_tokens"] == N_TOKENS and row["finish_reason"] == "max_tokens"
        assert row["n_audio_tokens"] == clip["n_audio_tokens"]
        assert row["ttft_s"] > 0 and row["decode_s"] > 0
        # confidence from the card's head: HF fp32's log-probabilities of the same tokens, within f16 rounding
        want = clip["token_logprobs"][:N_TOKENS]
        assert row["mean_logprob"] == pytest.approx(sum(want) / N_TOKENS, abs=LOGPROB_ATOL_F16)
        assert row["min_logprob"] == pytest.approx(min(want), abs=LOGPROB_ATOL_F16)
        assert 0 < row["confidence"] <= 1 and row["confidence"] == pytest.approx(math.exp(row["mean_logprob"]))
