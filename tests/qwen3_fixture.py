"""The tiny Qwen3-ASR fixture: a complete model folder (config, weights, tokenizer, bmodels; its README.md)."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-qwen3-asr"


def reference() -> dict:
    return json.loads((FIXTURE / "reference.json").read_text())
