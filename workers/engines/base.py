"""The one small interface every engine implements.

An engine module's `create(config: WorkerConfig, device: int | None) -> Engine` builds it once per actor (one
device); it transcribes one prepared request (workers/contracts.py Request) at a time, or a batch, where it can do
better than a loop. Everything before it (audio, features, prompt tokens) is the front end's job;
everything after it (cleanup, retries, result records) is the actor's and the driver's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..contracts import DecodeOptions, EngineLimits, Request, SimulatedOptions, WorkerConfig

__all__ = ["DecodeOptions", "Engine", "EngineError", "EngineLimits", "EngineResult", "Request", "SequenceTooLong",
           "SimulatedOptions", "WorkerConfig", "FINISH_EOS", "FINISH_MAX_TOKENS", "FINISH_REPETITION", "FINISH_ERROR", "FINISH_NO_SPEECH"]

FINISH_EOS = "eos"
FINISH_MAX_TOKENS = "max_tokens"
FINISH_REPETITION = "repetition"
FINISH_ERROR = "error"
FINISH_NO_SPEECH = "no_speech"  # an empty answer accepted: the audio has no speech (the front end's energy check)


class EngineError(RuntimeError):
    """A failed prediction that may succeed on a retry (possibly on another device)."""


class SequenceTooLong(EngineError):
    """The request does not fit the engine's sequence limit; the actor re-prepares it in shorter pieces."""


@dataclass
class EngineResult:
    token_ids: list[int]  # generated ids, stop id excluded
    finish_reason: str  # FINISH_EOS / FINISH_MAX_TOKENS
    ttft_s: float  # audio encode + prefill + first token
    decode_s: float  # all later tokens
    text: str | None = None  # raw answer; None means "decode token_ids with the front end's tokenizer"
    encode_s: float | None = None  # audio encoder share of ttft_s; None where the engine cannot tell
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
        """Batch-first: `requests` (B of them, any B ≥ 1, similar lengths) → B results in the same order, each an
        EngineResult or the exception that request failed with (a failure of one must not fail its neighbours).
        The actor calls this with up to `batch_size` requests when batch_size > 1; engines that batch (hf, or a
        card engine that keeps B decode slots full) override it, this default loops over `transcribe`."""
        out: list[EngineResult | BaseException] = []
        for r in requests:
            try:
                out.append(self.transcribe(r))
            except Exception as e:  # noqa: BLE001 - reported per request
                out.append(e)
        return out

    @property
    def preferred_batch_size(self) -> int:
        """Requests per `transcribe_batch` call that keep this engine's device busy (a batched bmodel: its B decode
        slots). The actor hands over max(--batch-size, this)."""
        return 1

    def begin_attempts(self, attempts: Mapping[str, int]) -> None:
        """Called by the actor before every engine call, on every path: manifest id → attempt number (1-based) of
        the rows the next `transcribe`/`transcribe_batch` call carries. Default: nothing (the simulated engine
        draws its injected faults per attempt)."""

    @property
    def needs_audio(self) -> bool:
        """True when the engine wants raw audio in Request.audio (otherwise the front end may drop it)."""
        return False

    def close(self) -> None:
        pass
