"""The typed seams between the driver, the device actors, the front end and the engines (after vLLM's EngineArgs):
what a worker is configured with, what one engine call asks for, and what an actor says about itself.

Neutral: imported by workers, engines and pipeline, importing none of them. Every value here is set once, by
pipeline/config.py (`RunConfig.worker_config()`, from config/defaults.toml through the run's settings) or by the
front end (`Request`); nothing below re-defaults a setting. (Work items and outcomes: workers/work.py; the result
record: workers/record.py.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


class EngineOptions(Mapping):
    """The engine-specific extras of [engine_options] (e.g. `sim_broken_devices`), read-only: lists become tuples,
    tables read-only mappings."""

    def __init__(self, values: Mapping[str, Any] | None = None):
        self._values = {str(k): _frozen(v) for k, v in (values or {}).items()}

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"EngineOptions({self._values!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == dict(other.items())

    __hash__ = None

    def to_json(self) -> dict:
        return {k: _thawed(v) for k, v in self._values.items()}


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return EngineOptions(value)
    return value


def _thawed(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    if isinstance(value, EngineOptions):
        return value.to_json()
    return value


@dataclass(frozen=True)
class SimulatedOptions:
    """The `simulated` engine's settings (config/defaults.toml, "simulated engine")."""

    speedup: float  # every simulated time is divided by this
    faults: str | None  # per-attempt fault probabilities, "error=0.05,crash=0.01,seed=7" (None: none)
    text: str | None  # fixed answer instead of the reference (None: the reference)
    ttft_s: float  # port cost model: simulated time to first token, seconds (before the speedup)
    s_per_token: float  # port cost model: simulated seconds per generated token (before the speedup)
    cost_model: str = "port"  # port (ttft_s + s_per_token a token) | card (workers/cardcost/: Sophgo's published speeds)
    card_model: str | None = None  # card cost model: a preset (qwen2-audio-7b, …); None = the model folder's config
    card_quant: str = "w4bf16"  # card cost model: weights as compiled (bf16 | w8bf16 | w4bf16)
    card_seqlen: int = 1024  # card cost model: SEQLEN of the static nets; 0 = dynamic nets
    batch: int = 1  # decode slots of a simulated device (requests decoded together per step)


@dataclass(frozen=True)
class SegmentSettings:
    """How long audio becomes pieces (training segments): where speech is, and how long a piece may be."""

    splitter: str  # vad (Silero) | energy: what finds the pauses (resolved: never "auto" here; workers/vad.py)
    min_s: float  # pieces shorter than this are avoided (merged across short pauses; workers/segmenting.py)
    max_s: float  # no piece longer than this (nor than the engine's own limit); audio longer is cut at pauses


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a device actor, its front end and its engine are configured with; built once per run by
    `RunConfig.worker_config()` (pipeline/config.py). Paths are absolute strings (it travels to other nodes)."""

    engine: str  # engine name (workers/engines/__init__.py ENGINES)
    model_dir: str | None  # model folder: tokenizer + configs (hf: weights too); None: no model (simulated only)
    bmodel: str | None  # compiled .bmodel (bm1684x engine)
    dtype: str  # hf engine: auto | fp32 | fp16 | bf16
    template: str  # the run's prompt template (config/prompts.toml); rows may override it
    max_new_tokens: int  # cap on generated tokens per request (the front end lowers it for short audio)
    batch_size: int  # requests per engine call (a batched bmodel takes at least its B)
    escalate_min_s: float  # a failed utterance at least this long is retried in shorter pieces
    segments: SegmentSettings  # how long audio is cut into pieces
    sim: SimulatedOptions  # the simulated engine's settings
    extras: EngineOptions = field(default_factory=EngineOptions)  # [engine_options]: engine-specific, read-only
    log_dir: str | None = None  # where native libraries' console output goes (the run folder's logs/); None: stdout


@dataclass(frozen=True)
class EngineLimits:
    """What one request may be, as the engine's model says (the front end fits requests to it: splits at pauses,
    pads, never truncates), and where that comes from."""

    max_audio_s: float  # longest audio one request may carry (Qwen2-Audio: 30 s)
    max_seq_len: int | None = None  # prompt + audio tokens + answer must fit; None = unbounded
    max_input_len: int | None = None  # prompt + audio tokens must fit (one prefill's width); None = max_seq_len only
    audio_multiple_s: float | None = None  # the audio is padded with silence to a multiple of this (an encoder that
    #                                        takes whole chunks only); None = as it is
    layout: str | None = None  # the model layout the limits were read from (bm1684x: the bmodel's, e.g.
    #                            "tpu-mlir-qwen3-asr" for Sophgo's prebuilt bmodels); None where nothing was read
    caveats: tuple[str, ...] = ()  # where the engine's model is not the model folder's function (logged at start)


@dataclass(frozen=True)
class DecodeOptions:
    """How one request is decoded (greedy): when to stop."""

    max_new_tokens: int  # at most this many generated tokens (the answer budget for this audio, within the cap)
    stop_ids: tuple[int, ...] = ()  # token ids that end the answer (the model family's; () without a tokenizer)


@dataclass(frozen=True, eq=False)
class Request:
    """One engine call, built in one go by the front end (workers/frontend.py) and never changed afterwards.
    Arrays are float32 / int32; shapes below."""

    id: str  # manifest id, with "#k" appended for the k-th piece of a split utterance
    duration_s: float  # audio seconds in this request
    decode: DecodeOptions  # when to stop
    audio: np.ndarray | None = None  # [n_samples] 16 kHz mono float32 (None once features exist, unless the engine
    #                                  needs it)
    features: np.ndarray | None = None  # log-mel [n_mels, n_frames] float32, padded to the model's window
    feature_mask: np.ndarray | None = None  # [n_frames] int32, 1 for real frames
    n_audio_tokens: int = 0  # audio tokens after conv + pool (25/s)
    prompt_ids: tuple[int, ...] = ()  # the prompt, with one audio placeholder
    expanded_ids: tuple[int, ...] = ()  # the placeholder repeated n_audio_tokens times (HF form)
    audio_token_id: int | None = None
    prompt: str = ""  # the instruction text (recorded in results)
    reference: str | None = None  # reference transcript, if the manifest has one (the simulated engine uses it)
    chunk_index: int = 0
    n_chunks: int = 1
    start_s: float = 0.0  # where this piece starts within the audio FILE, seconds (the row's offset included)
    end_s: float = 0.0  # where it ends within the file
    speech: bool = True  # the audio has speech by the front end's energy check (an empty answer is then wrong)

    @property
    def max_new_tokens(self) -> int:
        return self.decode.max_new_tokens

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return self.decode.stop_ids

    @property
    def n_prompt_tokens(self) -> int:
        return len(self.expanded_ids) if self.expanded_ids else len(self.prompt_ids)


@dataclass(frozen=True)
class ActorInfo:
    """What a device actor says about itself once its engine is up (and again after each restart)."""

    engine: str  # engine name
    model_id: str  # model identity (results' model_id)
    device: int  # device index on its node
    node: str  # host name
    node_id: str | None  # Ray node id (None outside Ray)
    label: str  # the device's name in logs and stats, unique in the cluster (e.g. bm1684x:2@10.0.0.5)
    kind: str  # device kind (workers/platforms.py)
    pid: int  # the actor's process
    batch_size: int  # requests per engine call it settled on (max of --batch-size and a batched bmodel's B)
    limits: EngineLimits  # its engine's limits
    ledger: str | None = None  # its device ledger file on its node (workers/ledger.py); None outside a scheduler
    driver: dict | None = None  # what the host's driver says of the card (board, chips, memory, clock, NPU use);
    #                             None where it says nothing (workers/platforms.py Platform.device_info)

    def to_json(self) -> dict:
        return asdict(self)
