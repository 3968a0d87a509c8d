"""What every model family's prompt needs: the model folder's tokenizer (built with `tokenizers`, no transformers at
run time), its special-token and stop ids, the instruction templates and the answer-length budget.

The chat prompts themselves live with their model family (workers/models/). The tokenizer loader serves the real
folders (vocab.json + merges.txt + tokenizer_config.json with its added tokens) and tiny fixtures (tokenizer.json).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from transcribe_batch.manifests.row import ManifestRow

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


def answer_budget(duration_s: float, cap: int) -> int:
    """max_new_tokens for an utterance of `duration_s` seconds (cap: the run's max_new_tokens setting)."""
    return max(1, min(cap, plausible_answer_tokens(duration_s)))


@dataclass(frozen=True)
class Templates:
    system: str
    templates: dict[str, str]
    sections: dict[str, dict] = field(default_factory=dict)  # per model family settings ([qwen3_asr] context, …)

    def instruction(self, row: ManifestRow | None, default: str = "default") -> str:
        """Row `prompt` (free text) > row `task` (a template name) > the run's template name (row None: the
        template's own instruction)."""
        prompt, task, language, row_id = (None, None, None, "?") if row is None else (
            row.prompt, row.task, row.language, row.id)
        if prompt:
            return str(prompt)
        name = task or default
        if name not in self.templates:
            where = f"task {name!r} of row {row_id!r}" if task else f"template {name!r}"
            raise PromptError(f"unknown {where}; known templates: {', '.join(sorted(self.templates))}")
        template = self.templates[name]
        if "{language}" in template:
            if not language:
                raise PromptError(f"template {name!r} needs the row's `language` field (row {row_id!r})")
            code = str(language).strip()
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
    sections = {k: v for k, v in data.items() if isinstance(v, dict) and k != "templates"}
    return Templates(system=str(data.get("system", "You are a helpful assistant.")), templates=dict(templates),
                     sections=sections)


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


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


_read_json = read_json


def token_id(tokenizer: Tokenizer, token: str, d: Path) -> int:
    """The id of a token the prompt needs; a PromptError naming the folder when the tokenizer lacks it."""
    i = tokenizer.token_to_id(token)
    if i is None:
        raise PromptError(f"{d}: the tokenizer has no {token!r} token")
    return i


def _content(t):
    return t.get("content") if isinstance(t, dict) else t


def stop_ids(tokenizer: Tokenizer, d: Path) -> tuple[int, ...]:
    """generation_config.json's eos_token_id(s), then <|im_end|>, <|endoftext|> and tokenizer_config.json's eos_token."""
    eos = read_json(d / "generation_config.json").get("eos_token_id")
    ids = list(eos) if isinstance(eos, list) else ([eos] if eos is not None else [])
    for t in ("<|im_end|>", "<|endoftext|>", _content(read_json(d / "tokenizer_config.json").get("eos_token"))):
        i = tokenizer.token_to_id(t) if t else None
        if i is not None and i not in ids:
            ids.append(i)
    if not ids:
        raise PromptError(f"{d}: no stop token (<|im_end|> / <|endoftext|> / eos_token_id) found")
    return tuple(int(i) for i in ids)


def pad_id(tokenizer: Tokenizer, d: Path, stops: tuple[int, ...]) -> int:
    """generation_config.json's pad_token_id, else tokenizer_config.json's pad_token, else the last stop id."""
    pad = read_json(d / "generation_config.json").get("pad_token_id")
    if pad is not None:
        return int(pad)
    token = _content(read_json(d / "tokenizer_config.json").get("pad_token"))
    i = tokenizer.token_to_id(token) if token else None
    return int(i) if i is not None else stops[-1]
