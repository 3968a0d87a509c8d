"""Confidence columns: per-token log-probabilities from every engine, combined per utterance (workers/confidence.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.workers.confidence import CONFIDENCE_COLUMNS, confidence_fields
from transcribe_batch.workers.engines import create_engine
from transcribe_batch.workers.engines.base import DecodeOptions, EngineResult, Request
from transcribe_batch.workers.engines.simulated import FaultSpec, draw_logprobs
from transcribe_batch.workers.record import COLUMNS, PART_SCHEMA, conform


def _res(logprobs, n=None):
    n = len(logprobs) if n is None else n
    return EngineResult(token_ids=list(range(n)), finish_reason="eos", ttft_s=0.0, decode_s=0.0,
                        token_logprobs=logprobs)


def test_one_piece():
    out = confidence_fields([_res([-0.1, -0.3, -0.2])])
    assert out["mean_logprob"] == pytest.approx(-0.2)
    assert out["min_logprob"] == pytest.approx(-0.3)
    assert out["confidence"] == pytest.approx(math.exp(-0.2))


def test_pieces_are_token_weighted_with_a_global_min():
    out = confidence_fields([_res([-1.0]), _res([0.0, 0.0, 0.0])])
    assert out["mean_logprob"] == pytest.approx(-0.25)  # not the mean of the pieces' means (-0.5)
    assert out["min_logprob"] == -1.0
    assert out["confidence"] == pytest.approx(math.exp(-0.25))


def test_undefined_cases_are_null():
    assert confidence_fields([_res([])]) == dict.fromkeys(CONFIDENCE_COLUMNS)  # no token generated
    assert confidence_fields([_res([-0.1]), _res(None, 3)]) == dict.fromkeys(CONFIDENCE_COLUMNS)  # a piece without
    assert confidence_fields([]) == dict.fromkeys(CONFIDENCE_COLUMNS)
    with pytest.raises(ValueError, match="2 token log-probabilities for 3 tokens"):
        confidence_fields([_res([-0.1, -0.2], 3)])


def test_half_precision_rounding_above_zero_is_clamped():
    out = confidence_fields([_res([1e-4, -0.2])])
    assert out["min_logprob"] == pytest.approx(-0.2) and out["confidence"] <= 1.0


def test_schema_has_the_columns_and_old_parts_conform():
    for name in CONFIDENCE_COLUMNS:
        assert PART_SCHEMA.field(name).type == pa.float64()
    old = pa.table({name: pa.nulls(2, PART_SCHEMA.field(name).type) for name in COLUMNS
                    if name not in CONFIDENCE_COLUMNS})
    assert conform(old).schema == PART_SCHEMA and conform(old)["confidence"].null_count == 2


def _request(text, rid="u1", **kw):
    return Request(id=rid, duration_s=2.0, reference=text, decode=DecodeOptions(kw.pop("max_new_tokens", 64)), **kw)


def _engine(faults="", **options):
    return create_engine(worker_config(engine="simulated", sim_ttft_s=0, sim_s_per_token=0, sim_faults=faults,
                                       **options), 0)


def test_simulated_logprobs_are_aligned_and_deterministic():
    engine = _engine("seed=3")
    a = engine.transcribe(_request("the quick brown fox jumps over the lazy dog"))
    b = _engine("seed=3").transcribe(_request("the quick brown fox jumps over the lazy dog"))
    assert len(a.token_logprobs) == len(a.token_ids) > 0
    assert a.token_logprobs == b.token_logprobs  # same seed, id and attempt
    assert all(v <= 0 for v in a.token_logprobs)
    other = _engine("seed=4").transcribe(_request("the quick brown fox jumps over the lazy dog"))
    assert other.token_logprobs != a.token_logprobs
    engine.begin_attempts({"u1": 2})
    assert engine.transcribe(_request("the quick brown fox jumps over the lazy dog")).token_logprobs != a.token_logprobs


def test_simulated_faults_get_lower_confidence():
    import random

    def mean_conf(fault):
        values = [confidence_fields([_res(draw_logprobs(random.Random(i), 30, fault))])["confidence"]
                  for i in range(300)]
        return sum(values) / len(values)

    clean, garbled, repeat = mean_conf(None), mean_conf("garble"), mean_conf("repeat")
    assert clean > 0.9 and garbled < 0.75 and repeat < garbled


def test_garble_changes_words_and_keeps_status_ok():
    spec = FaultSpec.parse("garble=1,seed=1")
    assert spec.draw("u1", 1) == "garble"
    ref = "she sells sea shells by the sea shore every single morning"
    res = _engine("garble=1,seed=1").transcribe(_request(ref))
    assert res.text != ref and len(res.text.split()) == len(ref.split()) and res.finish_reason == "eos"
    assert confidence_fields([res])["confidence"] < 0.95


def test_results_of_a_simulated_run_have_confidence(tmp_path, audio_dir):
    """The actor fills the columns; a split utterance combines its pieces."""
    from manifest_helpers import write_manifest

    from transcribe_batch.manifests.reader import iter_rows
    from transcribe_batch.workers.actor import TranscriptionWorker
    from transcribe_batch.workers.record import now
    from transcribe_batch.workers.work import WorkItem

    write_manifest(tmp_path / "m.jsonl", audio_dir, limit=3)
    rows = [row for _, row in iter_rows(tmp_path / "m.jsonl")]
    worker = TranscriptionWorker(worker_config(engine="simulated", sim_ttft_s=0, sim_s_per_token=0,
                                               engine_options={"sim_max_audio_s": 1.0}), 0)
    outcomes = worker.run_shard([WorkItem(index=i, line=i + 1, row=r, queued_at=now(), duration=r.duration)
                                 for i, r in enumerate(rows)])
    worker.close()
    records = [o.record for o in outcomes]
    assert any(rec.n_chunks > 1 for rec in records)
    for rec in records:
        assert rec.status == "ok", rec
        assert 0 < rec.confidence <= 1 and rec.min_logprob <= rec.mean_logprob <= 0
        assert rec.confidence == pytest.approx(math.exp(rec.mean_logprob))


TINY = Path(__file__).parent / "fixtures" / "tiny-qwen2-audio"


@pytest.mark.slow
@pytest.mark.skipif(not (TINY / "model.safetensors").is_file(), reason="tiny fixture not generated (native/compile)")
def test_hf_logprobs_equal_a_teacher_forced_forward_pass(audio_dir):
    """The hf engine's per-token log-probabilities (recorded inside generate()) equal log_softmax of the logits of a
    plain forward pass over prompt + generated tokens, at each chosen token — in a batch with left padding too."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transcribe_batch.workers.frontend import FrontEnd

    engine = create_engine(worker_config(engine="hf", model_dir=str(TINY), dtype="fp32", batch_size=2), None)
    fe = FrontEnd(TINY, template="default", max_new_tokens=10, limits=engine.limits)
    requests = [fe.prepare(ManifestRow(id=f"u{i}", audio_filepath=str(audio_dir / clip), duration=d))[0]
                for i, (clip, d) in enumerate([("001.wav", 1.0), ("beckett.wav", 2.0)])]
    # run the whole budget: more tokens to compare
    requests = [replace(r, decode=DecodeOptions(r.max_new_tokens, (-1,))) for r in requests]
    results = engine.transcribe_batch(requests)
    for req, res in zip(requests, results):
        assert len(res.token_logprobs) == len(res.token_ids) == 10
        inputs = engine.inputs([req])
        ids = torch.cat([inputs["input_ids"], torch.tensor([res.token_ids])], dim=1)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            logits = engine.model(input_ids=ids, attention_mask=mask, input_features=inputs["input_features"],
                                  feature_attention_mask=inputs["feature_attention_mask"]).logits[0].float()
        start = inputs["input_ids"].shape[1] - 1
        logp = torch.log_softmax(logits[start:start + len(res.token_ids)], dim=-1)
        direct = logp[torch.arange(len(res.token_ids)), torch.tensor(res.token_ids)]
        assert torch.equal(logp.argmax(dim=-1), torch.tensor(res.token_ids))  # greedy: each chosen token is the argmax
        assert torch.allclose(torch.tensor(res.token_logprobs), direct, atol=2e-4), (res.token_logprobs, direct)
        fields = confidence_fields([res])
        assert 0 < fields["confidence"] <= 1
    engine.close()


def test_resumed_run_merges_parts_written_before_the_columns_existed(tmp_path):
    """A folder resumed with this version holds parts without the confidence columns: the merge reads them as null
    (the bug this guards: cast to the new part schema failed on the old parts)."""
    import json

    from transcribe_batch.manifests.reader import audio_stamp, input_digest, parse_line
    from transcribe_batch.pipeline.plan import build_plan
    from transcribe_batch.pipeline.results import PartWriter, RunFolder, merge_results
    from transcribe_batch.workers.record import base_record

    lines = [{"id": f"u{i}", "audio_filepath": "/a.wav", "offset": float(i), "duration": 1.0} for i in range(2)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    plan = build_plan(manifest)
    (tmp_path / "run").mkdir()
    folder = RunFolder(tmp_path / "run")

    def record(i, **extra):
        row = parse_line(json.dumps(lines[i]), path=str(manifest), line=i + 1, base_dir=str(tmp_path))
        rec = base_record(row, i + 1, status="ok", pred_text="x", **extra)
        return [rec], [input_digest(row, audio_stamp("/a.wav"))]

    old = PartWriter(folder, 0)
    old.add(*record(0))
    old.flush()
    part = folder.part_files()[0]
    pq.write_table(pq.read_table(part).drop_columns(list(CONFIDENCE_COLUMNS)), part)  # as an older version wrote it
    new = PartWriter(folder, 1)
    new.add(*record(1, mean_logprob=-0.1, min_logprob=-0.5, confidence=math.exp(-0.1)))
    new.flush()
    merge_results(folder, plan)
    table = pq.read_table(folder.results)
    assert table["confidence"].to_pylist() == [None, pytest.approx(math.exp(-0.1))]
