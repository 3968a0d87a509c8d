"""The ASR chat prompt as token ids, built with `tokenizers` from a model folder (no transformers at run time).

The text is Qwen2AudioProcessor's chat template for one system turn and one user turn (audio, then the instruction)
plus the generation prompt. Special tokens and their ids are read from the folder: `<|AUDIO|>` via config.json's
`audio_token_index`, stop ids via generation_config.json and the tokenizer. The same code serves the real
Qwen2-Audio folder (vocab.json + merges.txt + tokenizer_config.json) and a tiny fixture (tokenizer.json).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from transcribe_batch.config.settings import default

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Qwen2Tokenizer's pre-tokenizer split (transformers/models/qwen2/tokenization_qwen2.py).
_QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# Answer-length budget: speech rarely exceeds ~5 tokens/s; the overhead covers a JSON wrapper or a lead-in sentence.
TOKENS_PER_SECOND = 5.0
ANSWER_OVERHEAD_TOKENS = 24


# Manifest `language` codes → the names templates with a {language} placeholder get (other values are used as is).
LANGUAGES = {"en": "English", "zh": "Chinese", "yue": "Cantonese", "de": "German", "es": "Spanish", "fr": "French",
             "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ja": "Japanese", "ko": "Korean", "ar": "Arabic",
             "nl": "Dutch", "pl": "Polish", "tr": "Turkish", "hi": "Hindi", "vi": "Vietnamese", "th": "Thai",
             "id": "Indonesian", "sv": "Swedish", "uk": "Ukrainian", "cs": "Czech", "el": "Greek", "fa": "Persian"}


class PromptError(ValueError):
    """A prompt cannot be built (unknown template name, model folder without a usable tokenizer, …)."""


def plausible_answer_tokens(duration_s: float) -> int:
    """The most tokens a transcript of `duration_s` seconds of speech plausibly needs."""
    return math.ceil(TOKENS_PER_SECOND * duration_s) + ANSWER_OVERHEAD_TOKENS


def answer_budget(duration_s: float, cap: int | None = None) -> int:
    """max_new_tokens for an utterance of `duration_s` seconds (cap: the max_new_tokens setting)."""
    return max(1, min(cap or default("max_new_tokens"), plausible_answer_tokens(duration_s)))


@dataclass(frozen=True)
class Templates:
    system: str
    templates: dict[str, str]

    def instruction(self, row: dict, default: str = "default") -> str:
        """Row `prompt` (free text) > row `task` (a template name) > the run's template name."""
        if row.get("prompt"):
            return str(row["prompt"])
        name = row.get("task") or default
        if name not in self.templates:
            where = f"task {name!r} of row {row.get('id', '?')!r}" if row.get("task") else f"template {name!r}"
            raise PromptError(f"unknown {where}; known templates: {', '.join(sorted(self.templates))}")
        template = self.templates[name]
        if "{language}" in template:
            if not row.get("language"):
                raise PromptError(f"template {name!r} needs the row's `language` field (row {row.get('id', '?')!r})")
            code = str(row["language"]).strip()
            template = template.replace("{language}", LANGUAGES.get(code.lower(), code))
        return template


def load_templates(path: str | os.PathLike | None = None) -> Templates:
    """Templates from a TOML file (default: the packaged config/prompts.toml)."""
    if path is None:
        text = resources.files("transcribe_batch.config").joinpath("prompts.toml").read_text()
        where = "config/prompts.toml"
    else:
        text, where = Path(path).read_text(), str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PromptError(f"{where}: {e}") from e
    templates = data.get("templates") or {}
    if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
        raise PromptError(f"{where}: [templates] must map names to instruction strings")
    return Templates(system=str(data.get("system", "You are a helpful assistant.")), templates=dict(templates))


def load_tokenizer(model_dir: str | os.PathLike) -> Tokenizer:
    """The model folder's tokenizer, built once per folder and process (front end and engines share it)."""
    return _load_tokenizer(str(Path(model_dir).resolve()))


@lru_cache(maxsize=4)
def _load_tokenizer(model_dir: str) -> Tokenizer:
    """tokenizer.json if present, else a Qwen2 byte-level BPE from vocab.json + merges.txt + tokenizer_config.json."""
    d = Path(model_dir)
    if (d / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(d / "tokenizer.json"))
    vocab, merges = d / "vocab.json", d / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise PromptError(f"{d}: no tokenizer.json and no vocab.json + merges.txt")
    tok = Tokenizer(BPE.from_file(str(vocab), str(merges), continuing_subword_prefix="", end_of_word_suffix="",
                                  fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    config = _read_json(d / "tokenizer_config.json")
    added = sorted((int(i), t) for i, t in (config.get("added_tokens_decoder") or {}).items())
    tokens = [AddedToken(t["content"], single_word=t.get("single_word", False), lstrip=t.get("lstrip", False),
                         rstrip=t.get("rstrip", False), normalized=t.get("normalized", False),
                         special=t.get("special", True)) for _, t in added]
    run: list[AddedToken] = []  # add consecutive tokens of one kind in one call (one call per token is slow)
    for i, token in enumerate(tokens):
        run.append(token)
        if i + 1 == len(tokens) or tokens[i + 1].special != token.special:
            (tok.add_special_tokens if token.special else tok.add_tokens)(run)
            run = []
    for token_id, t in added:
        if tok.token_to_id(t["content"]) != token_id:
            raise PromptError(f"{d}: added token {t['content']!r} got id {tok.token_to_id(t['content'])}, "
                              f"tokenizer_config.json says {token_id}")
    return tok


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


class ChatPrompt:
    """Prompt ids for one model folder. `ids(instruction)` has one audio placeholder; `expand` repeats it."""

    def __init__(self, model_dir: str | os.PathLike, system: str = "You are a helpful assistant."):
        d = Path(model_dir)
        self.tokenizer = load_tokenizer(d)
        self.system = system
        config = _read_json(d / "config.json")
        tok_config = _read_json(d / "tokenizer_config.json")
        proc_config = _read_json(d / "processor_config.json")

        def token(name: str, default: str) -> str:
            return proc_config.get(name) or tok_config.get(name) or default

        if "audio_token_index" in config:
            self.audio_token_id = int(config["audio_token_index"])
            self.audio_token = self.tokenizer.id_to_token(self.audio_token_id)
            if self.audio_token is None:
                raise PromptError(f"{d}: audio_token_index {self.audio_token_id} is not in the tokenizer")
        else:
            self.audio_token = token("audio_token", "<|AUDIO|>")
            self.audio_token_id = self._id(self.audio_token, d)
        self.audio_bos = token("audio_bos_token", "<|audio_bos|>")
        self.audio_eos = token("audio_eos_token", "<|audio_eos|>")
        for t in (self.audio_bos, self.audio_eos, "<|im_start|>", "<|im_end|>"):
            self._id(t, d)
        self.stop_ids = self._stop_ids(d, tok_config)
        pad = _read_json(d / "generation_config.json").get("pad_token_id")
        pad_token = tok_config.get("pad_token")
        pad_token = pad_token.get("content") if isinstance(pad_token, dict) else pad_token
        self.pad_id = int(pad) if pad is not None else (self.tokenizer.token_to_id(pad_token) if pad_token else self.stop_ids[-1])
        self._cache: dict[str, list[int]] = {}

    def _id(self, token: str, d: Path) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise PromptError(f"{d}: the tokenizer has no {token!r} token")
        return i

    def _stop_ids(self, d: Path, tok_config: dict) -> tuple[int, ...]:
        eos = _read_json(d / "generation_config.json").get("eos_token_id")
        ids = list(eos) if isinstance(eos, list) else ([eos] if eos is not None else [])
        for t in ("<|im_end|>", "<|endoftext|>", tok_config.get("eos_token")):
            t = t.get("content") if isinstance(t, dict) else t
            i = self.tokenizer.token_to_id(t) if t else None
            if i is not None and i not in ids:
                ids.append(i)
        if not ids:
            raise PromptError(f"{d}: no stop token (<|im_end|> / <|endoftext|> / eos_token_id) found")
        return tuple(int(i) for i in ids)

    def text(self, instruction: str) -> str:
        """The chat text with one audio placeholder, as Qwen2AudioProcessor.apply_chat_template renders it."""
        return (
            f"<|im_start|>system\n{self.system}<|im_end|>\n"
            f"<|im_start|>user\nAudio 1: {self.audio_bos}{self.audio_token}{self.audio_eos}\n{instruction}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    def ids(self, instruction: str) -> list[int]:
        if instruction not in self._cache:
            ids = self.tokenizer.encode(self.text(instruction), add_special_tokens=False).ids
            if ids.count(self.audio_token_id) != 1:
                raise PromptError(f"the instruction must not contain {self.audio_token!r}: {instruction!r}")
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[instruction] = ids
        return list(self._cache[instruction])

    def expand(self, ids: list[int], n_audio_tokens: int) -> list[int]:
        """The HF form: the placeholder repeated once per audio token."""
        k = ids.index(self.audio_token_id)
        return ids[:k] + [self.audio_token_id] * n_audio_tokens + ids[k + 1:]

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

