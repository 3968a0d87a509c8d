"""The tiny Qwen3-ASR fixture as a complete model folder: its committed files + the shared Qwen2 BPE (vocab.json,
merges.txt), which is too big to commit and is the same BPE the real Qwen3-ASR tokenizer uses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-qwen3-asr"


def assemble(shared_model_dir: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    for f in FIXTURE.iterdir():
        if f.is_file() and f.name != "README.md":
            shutil.copy(f, into / f.name)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(shared_model_dir / name, into / name)
    return into


def reference() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())
