"""The hf engine against transformers' own generate(), with a tiny random-weight Qwen2-Audio built here.

The model has the real tokenizer's vocabulary (156032) so the real prompt ids work, 2 layers and hidden 64 for speed;
it is saved with save_pretrained and loaded from disk offline, as a real model folder would be.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transcribe_batch.manifests.row import ManifestRow  # noqa: E402
from transcribe_batch.pipeline.config import worker_config  # noqa: E402
from transcribe_batch.workers.engines import EngineError, create_engine  # noqa: E402
from transcribe_batch.workers.engines.base import FINISH_EOS, FINISH_MAX_TOKENS, DecodeOptions  # noqa: E402
from transcribe_batch.workers.frontend import FrontEnd  # noqa: E402

pytestmark = pytest.mark.slow
CLIPS = ["001.wav", "beckett.wav", "front_center_48k.wav"]
MAX_NEW = 6


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, model_dir):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(0)
    config = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4,
                          encoder_ffn_dim=128, d_model=64, max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=156032, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
        audio_token_index=151646,
    )
    path = tmp_path_factory.mktemp("tiny-qwen2-audio")
    Qwen2AudioForConditionalGeneration(config).eval().save_pretrained(path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "preprocessor_config.json"):
        shutil.copy(model_dir / name, path / name)
    return path


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from hf_helpers import offline_hf_engine

    eng = offline_hf_engine(tiny_dir, batch_size=4)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def frontend(model_dir, engine):
    return FrontEnd(model_dir, template="ultraeval", max_new_tokens=MAX_NEW, limits=engine.limits)


@pytest.fixture(scope="module")
def processor(model_dir):
    proc = transformers.AutoProcessor.from_pretrained(model_dir)
    proc.tokenizer.padding_side = "left"
    return proc


def _prepare(frontend, audio_dir, clips):
    return [r for i, c in enumerate(clips) for r in frontend.prepare(ManifestRow(id=f"u{i}",
                                                                                   audio_filepath=str(audio_dir / c)))]


def _processor_inputs(processor, frontend, requests, audio_dir, clips):
    from transcribe_batch.workers.audio import load_audio

    row = ManifestRow(id="r", audio_filepath="", prompt=requests[0].prompt)
    text = frontend.family.prompt_text(frontend.family.prompt_spec(row, "default"))
    return processor(text=[text] * len(clips), audio=[load_audio(audio_dir / c) for c in clips], sampling_rate=16000,
                     return_tensors="pt", padding=True)


def _reference(engine, inputs, stop_ids, max_new=MAX_NEW):
    keys = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
    with torch.inference_mode():
        out = engine.model.generate(**{k: inputs[k] for k in keys}, do_sample=False, num_beams=1,
                                    max_new_tokens=max_new, eos_token_id=list(stop_ids), pad_token_id=engine.pad_id)
    new = out[:, inputs["input_ids"].shape[1]:].tolist()
    return [row[: next((k for k, t in enumerate(row) if t in stop_ids), len(row))] for row in new]


def test_limits_and_identity(engine):
    assert engine.name == "hf" and engine.model_id == engine.model_dir.name
    assert engine.limits.max_audio_s == 30.0 and engine.limits.max_seq_len == 2048
    assert engine.pad_id == 151643  # the tokenizer's <|endoftext|>, found through tokenizer_config.json


def test_batch_inputs_equal_the_processor(engine, frontend, processor, audio_dir):
    requests = _prepare(frontend, audio_dir, CLIPS)
    ours = engine.inputs(requests)
    ref = _processor_inputs(processor, frontend, requests, audio_dir, CLIPS)
    assert torch.equal(ours["input_ids"], ref["input_ids"])
    assert torch.equal(ours["attention_mask"], ref["attention_mask"])
    assert torch.equal(ours["feature_attention_mask"], ref["feature_attention_mask"].long())
    assert (ours["input_features"] - ref["input_features"]).abs().max().item() <= 1e-4


def test_greedy_tokens_equal_generate(engine, frontend, processor, audio_dir):
    requests = _prepare(frontend, audio_dir, CLIPS)
    inputs = _processor_inputs(processor, frontend, requests, audio_dir, CLIPS)
    requests = [dataclasses.replace(r, features=feats)  # the very same inputs generate() gets
                for r, feats in zip(requests, inputs["input_features"].numpy())]
    results = engine.transcribe_batch(requests)
    expected = _reference(engine, inputs, set(requests[0].stop_ids))
    assert [r.token_ids for r in results] == expected
    for res, req in zip(results, requests):
        assert res.finish_reason in (FINISH_EOS, FINISH_MAX_TOKENS) and len(res.token_ids) <= req.max_new_tokens
        assert res.ttft_s > 0 and res.decode_s >= 0 and 0 < res.encode_s < res.ttft_s
        assert res.extra["batch_size"] == 3 and res.text is None
    # one at a time, through transcribe(), equals generate() on the single input
    single = _processor_inputs(processor, frontend, requests[:1], audio_dir, CLIPS[:1])
    requests[0] = dataclasses.replace(requests[0], features=single["input_features"][0].numpy())
    assert engine.transcribe(requests[0]).token_ids == _reference(engine, single, set(requests[0].stop_ids))[0]


def test_stop_token_and_per_request_budget(engine, frontend, processor, audio_dir):
    (req,) = _prepare(frontend, audio_dir, ["beckett.wav"])
    inputs = _processor_inputs(processor, frontend, [req], audio_dir, ["beckett.wav"])
    req = dataclasses.replace(req, features=inputs["input_features"][0].numpy())
    free = _reference(engine, inputs, {-1})[0]
    stop = next(t for k, t in enumerate(free) if k >= 1 and t not in free[:k])  # a token greedy decoding reaches
    at = free.index(stop)
    res = engine.transcribe(dataclasses.replace(req, decode=DecodeOptions(req.max_new_tokens, (stop,))))
    assert res.token_ids == free[:at] and res.finish_reason == FINISH_EOS and res.decode_s > 0
    res = engine.transcribe(dataclasses.replace(req, decode=DecodeOptions(2, (-1,))))
    assert res.token_ids == free[:2] and res.finish_reason == FINISH_MAX_TOKENS


def test_one_bad_request_does_not_fail_its_neighbours(engine, frontend, audio_dir):
    requests = _prepare(frontend, audio_dir, ["001.wav", "002.wav", "003.wav"])
    requests[1] = dataclasses.replace(requests[1], features=requests[1].features[:, :100])  # a window it does not take
    results = engine.transcribe_batch(requests)
    assert isinstance(results[1], EngineError) and "u1" in str(results[1])
    assert all(len(r.token_ids) >= 1 for r in (results[0], results[2]))


def test_long_audio_goes_through_in_pieces(engine, frontend, processor, audio_dir):
    """44 s of audio: two pieces that together are the whole recording, each answered as generate() answers that
    piece alone (in one batch, as the actor sends them)."""
    from transcribe_batch.workers.audio import load_audio

    path = audio_dir / "two_cities.wav"
    requests = frontend.prepare(ManifestRow(id="u0", audio_filepath=str(path)), keep_audio=True)
    assert [r.id for r in requests] == ["u0#0", "u0#1"] and all(r.duration_s <= 30.0 for r in requests)
    assert np.array_equal(np.concatenate([r.audio for r in requests]), load_audio(path))  # no gap, no overlap
    row = ManifestRow(id="u0", audio_filepath=str(path), prompt=requests[0].prompt)
    text = frontend.family.prompt_text(frontend.family.prompt_spec(row, "default"))
    inputs = processor(text=[text] * 2, audio=[r.audio for r in requests], sampling_rate=16000, return_tensors="pt",
                       padding=True)
    requests = [dataclasses.replace(r, features=feats)  # the very same inputs generate() gets
                for r, feats in zip(requests, inputs["input_features"].numpy())]
    results = engine.transcribe_batch(requests)
    assert [r.token_ids for r in results] == _reference(engine, inputs, set(requests[0].stop_ids))
    assert all(r.token_ids for r in results)


def test_options_errors(tiny_dir):
    with pytest.raises(ValueError, match="model-dir"):
        create_engine(worker_config(engine="hf"), None)
    with pytest.raises(ValueError, match="dtype"):
        create_engine(worker_config(engine="hf", model_dir=str(tiny_dir), dtype="int3"), None)
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA"):
            create_engine(worker_config(engine="hf", model_dir=str(tiny_dir)), 0)


TINY = Path(__file__).parent / "fixtures" / "tiny-qwen2-audio"


@pytest.mark.skipif(not (TINY / "model.safetensors").is_file(), reason="tiny fixture not generated (native/compile)")
def test_tiny_fixture_reference_tokens(audio_dir):
    """The committed tiny model: front end + hf engine reproduce its reference greedy tokens (transformers' own run).
    Its generation_config.json asks for sampling with repetition_penalty 1.1; the engine must stay plain greedy."""
    ref = json.loads((TINY / "reference.json").read_text())
    engine = create_engine(worker_config(engine="hf", model_dir=str(TINY), dtype="fp32"), None)
    fe = FrontEnd(TINY, template="default", max_new_tokens=ref["max_new_tokens"], limits=engine.limits)
    assert engine.limits.max_audio_s == 2.0
    requests = [fe.prepare(ManifestRow(id=c["audio_filepath"], audio_filepath=str(audio_dir / c["audio_filepath"]),
                                       offset=c["offset"], duration=c["duration"]))[0] for c in ref["clips"]]
    requests = [dataclasses.replace(r, decode=dataclasses.replace(r.decode, max_new_tokens=ref["max_new_tokens"]))
                for r in requests]
    for clip, result in zip(ref["clips"], engine.transcribe_batch(requests)):
        assert result.token_ids == clip["tokens"], clip["audio_filepath"]
    engine.close()


@pytest.mark.slow
def test_run_with_engine_hf_on_the_cpu(tmp_path, audio_dir, ray_cluster):
    """`transcribe-batch run --engine hf` end to end on a host without GPUs (the tiny fixture's weights): the raw
    answers in results.parquet are the HF reference's greedy tokens, decoded. The run joins the tests' shared Ray
    cluster (--address; a run that starts its own: test_crash_charging, test_resume, test_bm1684x_pipeline)."""
    import subprocess
    import sys

    import pyarrow.parquet as pq
    from manifest_helpers import write_reference_manifest

    fixture = Path(__file__).parent / "fixtures" / "tiny-qwen2-audio"
    clips = json.loads((fixture / "reference.json").read_text())["clips"]
    manifest = tmp_path / "manifest.jsonl"
    write_reference_manifest(manifest, clips, audio_dir)
    out = tmp_path / "run"
    n_tokens = 8
    cmd = [str(Path(sys.executable).with_name("transcribe-batch")), "run", str(manifest), "-o", str(out),
           "--engine", "hf", "--model-dir", str(fixture), "--max-new-tokens", str(n_tokens), "--quiet",
           "--address", ray_cluster]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert [r["id"] for r in rows] == [c["audio_filepath"] for c in clips]
    fe = FrontEnd(fixture, template="default", max_new_tokens=n_tokens)
    for row, clip in zip(rows, clips):
        assert row["status"] == "ok", row
        assert (row["engine"], row["device"]) == ("hf", 0)
        assert row["n_new_tokens"] == n_tokens and row["finish_reason"] == "max_tokens"
        assert row["raw_text"] == fe.decode(clip["tokens"][:n_tokens])
        assert row["ttft_s"] > 0 and row["decode_s"] > 0
