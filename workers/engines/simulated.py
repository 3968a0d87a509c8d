"""The `simulated` engine: no model, for tests and scheduler benchmarks. Its rows say engine="simulated".

It "transcribes" by returning the reference text (or `sim_text`, or a fixed marker when neither exists; a piece of
split audio returns its share of the words) and sleeps for what the request would cost on a card, every time divided
by `sim_speedup`; like a model it stops at the request's max_new_tokens (finish reason max_tokens), so a huge
reference costs no more than the cap. Two cost models (`sim_cost_model`):
- `port` (default): the existing BM1684X port's figures (notes/bm1684x.md: TTFT ≈ 24 s, ≈ 0.8 s per generated token
  on the SoC): `sim_ttft_s + n_tokens * sim_s_per_token`.
- `card`: a BM1684X cost model fitted to Sophgo's published figures (workers/cardcost/, benchmarks/README.md): the
  audio encoder and prefill from their FLOPs, each decode step from the bytes it reads, for the model `sim_card_model`
  (a preset, or "" = the model folder's config.json) at `sim_card_quant`, with static nets of `sim_card_seqlen`
  (times only: requests are what the front end makes, ≤ sim_max_audio_s; SEQLEN is not enforced).
The engine has `sim_batch` B decode slots, driven as a stream as the bm1684x engine's are (a request starts when a
slot frees; prefills run alone; one step serves every busy slot; the port's step for B rows is `batched_step_s`).
Faults are injected per
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
from collections.abc import Sequence
from dataclasses import dataclass

from transcribe_batch.config.settings import default

from ..cardcost import ArchitectureError, CardModel, SlotJob, Slots, from_model_dir, preset
from ..cardcost.model import QUANT_BITS
from .base import (FINISH_EOS, FINISH_MAX_TOKENS, Engine, EngineError, EngineLimits, EngineResult, EngineStream,
                   Finished, Request, SimulatedOptions, WorkerConfig, run_stream)

DEFAULT_TTFT_S = default("sim_ttft_s")  # config/defaults.toml (one home for settings)
DEFAULT_S_PER_TOKEN = default("sim_s_per_token")
COST_MODELS = ("port", "card")
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


class PortCost:
    """The existing port's figures: a fixed time to first token, a fixed time per token at B = 1."""

    name = "port"

    def __init__(self, ttft_s: float, s_per_token: float):
        self.ttft_s, self.s_per_token = ttft_s, s_per_token

    def first_token_s(self, request: Request) -> float:
        return self.ttft_s

    def prompt_len(self, request: Request) -> int:
        return request.n_prompt_tokens

    def step_s(self, kv_lens: list[int]) -> float:
        return batched_step_s(self.s_per_token, len(kv_lens))

    def kv_len(self, job: SlotJob, generated: int) -> int:
        return 0


class CardCost:
    """The card cost model (workers/cardcost/) for one model, quantization and net shape."""

    name = "card"

    def __init__(self, model: CardModel):
        self.model = model

    def prompt_len(self, request: Request) -> int:
        """The front end's count when it tokenized the prompt, else the architecture's estimate for the audio."""
        return request.n_prompt_tokens or self.model.arch.prompt_len(request.duration_s)

    def first_token_s(self, request: Request) -> float:
        return self.model.first_token_s(request.duration_s, self.prompt_len(request))

    def step_s(self, kv_lens: list[int]) -> float:
        return self.model.decode_step_s(kv_lens)

    def kv_len(self, job: SlotJob, generated: int) -> int:
        return self.model.kv_len(job.prompt_len, generated + 1)


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


@dataclass
class _Answer:
    """What the engine says to one request, before any timing."""

    ids: list[int]
    text: str | None
    finish: str
    fault: str | None
    attempt: int

    @property
    def decode_tokens(self) -> int:
        """Tokens after the first (which the prefill yields): the answer's plus the stop token, less one."""
        return max(0, len(self.ids) + (self.finish == FINISH_EOS) - 1)


class SimulatedEngine(Engine):
    name = "simulated"
    model_id = "simulated"

    def __init__(self, *, ttft_s: float, s_per_token: float, speedup: float, faults: FaultSpec = FaultSpec(),
                 text: str | None = None, max_audio_s: float = 30.0, device: int | None = None, broken: bool = False,
                 model_dir: str | None = None, cost: PortCost | CardCost | None = None, batch: int = 1):
        if speedup <= 0:
            raise ValueError(f"sim_speedup must be > 0, got {speedup}")
        if batch < 1:
            raise ValueError(f"sim_batch must be >= 1, got {batch}")
        self.ttft_s = ttft_s
        self.s_per_token = s_per_token
        self.cost = cost or PortCost(ttft_s, s_per_token)
        self.batch = batch  # decode slots
        self.speedup = speedup
        self.faults = faults
        self.text = text
        self.device = device
        self.broken = broken  # every request fails: a card that keeps failing (engine option sim_broken_devices)
        self.limits = EngineLimits(max_audio_s=max_audio_s)
        self.tokenize = _tokenize(model_dir)
        self._attempt: dict[str, int] = {}
        self._stream: SimulatedStream | None = None

    @property
    def preferred_batch_size(self) -> int:
        return self.batch

    def begin_attempts(self, attempts) -> None:
        """Fault draws are per (id, attempt): the actor says which attempt each row of the next call is."""
        self._attempt = dict(attempts)

    def _answer(self, request: Request) -> _Answer:
        base_id = request.id.split("#", 1)[0]
        attempt = self._attempt.get(base_id, 1)
        fault = self.faults.draw(request.id, attempt)
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
        return _Answer(ids, text, finish, fault, attempt)

    def stream(self, batch: int) -> "SimulatedStream":
        """The engine's sim_batch decode slots (`batch`, the actor's batch size, does not change them)."""
        if self._stream is None:
            self._stream = SimulatedStream(self)
        return self._stream

    def transcribe(self, request: Request) -> EngineResult:
        out = self.transcribe_batch([request])[0]
        if isinstance(out, BaseException):
            raise out
        return out

    def transcribe_batch(self, requests: Sequence[Request]) -> list[EngineResult | BaseException]:
        """The requests through the engine's decode slots (`run_stream`). A failing request costs its prefill."""
        return run_stream(self.stream(len(requests)), requests)


class SimulatedStream(EngineStream):
    """The simulated engine's decode slots (workers/cardcost/slots.py `Slots`, timed by its cost model), driven as
    the bm1684x engine's are: `submit` runs a request's prefill, `step` one decode step of every busy slot. Each
    piece of work sleeps its simulated time ÷ sim_speedup, against a running deadline (sleeps do not add up their
    overshoot)."""

    def __init__(self, engine: SimulatedEngine):
        self.engine = engine
        self.slots = engine.batch
        self._slots = Slots(engine.batch, engine.cost.step_s, engine.cost.kv_len)
        self._live: dict[int, tuple[Request, _Answer, SlotJob]] = {}  # key -> request in a slot
        self._done: list[Finished] = []  # finished or failed in submit: returned by the next step
        self._keys = 0
        self._due = 0.0  # monotonic time the work so far is due to be done

    @property
    def free_slots(self) -> int:
        return self._slots.free_slots

    @property
    def pending(self) -> int:
        return len(self._live) + len(self._done)

    def submit(self, request: Request) -> None:
        self._check_free(request)
        eng = self.engine
        if not self.pending:  # the device was idle: its time starts now
            self._due = time.monotonic()
        answer = eng._answer(request)
        if answer.fault == "crash":
            os._exit(77)  # a hard crash of the actor process, as a native fault would do
        failed = eng.broken or answer.fault == "error"
        job = SlotJob(eng.cost.first_token_s(request), 0 if failed else answer.decode_tokens,
                      eng.cost.prompt_len(request))
        self._keys += 1
        before = self._slots.t
        timing = self._slots.start(self._keys, job)
        self._sleep(self._slots.t - before)
        if timing is not None:
            self._done.append(Finished(request, self._result(request, answer, failed, job, timing)))
        else:
            self._live[self._keys] = (request, answer, job)

    def step(self) -> list[Finished]:
        out, self._done = self._done, []
        if not self._live:
            return out
        before = self._slots.t
        live = self._slots.live
        finished = self._slots.step()
        self.steps += 1
        self.busy += live
        self._sleep(self._slots.t - before)
        for key, timing in finished:
            request, answer, job = self._live.pop(key)
            out.append(Finished(request, self._result(request, answer, False, job, timing)))
        return out

    def _sleep(self, simulated_s: float) -> None:
        self._due += simulated_s / self.engine.speedup
        delay = self._due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _result(self, r: Request, a: _Answer, failed: bool, job: SlotJob, t) -> EngineResult | BaseException:
        eng = self.engine
        if eng.broken:
            return SimulatedFault(f"device {eng.device} is broken (sim_broken_devices)")
        if failed:
            return SimulatedFault(f"simulated engine fault on {r.id} (device {eng.device})")
        logprobs = draw_logprobs(eng.faults.rng(r.id, a.attempt, "|logprob"), len(a.ids), a.fault)
        return EngineResult(
            token_ids=a.ids, finish_reason=a.finish, ttft_s=t.first_token_s / eng.speedup,
            decode_s=t.decode_s / eng.speedup, text=a.text, token_logprobs=logprobs,
            extra={"cost_model": eng.cost.name, "batch": eng.batch, "slot": t.slot, "decode_steps": t.steps,
                   "prompt_len": job.prompt_len})


def card_model(sim: SimulatedOptions, model_dir: str | None) -> CardModel:
    """The card cost model the settings describe: sim_card_model (a preset) or the model folder's config.json, at
    sim_card_quant with static nets of sim_card_seqlen (0 = dynamic). ValueError naming the setting when they don't."""
    quant, seqlen = sim.card_quant, sim.card_seqlen
    if quant not in QUANT_BITS:
        raise ValueError(f"sim_card_quant: {quant!r} is not one of {', '.join(QUANT_BITS)}")
    if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 0:
        raise ValueError(f"sim_card_seqlen: {seqlen!r} is not a whole number >= 0 (0 = dynamic nets)")
    try:
        if sim.card_model:
            arch = preset(sim.card_model)
        elif model_dir:
            arch = from_model_dir(model_dir)
        else:
            raise ValueError("sim_cost_model card needs a model: set sim_card_model (qwen2-audio-7b, qwen3-asr-1.7b, "
                             "qwen3-asr-0.6b) or give --model-dir")
    except ArchitectureError as e:
        raise ValueError(f"sim_card_model: {e}") from None
    return CardModel(arch, quant, seqlen=seqlen)


def check_options(config: WorkerConfig) -> None:
    """The simulated engine's settings, checked before a run starts (ValueError naming the setting)."""
    sim = config.sim
    FaultSpec.parse(sim.faults)
    if sim.cost_model not in COST_MODELS:
        raise ValueError(f"sim_cost_model: {sim.cost_model!r} is not one of {', '.join(COST_MODELS)}")
    if isinstance(sim.batch, bool) or not isinstance(sim.batch, int) or sim.batch < 1:
        raise ValueError(f"sim_batch: {sim.batch!r} is not a whole number >= 1")
    if sim.cost_model == "card":
        card_model(sim, config.model_dir)


def create(config: WorkerConfig, device: int | None) -> SimulatedEngine:
    check_options(config)
    sim, extras = config.sim, config.extras
    cost = CardCost(card_model(sim, config.model_dir)) if sim.cost_model == "card" else PortCost(sim.ttft_s,
                                                                                                 sim.s_per_token)
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
        cost=cost,
        batch=sim.batch,
    )
