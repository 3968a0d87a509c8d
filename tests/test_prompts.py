"""Qwen2-Audio prompt ids equal transformers' Qwen2AudioProcessor + apply_chat_template; both tokenizer layouts work."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoProcessor

from transcribe_batch.manifests.row import ManifestRow
from transcribe_batch.workers.audio import load_audio
from transcribe_batch.workers.models import PromptSpec
from transcribe_batch.workers.models.qwen2_audio import Qwen2Audio
from transcribe_batch.workers.prompts import PromptError, Templates, answer_budget, load_templates


def _row(**fields):
    """A manifest row with only the fields that shape its prompt."""
    return ManifestRow(**{"id": "r", "audio_filepath": "", **fields})

ULTRAEVAL = 'listen the audio, output the audio content with format {"content": ""}'


@pytest.fixture(scope="module")
def processor(model_dir):
    return AutoProcessor.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def prompt(model_dir):
    return Qwen2Audio(model_dir, load_templates())


def ChatPrompt(d):  # noqa: N802 - the Qwen2-Audio family with the default templates
    return Qwen2Audio(d, load_templates())


def _hf_ids(processor, instruction, audio, system="You are a helpful assistant."):
    conversation = [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "audio", "audio_url": "x.wav"}, {"type": "text", "text": instruction}]},
    ]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, audio=[audio], sampling_rate=16000, return_tensors="np", padding=True)
    return text, inputs["input_ids"][0].tolist()


def test_templates_file():
    t = load_templates()
    assert t.templates["ultraeval"] == ULTRAEVAL
    assert {"default", "ultraeval"} <= set(t.templates) and t.system == "You are a helpful assistant."


@pytest.mark.parametrize("clip", ["001.wav", "front_center_48k.wav", "endgame.wav"])
def test_ids_equal_the_processor(processor, prompt, audio_dir, clip):
    audio = load_audio(audio_dir / clip)
    instructions = list(load_templates().templates.values()) + ["Wie spät ist es? 请转写这段音频。", "  two  spaces\n"]
    for instruction in instructions:
        text, ref = _hf_ids(processor, instruction, audio)
        assert prompt.prompt_text(PromptSpec(instruction)) == text
        ids = prompt.prompt_ids(PromptSpec(instruction))
        assert ids.count(prompt.audio_token_id) == 1
        expanded = prompt.expand(ids, prompt.n_audio_tokens(len(audio)))
        assert expanded == ref, instruction


def test_special_ids_are_read_from_the_folder(processor, prompt, model_dir):
    tok = processor.tokenizer
    config = json.loads((model_dir / "config.json").read_text())
    assert prompt.audio_token_id == config["audio_token_index"] == tok.convert_tokens_to_ids("<|AUDIO|>")
    assert set(prompt.stop_ids) == {tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")}
    assert prompt.pad_id == tok.pad_token_id


def test_decode_equals_transformers(processor, prompt):
    text = 'The original content of this audio is: {"content": "héllo, 世界 — it\'s 3.5 o\'clock"}'
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"] + [prompt.stop_ids[0]]
    assert prompt.decode(ids) == processor.tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tokenizer_json_folder_gives_the_same_ids(tmp_path, processor, prompt, model_dir):
    processor.tokenizer.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    for name in ("config.json", "generation_config.json", "preprocessor_config.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    other = ChatPrompt(tmp_path)
    assert other.prompt_ids(PromptSpec(ULTRAEVAL)) == prompt.prompt_ids(PromptSpec(ULTRAEVAL))
    assert other.stop_ids == prompt.stop_ids and other.audio_token_id == prompt.audio_token_id


def test_missing_tokenizer_and_wrong_audio_index(tmp_path, model_dir):
    with pytest.raises(PromptError, match="no tokenizer.json"):
        ChatPrompt(tmp_path)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_audio", "audio_token_index": 10**7}))
    with pytest.raises(PromptError, match="audio_token_index"):
        ChatPrompt(tmp_path)


def test_instruction_precedence():
    t = Templates(system="s", templates={"default": "D", "ultraeval": "U"})
    assert t.instruction(_row(prompt="free text", task="ultraeval")) == "free text"
    assert t.instruction(_row(task="ultraeval"), "default") == "U"
    assert t.instruction(_row(prompt=None, task=None), "ultraeval") == "U"
    with pytest.raises(PromptError, match="unknown task 'nope'.*default, ultraeval"):
        t.instruction(_row(id="r1", task="nope"))


def test_language_placeholder():
    t = load_templates()
    assert t.instruction(_row(language="zh"), "language") == \
        "Transcribe the Chinese speech in this audio exactly as spoken. Output only the transcript."
    assert "Klingon speech" in t.instruction(_row(task="language", language="Klingon"))
    with pytest.raises(PromptError, match="needs the row's `language`"):
        t.instruction(_row(id="r7", language=None), "language")


def test_bad_templates_file(tmp_path):
    (tmp_path / "p.toml").write_text("[templates]\ndefault = 3\n")
    with pytest.raises(PromptError, match="p.toml"):
        load_templates(tmp_path / "p.toml")


def test_answer_budget():
    assert answer_budget(1.0, 256) < answer_budget(10.0, 256) < answer_budget(30.0, 256) <= 256
    assert answer_budget(30.0, 256) >= 5 * 30  # ~5 tokens/s of speech
    assert answer_budget(3600.0, cap=200) == 200
