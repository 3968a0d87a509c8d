"""The tiny Qwen3-ASR fixture: a complete model folder (config, weights, tokenizer, bmodels; its README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-qwen3-asr"
MODEL_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
               "chat_template.json", "model.safetensors", "vocab.json", "merges.txt")


def reference() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())


def copy_model(into: Path) -> Path:
    """The fixture's model folder (config, weights, tokenizer; no bmodels) copied to `into`, for a test that changes
    one of its files."""
    into.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy(FIXTURE / name, into / name)
    return into
