"""One manifest line, normalized and typed: what the reader (manifests/reader.py) yields and what travels with a work
item to a device actor."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

KNOWN_FIELDS = ("id", "audio_filepath", "offset", "duration", "text", "prompt", "task", "language")


@dataclass(frozen=True)
class ManifestRow:
    """A normalized manifest row (never changed once read)."""

    id: str  # given, else a stable digest of audio_filepath+offset+duration as written (reader.stable_id)
    audio_filepath: str  # absolute path, resolved against the manifest's folder
    offset: float = 0.0  # start of the utterance in the file, seconds
    duration: float | None = None  # seconds from `offset`; None: to the end of the file
    text: str | None = None  # reference transcript
    prompt: str | None = None  # free-text instruction (overrides task and the run's template)
    task: str | None = None  # prompt template name (config/prompts.toml)
    language: str | None = None  # language code or name (templates with {language}; Qwen3-ASR's forced language)
    extra: tuple[tuple[str, Any], ...] = ()  # the line's other fields, (name, JSON value) in the line's order

    @property
    def extra_fields(self) -> dict[str, Any]:
        """The line's other fields, as a new dict."""
        return dict(self.extra)

    def extra_json(self) -> str | None:
        """The other fields as one JSON object (sorted keys), None when there are none (results' manifest_extra)."""
        return json.dumps(dict(self.extra), ensure_ascii=False, sort_keys=True) if self.extra else None

    def to_dict(self) -> dict[str, Any]:
        """The row as a manifest line would carry it: the known fields, then the others."""
        return {**{name: getattr(self, name) for name in KNOWN_FIELDS}, **dict(self.extra)}
