"""The bm1684x engine: front end -> engine -> tokens, on the simulator with the tiny fixture, plus its load-time
checks (sidecar vs model folder), limits, error mapping and the message shown without the native extension."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bm1684x_support import REPO, assert_tokens_match, clip_row, fixture_dir, native, port_bmodel_path, reference
from transcribe_batch.workers.engines import SequenceTooLong, create_engine
from transcribe_batch.workers.engines.base import FINISH_EOS, FINISH_MAX_TOKENS

pytestmark = pytest.mark.simulator


@pytest.fixture(scope="module")
def engine():
    native()
    eng = create_engine("bm1684x", {"model_dir": str(fixture_dir())}, 0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def frontend(engine):
    from transcribe_batch.workers.frontend import FrontEnd

    return FrontEnd(fixture_dir(), limits=engine.limits)


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
    assert req.expanded_ids == clip["input_ids"], "front end prompt differs from the reference's"
    req.max_new_tokens = min(req.max_new_tokens, reference()["max_new_tokens"])
    res = engine.transcribe(req)
    got = res.token_ids + ([clip["tokens"][-1]] if res.finish_reason == FINISH_EOS else [])
    assert_tokens_match(got, clip, where=f"engine {clip['audio_filepath']}")
    assert res.finish_reason == (FINISH_EOS if clip["finish"] == "stop" else FINISH_MAX_TOKENS)
    assert res.ttft_s > res.encode_s > 0 and res.decode_s > 0
    assert res.extra["decode_h2d_bytes_per_token"] < 8 and res.extra["decode_d2h_bytes_per_token"] == 4
    assert isinstance(frontend.decode(res.token_ids), str)


@pytest.mark.slow
def test_too_long_becomes_sequence_too_long(engine, frontend, audio_dir):
    clip = reference()["clips"][0]
    (req,) = frontend.prepare(clip_row(clip, audio_dir))
    req.prompt_ids = [req.prompt_ids[-1]] * engine.limits.max_seq_len + list(req.prompt_ids)
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
        create_engine("bm1684x", {"model_dir": str(folder)}, 0)


@pytest.mark.slow
def test_a_port_layout_bmodel_without_sidecar_is_checked_against_its_own_nets(tmp_path):
    native()
    eng = create_engine("bm1684x", {"model_dir": str(fixture_dir()), "bmodel": str(port_bmodel_path())}, 0)
    assert eng.sidecar is None and eng.limits.max_seq_len == eng.layout["seqlen"]
    eng.close()
    folder = tmp_path / "model"
    shutil.copytree(fixture_dir(), folder)
    _edit_json(folder / "config.json", lambda c: c["text_config"].update(vocab_size=1000))
    from transcribe_batch.workers.engines.bm1684x import ModelMismatch

    with pytest.raises(ModelMismatch, match="vocabulary: lm_head logits"):
        create_engine("bm1684x", {"model_dir": str(folder), "bmodel": str(port_bmodel_path())}, 0)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_without_the_extension_the_error_says_how_to_build_it():
    code = (
        "import sys; sys.modules['transcribe_batch_native'] = None\n"
        "from transcribe_batch.workers.engines import create_engine\n"
        f"create_engine('bm1684x', {{'model_dir': {str(REPO)!r}}}, 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    assert "NativeRuntimeMissing" in proc.stderr
    assert "make native" in proc.stderr and "pip install ./native" in proc.stderr
    assert "LIBSOPHON_ROOT=/opt/sophon/libsophon-current" in proc.stderr


def test_engine_needs_a_model_folder():
    with pytest.raises(ValueError, match="model_dir"):
        create_engine("bm1684x", {}, 0)
