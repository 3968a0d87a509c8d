"""The prebuilt-layout fixture (tests/fixtures/tiny-qwen3-asr-prebuilt, native/compile/make_prebuilt_fixture.py) and
the faithfulness claims of native/compile/README.md §8, checked with qwen-asr's own modules (no simulator):

- tpu-mlir's Qwen3AsrConverter `audio` net = qwen-asr's encoder run on ONE 100-frame chunk at a time (conv, 13
  positions, attention over the chunk's 13 rows, no mask). Emulated here by calling qwen-asr's encoder once per
  zero-padded chunk, it equals qwen-asr with a one-chunk window (`n_window_infer` = 2·n_window, the fixture's
  config) on whole chunks, and differs from it in a partial last chunk and from the released 8-chunk window;
- the fixture's config is tiny-qwen3-asr's with only that change, and its reference tokens are still what qwen-asr
  gives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qwen3_fixture import FIXTURE as TINY, copy_model  # noqa: E402
from transcribe_batch.workers.audio import load_audio  # noqa: E402
from transcribe_batch.workers.models.qwen3_asr import import_qwen_asr_backend  # noqa: E402

PREBUILT = Path(__file__).parent / "fixtures" / "tiny-qwen3-asr-prebuilt"
REF = json.loads((PREBUILT / "reference.json").read_text())
CHUNK = 100


def conv_rows(frames: int) -> int:
    for _ in range(3):
        frames = (frames - 1) // 2 + 1
    return frames


@pytest.fixture(scope="module")
def backend():
    return import_qwen_asr_backend()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The prebuilt fixture as a model folder: tiny-qwen3-asr's files with the fixture's config.json."""
    out = copy_model(tmp_path_factory.mktemp("prebuilt") / "tiny-qwen3-asr-prebuilt")
    shutil.copy(PREBUILT / "config.json", out / "config.json")
    return out


@pytest.fixture(scope="module")
def model(backend, folder):
    return backend.Qwen3ASRForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def processor(backend, folder):
    return backend.Qwen3ASRProcessor.from_pretrained(folder)


def _inputs(processor, audio_dir, clip):
    audio = load_audio(audio_dir / clip["audio_filepath"], clip["offset"], clip["duration"])
    return processor(text=[clip["prompt"]], audio=[audio], return_tensors="pt", padding=True)


def _one_chunk_per_launch(encoder, features: torch.Tensor) -> torch.Tensor:
    """What the prebuilt `audio` net computes: each 100-frame chunk alone (zero-padded), its first conv(w) rows."""
    rows = []
    for start in range(0, features.shape[1], CHUNK):
        w = min(CHUNK, features.shape[1] - start)
        chunk = torch.zeros(features.shape[0], CHUNK)
        chunk[:, :w] = features[:, start:start + w]
        out = encoder(chunk, feature_lens=torch.tensor([CHUNK])).last_hidden_state
        rows.append(out[:conv_rows(w)])
    return torch.cat(rows)


def test_config_is_tiny_qwen3_asr_with_a_one_chunk_window():
    base = json.loads((TINY / "config.json").read_text())
    ours = json.loads((PREBUILT / "config.json").read_text())
    audio = ours["thinker_config"]["audio_config"]
    assert audio["n_window_infer"] == 2 * audio["n_window"] == CHUNK
    base["thinker_config"]["audio_config"]["n_window_infer"] = audio["n_window_infer"]
    assert ours == base


def test_reference_clips_cover_whole_and_partial_chunks_and_decode_past_the_input_length():
    clips = REF["clips"]
    assert REF["max_input_length"] < REF["seqlen"]
    for c in clips:
        assert c["whole_chunks"] == (c["n_valid_frames"] % CHUNK == 0)
        assert len(c["input_ids"]) <= REF["max_input_length"]
    whole = [c for c in clips if c["whole_chunks"]]
    assert sorted(c["n_valid_frames"] // CHUNK for c in whole) == [1, 3, 8]
    assert max(len(c["input_ids"]) + len(c["tokens"]) for c in whole) > REF["max_input_length"]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(REF["clips"])))
def test_one_chunk_per_launch_vs_qwen_asr_encoder(model, processor, audio_dir, index):
    clip = REF["clips"][index]
    inputs = _inputs(processor, audio_dir, clip)
    n = int(inputs["feature_attention_mask"].sum())
    features = inputs["input_features"][0, :, :n]
    encoder = model.thinker.audio_tower
    with torch.inference_mode():
        net = _one_chunk_per_launch(encoder, features)
        one_chunk_window = encoder(features, feature_lens=torch.tensor([n])).last_hidden_state
    assert np.abs(one_chunk_window.numpy() - np.asarray(clip["audio_rows"])).max() < 1e-4  # reference is current
    released = torch.tensor(clip["audio_rows_window800"], dtype=torch.float32)
    whole = n // CHUNK * conv_rows(CHUNK)
    if whole:
        assert (net[:whole] - one_chunk_window[:whole]).abs().max() < 1e-4  # whole chunks: the same function
    if not clip["whole_chunks"]:
        assert (net[whole:] - one_chunk_window[whole:]).abs().max() > 0.1  # partial chunk: 13 unmasked rows
    if n > CHUNK:
        assert (net - released).abs().max() > 0.5  # the released 8-chunk window is another function


@pytest.mark.slow
def test_reference_tokens_are_qwen_asr_generate(model, processor, audio_dir):
    for clip in REF["clips"]:
        inputs = _inputs(processor, audio_dir, clip)
        assert inputs["input_ids"][0].tolist() == clip["input_ids"]
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=REF["max_new_tokens"], eos_token_id=REF["stop_token_ids"],
                                 do_sample=False, num_beams=1, repetition_penalty=1.0, temperature=1.0, top_k=50,
                                 top_p=1.0)
        assert out.sequences[0, inputs["input_ids"].shape[1]:].tolist() == clip["tokens"], clip["audio_filepath"]
