"""The model-family seam: chosen from config.json `model_type`, clear errors for unknown ones, ids read from the
folder, and each family's own rules (Qwen3-ASR's answer format, audio-token count, templates) held to qwen-asr;
each family's encoder geometry per chunk (what the bm1684x runtime fills the audio net's masks from)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from qwen3_fixture import FIXTURE
from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.workers.features import FeatureConfig
from transcribe_batch.workers.models import (FAMILIES, AudioChunk, ModelFamilyError, PromptSpec, load_family,
                                             model_type_of)
from transcribe_batch.workers.models import qwen2_audio
from transcribe_batch.workers.models.qwen2_audio import Qwen2Audio
from transcribe_batch.workers.models.qwen3_asr import Qwen3Asr, audio_token_count, import_qwen_asr_backend
from transcribe_batch.workers.prompts import PromptError, load_templates


def _row(**fields):
    """A manifest row with only the fields that shape its prompt."""
    return ManifestRow(**{"id": "r", "audio_filepath": "", **fields})


@pytest.fixture(scope="module")
def qwen3_dir():
    return FIXTURE


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    return load_family(qwen3_dir)


def test_family_is_chosen_from_config_json(model_dir, qwen3_dir, qwen3):
    assert type(load_family(model_dir)) is Qwen2Audio and type(qwen3) is Qwen3Asr
    assert type(load_family(None)) is Qwen2Audio  # audio-only mode: the default family's geometry
    assert set(FAMILIES) == {"qwen2_audio", "qwen3_asr"} and model_type_of(qwen3_dir) == "qwen3_asr"


def test_unknown_or_missing_model_type_names_the_file_and_field(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "whisper"}))
    with pytest.raises(ModelFamilyError, match=rf"{cfg}: field `model_type` is 'whisper'.*qwen2_audio, qwen3_asr"):
        load_family(tmp_path)
    cfg.write_text(json.dumps({"architectures": ["X"]}))
    with pytest.raises(ModelFamilyError, match=rf"{cfg}: no `model_type` field"):
        load_family(tmp_path)
    cfg.write_text("{not json")
    with pytest.raises(ModelFamilyError, match=rf"{cfg}: not valid JSON"):
        load_family(tmp_path)
    assert issubclass(ModelFamilyError, PromptError)  # bad input: the actor records it, never retries


def test_qwen3_ids_are_read_from_the_folder(qwen3_dir, qwen3):
    config = json.loads((qwen3_dir / "config.json").read_text())["thinker_config"]
    added = {t["content"]: int(i) for i, t in
             json.loads((qwen3_dir / "tokenizer_config.json").read_text())["added_tokens_decoder"].items()}
    assert qwen3.audio_token_id == config["audio_token_id"] == added["<|audio_pad|>"]
    assert qwen3.audio_start_id == config["audio_start_token_id"] == added["<|audio_start|>"]
    assert qwen3.audio_end_id == added["<|audio_end|>"] and qwen3.asr_text_id == added["<asr_text>"]
    gen = json.loads((qwen3_dir / "generation_config.json").read_text())
    assert list(qwen3.stop_ids) == gen["eos_token_id"] and qwen3.pad_id == gen["pad_token_id"]
    assert qwen3.features.feature_size == 128 and not qwen3.features.fixed_window
    assert qwen3.support_languages == tuple(json.loads((qwen3_dir / "config.json").read_text())["support_languages"])


def test_qwen3_disagreeing_ids_are_refused(qwen3_dir, tmp_path):
    folder = shutil.copytree(qwen3_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["thinker_config"]["audio_token_id"] = 151646
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PromptError, match="thinker_config.audio_token_id is 151646.*<\\|audio_pad\\|>"):
        load_family(folder)
    folder = shutil.copytree(qwen3_dir, tmp_path / "m2")  # another folder: tokenizers are cached per folder
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["added_tokens_decoder"] = {k: v for k, v in tok["added_tokens_decoder"].items() if v["content"] != "<asr_text>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    with pytest.raises(PromptError, match="no '<asr_text>' token"):
        load_family(folder)


def test_qwen3_other_config_layout_is_refused_with_a_clear_error(qwen3_dir, tmp_path):
    folder = shutil.copytree(qwen3_dir, tmp_path / "hf-layout")
    config = json.loads((folder / "config.json").read_text())
    thinker = config.pop("thinker_config")
    config.update(audio_config=thinker["audio_config"], text_config=thinker["text_config"])
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PromptError, match=r"config.json: no `thinker_config` field.*transformers' own"):
        load_family(folder)


def test_qwen3_audio_token_count_equals_qwen_asr():
    processing = import_qwen_asr_backend().processing_qwen3_asr
    n = np.arange(1, 5000)
    assert [audio_token_count(int(k)) for k in n] == processing._get_feat_extract_output_lengths(n).tolist()
    assert audio_token_count(100) == 13 and audio_token_count(1000) == 130  # 13 per second


@pytest.mark.parametrize("raw", [
    "language English<asr_text>ten of clubs",
    "language Chinese<asr_text>欢迎使用阿里云。",
    "language english\n<asr_text> spaced  out ",
    "language None<asr_text>",
    "language None<asr_text>noise words",
    "no tag at all, just words",
    "",
    "language <asr_text>text without a language",
])
def test_qwen3_answer_parsing_equals_qwen_asr(qwen3, raw):
    import_qwen_asr_backend()
    from qwen_asr.inference.utils import parse_asr_output

    language, text = parse_asr_output(raw)
    answer = qwen3.parse(raw)
    assert answer.text == " ".join(text.split())
    assert (answer.language or "") == language


def test_qwen3_decode_keeps_the_asr_text_separator(qwen3):
    tok = qwen3.tokenizer
    ids = tok.encode("language English", add_special_tokens=False).ids + [qwen3.asr_text_id] + \
        tok.encode("ten of clubs", add_special_tokens=False).ids + [qwen3.stop_ids[0]]
    assert qwen3.decode(ids) == "language English<asr_text>ten of clubs"
    assert qwen3.parse(qwen3.decode(ids)).language == "English"


def test_qwen3_templates_context_and_forced_language(qwen3):
    assert qwen3.prompt_spec(None, "default") == PromptSpec("")
    assert qwen3.prompt_spec(_row(prompt="names: Ada"), "default") == PromptSpec("names: Ada")
    assert qwen3.prompt_spec(_row(language="en"), "language") == PromptSpec("", "English")
    assert qwen3.prompt_spec(_row(task="language", language="zh"), "default") == PromptSpec("", "Chinese")
    text = qwen3.prompt_text(PromptSpec("ctx", "English"))
    assert text.startswith("<|im_start|>system\nctx<|im_end|>\n") and text.endswith("assistant\nlanguage English<asr_text>")
    with pytest.raises(PromptError, match="ultraeval.*takes none"):
        qwen3.check_template("ultraeval")
    with pytest.raises(PromptError, match="task 'ultraeval' of row 'r1'"):
        qwen3.prompt_spec(_row(id="r1", task="ultraeval"), "default")
    with pytest.raises(PromptError, match="needs the row's `language` field \\(row 'r2'\\)"):
        qwen3.prompt_spec(_row(id="r2"), "language")
    with pytest.raises(PromptError, match="row 'r3': language 'tlh'.*support_languages"):
        qwen3.prompt_spec(_row(id="r3", language="tlh"), "language")


def test_qwen3_context_default_comes_from_prompts_toml(qwen3_dir, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('system = "s"\n[templates]\ndefault = "D"\n[qwen3_asr]\ncontext = "Glossary: BM1684X, Sophgo"\n')
    family = Qwen3Asr(qwen3_dir, load_templates(path))
    assert family.prompt_spec(None, "default").text == "Glossary: BM1684X, Sophgo"
    assert family.prompt_spec(_row(prompt="row context"), "default").text == "row context"


def test_qwen3_short_audio_is_padded_to_half_a_second(qwen3):
    short = np.ones(1000, np.float32) * 0.01
    padded = qwen3.fit_audio(short)
    assert padded.size == 8000 and np.array_equal(padded[:1000], short) and not padded[1000:].any()
    assert qwen3.n_audio_tokens(1000) == audio_token_count(50)
    feats, mask = qwen3.log_mel(padded)
    assert feats.shape == (128, 50) and mask.sum() == 50


def test_qwen2_audio_token_count_and_window():
    count = qwen2_audio.audio_token_count
    assert count(3000) == 750 and count(100) == 25  # 25 tokens per second, 750 per 30 s window
    assert count(1) == 0 and count(3) == 1
    family = Qwen2Audio(None, load_templates())  # no folder: the family's own window (30 s) and mel bins
    assert family.features == FeatureConfig(feature_size=128, fixed_window=True, chunk_length=30)
    assert family.n_audio_tokens(16000) == 25 and family.n_audio_tokens(16000 + 4 * 160) == 26
    assert family.n_audio_tokens(10 * 480000) == 750  # capped at the window


def test_qwen2_audio_chunks_are_one_window_with_its_conv_positions():
    family = Qwen2Audio(None, load_templates())
    assert family.audio_chunks(3000) == (AudioChunk(frames=3000, keep=(), keys=1500, rows=750),)
    assert family.audio_chunks(151) == (AudioChunk(frames=151, keep=(), keys=76, rows=38),)  # HF's feat lengths
    for n in range(1, 3001):
        (chunk,) = family.audio_chunks(n)
        assert chunk.rows == family.audio_tokens(n) and chunk.keys == (n - 1) // 2 + 1


def test_qwen3_audio_chunks_sum_to_the_processors_count(qwen3):
    """Chunks of 2 * n_window frames, three stride-2 convolutions each; only a clip of ONE chunk masks its
    convolutions short (the reference pads a clip's chunks to its longest one)."""
    assert qwen3.chunk_frames == 100
    for n in range(1, 2500):
        chunks = qwen3.audio_chunks(n)
        assert sum(c.rows for c in chunks) == audio_token_count(n), n
        assert sum(c.frames for c in chunks) == n and all(c.frames == 100 for c in chunks[:-1])
        assert all(c.keys == c.rows for c in chunks)
    assert qwen3.audio_chunks(70) == (AudioChunk(frames=70, keep=(35, 18), keys=9, rows=9),)
    assert qwen3.audio_chunks(170) == (AudioChunk(100, (50, 25), 13, 13), AudioChunk(70, (50, 25), 9, 9))
