"""FrontEnd (contract 2) on the real recordings, with the real tokenizer, and on a tiny-fixture-like folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from transcribe_batch.config.settings import default
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.pipeline.config import worker_config
from transcribe_batch.workers.audio import AudioDecodeError, AudioError, load_audio
from transcribe_batch.workers.engines.base import EngineLimits
from transcribe_batch.workers.frontend import FrontEnd
from transcribe_batch.workers.prompts import PromptError, load_tokenizer

BMODEL_LIMITS = EngineLimits(max_audio_s=30.0, max_seq_len=599)


def _row(audio_dir, row, i=0, **extra):
    return ManifestRow(id=f"u{i}", audio_filepath=str(audio_dir / row["audio_filepath"]), text=row.get("text"),
                       **extra)


def _fe(model_dir, limits=None, **settings):
    """The front end a run with these settings (else the defaults) gives its workers."""
    return FrontEnd.for_worker(worker_config(engine="simulated", model_dir=model_dir, **settings), limits)


@pytest.fixture(scope="module")
def frontend(model_dir):
    return _fe(model_dir)


def test_every_recording(frontend, audio_dir, audio_rows):
    assert frontend.model_id == "qwen2-audio-7b-instruct"
    for i, manifest_row in enumerate(audio_rows):
        row = _row(audio_dir, manifest_row, i)
        pieces = frontend.prepare_pieces(row)
        requests = pieces.requests
        spans = sorted([(r.start_s, r.end_s) for r in requests] + list(pieces.skipped))
        assert spans[0][0] == 0.0 and spans[-1][1] == pytest.approx(manifest_row["duration"], abs=0.002)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # pieces and skipped stretches tile the audio
        longer = manifest_row["duration"] > default("segment_max_s")  # cut into training segments at pauses
        assert len(requests) >= 2 if longer else len(requests) == 1 and not pieces.skipped
        for k, r in enumerate(requests):
            assert r.duration_s <= default("segment_max_s") and r.end_s - r.start_s == pytest.approx(r.duration_s)
            assert (r.chunk_index, r.n_chunks) == (k, len(requests))
            assert r.id == (row.id if len(requests) == 1 else f"{row.id}#{k}")
            assert r.features.shape == (128, 3000) and r.features.dtype == np.float32
            assert int(r.feature_mask.sum()) == min(3000, int(np.ceil(r.duration_s * 100 - 1e-6)))
            L = int(r.feature_mask.sum())  # Qwen2AudioProcessor's count over the mask's length
            assert r.n_audio_tokens == (((L - 1) // 2 + 1) - 2) // 2 + 1
            assert r.expanded_ids.count(r.audio_token_id) == r.n_audio_tokens
            assert len(r.expanded_ids) == len(r.prompt_ids) - 1 + r.n_audio_tokens
            assert r.stop_ids and r.reference == manifest_row.get("text") and r.audio is None
            assert r.max_new_tokens >= 5 * r.duration_s


def test_bmodel_limits_split_long_audio_to_fit(model_dir, audio_dir, audio_rows):
    fe = _fe(model_dir, BMODEL_LIMITS, template="ultraeval")
    for i, manifest_row in enumerate(audio_rows):
        requests = fe.prepare(_row(audio_dir, manifest_row, i))
        for r in requests:
            assert len(r.expanded_ids) + r.max_new_tokens <= 599
            assert r.max_new_tokens >= 5 * r.duration_s
        if manifest_row["duration"] > 22.3:
            assert len(requests) >= 2


def test_offset_duration_prompt_and_task(frontend, audio_dir):
    path = audio_dir / "beckett.wav"
    row = ManifestRow(id="b", audio_filepath=str(path), offset=2.0, duration=3.0)
    (r,) = frontend.prepare(row)
    assert r.duration_s == 3.0 and r.n_audio_tokens == 75 and r.prompt == frontend.templates.templates["default"]
    (r,) = frontend.prepare(replace(row, task="ultraeval"))
    assert r.prompt.startswith("listen the audio")
    (r,) = frontend.prepare(replace(row, task="ultraeval", prompt="What is said?"))
    assert r.prompt == "What is said?" and frontend.decode(r.prompt_ids).endswith("What is said?\nassistant\n")
    with pytest.raises(PromptError, match="unknown task"):
        frontend.prepare(replace(row, task="poetry"))
    (r,) = frontend.prepare(row, keep_audio=True)
    assert np.array_equal(r.audio, load_audio(path, 2.0, 3.0))


def test_max_chunk_s_forces_shorter_pieces(model_dir, audio_dir):
    frontend = _fe(model_dir, segment_max_s=30.0)
    row = ManifestRow(id="e", audio_filepath=str(audio_dir / "endgame.wav"))
    assert len(frontend.prepare(row)) == 1  # 28.3 s: one piece within segment_max_s
    pieces = frontend.prepare(row, max_chunk_s=8.0)
    assert len(pieces) >= 4 and all(p.duration_s <= 8.0 for p in pieces)
    assert [p.id for p in pieces] == [f"e#{k}" for k in range(len(pieces))]


def test_without_a_model_folder_only_audio(audio_dir):
    fe = _fe(None)
    (r,) = fe.prepare(ManifestRow(id="x", audio_filepath=str(audio_dir / "001.wav"), text="ten of clubs"))
    assert r.features is None and r.prompt_ids == () and r.n_audio_tokens == 27 and r.audio is not None
    assert r.reference == "ten of clubs" and fe.model_id == ""
    assert len(fe.prepare(ManifestRow(id="y", audio_filepath=str(audio_dir / "two_cities.wav")))) >= 3  # 44 s, ≤ 20 s
    with pytest.raises(RuntimeError):
        fe.decode([1, 2])


def test_bad_audio_raises_audio_error_naming_the_file(frontend, tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + b"\x00" * 100)
    with pytest.raises(AudioDecodeError, match=str(bad)):
        frontend.prepare(ManifestRow(id="b", audio_filepath=str(bad)))
    with pytest.raises(AudioError, match="missing.wav"):
        frontend.prepare(ManifestRow(id="m", audio_filepath=str(tmp_path / "missing.wav")))


def test_silence_is_a_normal_request(frontend, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "quiet.wav", np.zeros(32000, np.int16), 16000)
    (r,) = frontend.prepare(ManifestRow(id="q", audio_filepath=str(tmp_path / "quiet.wav")))
    assert r.n_audio_tokens == 50 and np.isfinite(r.features).all()


def test_decode_clean_join(frontend):
    ids = frontend.family.tokenizer.encode('{"content": "ten of clubs"}', add_special_tokens=False).ids
    raw = frontend.decode(ids + [frontend.family.stop_ids[0]])
    assert raw == '{"content": "ten of clubs"}'
    assert frontend.clean(raw, duration_s=1.1).text == "ten of clubs"
    assert frontend.clean(raw, duration_s=1.1).language is None  # Qwen2-Audio does not say the language
    assert frontend.clean("la " * 50, duration_s=3.0).reason == "repetition"
    assert frontend.join(["a b", "c"]) == "a b c"


def test_tiny_fixture_layout(tmp_path, model_dir, audio_dir):
    """tokenizer.json + a 2 s window: the same code reads everything from the folder."""
    load_tokenizer(model_dir).save(str(tmp_path / "tokenizer.json"))
    shutil.copy(model_dir / "config.json", tmp_path / "config.json")
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    pre.update(chunk_length=2, n_samples=32000, nb_max_frames=200)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    fe = _fe(tmp_path, EngineLimits(max_audio_s=2.0, max_seq_len=128))
    requests = fe.prepare(ManifestRow(id="t", audio_filepath=str(audio_dir / "005.wav")))  # 3.5 s
    assert len(requests) >= 2
    assert sum(r.duration_s for r in requests) == pytest.approx(3.502, abs=0.001)
    for r in requests:
        assert r.features.shape == (128, 200) and r.n_audio_tokens <= 50
        assert len(r.expanded_ids) + r.max_new_tokens <= 128
    assert requests[0].prompt_ids == _fe(model_dir).prepare(
        ManifestRow(id="t", audio_filepath=str(audio_dir / "001.wav")))[0].prompt_ids


TINY = Path(__file__).parent / "fixtures" / "tiny-qwen2-audio"


@pytest.mark.skipif(not (TINY / "reference.json").is_file(), reason="tiny fixture not generated (native/compile)")
def test_tiny_fixture_reference_inputs(audio_dir):
    """The committed tiny model's reference (made by transformers' processor) has the same prompt ids and counts."""
    ref = json.loads((TINY / "reference.json").read_text())
    fe = _fe(TINY)
    assert fe.family.prompt_text(fe.family.prompt_spec(None, "default")) == ref["prompt"]
    assert set(fe.family.stop_ids) == set(ref["stop_token_ids"])
    for clip in ref["clips"]:
        row = ManifestRow(id=clip["audio_filepath"], audio_filepath=str(audio_dir / clip["audio_filepath"]),
                          offset=clip["offset"], duration=clip["duration"])
        (r,) = fe.prepare(row)
        assert round(r.duration_s * 16000) == clip["n_samples"]
        assert int(r.feature_mask.sum()) == clip["n_valid_frames"] and r.n_audio_tokens == clip["n_audio_tokens"]
        assert list(r.expanded_ids) == clip["input_ids"]
        stats = clip["features"]
        assert r.features.shape == (128, 200)
        for name, value in (("mean", r.features.mean()), ("std", r.features.std()), ("min", r.features.min()),
                            ("max", r.features.max())):
            assert abs(float(value) - stats[name]) < 1e-4, name
