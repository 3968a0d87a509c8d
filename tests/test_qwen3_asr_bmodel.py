"""Qwen3-ASR on the BM1684X simulator: the tiny fixture compiled by native/compile/convert.py (our chunked audio net,
tpu-mlir's Qwen3 text layers, the ArgMax + log-probability head) and run by the native runtime through the bm1684x
engine gives qwen-asr's greedy tokens at every step (at B=1 and with the B=4 bmodel, for clips of several chunks and
of two attention windows), its audio net gives qwen-asr's encoder embeddings (also for one partial chunk), and
`transcribe-batch run --engine bm1684x` writes the answers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bm1684x_support import LOGPROB_ATOL_F16, native
from qwen3_fixture import FIXTURE, reference
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.workers.engines import create_engine
from transcribe_batch.workers.engines.base import EngineLimits
from transcribe_batch.workers.frontend import FrontEnd

pytestmark = pytest.mark.slow  # the simulator: seconds per launch
N = 4  # tokens per clip: a prefill costs ~5 decode steps on the simulator, a step ~1-2 s (151680-row head)
BMODEL = FIXTURE / "tiny-qwen3-asr.bmodel"
BMODEL_B4 = FIXTURE / "tiny-qwen3-asr-b4.bmodel"


@pytest.fixture(scope="module")
def folder():
    return FIXTURE


@pytest.fixture(scope="module")
def card(folder):
    native()
    eng = create_engine(worker_config(engine="bm1684x", model_dir=str(folder), bmodel=str(BMODEL)), 0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf(folder):
    from hf_helpers import offline_hf_engine

    eng = offline_hf_engine(folder, batch_size=4)
    yield eng
    eng.close()


def _requests(folder, audio_dir, rows, n=N):
    fe = FrontEnd(folder, template="default", max_new_tokens=256,
                  limits=EngineLimits(max_audio_s=1200.0, max_seq_len=256))
    out = []
    for row in rows:
        row = {**row, "id": row.get("id", row["audio_filepath"]),
               "audio_filepath": str(audio_dir / row["audio_filepath"])}
        (r,) = fe.prepare(ManifestRow(**row))
        out.append(dataclasses.replace(r, decode=dataclasses.replace(r.decode, max_new_tokens=n)))
    return out


def _reference_clips():
    """Three of the five reference clips: plain (with a manifest offset and duration), context, forced language. The
    other two are plain prompts like the first (the audio net is checked on more clips by
    test_audio_embeddings_equal_qwen_asr_encoder)."""
    return reference()["clips"][2:]


def _reference_rows():
    rows = []
    for c in _reference_clips():
        row = {"id": f"{c['audio_filepath']}:{c['context']!r}:{c['language']}", "audio_filepath": c["audio_filepath"],
               "offset": c["offset"], "duration": c["duration"]}
        if c["context"]:
            row["prompt"] = c["context"]
        if c["language"]:
            row.update(task="language", language=c["language"])
        rows.append(row)
    return rows


@pytest.mark.simulator
def test_layout_sidecar_and_model_folder_agree(card, folder):
    from transcribe_batch.workers.engines.bm1684x import check_pair

    config = json.loads((folder / "config.json").read_text())["thinker_config"]["audio_config"]
    chunk = 2 * config["n_window"]
    lay = card.layout
    assert lay.audio_kind == "chunked" and lay.audio_chunk_frames == chunk
    assert lay.audio_chunks_per_window * chunk == lay.n_frames == config["n_window_infer"]
    assert lay.audio_rows == 13 * lay.audio_chunks_per_window
    # the net's own shapes: rows per chunk (its key mask) and the outputs of its two masked convolutions
    assert lay.audio_keys == 13 and lay.audio_keep == [50, 25]
    assert card.sidecar["model_type"] == "qwen3_asr" and card.sidecar["audio_rows_per_chunk"] == 13
    assert check_pair(card.bmodel, card.sidecar, card.family, lay) == []
    # a chunked encoder takes any length: the family's limit, with SEQLEN bounding a request's tokens
    assert card.limits.max_audio_s == 1200.0 and card.limits.max_seq_len == 256


@pytest.mark.simulator
def test_greedy_tokens_equal_qwen_asr_generate_at_every_step(card, folder, audio_dir, hf):
    """The committed reference (qwen-asr's `generate`, fp32): a plain prompt (with a manifest offset and duration), a
    context prompt, a forced language."""
    clips = _reference_clips()
    reqs = _requests(folder, audio_dir, _reference_rows())
    got = card.transcribe_batch(reqs)
    want_lp = hf.transcribe_batch(reqs)
    for res, clip, r, lp in zip(got, clips, reqs, want_lp):
        assert not isinstance(res, BaseException), res
        assert res.token_ids == clip["tokens"][:N], (r.id, res.token_ids, clip["tokens"][:N])
        assert r.n_audio_tokens == clip["n_audio_tokens"] and res.extra["prompt_len"] == len(clip["input_ids"])
        # the card's per-token log-probabilities: the reference engine's, within f16 rounding
        assert lp.token_ids == res.token_ids
        assert max(abs(a - b) for a, b in zip(res.token_logprobs, lp.token_logprobs)) <= LOGPROB_ATOL_F16


@pytest.mark.simulator
def test_audio_embeddings_equal_qwen_asr_encoder(card, folder, audio_dir):
    """The chunked audio net alone (`Runtime.encode`) against qwen-asr's encoder (fp32, windowed): one partial chunk
    (0.7 s), two chunks (1.1 s), two windows (9.96 s). Measured: max |diff| ≈ 1e-3 of the largest value (f16);
    without the one-chunk conv masks the 0.7 s clip's last rows were 7e-2 off."""
    import numpy as np
    import torch

    from transcribe_batch.workers.models import load_family

    reqs = _requests(folder, audio_dir, [{"audio_filepath": "001.wav", "duration": 0.7}, {"audio_filepath": "001.wav"},
                                         {"audio_filepath": "beckett.wav"}])
    from bm1684x_support import runtime_audio

    family = load_family(folder)
    encoder = family.load_reference(torch.float32).generator
    for r in reqs:
        n = int(r.feature_mask.sum())
        got = card.runtime.encode(r.features, runtime_audio(native(), family, r))
        with torch.inference_mode():
            want = encoder.get_audio_features(torch.from_numpy(r.features)[None],
                                              feature_attention_mask=torch.ones(1, n, dtype=torch.long)).numpy()
        assert got.shape == want.shape == (r.n_audio_tokens, 8)
        scale = float(np.abs(want).max())
        assert float(np.abs(got - want).max()) <= 4e-3 * scale, (r.id, float(np.abs(got - want).max()), scale)


@pytest.mark.simulator
def test_batched_bmodel_gives_the_same_tokens(folder, audio_dir, hf):
    """B=4 decode rows: three requests at once, one of them two attention windows long; every answer is the
    reference's (qwen-asr's generate, or the hf engine for the long clip)."""
    native()
    eng = create_engine(worker_config(engine="bm1684x", model_dir=str(folder), bmodel=str(BMODEL_B4)), 0)
    try:
        assert eng.preferred_batch_size == 4
        rows = _reference_rows()[:2] + [{"audio_filepath": "beckett.wav"}]
        reqs = _requests(folder, audio_dir, rows)
        got = eng.transcribe_batch(reqs)
    finally:
        eng.close()
    clips = _reference_clips()[:2]
    for res, clip in zip(got[:2], clips):
        assert not isinstance(res, BaseException), res
        assert res.token_ids == clip["tokens"][:N] and res.extra["batch"] == 4
    # 9.96 s = 10 chunks = two attention windows of 8: two audio launches, spliced one after the other
    assert reqs[2].features.shape[1] == 996 and reqs[2].n_audio_tokens == 129
    assert not isinstance(got[2], BaseException) and got[2].token_ids == hf.transcribe_batch(reqs[2:])[0].token_ids
    assert [g.extra["prefill_launches"] for g in got] == [5, 5, 6]  # embedding, audio × windows, 2 blocks, lm_head
    assert len({res.extra["slot"] for res in got}) == 3


def test_run_with_engine_bm1684x(folder, tmp_path, audio_dir):
    """`transcribe-batch run m.jsonl --engine bm1684x --bmodel tiny-qwen3-asr.bmodel --model-dir <Qwen3-ASR>`. Not
    marked `simulator` (the simulator runs in the CLI's actor, not here), so it runs before the tests that load the
    simulator into this process: its polling threads would take the two cores the run needs."""
    import pyarrow.parquet as pq

    clips = [c for c in _reference_clips() if not c["context"] and not c["language"]][:1]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"c{i}", "audio_filepath": str(audio_dir / c["audio_filepath"]),
                                            "offset": c["offset"], **({"duration": c["duration"]} if c["duration"] else {})})
                                + "\n" for i, c in enumerate(clips)))
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).with_name("transcribe-batch")), "run", str(manifest), "-o", str(out),
           "--engine", "bm1684x", "--model-dir", str(folder), "--bmodel", str(BMODEL), "--devices", "0,",
           "--max-new-tokens", "4", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    fe = FrontEnd(folder, template="default", max_new_tokens=256)
    assert [r["id"] for r in rows] == ["c0"]
    for row, clip in zip(rows, clips):
        assert row["status"] == "ok" and row["engine"] == "bm1684x", row
        assert row["raw_text"] == fe.decode(clip["tokens"][:4]) and row["n_audio_tokens"] == clip["n_audio_tokens"]
        assert row["model_id"] == "tiny-qwen3-asr" and "detected_language" in row and row["confidence"] > 0


@pytest.mark.simulator
def test_a_qwen2_audio_bmodel_is_refused_for_a_qwen3_asr_folder(folder):
    from bm1684x_support import bmodel_path
    from transcribe_batch.workers.engines.bm1684x import ModelMismatch

    native()
    with pytest.raises(ModelMismatch, match=r"model family: sidecar says qwen2_audio, config.json says qwen3_asr"):
        create_engine(worker_config(engine="bm1684x", model_dir=str(folder), bmodel=str(bmodel_path())), 0)
