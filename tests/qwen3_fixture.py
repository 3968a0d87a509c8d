"""The tiny Qwen3-ASR fixture as a complete model folder: its committed files + the shared Qwen2 BPE (vocab.json,
merges.txt), which is too big to commit and is the same BPE the real Qwen3-ASR tokenizer uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-qwen3-asr"
MODEL_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
               "chat_template.json", "model.safetensors")


def assemble(shared_model_dir: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copy(FIXTURE / name, into / name)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(shared_model_dir / name, into / name)
    return into


def reference() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())
