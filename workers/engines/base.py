"""The one small interface every engine implements.

An engine is loaded once per actor (one device) and transcribes one prepared request at a time (or a batch, where
it can do better than a loop). Everything before it (audio, features, prompt tokens) is the front end's job;
everything after it (cleanup, retries, result records) is the actor's and the driver's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

FINISH_EOS = "eos"
FINISH_MAX_TOKENS = "max_tokens"
FINISH_REPETITION = "repetition"
FINISH_ERROR = "error"


class EngineError(RuntimeError):
    """A failed prediction that may succeed on a retry (possibly on another device)."""


class SequenceTooLong(EngineError):
    """The request does not fit the engine's sequence limit; the actor re-prepares it in shorter pieces."""


@dataclass(frozen=True)
class EngineLimits:
    max_audio_s: float  # longest audio one request may carry (Qwen2-Audio: 30 s)
    max_seq_len: int | None = None  # prompt + audio tokens + answer must fit; None = unbounded


@dataclass
class Request:
    """One engine call, prepared by the front end (workers/frontend.py)."""

    id: str  # manifest id, with "#k" appended for the k-th piece of a split utterance
    duration_s: float  # audio seconds in this request
    audio: np.ndarray | None = None  # 16 kHz mono float32 (dropped once features exist, unless an engine needs it)
    features: np.ndarray | None = None  # log-mel [n_mels, n_frames] float32, padded to the model's window
    feature_mask: np.ndarray | None = None  # [n_frames] int32, 1 for real frames
    n_audio_tokens: int = 0  # audio tokens after conv + pool (25/s)
    prompt_ids: list[int] = field(default_factory=list)  # one <|AUDIO|> placeholder
    expanded_ids: list[int] = field(default_factory=list)  # placeholder repeated n_audio_tokens times (HF form)
    audio_token_id: int | None = None
    stop_ids: tuple[int, ...] = ()
    max_new_tokens: int = 256
    prompt: str = ""  # the instruction text (recorded in results)
    reference: str | None = None  # reference transcript, if the manifest has one (the simulated engine uses it)
    chunk_index: int = 0
    n_chunks: int = 1

    @property
    def n_prompt_tokens(self) -> int:
        return len(self.expanded_ids) if self.expanded_ids else len(self.prompt_ids)


@dataclass
class EngineResult:
    token_ids: list[int]  # generated ids, stop id excluded
    finish_reason: str  # FINISH_EOS / FINISH_MAX_TOKENS
    ttft_s: float  # audio encode + prefill + first token
    decode_s: float  # all later tokens
    text: str | None = None  # raw answer; None means "decode token_ids with the front end's tokenizer"
    encode_s: float = 0.0  # audio encoder share of ttft_s, where the engine can tell
    extra: dict[str, Any] = field(default_factory=dict)  # engine-specific counters (e.g. bytes copied)
    # natural-log probability the model gave each chosen token, aligned with token_ids (stop id excluded); None when
    # the engine cannot tell. The results' confidence columns come from it (workers/confidence.py).
    token_logprobs: list[float] | None = None


class Engine(ABC):
    name: str  # goes into the results' `engine` column
    model_id: str = ""
    limits: EngineLimits

    @abstractmethod
    def transcribe(self, request: Request) -> EngineResult: ...

    def transcribe_batch(self, requests: Sequence[Request]) -> list[EngineResult | BaseException]:
        """Engines that batch (hf) override this; a failure of one request must not fail its neighbours."""
        out: list[EngineResult | BaseException] = []
        for r in requests:
            try:
                out.append(self.transcribe(r))
            except Exception as e:  # noqa: BLE001 - reported per request
                out.append(e)
        return out

    @property
    def needs_audio(self) -> bool:
        """True when the engine wants raw audio in Request.audio (otherwise the front end may drop it)."""
        return False

    def close(self) -> None:
        pass
