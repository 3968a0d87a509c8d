"""The `simulated` engine: no model, for tests and scheduler benchmarks. Its rows say engine="simulated".

It "transcribes" by returning the reference text (or `sim_text`, or a fixed marker when neither exists; a piece of
split audio returns its share of the words) and sleeps
per a cost model taken from the existing BM1684X port (notes/bm1684x.md: TTFT ≈ 24 s, ≈ 0.8 s per generated token
on the SoC): `ttft_s + n_tokens * s_per_token`, every time divided by `sim_speedup`; like a model it stops at the
request's max_new_tokens (finish reason max_tokens), so a huge reference costs no more than the cap. Faults are injected per
attempt with seeded probabilities (`sim_faults`, e.g. "error=0.05,empty=0.02,repeat=0.02,crash=0.01,seed=7"):
error raises EngineError, empty returns "", repeat returns a runaway repetition up to max_new_tokens, crash ends
the whole actor process with os._exit (what a native crash looks like to Ray), garble returns the text with about a
third of its words replaced (a plausible but wrong transcript, status ok). The draw depends only on
(seed, utterance id, attempt), so a run is reproducible and a retry gets a fresh draw. Given a model folder
(`model_dir`) the actor runs the real front end (audio, features, prompt ids) and this engine encodes its answer
with the model's tokenizer, so CPU cost and token counts are real; without one it counts ~4 characters a token. The engine option
`sim_broken_devices` (a list of device ids, via [engine_options] in a config file) makes every request on those
devices fail, to exercise taking a device out of the pool.

Token log-probabilities (the confidence columns) are drawn from (seed, utterance id, attempt) too: each token's
-log p is exponential with a per-utterance mean, itself log-normal around a level that depends on the outcome —
≈0.04 for a clean answer (confidence ≈ 0.96), ≈0.5 for garble, ≈1 for repeat — so low confidence goes with errors,
with some overlap, as it does for a real model, and `eval`'s calibration tables have something to show.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import time
from dataclasses import dataclass

from transcribe_batch.config.settings import default

from .base import (FINISH_EOS, FINISH_MAX_TOKENS, Engine, EngineError, EngineLimits, EngineResult, Request,
                   WorkerConfig)

DEFAULT_TTFT_S = default("sim_ttft_s")  # config/defaults.toml (one home for settings)
DEFAULT_S_PER_TOKEN = default("sim_s_per_token")
FALLBACK_TEXT = "simulated output"
FAULT_KINDS = ("error", "empty", "repeat", "crash", "garble")  # new kinds go last: earlier draws stay
CHARS_PER_TOKEN = 4.0  # rough English BPE ratio: counts generated tokens when no model folder (tokenizer) is given
# K/V history's share of the bytes a batch-1 decode step reads (Qwen2-Audio-7B w4bf16, SEQLEN 1024: 0.54 of 5.3 GB;
# benchmarks/runtime.py --projection-only)
DEFAULT_KV_SHARE = 0.10


def batched_step_s(s_per_token: float, batch: int, kv_share: float = DEFAULT_KV_SHARE) -> float:
    """PROJECTION, not measured: seconds of one decode step of `batch` rows on a memory-bound card, from the batch-1
    step time. The weights are read once per step for all rows; each row reads its own K/V history (`kv_share` of
    a batch-1 step's bytes). Compute stays below memory time up to B = 16 for Qwen2-Audio-7B on BM1684X."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    return s_per_token * ((1.0 - kv_share) + kv_share * batch)


class SimulatedFault(EngineError):
    """An injected engine exception."""


@dataclass(frozen=True)
class FaultSpec:
    error: float = 0.0
    empty: float = 0.0
    repeat: float = 0.0
    crash: float = 0.0
    garble: float = 0.0
    seed: int = 0

    @classmethod
    def parse(cls, spec: str | dict | None) -> "FaultSpec":
        if not spec:
            return cls()
        if isinstance(spec, dict):
            items = spec.items()
        else:
            items = []
            for part in str(spec).split(","):
                part = part.strip()
                if not part:
                    continue
                key, sep, value = part.partition("=")
                if not sep:
                    raise ValueError(f"--sim-faults: expected key=value, got {part!r} (e.g. error=0.05,crash=0.01,seed=7)")
                items.append((key.strip(), value.strip()))
        values: dict = {}
        for key, value in items:
            if key == "seed":
                values["seed"] = int(value)
            elif key in FAULT_KINDS:
                p = float(value)
                if not 0.0 <= p <= 1.0:
                    raise ValueError(f"--sim-faults: {key}={value} is not a probability in [0, 1]")
                values[key] = p
            else:
                raise ValueError(f"--sim-faults: unknown fault {key!r}; known: {', '.join(FAULT_KINDS)}, seed")
        spec_ = cls(**values)
        if sum(getattr(spec_, kind) for kind in FAULT_KINDS) > 1.0:
            raise ValueError("--sim-faults: the probabilities add up to more than 1")
        return spec_

    def rng(self, request_id: str, attempt: int, purpose: str = "") -> random.Random:
        key = f"{self.seed}|{request_id}|{attempt}{purpose}".encode()
        return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))

    def draw(self, request_id: str, attempt: int) -> str | None:
        u = self.rng(request_id, attempt).random()
        for kind in FAULT_KINDS:
            p = getattr(self, kind)
            if u < p:
                return kind
            u -= p
        return None


LOGPROB_LEVEL = {None: 0.04, "garble": 0.5, "repeat": 1.0, "empty": 0.3}  # mean -log p of a token, per outcome
GARBLE_WORDS = ("the", "a", "and", "of", "to", "in", "that", "it", "was", "he")


def draw_logprobs(rng: random.Random, n: int, fault: str | None) -> list[float]:
    """n token log-probabilities: -Exp(mean), the mean log-normal around the outcome's level."""
    mean = LOGPROB_LEVEL.get(fault, LOGPROB_LEVEL[None]) * rng.lognormvariate(0.0, 0.5)
    return [-rng.expovariate(1.0 / mean) for _ in range(n)]


def garble(text: str, rng: random.Random) -> str:
    """About a third of the words replaced by other common words (never by themselves)."""
    words = text.split()
    for i, word in enumerate(words):
        if rng.random() < 1 / 3:
            words[i] = rng.choice([w for w in GARBLE_WORDS if w != word.lower()])
    return " ".join(words)


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN)) if text else 0


def _tokenize(model_dir):
    """With a model folder, the answer is encoded with the model's own tokenizer: real ids, real counts."""
    if not model_dir:
        return None
    from ..prompts import load_tokenizer

    tok = load_tokenizer(model_dir)
    return lambda text: tok.encode(text, add_special_tokens=False).ids if text else []


class SimulatedEngine(Engine):
    name = "simulated"
    model_id = "simulated"

    def __init__(self, *, ttft_s: float, s_per_token: float, speedup: float, faults: FaultSpec = FaultSpec(),
                 text: str | None = None, max_audio_s: float = 30.0, device: int | None = None, broken: bool = False,
                 model_dir: str | None = None):
        if speedup <= 0:
            raise ValueError(f"sim_speedup must be > 0, got {speedup}")
        self.ttft_s = ttft_s
        self.s_per_token = s_per_token
        self.speedup = speedup
        self.faults = faults
        self.text = text
        self.device = device
        self.broken = broken  # every request fails: a card that keeps failing (engine option sim_broken_devices)
        self.limits = EngineLimits(max_audio_s=max_audio_s)
        self.tokenize = _tokenize(model_dir)
        self._attempt: dict[str, int] = {}

    def begin_attempts(self, attempts) -> None:
        """Fault draws are per (id, attempt): the actor says which attempt each row of the next call is."""
        self._attempt = dict(attempts)

    def transcribe(self, request: Request) -> EngineResult:
        base_id = request.id.split("#", 1)[0]
        attempt = self._attempt.get(base_id, 1)
        fault = self.faults.draw(request.id, attempt)
        if fault == "crash":
            os._exit(77)  # a hard crash of the actor process, as a native fault would do
        text = request.reference if self.text is None else self.text
        if text is None:
            text = FALLBACK_TEXT
        if request.n_chunks > 1:  # a piece of split audio says its share of the words
            words = text.split()
            k, n = request.chunk_index, request.n_chunks
            text = " ".join(words[k * len(words) // n:(k + 1) * len(words) // n])
        if fault == "empty":
            text = ""
        if fault == "garble":
            text = garble(text, self.faults.rng(request.id, attempt, "|garble"))
        finish = FINISH_EOS
        cap = request.max_new_tokens
        if fault == "repeat":
            word = (text.split() or ["la"])[0]
            text = " ".join([word] * cap)
            finish = FINISH_MAX_TOKENS
        # A model stops at max_new_tokens whatever it would have said: never tokenize (or sleep for) more than that.
        text = text[:int(cap * CHARS_PER_TOKEN * 4) + 1] if len(text) > cap * CHARS_PER_TOKEN * 4 else text
        ids = self.tokenize(text) if self.tokenize else list(range(count_tokens(text)))
        if finish == FINISH_MAX_TOKENS:
            ids = (ids * cap)[:cap] if ids else [0] * cap
        elif len(ids) >= cap:  # cut off: the answer is what the first `cap` tokens say
            ids, finish = ids[:cap], FINISH_MAX_TOKENS
            text = None if self.tokenize else text[:int(cap * CHARS_PER_TOKEN)]
        n_tokens = len(ids) + (finish == FINISH_EOS)  # + the stop token, which is generated but not returned
        ttft = self.ttft_s / self.speedup
        decode = max(0, n_tokens - 1) * self.s_per_token / self.speedup
        time.sleep(ttft)
        if self.broken:
            raise SimulatedFault(f"device {self.device} is broken (sim_broken_devices)")
        if fault == "error":
            raise SimulatedFault(f"simulated engine fault on {request.id} (device {self.device})")
        time.sleep(decode)
        logprobs = draw_logprobs(self.faults.rng(request.id, attempt, "|logprob"), len(ids), fault)
        return EngineResult(token_ids=ids, finish_reason=finish, ttft_s=ttft, decode_s=decode, text=text,
                            token_logprobs=logprobs)


def create(config: WorkerConfig, device: int | None) -> SimulatedEngine:
    sim, extras = config.sim, config.extras
    return SimulatedEngine(
        ttft_s=sim.ttft_s,
        s_per_token=sim.s_per_token,
        speedup=sim.speedup,
        faults=FaultSpec.parse(sim.faults),
        text=sim.text,
        max_audio_s=float(extras.get("sim_max_audio_s", 30.0)),
        device=device,
        broken=device is not None and device in extras.get("sim_broken_devices", ()),
        model_dir=config.model_dir,
    )
