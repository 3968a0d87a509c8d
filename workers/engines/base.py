"""The one small interface every engine implements.

An engine module's `create(config: WorkerConfig, device: int | None) -> Engine` builds it once per actor (one
device); it transcribes one prepared request (workers/contracts.py Request) at a time, or a list. Everything before
it (audio, features, prompt tokens) is the front end's job; everything after it (cleanup, retries, result records)
is the actor's and the driver's.

The actor drives every engine through its stream (`Engine.stream`, an `EngineStream`): requests go in as the front
end readies them (`submit`, while `free_slots` > 0), results come out as they finish (`step`). An engine with decode
slots (bm1684x, simulated) implements the stream itself and keeps its slots full across shards; an engine that can
only do whole calls (hf) gets `WholeCalls`, which runs what was submitted as one `transcribe_batch` call per step.
docs/engines.md describes the contract.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..contracts import DecodeOptions, EngineLimits, Request, SimulatedOptions, WorkerConfig

__all__ = ["DecodeOptions", "Engine", "EngineError", "EngineLimits", "EngineResult", "EngineStream", "Finished",
           "Request", "SequenceTooLong", "SimulatedOptions", "WholeCalls", "WorkerConfig", "run_stream", "FINISH_EOS", "FINISH_MAX_TOKENS", "FINISH_REPETITION", "FINISH_ERROR", "FINISH_NO_SPEECH"]

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


@dataclass(frozen=True, eq=False)
class Finished:
    """A request the engine is done with: its result, or the exception it failed with (it fails alone)."""

    request: Request  # the very object that was submitted
    result: EngineResult | BaseException


class EngineStream(ABC):
    """Requests in as they are ready, results out as they finish: one device's engine, fed continuously.

    `submit(request)` puts a request on the device while `free_slots` > 0 (a slot engine starts it at once: audio
    encode and prefill); `step()` advances the device (one decode step of every live request, or one whole call) and
    returns the requests it finished, including those that finished or failed in `submit`. A request's failure comes
    back as its `Finished.result`, never as an exception of `submit` or `step`. `pending` counts the requests
    submitted and not yet returned. `steps` and `busy` count decode steps and Σ live requests over them (slot
    occupancy = busy / (steps × slots))."""

    slots: int  # requests the device holds at once (B)
    continuous: bool = True  # False: `step` runs everything submitted as one call (better when full)
    steps: int = 0
    busy: int = 0

    @property
    @abstractmethod
    def free_slots(self) -> int: ...

    @property
    @abstractmethod
    def pending(self) -> int: ...

    @abstractmethod
    def submit(self, request: Request) -> None: ...

    @abstractmethod
    def step(self) -> list[Finished]: ...

    def _check_free(self, request: Request) -> None:
        if self.free_slots <= 0:
            raise RuntimeError(f"{request.id}: submitted with no free slot ({self.slots} busy)")


class WholeCalls(EngineStream):
    """The stream of an engine that only does whole calls: `step` runs what was submitted (up to `slots`
    requests) as one `transcribe_batch` call. Decode steps are counted as a padded batch spends them: the call's
    longest answer, with each request live for its own tokens."""

    continuous = False

    def __init__(self, engine: "Engine", batch: int):
        self.engine = engine
        self.slots = max(1, batch)
        self._queued: list[Request] = []

    @property
    def free_slots(self) -> int:
        return self.slots - len(self._queued)

    @property
    def pending(self) -> int:
        return len(self._queued)

    def submit(self, request: Request) -> None:
        self._check_free(request)
        self._queued.append(request)

    def step(self) -> list[Finished]:
        requests, self._queued = self._queued, []
        if not requests:
            return []
        results = self.engine.transcribe_batch(requests)
        tokens = [len(r.token_ids) for r in results if isinstance(r, EngineResult)]
        self.steps += max(tokens, default=0)
        self.busy += sum(tokens)
        return [Finished(r, res) for r, res in zip(requests, results)]


def run_stream(stream: EngineStream, requests: Sequence[Request]) -> list[EngineResult | BaseException]:
    """All `requests` through an idle `stream`, each started as soon as a slot is free (in order); one result or
    exception per request, in order. Each result's extra["slot_wait_s"] is how long it waited for its slot."""
    if stream.pending:
        raise RuntimeError(f"run_stream needs an idle stream ({stream.pending} request(s) on it)")
    t0 = time.monotonic()
    out: list[EngineResult | BaseException | None] = [None] * len(requests)
    waits = [0.0] * len(requests)
    where: dict[int, deque[int]] = defaultdict(deque)  # id(request) -> its positions (a request may come twice)
    todo = deque(range(len(requests)))
    while todo or stream.pending:
        while todo and stream.free_slots > 0:
            i = todo.popleft()
            where[id(requests[i])].append(i)
            waits[i] = time.monotonic() - t0
            stream.submit(requests[i])
        for done in stream.step():
            i = where[id(done.request)].popleft()
            out[i] = done.result
            if isinstance(done.result, EngineResult):
                done.result.extra["slot_wait_s"] = waits[i]
    return out  # type: ignore[return-value]


class Engine(ABC):
    name: str  # goes into the results' `engine` column
    model_id: str = ""
    limits: EngineLimits

    @abstractmethod
    def transcribe(self, request: Request) -> EngineResult: ...

    def transcribe_batch(self, requests: Sequence[Request]) -> list[EngineResult | BaseException]:
        """Batch-first: `requests` (B of them, any B ≥ 1, similar lengths) → B results in the same order, each an
        EngineResult or the exception that request failed with (a failure of one must not fail its neighbours).
        `WholeCalls` makes one such call per step; engines that batch (hf) override it, a slot engine runs the
        list through its stream (`run_stream`); this default loops over `transcribe`."""
        out: list[EngineResult | BaseException] = []
        for r in requests:
            try:
                out.append(self.transcribe(r))
            except Exception as e:  # noqa: BLE001 - reported per request
                out.append(e)
        return out

    def stream(self, batch: int) -> EngineStream:
        """This engine's stream (the actor's only way in); `batch`: the actor's batch size, max(--batch-size,
        preferred_batch_size). Default: `WholeCalls` of up to `batch` requests. An engine with decode slots returns
        its own stream with its own B slots (one stream per engine: the device holds one set of slots)."""
        return WholeCalls(self, batch)

    @property
    def preferred_batch_size(self) -> int:
        """Requests on the device at once that keep it busy (a batched bmodel: its B decode slots). The actor's
        batch size (and the scheduler's smallest shard) is max(--batch-size, this)."""
        return 1

    def begin_attempts(self, attempts: Mapping[str, int]) -> None:
        """Called by the actor before every engine call whenever what is on the device changes: manifest id →
        attempt number (1-based) of every row with a request on the device (submitted, or about to be). Default:
        nothing (the simulated engine draws its injected faults per attempt)."""

    @property
    def needs_audio(self) -> bool:
        """True when the engine wants raw audio in Request.audio (otherwise the front end may drop it)."""
        return False

    def close(self) -> None:
        pass
