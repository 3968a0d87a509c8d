"""Model families: one module each, chosen from the model folder's config.json `model_type`.

A new family is one module with a `ModelFamily` subclass (workers/models/base.py says what it must tell) plus its
tests and one line in FAMILIES. Without a model folder (the front end's audio-only mode) the default family's audio
geometry is used.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from ..prompts import PromptError, Templates, load_templates
from .base import Answer, AudioChunk, ModelFamily, NetFacts, PromptSpec, ReferenceModel

FAMILIES = {
    "qwen2_audio": "transcribe_batch.workers.models.qwen2_audio:Qwen2Audio",
    "qwen3_asr": "transcribe_batch.workers.models.qwen3_asr:Qwen3Asr",
}
DEFAULT = "qwen2_audio"


class ModelFamilyError(PromptError):
    """The model folder names no family this runner knows (or its config.json cannot be read)."""


def model_type_of(model_dir: str | os.PathLike | None) -> str:
    """config.json's `model_type` (the default family without a folder or without config.json)."""
    if model_dir is None:
        return DEFAULT
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return DEFAULT
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFamilyError(f"{path}: not valid JSON ({e})") from e
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not model_type:
        raise ModelFamilyError(f"{path}: no `model_type` field; known model types: {', '.join(FAMILIES)}")
    if model_type not in FAMILIES:
        raise ModelFamilyError(f"{path}: field `model_type` is {model_type!r}, which no model family handles; "
                               f"known: {', '.join(FAMILIES)}")
    return model_type


def family_class(model_type: str) -> type[ModelFamily]:
    module, _, cls = FAMILIES[model_type].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_family(model_dir: str | os.PathLike | None, templates: Templates | None = None) -> ModelFamily:
    """The family of the model in `model_dir`, reading its ids and sizes from that folder."""
    d = Path(model_dir) if model_dir is not None else None
    return family_class(model_type_of(d))(d, templates or load_templates())


__all__ = ["Answer", "AudioChunk", "DEFAULT", "FAMILIES", "ModelFamily", "ModelFamilyError", "NetFacts", "PromptSpec",
           "ReferenceModel", "family_class", "load_family", "model_type_of"]
