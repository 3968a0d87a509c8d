"""The bm1684x engine: front end -> engine -> tokens, on the simulator with the tiny fixture, plus its load-time
checks (sidecar vs model folder), limits, error mapping and the message shown without the native extension."""

from __future__ import annotations

import json
from dataclasses import replace
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bm1684x_support import (REPO, assert_logprobs_match, assert_tokens_match, clip_row, fixture_dir, native,
                             port_bmodel_path, reference)
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.workers.engines import SequenceTooLong, create_engine
from transcribe_batch.workers.engines.base import FINISH_EOS, FINISH_MAX_TOKENS, DecodeOptions

pytestmark = pytest.mark.simulator


@pytest.fixture(scope="module")
def engine():
    native()
    eng = create_engine(worker_config(engine="bm1684x", model_dir=str(fixture_dir())), 0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def frontend(engine):
    from transcribe_batch.workers.frontend import FrontEnd

    return FrontEnd(fixture_dir(), template="default", max_new_tokens=256, limits=engine.limits)


@pytest.mark.slow
def test_limits_come_from_the_bmodel(engine):
    sidecar = json.loads((fixture_dir() / "tiny-qwen2-audio.bmodel.json").read_text())
    pre = json.loads((fixture_dir() / "preprocessor_config.json").read_text())
    assert engine.limits.max_seq_len == sidecar["seqlen"]
    assert engine.limits.max_audio_s == pytest.approx(sidecar["mel_frames"] * pre["hop_length"] / pre["sampling_rate"])
    assert engine.model_id == sidecar["model_id"]
    assert engine.name == "bm1684x"


@pytest.mark.slow
def test_real_audio_through_front_end_and_engine_matches_hf(engine, frontend, audio_dir):
    clip = reference()["clips"][-1]  # test_native_runtime.py decodes the others
    (req,) = frontend.prepare(clip_row(clip, audio_dir))
    assert list(req.expanded_ids) == clip["input_ids"], "front end prompt differs from the reference's"
    req = replace(req, decode=replace(req.decode, max_new_tokens=min(req.max_new_tokens,
                                                                      reference()["max_new_tokens"])))
    res = engine.transcribe(req)
    got = res.token_ids + ([clip["tokens"][-1]] if res.finish_reason == FINISH_EOS else [])
    assert_tokens_match(got, clip, where=f"engine {clip['audio_filepath']}")
    assert res.finish_reason == (FINISH_EOS if clip["finish"] == "stop" else FINISH_MAX_TOKENS)
    assert res.ttft_s > res.encode_s > 0 and res.decode_s > 0
    assert res.extra["decode_h2d_bytes_per_token"] < 8 and res.extra["decode_d2h_bytes_per_token"] == 8  # id + logprob
    assert_logprobs_match(res.token_logprobs, clip, where=f"engine {clip['audio_filepath']}")
    assert isinstance(frontend.decode(res.token_ids), str)


@pytest.mark.slow
def test_too_long_becomes_sequence_too_long(engine, frontend, audio_dir):
    clip = reference()["clips"][0]
    (req,) = frontend.prepare(clip_row(clip, audio_dir))
    req = replace(req, prompt_ids=(req.prompt_ids[-1],) * engine.limits.max_seq_len + req.prompt_ids)
    with pytest.raises(SequenceTooLong, match=clip["audio_filepath"]):
        engine.transcribe(req)


@pytest.mark.slow
@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: _edit_json(d / "config.json", lambda c: c["text_config"].update(hidden_size=128)), "hidden size"),
        (lambda d: _edit_json(d / "config.json", lambda c: c.update(audio_token_index=3)), "audio token id"),
        (lambda d: _edit_json(d / "preprocessor_config.json", lambda c: c.update(chunk_length=30)), "mel frames"),
        (lambda d: _edit_json(d / "tiny-qwen2-audio.bmodel.json", lambda c: c.update(seqlen=1024)), "SEQLEN"),
        (lambda d: (d / "tiny-qwen2-audio.bmodel").open("ab").write(b"\0"), "pair was split up"),
    ],
    ids=["hidden", "audio-id", "window", "sidecar-seqlen", "bmodel-bytes"],
)
def test_mismatched_bmodel_and_model_folder_are_refused(tmp_path, edit, problem):
    native()
    folder = tmp_path / "model"
    shutil.copytree(fixture_dir(), folder)
    edit(folder)
    from transcribe_batch.workers.engines.bm1684x import ModelMismatch

    with pytest.raises(ModelMismatch, match=problem):
        create_engine(worker_config(engine="bm1684x", model_dir=str(folder)), 0)


@pytest.mark.slow
def test_a_port_layout_bmodel_without_sidecar_is_checked_against_its_own_nets(tmp_path):
    native()
    eng = create_engine(worker_config(engine="bm1684x", model_dir=str(fixture_dir()), bmodel=str(port_bmodel_path())),
                        0)
    assert eng.sidecar is None and eng.limits.max_seq_len == eng.layout.seqlen
    eng.close()
    folder = tmp_path / "model"
    shutil.copytree(fixture_dir(), folder)
    _edit_json(folder / "config.json", lambda c: c["text_config"].update(vocab_size=1000))
    from transcribe_batch.workers.engines.bm1684x import ModelMismatch

    with pytest.raises(ModelMismatch, match="vocabulary: lm_head logits"):
        create_engine(worker_config(engine="bm1684x", model_dir=str(folder), bmodel=str(port_bmodel_path())), 0)


@pytest.mark.slow
def test_the_masks_hidden_value_is_the_sidecars(tmp_path):
    """The sidecar's audio_mask_value fills every mask the runtime writes (the text nets' too); without one, the
    runtime's documented default. -1e5 does not fit this fixture's F16 masks: refused at load, naming the net."""
    tbn = native()
    folder = tmp_path / "model"
    shutil.copytree(fixture_dir(), folder)
    sidecar = folder / "tiny-qwen2-audio.bmodel.json"
    for value, want in ((-20000.0, -20000.0), (None, tbn.DEFAULT_MASK_VALUE)):
        _edit_json(sidecar, lambda c: c.update(audio_mask_value=value) if value else c.pop("audio_mask_value"))
        eng = create_engine(worker_config(engine="bm1684x", model_dir=str(folder)), 0)
        assert eng.layout.mask_value == want
        eng.close()
    _edit_json(sidecar, lambda c: c.update(audio_mask_value=-1e5))
    with pytest.raises(ValueError, match=r"mask value -100000 is -inf as F16 \(mask input 2 of net block_0"):
        create_engine(worker_config(engine="bm1684x", model_dir=str(folder)), 0)


@pytest.mark.slow
def test_a_sidecar_without_model_type_loads_with_the_family_its_audio_net_fits():
    """The confident fixture's sidecars predate `model_type`: the audio net's geometry against the folder's family
    (Qwen2-Audio's window and key positions) decides, and it fits."""
    folder = REPO / "tests" / "fixtures" / "tiny-qwen2-audio-confident"
    bmodel = folder / "tiny-qwen2-audio-confident-bf16.bmodel"
    native()
    assert "model_type" not in json.loads(bmodel.with_name(bmodel.name + ".json").read_text())
    eng = create_engine(worker_config(engine="bm1684x", model_dir=str(folder), bmodel=str(bmodel)), 0)
    assert eng.family.model_type == "qwen2_audio" and eng.layout.audio_kind == "window"
    eng.close()


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_without_the_extension_the_error_says_how_to_build_it():
    code = (
        "import sys; sys.modules['transcribe_batch_native'] = None\n"
        "from transcribe_batch.workers.engines import create_engine\n"
        "from transcribe_batch.pipeline.config import worker_config\n"
        f"create_engine(worker_config(engine='bm1684x', model_dir={str(REPO)!r}), 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "NativeRuntimeMissing" in proc.stderr
    assert "make native" in proc.stderr and "pip install ./native" in proc.stderr
    assert "LIBSOPHON_ROOT=/opt/sophon/libsophon-current" in proc.stderr


def test_engine_needs_a_model_folder():
    with pytest.raises(ValueError, match="model_dir"):
        create_engine(worker_config(engine="bm1684x"), 0)


# ---------------------------------------------------------------- a batched (B=4) bmodel


@pytest.fixture(scope="module")
def engine4():
    from bm1684x_support import batched_bmodel_path

    native()
    eng = create_engine(worker_config(engine="bm1684x", model_dir=str(fixture_dir()),
                                      bmodel=str(batched_bmodel_path())), 0)
    yield eng
    eng.close()


@pytest.mark.slow
def test_batched_engine_keeps_its_slots_full_and_fails_requests_alone(engine4, audio_dir):
    """Six requests through 4 slots: each result in order; the one that overruns SEQLEN gets SequenceTooLong and the
    malformed one a ValueError while the others decode; the last starts in a slot freed by an earlier answer."""
    from bm1684x_support import BATCH, too_long_prompt
    from transcribe_batch.workers.frontend import FrontEnd

    assert engine4.preferred_batch_size == BATCH
    fe = FrontEnd(fixture_dir(), template="default", max_new_tokens=256, limits=engine4.limits)
    clips = reference()["clips"]
    prepared = [fe.prepare(clip_row(c, audio_dir))[0] for c in clips]
    plan = [(0, 3), (1, 2), (0, None), (2, 2), (1, "bad"), (1, 3)]
    reqs = []
    for clip, n in plan:
        r = prepared[clip]
        stop_ids = r.stop_ids
        if n is None:  # room for one answer token in the KV history: overruns in its first decode step
            r = replace(r, prompt_ids=tuple(too_long_prompt(r, engine4.layout.kv_capacity, answer_room=1)))
            stop_ids, n = (), 4
        elif n == "bad":
            r = replace(r, n_audio_tokens=r.n_audio_tokens + 1)
            n = 2
        reqs.append(replace(r, decode=DecodeOptions(n, stop_ids)))
    out = engine4.transcribe_batch(reqs)
    assert isinstance(out[2], SequenceTooLong) and "answer reached SEQLEN" in str(out[2])
    assert isinstance(out[4], ValueError) and "n_audio_tokens" in str(out[4])
    for i in (0, 1, 3, 5):
        clip, n = plan[i]
        res = out[i]
        assert res.token_ids == clips[clip]["tokens"][:n], (i, res.token_ids)
        # one log-probability per token, from the card's head (equality with HF: tests/test_native_runtime.py)
        assert len(res.token_logprobs) == n and all(v <= 1e-3 for v in res.token_logprobs), res.token_logprobs
        assert res.finish_reason == FINISH_MAX_TOKENS
        assert res.extra["batch"] == BATCH and res.extra["decode_steps"] == n - 1
        assert res.ttft_s > res.encode_s > 0
    # the 6th waited for a slot: until the 2nd request's prefill and its one decode step were over
    assert out[5].extra["slot_wait_s"] >= out[1].ttft_s + out[1].decode_s > out[0].extra["slot_wait_s"]
    assert engine4.runtime.free_slots() == BATCH


@pytest.mark.slow
def test_a_batched_bmodel_whose_sidecar_says_another_batch_is_refused(tmp_path):
    from bm1684x_support import batched_bmodel_path
    from transcribe_batch.workers.engines.bm1684x import ModelMismatch

    native()
    src = batched_bmodel_path()
    bm = tmp_path / src.name
    shutil.copy(src, bm)
    shutil.copy(src.with_name(src.name + ".json"), tmp_path / (src.name + ".json"))
    _edit_json(tmp_path / (src.name + ".json"), lambda c: c.update(batch=1))
    with pytest.raises(ModelMismatch, match="decode batch: sidecar says 1, bmodel nets says 4"):
        create_engine(worker_config(engine="bm1684x", model_dir=str(fixture_dir()), bmodel=str(bm)), 0)


@pytest.mark.slow
def test_a_batched_bmodel_sets_the_actors_batch_even_when_batch_size_is_1():
    """--batch-size 1 (the default) with a B=4 bmodel: the actor hands over 4 requests per call and says so in its
    info (the scheduler sizes shards from it), so the card's slots are not left idle."""
    from bm1684x_support import BATCH, batched_bmodel_path
    from transcribe_batch.workers.actor import TranscriptionWorker

    native()
    config = worker_config(engine="bm1684x", model_dir=str(fixture_dir()), bmodel=str(batched_bmodel_path()),
                           batch_size=1)
    worker = TranscriptionWorker(config, 0, device_kind="bm1684x")
    try:
        assert worker.batch_size == BATCH == 4
        assert worker.info().batch_size == BATCH
    finally:
        worker.close()


def _generation(**kw) -> SimpleNamespace:
    """Stands in for the runtime's Generation struct (same attributes)."""
    counters = SimpleNamespace(h2d_bytes=6, d2h_bytes=8, launches=4)
    return SimpleNamespace(**{"tokens": [5, 7], "finish_reason": "eos", "ttft_s": 0.2, "encode_s": 0.1,
                              "step_s": [0.05], "prompt_len": 30, "prefill_s": 0.1, "slot": 0, "prefill": counters,
                              "decode": counters, **kw})


def test_engine_result_carries_the_heads_log_probabilities_or_none_for_an_id_only_head():
    """A bmodel whose head reports log-probabilities fills the confidence columns; one whose head gives ids only
    (older builds, the public port's layout: token_logprobs None) leaves them null instead of failing."""
    from transcribe_batch.workers.confidence import confidence_fields
    from transcribe_batch.workers.engines.bm1684x import _result

    res = _result(_generation(token_logprobs=[-0.25, -1.5]), batch=1)
    assert res.token_logprobs == [-0.25, -1.5]
    fields = confidence_fields([res])
    assert fields["mean_logprob"] == pytest.approx(-0.875) and fields["min_logprob"] == -1.5
    old = _result(_generation(token_logprobs=None), batch=1)
    assert old.token_logprobs is None and old.token_ids == [5, 7]
    assert confidence_fields([old]) == {"mean_logprob": None, "min_logprob": None, "confidence": None}
