"""Front end shared by every engine: manifest row → Requests (audio, features, prompt ids), answer → transcript.

    fe = FrontEnd(model_dir, template="default", limits=engine.limits)
    requests = fe.prepare(row)                 # ≥1: long audio is split at silences into pieces that fit
    results = engine.transcribe_batch(requests)
    cleaned = [fe.clean(r.text or fe.decode(r.token_ids), duration_s=q.duration_s) for q, r in ...]
    transcript = fe.join([c.text for c in cleaned]); language = fe.join_languages([c.language for c in cleaned])

Everything model-specific (features, audio-token count, limits, prompt, stop ids, answer format) comes from the
model folder's family (workers/models/); this module only puts the pieces together.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from transcribe_batch.config.settings import default

from .audio import SAMPLE_RATE, load_audio
from .cleanup import Cleaned, clean, join, join_languages
from .engines.base import EngineLimits, Request
from .models import ModelFamily, load_family
from .prompts import ANSWER_OVERHEAD_TOKENS, TOKENS_PER_SECOND, PromptError, Templates, answer_budget, load_templates
from .segment import max_piece_seconds, split_points

MIN_ANSWER_PIECE_S = 4.0  # see FrontEnd.max_piece_s


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
        self.family: ModelFamily = load_family(self.model_dir, self.templates)
        self.family.check_template(template)
        self.template = template
        self.max_new_tokens_cap = max_new_tokens_cap or default("max_new_tokens")
        self.features = self.family.features
        self.limits = limits or EngineLimits(max_audio_s=self.family.max_audio_s)
        self.tokenized = self.family.has_tokenizer
        self.model_id = model_id_of(self.model_dir)

    def budget(self, duration_s: float) -> int:
        return answer_budget(duration_s, self.max_new_tokens_cap)

    def max_piece_s(self, spec) -> float:
        """Longest piece (seconds) this engine takes with this prompt: the family's and the engine's limits, the
        sequence limit, and the answer cap (a piece whose plausible transcript outgrows max_new_tokens would be cut
        off, so it is split instead; a cap too small for MIN_ANSWER_PIECE_S of speech is taken as a deliberate
        truncation and does not split)."""
        n_text = len(self.family.prompt_ids(spec)) - 1 if self.tokenized else 0
        longest = max_piece_seconds(self.limits, self.features, n_text, self.budget,
                                    audio_tokens=self.family.n_audio_tokens,
                                    step_samples=self.family.token_step_samples, max_audio_s=self.family.max_audio_s)
        by_cap = (self.max_new_tokens_cap - ANSWER_OVERHEAD_TOKENS) / TOKENS_PER_SECOND
        return min(longest, by_cap) if by_cap >= MIN_ANSWER_PIECE_S else longest

    def warm_up(self) -> None:
        """Do the first row's one-time work now (imports and mel filters behind the features, the first FFT, the
        run's template's prompt ids) so that the first row costs what every other row costs."""
        if not self.tokenized:  # cheap mode: audio loading and splitting only, nothing to warm
            return
        self.family.log_mel(self.family.fit_audio(np.zeros(SAMPLE_RATE // 10, dtype=np.float32)))
        try:
            self.max_piece_s(self.family.prompt_spec({}, self.template))
        except PromptError:  # the template needs row fields (language): its ids are made with the first row
            self.family.prompt_ids(self.family.prompt_spec({"prompt": " "}, "default"))

    def prepare(self, row: dict, *, max_chunk_s: float | None = None, keep_audio: bool = False) -> list[Request]:
        path = row["audio_filepath"]
        audio = load_audio(path, row.get("offset") or 0.0, row.get("duration"))
        spec = self.family.prompt_spec(row, self.template)
        longest = self.max_piece_s(spec)
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
                audio=piece if keep_audio or not self.tokenized else None,
                n_audio_tokens=self.family.n_audio_tokens(piece.size),
                max_new_tokens=self.budget(duration_s),
                prompt=spec.text,
                reference=row.get("text"),
                chunk_index=k,
                n_chunks=len(pieces),
            )
            if self.tokenized:
                req.features, req.feature_mask = self.family.log_mel(self.family.fit_audio(piece))
                req.prompt_ids = self.family.prompt_ids(spec)
                req.expanded_ids = self.family.expand(req.prompt_ids, req.n_audio_tokens)
                req.audio_token_id = self.family.audio_token_id
                req.stop_ids = self.family.stop_ids
                if self.limits.max_seq_len is not None:  # what is left of the sequence after the prompt
                    room = self.limits.max_seq_len - len(req.expanded_ids)
                    req.max_new_tokens = max(1, min(req.max_new_tokens, room))
            requests.append(req)
        return requests

    def decode(self, token_ids: list[int]) -> str:
        if not self.tokenized:
            raise RuntimeError("FrontEnd(model_dir=None) has no tokenizer to decode with")
        return self.family.decode(token_ids)

    def clean(self, raw: str, *, duration_s: float) -> Cleaned:
        """The family's parse of the raw answer (transcript, identified language), then the degenerate check."""
        return clean(raw, duration_s=duration_s, extract=self.family.parse)

    def join(self, texts: list[str]) -> str:
        return join(texts)

    def join_languages(self, languages: list[str | None]) -> str | None:
        return join_languages(languages)


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
