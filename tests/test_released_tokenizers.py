"""Checks against the released models' own tokenizer and config files, which live outside the repository
($TRANSCRIBE_BATCH_SHARED/qwen3-asr-0.6b and /qwen2-audio-7b-instruct; CI points the variable at ../shared). Without
them these tests skip, saying what they need; they are the only tests that read outside the repository.

- Qwen3-ASR-0.6B as released: the family reads the same special, stop and pad ids as qwen-asr's `Qwen3ASRProcessor`
  and transformers' GenerationConfig; the front end's prompt ids (plain, with context, with a forced language),
  features and audio-token counts equal the processor's on the same folder.
- The tokenizer files the repository carries are the released ones: tests/data/qwen2-audio-7b-instruct byte for
  byte, and the tiny Qwen3-ASR fixture's BPE is the released Qwen3-ASR's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from qwen3_fixture import FIXTURE
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.workers.audio import load_audio
from transcribe_batch.workers.frontend import FrontEnd
from transcribe_batch.workers.models import load_family
from transcribe_batch.workers.models.qwen3_asr import Qwen3Asr, import_qwen_asr_backend

pytest.importorskip("torch")

# (row fields, context, language as qwen-asr spells it)
PROMPTS = [({}, "", None),
           ({"prompt": "Names: Pip, Estella. 请转写。"}, "Names: Pip, Estella. 请转写。", None),
           ({"task": "language", "language": "en"}, "", "English"),
           ({"task": "language", "language": "zh", "prompt": "ten of clubs"}, "ten of clubs", "Chinese")]
# feature frames around the processor's 100-frame blocks (13 tokens each) and the encoder's 800-frame window, plus
# samples that do not fill the last 10 ms frame; all at least 0.5 s (qwen-asr pads shorter audio to 0.5 s first)
SAMPLES = [50 * 160, 99 * 160 + 37, 100 * 160, 101 * 160 + 159, 199 * 160, 200 * 160 + 1, 799 * 160, 800 * 160,
           801 * 160 + 80, 1234 * 160 + 5, 3000 * 160]


@pytest.fixture(scope="module")
def processor(released_qwen3_asr):
    return import_qwen_asr_backend().Qwen3ASRProcessor.from_pretrained(released_qwen3_asr)


@pytest.fixture(scope="module")
def frontend(released_qwen3_asr):
    return FrontEnd(released_qwen3_asr, template="default", max_new_tokens=256)


def _qwen_asr_prompt(processor, context: str, language: str | None) -> str:
    """qwen-asr 0.0.6's Qwen3ASRModel._build_text_prompt (qwen_asr/inference/qwen3_asr.py), which cannot be imported
    next to transformers 5 (its module registers the `qwen3_asr` config name transformers already has)."""
    messages = [{"role": "system", "content": context or ""},
                {"role": "user", "content": [{"type": "audio", "audio": ""}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return text + (f"language {language}<asr_text>" if language else "")


def test_special_stop_and_pad_ids_equal_qwen_asr(released_qwen3_asr, processor, frontend):
    from transformers import GenerationConfig

    family = frontend.family
    assert type(family) is Qwen3Asr and frontend.model_id == "qwen3-asr-0.6b"
    tok = processor.tokenizer
    thinker = json.loads((released_qwen3_asr / "config.json").read_text())["thinker_config"]
    assert family.audio_token_id == tok.convert_tokens_to_ids(processor.audio_token) == thinker["audio_token_id"]
    assert family.audio_start_id == tok.convert_tokens_to_ids("<|audio_start|>") == thinker["audio_start_token_id"]
    assert family.audio_end_id == tok.convert_tokens_to_ids("<|audio_end|>")
    assert family.asr_text_id == tok.convert_tokens_to_ids("<asr_text>")
    # the values the released folder's PROVENANCE.md lists
    assert (family.audio_start_id, family.audio_end_id, family.audio_token_id, family.asr_text_id) == \
        (151669, 151670, 151676, 151704)
    generation = GenerationConfig.from_pretrained(released_qwen3_asr)  # what qwen-asr's generate() stops on
    assert list(family.stop_ids) == list(generation.eos_token_id) == [tok.convert_tokens_to_ids("<|endoftext|>"),
                                                                        tok.convert_tokens_to_ids("<|im_end|>")]
    assert family.pad_id == generation.pad_token_id == tok.pad_token_id


@pytest.mark.parametrize("clip", ["001.wav", "front_center_48k.wav", "beckett.wav"])
def test_prompt_ids_and_features_equal_qwen_asr_processor(processor, frontend, audio_dir, clip):
    audio = load_audio(audio_dir / clip)
    for extra, context, language in PROMPTS:
        row = ManifestRow(id=clip, audio_filepath=str(audio_dir / clip), **extra)
        (r,) = frontend.prepare(row)
        assert frontend.family.prompt_text(frontend.family.prompt_spec(row, "default")) == \
            _qwen_asr_prompt(processor, context, language)
        ref = processor(text=[_qwen_asr_prompt(processor, context, language)], audio=[audio], return_tensors="np",
                        padding=True)
        assert list(r.expanded_ids) == ref["input_ids"][0].tolist(), (clip, extra)
        assert r.n_audio_tokens == r.expanded_ids.count(frontend.family.audio_token_id)
        assert r.features.shape == ref["input_features"][0].shape
        assert np.abs(r.features - ref["input_features"][0]).max() <= 1e-4
        assert np.array_equal(r.feature_mask, ref["feature_attention_mask"][0])


def test_audio_token_counts_equal_qwen_asr_processor(processor, frontend, tmp_path):
    prompt = _qwen_asr_prompt(processor, "", None)
    pad = frontend.family.audio_token_id
    rng = np.random.default_rng(0)
    counts = []
    for n in SAMPLES:
        audio = (rng.standard_normal(n) * 0.1).astype(np.float32)
        sf.write(tmp_path / f"{n}.wav", audio, 16000, subtype="FLOAT")
        ref = processor(text=[prompt], audio=[audio], return_tensors="np", padding=True)["input_ids"][0].tolist()
        (r,) = frontend.prepare(ManifestRow(id=str(n), audio_filepath=str(tmp_path / f"{n}.wav")))
        assert r.n_audio_tokens == ref.count(pad) == frontend.family.audio_tokens(n // 160), n
        assert list(r.expanded_ids) == ref, n
        counts.append(r.n_audio_tokens)
    assert counts[SAMPLES.index(100 * 160)] == 13 and counts[-1] == 30 * 13  # 13 per full second


def test_decode_keeps_the_answer_tag_as_qwen_asr_reads_it(processor, frontend):
    tok = processor.tokenizer
    ids = tok("language English<asr_text>héllo, 世界 — it's 3.5 o'clock", add_special_tokens=False)["input_ids"]
    ids.append(frontend.family.stop_ids[0])
    raw = frontend.decode(ids)
    assert raw == tok.decode(ids, skip_special_tokens=True)  # `<asr_text>` is not special in the released tokenizer
    answer = frontend.family.parse(raw)
    assert (answer.text, answer.language) == ("héllo, 世界 — it's 3.5 o'clock", "English")


def test_the_repositorys_qwen2_audio_files_are_the_released_ones(released_qwen2_audio, model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == sorted(p.name for p in released_qwen2_audio.iterdir() if p.is_file())
    for name in names:
        assert (model_dir / name).read_bytes() == (released_qwen2_audio / name).read_bytes(), name


def test_the_qwen3_fixtures_bpe_is_the_released_qwen3_asr_bpe(released_qwen3_asr):
    """The tiny fixture carries Qwen2-Audio's vocab.json and merges.txt; the released Qwen3-ASR's are the same BPE
    (its merges.txt has a `#version` header line more)."""
    assert (FIXTURE / "vocab.json").read_bytes() == (released_qwen3_asr / "vocab.json").read_bytes()
    ours = (FIXTURE / "merges.txt").read_text().splitlines()
    released = [line for line in (released_qwen3_asr / "merges.txt").read_text().splitlines()
                if not line.startswith("#version")]
    assert ours == released
    tiny, real = load_family(FIXTURE), load_family(released_qwen3_asr)
    text = "Names: Pip, Estella. 请转写。 héllo — it's 3.5 o'clock"
    assert tiny.tokenizer.encode(text, add_special_tokens=False).ids == \
        real.tokenizer.encode(text, add_special_tokens=False).ids
