"""What a model family says: everything the pipeline needs to know about one kind of audio LLM.

A family is built from a model folder (its config.json names the family through `model_type`, workers/models/
__init__.py picks the module) and reads every id and size from that folder's files. Front end, cleanup, actor and
engines ask the family; none of them branches on the model.

    family = load_family(model_dir, templates)
    spec = family.prompt_spec(row, "default")          # what this row asks (instruction / context, forced language)
    ids = family.prompt_ids(spec)                      # chat prompt ids with ONE audio placeholder
    feats, mask = family.log_mel(family.fit_audio(piece))
    n = family.n_audio_tokens(piece.size)              # how often the placeholder is repeated (HF form)
    chunks = family.audio_chunks(int(mask.sum()))      # the encoder's geometry per chunk (the bm1684x runtime's masks)
    answer = family.parse(raw)                         # Answer(text, language)
    facts = family.net_facts()                         # what a bmodel compiled from this folder must match
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from transcribe_batch.manifests.row import ManifestRow

from ..features import FeatureConfig, log_mel, valid_frames
from ..prompts import PromptError, Templates, load_tokenizer, pad_id, stop_ids


@dataclass(frozen=True)
class PromptSpec:
    """What one manifest row asks the model for (hashable: prompt ids are cached per spec)."""

    text: str  # recorded in the results' `prompt` column: the instruction (Qwen2-Audio) or the context (Qwen3-ASR)
    language: str | None = None  # forced answer language, for families that take one (Qwen3-ASR)


@dataclass(frozen=True)
class Answer:
    """A raw answer taken apart: the transcript and, for families that identify it, the spoken language."""

    text: str
    language: str | None = None  # e.g. "English"; None when the family does not say or the language was forced


@dataclass(frozen=True)
class AudioChunk:
    """One chunk of a clip as the family's audio encoder sees it: the lengths the compiled audio net's masks need.
    The bm1684x runtime fills its inputs from these and only checks them against the net's shapes; the family is
    the one place that knows the encoder's arithmetic. A fixed-window encoder has one chunk for the whole clip."""

    frames: int  # valid mel frames in the chunk (chunks are consecutive; every one but the last is full)
    keep: tuple[int, ...]  # valid outputs of each convolution the compiled net masks (chunked encoders), else ()
    keys: int  # valid key positions of the encoder's attention in this chunk
    rows: int  # audio embeddings it yields = audio placeholder slots it fills, in order


@dataclass(frozen=True)
class NetFacts:
    """What the model folder says a compiled model of it must be (the bm1684x engine checks a bmodel's sidecar and
    nets against it). None: the folder does not say."""

    hidden_size: int | None
    vocab_size: int | None
    num_hidden_layers: int | None
    audio_token_id: int | None
    n_mels: int
    frames_per_launch: int  # mel frames one audio-net launch takes: the fixed window, or one attention window
    chunk_frames: int | None = None  # chunked encoders (one launch per attention window): frames per chunk


@dataclass
class ReferenceModel:
    """The transformers model the hf engine runs, as the family loads it."""

    generator: Any  # has .generate(input_ids, attention_mask, input_features, feature_attention_mask, ...)
    audio_encoder: Any  # torch module whose forward time is the request's encode time
    max_seq_len: int  # prompt + audio tokens + answer must fit


class ModelFamily(ABC):
    """One family of audio LLMs. Subclasses set the class attributes and implement the abstract methods."""

    model_type: ClassVar[str]  # config.json `model_type`
    name: ClassVar[str]  # human name for messages and the README
    fixed_window: ClassVar[bool]  # features padded to the extractor's chunk_length (see workers/features.py)
    default_mel_bins: ClassVar[int] = 128
    default_window_s: ClassVar[int | None] = None  # fixed_window families: the window when the folder does not say
    max_request_s: ClassVar[float]  # longest audio one request may carry (the family's own limit)
    min_request_s: ClassVar[float] = 0.0  # shorter pieces are zero-padded to this length (as the reference does)

    def __init__(self, model_dir: Path | None, templates: Templates):
        self.model_dir = model_dir
        self.templates = templates
        self.features = FeatureConfig.from_model_dir(model_dir, fixed_window=self.fixed_window,
                                                     feature_size=self.default_mel_bins,
                                                     chunk_length=self.default_window_s)
        self.tokenizer = load_tokenizer(model_dir) if model_dir is not None else None
        self._cache: dict[PromptSpec, list[int]] = {}
        if self.tokenizer is not None:
            self.stop_ids = stop_ids(self.tokenizer, model_dir)
            self.pad_id = pad_id(self.tokenizer, model_dir, self.stop_ids)
        else:
            self.stop_ids, self.pad_id = (), 0

    # -- audio ---------------------------------------------------------------------------------------------------
    @property
    def max_audio_s(self) -> float:
        return min(self.max_request_s, self.features.max_audio_s)

    @property
    @abstractmethod
    def token_step_samples(self) -> int:
        """Samples per audio token (the grid a piece's length is cut to when the sequence limit binds)."""

    @abstractmethod
    def audio_tokens(self, n_valid_frames: int) -> int:
        """Audio tokens the encoder makes from this many valid feature frames (the processor's count)."""

    @abstractmethod
    def audio_chunks(self, n_valid_frames: int) -> tuple[AudioChunk, ...]:
        """The encoder's view of a clip of this many valid frames, chunk by chunk; the rows sum to audio_tokens."""

    def fit_audio(self, audio: np.ndarray) -> np.ndarray:
        """The piece as the model gets it (zero-padded to min_request_s where the reference does so)."""
        n_min = int(round(self.min_request_s * self.features.sampling_rate))
        return audio if audio.size >= n_min else np.pad(audio, (0, n_min - audio.size))

    def n_audio_tokens(self, n_samples: int) -> int:
        n = max(n_samples, int(round(self.min_request_s * self.features.sampling_rate)))
        return self.audio_tokens(valid_frames(n, self.features))

    def log_mel(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return log_mel(audio, self.features)

    # -- prompt --------------------------------------------------------------------------------------------------
    @property
    def has_tokenizer(self) -> bool:
        return self.tokenizer is not None

    def _need_tokenizer(self) -> None:
        if self.tokenizer is None:
            raise RuntimeError(f"{self.name} without a model folder has no tokenizer")

    @abstractmethod
    def check_template(self, template: str) -> None:
        """Raise PromptError when the run's template means nothing to this family."""

    @abstractmethod
    def prompt_spec(self, row: ManifestRow | None, template: str) -> PromptSpec:
        """What the row asks for: row `prompt` > row `task` > the run's template (PromptError naming the row);
        row None: the run's template alone."""

    @abstractmethod
    def prompt_text(self, spec: PromptSpec) -> str:
        """The chat text with one audio placeholder, as the family's processor renders it."""

    @property
    @abstractmethod
    def audio_token_id(self) -> int: ...

    @property
    def audio_token(self) -> str:
        return self.tokenizer.id_to_token(self.audio_token_id)

    def prompt_ids(self, spec: PromptSpec) -> list[int]:
        self._need_tokenizer()
        if spec not in self._cache:
            ids = self.tokenizer.encode(self.prompt_text(spec), add_special_tokens=False).ids
            if ids.count(self.audio_token_id) != 1:
                raise PromptError(f"the prompt must not contain {self.audio_token!r}: {spec.text!r}")
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[spec] = ids
        return list(self._cache[spec])

    def expand(self, ids: list[int], n_audio_tokens: int) -> list[int]:
        """The HF form: the placeholder repeated once per audio token."""
        k = ids.index(self.audio_token_id)
        return ids[:k] + [self.audio_token_id] * n_audio_tokens + ids[k + 1:]

    def decode(self, token_ids: list[int]) -> str:
        self._need_tokenizer()
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    # -- compiled model ------------------------------------------------------------------------------------------
    @abstractmethod
    def net_facts(self) -> NetFacts:
        """The network sizes and ids in the folder's config.json that a compiled model must match."""

    # -- answer --------------------------------------------------------------------------------------------------
    @abstractmethod
    def parse(self, raw: str) -> Answer:
        """The raw answer → transcript (+ language)."""

    # -- reference engine ----------------------------------------------------------------------------------------
    @abstractmethod
    def load_reference(self, dtype) -> ReferenceModel:
        """The transformers model for --engine hf (imports torch/transformers; only the hf engine calls this)."""
