"""Front end shared by every engine: manifest row → Requests (audio, features, prompt ids), answer → transcript.

    fe = FrontEnd(model_dir, template="default", limits=engine.limits)
    requests = fe.prepare(row)                 # ≥1: long audio is split at silences into pieces that fit
    results = engine.transcribe_batch(requests)
    texts = [fe.clean(r.text or fe.decode(r.token_ids), duration_s=q.duration_s).text for q, r in ...]
    transcript = fe.join(texts)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from transcribe_batch.config.settings import default

from .audio import SAMPLE_RATE, load_audio
from .cleanup import Cleaned, clean, join
from .engines.base import EngineLimits, Request
from .features import FeatureConfig, log_mel, n_audio_tokens
from .prompts import ChatPrompt, PromptError, Templates, answer_budget, load_templates
from .segment import max_piece_seconds, split_points


class FrontEnd:
    def __init__(
        self,
        model_dir: str | os.PathLike | None,
        *,
        template: str | None = None,
        limits: EngineLimits | None = None,
        max_new_tokens_cap: int | None = None,
        templates: Templates | None = None,
    ):
        self.model_dir = Path(model_dir) if model_dir is not None else None
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise FileNotFoundError(f"model folder not found: {self.model_dir}")
        self.templates = templates or load_templates()
        template = template or default("template")
        if template not in self.templates.templates:
            raise PromptError(f"unknown template {template!r}; known: {', '.join(sorted(self.templates.templates))}")
        self.template = template
        self.max_new_tokens_cap = max_new_tokens_cap or default("max_new_tokens")
        self.features = FeatureConfig.from_model_dir(self.model_dir)
        self.limits = limits or EngineLimits(max_audio_s=self.features.max_audio_s)
        self.prompt = ChatPrompt(self.model_dir, system=self.templates.system) if self.model_dir is not None else None
        self.model_id = model_id_of(self.model_dir)

    def budget(self, duration_s: float) -> int:
        return answer_budget(duration_s, self.max_new_tokens_cap)

    def max_piece_s(self, instruction: str) -> float:
        """Longest piece (seconds) this engine takes with this instruction."""
        n_text = len(self.prompt.ids(instruction)) - 1 if self.prompt else 0
        return max_piece_seconds(self.limits, self.features, n_text, self.budget)

    def warm_up(self) -> None:
        """Do the first row's one-time work now (imports and mel filters behind the features, the first FFT, the
        run's template's prompt ids) so that the first row costs what every other row costs."""
        if self.prompt is None:  # cheap mode: audio loading and splitting only, nothing to warm
            return
        log_mel(np.zeros(SAMPLE_RATE // 10, dtype=np.float32), self.features)
        try:
            self.max_piece_s(self.templates.instruction({}, self.template))
        except PromptError:  # the template needs row fields (language): its ids are made with the first row
            self.prompt.ids("")

    def prepare(self, row: dict, *, max_chunk_s: float | None = None, keep_audio: bool = False) -> list[Request]:
        path = row["audio_filepath"]
        audio = load_audio(path, row.get("offset") or 0.0, row.get("duration"))
        instruction = self.templates.instruction(row, self.template)
        longest = self.max_piece_s(instruction)
        if max_chunk_s is not None:
            longest = min(longest, max_chunk_s)
        pieces = split_points(audio, longest, SAMPLE_RATE)
        rid = str(row["id"])
        requests = []
        for k, (start, end) in enumerate(pieces):
            piece = audio[start:end]
            duration_s = piece.size / SAMPLE_RATE
            req = Request(
                id=rid if len(pieces) == 1 else f"{rid}#{k}",
                duration_s=duration_s,
                audio=piece if keep_audio or self.prompt is None else None,
                n_audio_tokens=n_audio_tokens(piece.size, self.features),
                max_new_tokens=self.budget(duration_s),
                prompt=instruction,
                reference=row.get("text"),
                chunk_index=k,
                n_chunks=len(pieces),
            )
            if self.prompt is not None:
                req.features, req.feature_mask = log_mel(piece, self.features)
                req.prompt_ids = self.prompt.ids(instruction)
                req.expanded_ids = self.prompt.expand(req.prompt_ids, req.n_audio_tokens)
                req.audio_token_id = self.prompt.audio_token_id
                req.stop_ids = self.prompt.stop_ids
                if self.limits.max_seq_len is not None:  # what is left of the sequence after the prompt
                    room = self.limits.max_seq_len - len(req.expanded_ids)
                    req.max_new_tokens = max(1, min(req.max_new_tokens, room))
            requests.append(req)
        return requests

    def decode(self, token_ids: list[int]) -> str:
        if self.prompt is None:
            raise RuntimeError("FrontEnd(model_dir=None) has no tokenizer to decode with")
        return self.prompt.decode(token_ids)

    def clean(self, raw: str, *, duration_s: float) -> Cleaned:
        return clean(raw, duration_s=duration_s)

    def join(self, texts: list[str]) -> str:
        return join(texts)


def model_id_of(model_dir: Path | None) -> str:
    """The model's name: config.json's _name_or_path if it names one, else the folder's name."""
    if model_dir is None:
        return ""
    config = model_dir / "config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("_name_or_path")
        if name:
            return Path(name).name
    return model_dir.name
