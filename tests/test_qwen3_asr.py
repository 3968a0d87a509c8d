"""Qwen3-ASR front end and reference engine against `qwen-asr` 0.0.6 (its processor, its model classes, its generate),
with the committed tiny random Qwen3-ASR (tests/fixtures/tiny-qwen3-asr, native/compile/make_tiny_qwen3_fixture.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qwen3_fixture import FIXTURE, reference  # noqa: E402
from transcribe_batch.manifests.row import ManifestRow  # noqa: E402
from transcribe_batch.workers.audio import load_audio  # noqa: E402
from transcribe_batch.workers.engines import create_engine  # noqa: E402
from transcribe_batch.workers.engines.base import EngineLimits  # noqa: E402
from transcribe_batch.workers.frontend import FrontEnd  # noqa: E402
from transcribe_batch.workers.models.qwen3_asr import import_qwen_asr_backend  # noqa: E402

CLIPS = ["001.wav", "front_center_48k.wav", "beckett.wav", "endgame.wav"]


@pytest.fixture(scope="module")
def folder():
    return FIXTURE


@pytest.fixture(scope="module")
def backend():
    return import_qwen_asr_backend()


@pytest.fixture(scope="module")
def processor(backend, folder):
    return backend.Qwen3ASRProcessor.from_pretrained(folder)


def _row(audio_dir, clip, **extra):
    return ManifestRow(id=clip["audio_filepath"] if isinstance(clip, dict) else clip,
                       audio_filepath=str(audio_dir / (clip["audio_filepath"] if isinstance(clip, dict) else clip)),
                       offset=clip.get("offset", 0.0) if isinstance(clip, dict) else 0.0,
                       duration=clip.get("duration") if isinstance(clip, dict) else None, **extra)


def _processor_text(processor, context="", language=None):
    messages = [{"role": "system", "content": context}, {"role": "user", "content": [{"type": "audio", "audio": ""}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + (f"language {language}<asr_text>" if language else "")


@pytest.mark.parametrize("clip", CLIPS)
def test_features_and_prompt_ids_equal_qwen_asr_processor(folder, processor, audio_dir, clip):
    fe = FrontEnd(folder, template="default", max_new_tokens=256, limits=EngineLimits(max_audio_s=1200.0))
    audio = load_audio(audio_dir / clip)
    for extra, context, language in (({}, "", None), ({"prompt": "Names: Pip, Estella. 请转写。"}, "Names: Pip, Estella. 请转写。", None),
                                     ({"task": "language", "language": "en"}, "", "English")):
        (r,) = fe.prepare(_row(audio_dir, clip, **extra))
        ref = processor(text=[_processor_text(processor, context, language)], audio=[audio], return_tensors="np",
                        padding=True)
        assert list(r.expanded_ids) == ref["input_ids"][0].tolist(), (clip, extra)
        assert r.features.shape == ref["input_features"][0].shape == (128, audio.size // 160)
        assert np.abs(r.features - ref["input_features"][0]).max() <= 1e-4
        assert np.array_equal(r.feature_mask, ref["feature_attention_mask"][0])
        assert r.prompt == context and r.n_audio_tokens == r.expanded_ids.count(r.audio_token_id)


def test_committed_reference_inputs(folder, audio_dir):
    """The fixture's reference.json (made by qwen-asr's processor) has the front end's prompt ids and features."""
    ref = reference()
    fe = FrontEnd(folder, template="default", max_new_tokens=256, limits=EngineLimits(max_audio_s=1200.0))
    for clip in ref["clips"]:
        extra = {"prompt": clip["context"]} if clip["context"] else {}
        if clip["language"]:
            extra.update(task="language", language=clip["language"])
        (r,) = fe.prepare(_row(audio_dir, clip, **extra))
        assert round(r.duration_s * 16000) == clip["n_samples"] and list(r.expanded_ids) == clip["input_ids"]
        assert int(r.feature_mask.sum()) == clip["n_valid_frames"] and r.n_audio_tokens == clip["n_audio_tokens"]
        for name in ("mean", "std", "min", "max"):
            assert abs(float(getattr(np, name)(r.features)) - clip["features"][name]) < 1e-4, name


def test_long_audio_is_split_at_pauses_within_the_limits(folder, audio_dir, audio_rows):
    fe = FrontEnd(folder, template="default", max_new_tokens=256,
                  limits=EngineLimits(max_audio_s=1200.0, max_seq_len=256))
    longest = max(audio_rows, key=lambda r: r["duration"])
    requests = fe.prepare(_row(audio_dir, longest["audio_filepath"]))
    assert len(requests) >= 2 and sum(r.duration_s for r in requests) == pytest.approx(longest["duration"], abs=0.002)
    for r in requests:
        assert len(r.expanded_ids) + r.max_new_tokens <= 256 and r.features.shape[1] == round(r.duration_s * 16000) // 160
    # without a sequence limit: the answer cap (256 tokens ≈ 46 s of speech) bounds a piece, not the 1200 s limit
    no_limit = FrontEnd(folder, template="default", max_new_tokens=256)
    assert no_limit.max_piece_s(fe.family.prompt_spec(None, "default")) == pytest.approx((256 - 24) / 5)


def test_answer_parsing_in_the_front_end(folder):
    fe = FrontEnd(folder, template="default", max_new_tokens=256)
    cleaned = fe.clean("language English<asr_text>The quick  brown fox.", duration_s=2.0)
    assert (cleaned.text, cleaned.language, cleaned.degenerate) == ("The quick brown fox.", "English", False)
    assert fe.clean("forced-language answers carry no tag", duration_s=2.0).language is None
    assert fe.join_languages(["English", "English", None, "Chinese"]) == "English,Chinese"


@pytest.fixture(scope="module")
def engine(folder):
    from hf_helpers import offline_hf_engine

    eng = offline_hf_engine(folder, batch_size=3)
    yield eng
    eng.close()


def _requests(folder, engine, audio_dir, ref):
    fe = FrontEnd(folder, template="default", max_new_tokens=ref["max_new_tokens"], limits=engine.limits)
    out = []
    for clip in ref["clips"]:
        extra = {"prompt": clip["context"]} if clip["context"] else {}
        if clip["language"]:
            extra.update(task="language", language=clip["language"])
        (r,) = fe.prepare(_row(audio_dir, clip, **extra))
        out.append(dataclasses.replace(r, decode=dataclasses.replace(r.decode, max_new_tokens=ref["max_new_tokens"])))
    return fe, out


@pytest.mark.slow
def test_hf_engine_greedy_tokens_equal_qwen_asr_generate(folder, engine, backend, processor, audio_dir):
    """Batched through the hf engine (left padding, unwindowed features padded per batch) = the committed reference
    = qwen-asr's own `Qwen3ASRForConditionalGeneration.generate` on its processor's inputs, one clip at a time."""
    ref = reference()
    fe, requests = _requests(folder, engine, audio_dir, ref)
    assert engine.limits.max_audio_s == 1200.0 and engine.limits.max_seq_len == 4096 and engine.n_frames is None
    results = engine.transcribe_batch(requests)
    model = backend.Qwen3ASRForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    for clip, req, result in zip(ref["clips"], requests, results):
        assert not isinstance(result, BaseException), result
        assert result.token_ids == clip["tokens"], clip["audio_filepath"]
        audio = load_audio(audio_dir / clip["audio_filepath"], clip["offset"], clip["duration"])
        inputs = processor(text=[_processor_text(processor, clip["context"], clip["language"])], audio=[audio],
                           return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=ref["max_new_tokens"], eos_token_id=list(req.stop_ids),
                                 do_sample=False, num_beams=1, repetition_penalty=1.0)
        assert out.sequences[0, inputs["input_ids"].shape[1]:].tolist() == clip["tokens"]
        assert result.encode_s > 0 and isinstance(fe.decode(result.token_ids), str)


@pytest.mark.slow
def test_generate_equals_step_by_step_full_forward(folder, backend, processor, audio_dir):
    """Checks the transformers-5 adaptation of qwen-asr's classes (workers/models/qwen3_asr.py) independently of
    `generate` and its KV cache: greedy by re-running the full sequence each step (no cache; positions from
    qwen-asr's own get_rope_index) gives the reference tokens."""
    ref = reference()
    model = backend.Qwen3ASRForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    for clip in ref["clips"][:3]:
        audio = load_audio(audio_dir / clip["audio_filepath"], clip["offset"], clip["duration"])
        inputs = processor(text=[_processor_text(processor, clip["context"], clip["language"])], audio=[audio],
                           return_tensors="pt", padding=True)
        ids = inputs["input_ids"]
        tokens = []
        with torch.inference_mode():
            for _ in range(ref["max_new_tokens"]):
                logits = model.thinker(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False,
                                       input_features=inputs["input_features"],
                                       feature_attention_mask=inputs["feature_attention_mask"]).logits
                nxt = int(logits[0, -1].argmax())
                tokens.append(nxt)
                if nxt in ref["stop_token_ids"]:
                    break
                ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
        assert tokens == clip["tokens"], clip["audio_filepath"]


def test_audio_position_table_is_qwen_asrs(folder, backend):
    """transformers 5 builds models on the meta device; the encoder's non-persistent sinusoid table must still be
    the one qwen-asr's constructor computes."""
    model = backend.Qwen3ASRForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    table = model.thinker.audio_tower.positional_embedding
    fresh = sys.modules["qwen_asr.core.transformers_backend.modeling_qwen3_asr"].SinusoidsPositionEmbedding(
        *table.positional_embedding.shape)
    assert torch.equal(table.positional_embedding, fresh.positional_embedding)
    assert model.thinker.lm_head.weight.data_ptr() == model.thinker.model.embed_tokens.weight.data_ptr()


CLI = [sys.executable, "-c", "from transcribe_batch.pipeline.cli import main; main()"]


@pytest.mark.slow
def test_run_with_engine_hf_on_the_cpu(folder, tmp_path, audio_dir, ray_cluster):
    """`transcribe-batch run --engine hf --model-dir <Qwen3-ASR>`: raw answers are the reference greedy tokens. The
    run joins the tests' shared Ray cluster (--address)."""
    import pyarrow.parquet as pq

    ref = reference()
    clips = [c for c in ref["clips"] if not c["context"] and not c["language"]]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"c{i}", "audio_filepath": str(audio_dir / c["audio_filepath"]),
                                            "offset": c["offset"], **({"duration": c["duration"]} if c["duration"] else {})})
                                + "\n" for i, c in enumerate(clips)))
    out = tmp_path / "run"
    proc = subprocess.run([*CLI, "run", str(manifest), "-o", str(out), "--engine", "hf", "--model-dir", str(folder),
                           "--max-new-tokens", str(ref["max_new_tokens"]), "--quiet", "--address", ray_cluster],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = pq.read_table(out / "results.parquet").to_pylist()
    fe = FrontEnd(folder, template="default", max_new_tokens=256)
    assert [r["id"] for r in rows] == [f"c{i}" for i in range(len(clips))]
    for row, clip in zip(rows, clips):
        assert row["status"] == "ok", row
        assert row["raw_text"] == fe.decode(clip["tokens"]) and row["model_id"] == folder.name
        assert row["n_audio_tokens"] == clip["n_audio_tokens"] and "detected_language" in row


@pytest.mark.slow
def test_mixed_manifest_evaluated_side_by_side_with_qwen2_audio(folder, model_dir, tmp_path, audio_dir, audio_rows,
                                                                ray_cluster):
    """One manifest (plain rows, a row with a prompt, forced-language rows, audio longer than 30 s) through both
    families' front ends (simulated engine, real features and prompts; the runs join the tests' shared Ray cluster),
    then `eval` of the two runs together."""
    import pyarrow.parquet as pq

    rows = []
    for i, r in enumerate(audio_rows):
        row = {"id": f"r{i}", "audio_filepath": str(audio_dir / r["audio_filepath"]), "text": r.get("text")}
        if i % 3 == 1:
            row.update(task="language", language="en")
        if i % 3 == 2:
            row["prompt"] = "Transcribe exactly."
        rows.append(row)
    manifest = tmp_path / "mixed.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    runs = {}
    for name, mdir in (("qwen2", model_dir), ("qwen3", folder)):
        runs[name] = tmp_path / name
        proc = subprocess.run([*CLI, "run", str(manifest), "-o", str(runs[name]), "--engine", "simulated",
                               "--model-dir", str(mdir), "--sim-speedup", "1000", "--devices", "1", "-q",
                               "--address", ray_cluster],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    q2, q3 = (pq.read_table(runs[k] / "results.parquet").to_pylist() for k in ("qwen2", "qwen3"))
    assert [r["status"] for r in q2] == [r["status"] for r in q3] == ["ok"] * len(rows)
    for a, b, row in zip(q2, q3, rows):
        assert a["pred_text"] == b["pred_text"]
        assert b["n_audio_tokens"] < a["n_audio_tokens"]  # 13 vs 25 audio tokens per second
        assert b["prompt"] == row.get("prompt")  # Qwen3-ASR: the context (none here unless the row gives one)
        assert a["prompt"] and (a["prompt"] == row["prompt"] if row.get("prompt") else "Transcribe" in a["prompt"])
    ev = subprocess.run([*CLI, "eval", str(runs["qwen2"]), str(runs["qwen3"]), "--format", "json"],
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    data = json.loads(ev.stdout)
    assert [r["name"] for r in data["runs"]] == ["qwen2", "qwen3"]
    for run in data["runs"]:
        assert run["accuracy"]["n_samples"] == len(rows) and run["accuracy"]["wer_successful"] == 0.0


def test_audio_encoder_attends_within_its_windows(folder, backend):
    """Longer than one window (n_window_infer frames = 8 s here): the encoder's rows equal each window encoded on
    its own — qwen-asr's windowed attention (its vLLM backend; flash-attention 2) also under sdpa on the CPU."""
    from transcribe_batch.workers.models.qwen3_asr import audio_token_count

    model = backend.Qwen3ASRForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    window = model.config.thinker_config.audio_config.n_window_infer
    feats = torch.from_numpy(np.random.default_rng(0).standard_normal((128, 2 * window + 250)).astype(np.float32))

    def encode(x):
        return model.thinker.get_audio_features(x[None], feature_attention_mask=torch.ones(1, x.shape[1], dtype=torch.long))

    with torch.inference_mode():
        whole = encode(feats)
        parts = torch.cat([encode(feats[:, s:s + window]) for s in range(0, feats.shape[1], window)])
    assert whole.shape[0] == audio_token_count(feats.shape[1]) == parts.shape[0]
    assert torch.allclose(whole, parts, atol=1e-5)
