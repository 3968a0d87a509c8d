"""The bm1684x engine's load-time checks, without a device: a bmodel's Layout (what the runtime reads from its nets)
and sidecar against the model folder's family, and the sidecar fields the engine reads. The Layout values below
are the tiny fixtures' (tests/test_native_runtime.py and tests/test_qwen3_asr_bmodel.py hold the runtime to them)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bm1684x_support import FIXTURE
from qwen3_fixture import FIXTURE as QWEN3_FIXTURE
from transcribe_batch.workers.engines.bm1684x import (ModelMismatch, audio_geometry_problems, check_pair,
                                                      mask_value_of, read_sidecar)
from transcribe_batch.workers.models import load_family

QWEN2_TINY = dict(seqlen=256, hidden=64, n_layers=2, vocab=0, n_mels=128, n_frames=200, audio_rows=50,
                  audio_kind="window", audio_keys=100, audio_keep=[], audio_chunk_frames=0, audio_chunks_per_window=0,
                  batch=1)
QWEN3_TINY = dict(seqlen=256, hidden=8, n_layers=2, vocab=0, n_mels=128, n_frames=800, audio_rows=104,
                  audio_kind="chunked", audio_keys=13, audio_keep=[50, 25], audio_chunk_frames=100,
                  audio_chunks_per_window=8, batch=1)


def layout(base: dict, **changes) -> SimpleNamespace:
    return SimpleNamespace(**{**base, **changes})


@pytest.fixture(scope="module")
def qwen2():
    bmodel = FIXTURE / "tiny-qwen2-audio.bmodel"
    return load_family(FIXTURE), bmodel, json.loads(bmodel.with_name(bmodel.name + ".json").read_text())


@pytest.fixture(scope="module")
def qwen3():
    bmodel = QWEN3_FIXTURE / "tiny-qwen3-asr.bmodel"
    return load_family(QWEN3_FIXTURE), bmodel, json.loads(bmodel.with_name(bmodel.name + ".json").read_text())


def test_the_tiny_fixtures_agree_with_their_folders(qwen2, qwen3):
    for (family, bmodel, sidecar), base in ((qwen2, QWEN2_TINY), (qwen3, QWEN3_TINY)):
        assert check_pair(bmodel, sidecar, family, layout(base)) == [], family.model_type


def test_a_sidecar_without_model_type_is_judged_by_the_audio_net(qwen2, qwen3):
    """Sidecars written before `model_type` existed (the confident fixture's) name no family: they still load with
    the family whose encoder the audio net fits, and are refused, with the geometry named, for another family."""
    family2, bmodel, sidecar = qwen2
    old = {k: v for k, v in sidecar.items() if k != "model_type"}
    assert check_pair(bmodel, old, family2, layout(QWEN2_TINY)) == []
    family3 = qwen3[0]
    problems = check_pair(bmodel, old, family3, layout(QWEN2_TINY))
    assert "audio encoder: the bmodel's audio net is a fixed window, the qwen3_asr folder needs chunks" in problems
    assert not [p for p in problems if p.startswith("model family")]
    assert "model family: sidecar says qwen2_audio, config.json says qwen3_asr" in check_pair(
        bmodel, sidecar, family3, layout(QWEN2_TINY))


def test_the_audio_nets_geometry_must_be_the_familys(qwen2, qwen3):
    family2, family3 = qwen2[0], qwen3[0]
    assert audio_geometry_problems(family2, layout(QWEN2_TINY)) == []
    # a key mask over the mel frames instead of the conv positions the encoder attends over
    assert audio_geometry_problems(family2, layout(QWEN2_TINY, audio_keys=200)) == [
        "audio key positions: the bmodel's audio net has 200 per window, the qwen2_audio folder's encoder [100] of "
        "200 frames"]
    assert audio_geometry_problems(family2, layout(QWEN2_TINY, audio_keys=0)) == []  # no key mask: nothing to fill
    assert audio_geometry_problems(family2, layout(QWEN2_TINY, audio_rows=49)) == [
        "audio tokens per launch: the bmodel's audio net gives 49, the qwen2_audio folder's encoder makes 50 of 200 "
        "frames"]
    assert audio_geometry_problems(family3, layout(QWEN3_TINY)) == []
    assert audio_geometry_problems(family3, layout(QWEN3_TINY, audio_keep=[50, 26])) == [
        "audio conv masks: the bmodel's audio net masks [50, 26] outputs per chunk, the qwen3_asr folder's encoder "
        "[[50, 25]]"]
    assert audio_geometry_problems(family3, layout(QWEN3_TINY, audio_chunk_frames=200, audio_chunks_per_window=4)) == [
        "audio chunks: the bmodel's audio net takes 4 chunks of 200 frames per launch, the qwen3_asr folder makes 8 "
        "chunks of [100] frames of 800"]


def test_the_mask_value_comes_from_the_sidecar_or_the_runtimes_default(tmp_path):
    path = tmp_path / "m.bmodel.json"
    assert mask_value_of(None, path) is None and mask_value_of({}, path) is None  # the runtime's DEFAULT_MASK_VALUE
    assert mask_value_of({"audio_mask_value": -10000}, path) == -10000.0
    for bad in (0, 3.5, float("nan"), float("-inf"), "-1e4", True):
        with pytest.raises(ModelMismatch, match=f"{path}: audio_mask_value"):
            mask_value_of({"audio_mask_value": bad}, path)


def test_a_broken_sidecar_is_named(tmp_path):
    path = tmp_path / "m.bmodel.json"
    assert read_sidecar(path) is None  # Sophgo's own bmodels come without one
    path.write_text("{not json")
    with pytest.raises(ModelMismatch, match=f"{path}: not a valid bmodel sidecar"):
        read_sidecar(path)
    path.write_text("[1, 2]")
    with pytest.raises(ModelMismatch, match="expected a JSON object"):
        read_sidecar(path)
