"""BM1684X engine: Qwen2-Audio and Qwen3-ASR bmodels on a Sophgo card (or the cmodel simulator) through the native
runtime.

One runtime per actor, pinned to one device id. The front end (workers/frontend.py) supplies log-mel features,
the prompt ids with one audio placeholder and the stop ids; the runtime (native/, `transcribe_batch_native`)
runs audio encoder, splice, prefill and greedy decode with the KV cache on the device. The model folder's family
(workers/models/) says what the bmodel must match; the runtime reads from the bmodel's audio net how to feed it: one
launch over a fixed mel window (Qwen2-Audio: 30 s), or one launch per attention window of chunks for as long as the
clip (Qwen3-ASR: its own limit, here bounded by SEQLEN). workers/engines/bm1684x_layout.py names the layout found
(also tpu-mlir's own Qwen3-ASR layout, that of Sophgo's prebuilt bmodels: one 1-s chunk per audio launch, a prefill
narrower than SEQLEN) and turns it into the engine's limits and caveats.

A bmodel compiled with `convert.py --batch B` has B decode slots, driven as an engine stream (`SlotStream`, see
workers/engines/base.py): the actor submits a request as soon as a slot is free (from whichever shard it came),
every step decodes all busy slots with one launch per net per token, and finished answers come back at once, so
the slots stay full across shards. `preferred_batch_size` (= B) sets the actor's batch size; `transcribe_batch`
runs a list through the same stream.

Before loading, the bmodel's sidecar JSON (`<bmodel>.json`, written by native/compile/) is checked against the
model folder's config.json, and what the runtime finds in the bmodel itself (SEQLEN, hidden size, mel window,
logits width, the audio net's chunk and mask geometry) is checked against both: a bmodel compiled from another
checkpoint is refused, not run. The family computes each request's audio geometry (`audio_chunks`: valid frames,
conv and key mask lengths, rows per chunk); the runtime fills the audio net's inputs from it, and its masks with the
sidecar's `audio_mask_value`.

Per generated token the runtime also returns the chosen token's log-probability (`token_logprobs`), computed on the
card by the head net convert.py builds (4 bytes per token; never the logits), or on the host where the argmax
already runs there. A bmodel whose head gives ids only (`layout.token_logprob == "none"`: older builds, the
public port's layout) still runs; its results' confidence columns are null.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..frontend import model_id_of
from ..models import ModelFamily, load_family
from ..simulator_threads import yield_idle_engine_threads
from .bm1684x_layout import ONE_CHUNK, engine_limits, one_chunk_problems, runtime_chunks, takes_any_length
from .bm1684x_layout import describe as describe_layout
from .base import (FINISH_EOS, FINISH_MAX_TOKENS, Engine, EngineError, EngineResult, EngineStream,
                   Finished, Request, SequenceTooLong, WorkerConfig, run_stream)

log = logging.getLogger(__name__)
DEFAULT_SIM_SDK = "~/.cache/transcribe-batch/sim-sdk-1.30.2"
BUILD_COMMAND = (
    "the bm1684x engine needs the native runtime (python package transcribe_batch_native), which is not installed "
    "in this Python. Build it from the repository root:\n"
    "  on a card host:   LIBSOPHON_ROOT=/opt/sophon/libsophon-current pip install ./native\n"
    "  on the simulator: make native     (= bash native/scripts/fetch_sim_sdk.sh " + DEFAULT_SIM_SDK + " && "
    "LIBSOPHON_ROOT=" + DEFAULT_SIM_SDK + " pip install ./native)"
)


class NativeRuntimeMissing(ImportError):
    """transcribe_batch_native is not installed; the message says how to build it."""


class ModelMismatch(ValueError):
    """The bmodel and the model folder (tokenizer/config) do not belong together."""


def load_native():
    try:
        import transcribe_batch_native
    except ImportError as e:
        raise NativeRuntimeMissing(f"{BUILD_COMMAND}\n(import error: {e})") from e
    return transcribe_batch_native


def find_bmodel(bmodel: str | os.PathLike | None, model_dir: Path) -> Path:
    """The bmodel path: as given (absolute, relative to the working folder, or to the model folder), else the one
    *.bmodel inside the model folder."""
    if bmodel:
        p = Path(bmodel).expanduser()
        for cand in (p, model_dir / p):
            if cand.is_file():
                return cand.resolve()
        raise FileNotFoundError(f"bmodel not found: {bmodel} (also looked in {model_dir})")
    found = sorted(model_dir.glob("*.bmodel"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"no --bmodel given and {model_dir} holds {len(found)} .bmodel files; pass --bmodel PATH"
        )
    return found[0].resolve()


def _first(d: dict, *keys: str) -> Any:
    for k in keys:
        if d.get(k) is not None:
            return d[k]
    return None


def read_sidecar(path: Path) -> dict | None:
    """`<bmodel>.json` as a dict, None when there is none (Sophgo's own bmodels come without); ModelMismatch naming
    the file when it is not a JSON object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelMismatch(f"{path}: not a valid bmodel sidecar ({e})") from e
    if not isinstance(data, dict):
        raise ModelMismatch(f"{path}: not a valid bmodel sidecar (expected a JSON object)")
    return data


def mask_value_of(sidecar: dict | None, path: Path) -> float | None:
    """The masks' hidden value the sidecar records (`audio_mask_value`), None when it records none (the runtime then
    uses its documented default, transcribe_batch_native.DEFAULT_MASK_VALUE)."""
    value = (sidecar or {}).get("audio_mask_value")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value >= 0:
        raise ModelMismatch(f"{path}: audio_mask_value {value!r} is not a finite negative number (the additive value "
                            "of a hidden mask position)")
    return float(value)


def native_audio(native, family: ModelFamily, n_valid_frames: int) -> list:
    """The family's chunks of a clip (`audio_chunks`) as the runtime's AudioChunk structs."""
    return [native.AudioChunk(frames=c.frames, keep=list(c.keep), keys=c.keys, rows=c.rows)
            for c in family.audio_chunks(n_valid_frames)]


def audio_geometry_problems(family: ModelFamily, layout) -> list[str]:
    """The family's chunks of one full audio-net launch (layout.n_frames frames) against the net's own shapes: chunk
    length and count, the masked convolutions' outputs, the key positions, the embedding rows per launch."""
    n = layout.n_frames
    chunks = family.audio_chunks(n)
    name = family.model_type
    if layout.audio_kind == "chunked":
        frames = sorted({c.frames for c in chunks})
        if len(chunks) != layout.audio_chunks_per_window or frames != [layout.audio_chunk_frames]:
            return [f"audio chunks: the bmodel's audio net takes {layout.audio_chunks_per_window} chunks of "
                    f"{layout.audio_chunk_frames} frames per launch, the {name} folder makes {len(chunks)} chunks of "
                    f"{frames} frames of {n}"]
    problems = []
    keep = {tuple(c.keep) for c in chunks}
    if keep != {tuple(layout.audio_keep)}:
        problems.append(f"audio conv masks: the bmodel's audio net masks {list(layout.audio_keep)} outputs per chunk, "
                        f"the {name} folder's encoder {[list(k) for k in sorted(keep)]}")
    keys = {c.keys for c in chunks}
    if layout.audio_keys and keys != {layout.audio_keys}:
        problems.append(f"audio key positions: the bmodel's audio net has {layout.audio_keys} per "
                        f"{'chunk' if layout.audio_kind == 'chunked' else 'window'}, the {name} folder's encoder "
                        f"{sorted(keys)} of {n} frames")
    rows = sum(c.rows for c in chunks)
    if rows != layout.audio_rows:
        problems.append(f"audio tokens per launch: the bmodel's audio net gives {layout.audio_rows}, the {name} folder's "
                        f"encoder makes {rows} of {n} frames")
    return problems


def check_pair(bmodel: Path, sidecar: dict | None, family: ModelFamily, layout) -> list[str]:
    """Every disagreement between the sidecar, the model folder (its family: model_type, NetFacts, audio geometry)
    and the bmodel's own nets (the runtime's Layout), as readable lines. A sidecar without `model_type` (written
    before the field existed) names no family: the audio net's geometry against the folder's family decides."""
    problems = []
    facts = family.net_facts()
    model_type = family.model_type

    def cmp(what: str, a_name: str, a: Any, b_name: str, b: Any) -> None:
        if a is not None and b is not None and int(a) != int(b):
            problems.append(f"{what}: {a_name} says {a}, {b_name} says {b}")

    sc = sidecar or {}
    if sc.get("model_type") is not None and sc["model_type"] != model_type:
        problems.append(f"model family: sidecar says {sc['model_type']}, config.json says {model_type}")
    chunked = layout.audio_kind == "chunked"
    one_chunk = layout.audio_kind == ONE_CHUNK
    if one_chunk:  # tpu-mlir's own Qwen3-ASR audio net (Sophgo's prebuilt bmodels)
        problems += one_chunk_problems(family, layout)
    elif chunked != (facts.chunk_frames is not None):
        problems.append(f"audio encoder: the bmodel's audio net is {'chunked' if chunked else 'a fixed window'}, "
                        f"the {model_type} folder needs {'chunks' if facts.chunk_frames else 'a window'}")
    else:
        problems += audio_geometry_problems(family, layout)
        if chunked:
            cmp("audio chunk frames", "sidecar", sc.get("audio_chunk_frames"), "config.json", facts.chunk_frames)
    if sc.get("bmodel_bytes") is not None and int(sc["bmodel_bytes"]) != bmodel.stat().st_size:
        problems.append(f"size: sidecar describes a {sc['bmodel_bytes']}-byte bmodel, {bmodel.name} has "
                        f"{bmodel.stat().st_size} bytes (the pair was split up)")
    cmp("SEQLEN", "sidecar", _first(sc, "seqlen", "seq_length", "max_seq_len"), "bmodel nets", layout.seqlen)
    cmp("hidden size", "sidecar", _first(sc, "hidden_size", "hidden"), "config.json", facts.hidden_size)
    cmp("hidden size", "bmodel nets", layout.hidden, "config.json", facts.hidden_size)
    cmp("vocabulary", "sidecar", _first(sc, "vocab_size", "vocab"), "config.json", facts.vocab_size)
    if layout.vocab:
        cmp("vocabulary", "lm_head logits", layout.vocab, "config.json", facts.vocab_size)
    cmp("audio token id", "sidecar", _first(sc, "audio_token_id", "audio_token_index"), "config.json",
        facts.audio_token_id)
    cmp("text layers", "sidecar", _first(sc, "num_layers", "num_hidden_layers", "n_layers"), "config.json",
        facts.num_hidden_layers)
    cmp("text layers", "bmodel nets", layout.n_layers, "config.json", facts.num_hidden_layers)
    cmp("mel bins", "sidecar", sc.get("n_mels"), "bmodel audio net", layout.n_mels)
    cmp("mel frames (window)", "sidecar", sc.get("mel_frames"), "bmodel audio net", layout.n_frames)
    cmp("audio tokens per window", "sidecar", sc.get("max_audio_tokens"), "bmodel audio net", layout.audio_rows)
    if "batch" in sc:
        cmp("decode batch", "sidecar", sc.get("batch"), "bmodel nets", layout.batch)
    cmp("mel bins", "bmodel audio net", layout.n_mels, "preprocessor_config.json", facts.n_mels)
    if not one_chunk:  # its one-chunk attention against the folder's window is a caveat (bm1684x_layout.caveats)
        cmp("mel frames (window)", "bmodel audio net", layout.n_frames,
            "config.json" if chunked else "preprocessor_config.json", facts.frames_per_launch)
    return problems


class Bm1684xEngine(Engine):
    name = "bm1684x"

    def __init__(self, model_dir: str | os.PathLike, bmodel: str | os.PathLike | None = None, device: int = 0):
        native = load_native()
        self._native = native
        self.model_dir = Path(model_dir).expanduser().resolve()
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"model folder not found: {self.model_dir}")
        cfg_path = self.model_dir / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} not found: the bm1684x engine needs the model folder's config.json")
        self.family = load_family(self.model_dir)
        self.bmodel = find_bmodel(bmodel, self.model_dir)
        self.facts = self.family.net_facts()
        sidecar_path = self.bmodel.with_name(self.bmodel.name + ".json")
        self.sidecar = read_sidecar(sidecar_path)
        mask_value = mask_value_of(self.sidecar, sidecar_path)
        self.device = int(device)
        self._stream: SlotStream | None = None
        self.runtime = native.Runtime(str(self.bmodel), self.device,
                                      **({} if mask_value is None else {"mask_value": mask_value}))
        yield_idle_engine_threads()  # on the cmodel simulator (a no-op on a card)
        self.layout = self.runtime.layout  # a copy: what the runtime found in the bmodel's nets
        problems = check_pair(self.bmodel, self.sidecar, self.family, self.layout)
        if problems:
            self.close()
            raise ModelMismatch(
                f"bmodel {self.bmodel} does not belong to the model folder {self.model_dir}:\n  - "
                + "\n  - ".join(problems)
                + "\nUse the tokenizer/config folder the bmodel was compiled from (see its sidecar "
                f"{sidecar_path.name}), or recompile with native/compile/."
            )
        self.model_id = (self.sidecar or {}).get("model_id") or model_id_of(self.model_dir)
        self.chunked = takes_any_length(self.layout)
        # a fixed window holds that much audio; a chunked encoder takes any length (the family's own limit), and
        # SEQLEN and the prefill width bound a request's audio tokens either way (the front end splits longer audio
        # at pauses, and pads it to whole chunks for a one-chunk audio net)
        self.limits = engine_limits(self.family, self.layout)
        log.info("bm1684x device %s: %s is a %s bmodel (%s)", self.device, self.bmodel.name, self.limits.layout,
                 json.dumps(self.describe()))
        for caveat in self.limits.caveats:
            log.warning("bm1684x device %s: %s", self.device, caveat)

    def describe(self) -> dict:
        """The bmodel and the layout the runtime found in it (bm1684x_layout.describe), with the engine's limits."""
        return {"engine": self.name, "bmodel": str(self.bmodel), "model_dir": str(self.model_dir),
                **describe_layout(self.layout, self.family),
                "limits": {"max_seq_len": self.limits.max_seq_len, "max_input_len": self.limits.max_input_len,
                           "max_audio_s": self.limits.max_audio_s, "audio_multiple_s": self.limits.audio_multiple_s}}

    @property
    def preferred_batch_size(self) -> int:
        """Decode slots of the bmodel: hand transcribe_batch at least this many requests to keep them all busy."""
        return int(self.layout.batch)

    def _call_args(self, request: Request) -> tuple:
        """The runtime's arguments for one request; ValueError naming the request when it is malformed."""
        if request.features is None or not request.prompt_ids:
            raise ValueError(f"{request.id}: the bm1684x engine needs features and prompt ids from the front end")
        features = np.ascontiguousarray(request.features, dtype=np.float32)
        n_mels, n_frames = self.layout.n_mels, self.layout.n_frames
        if self.chunked:
            if features.ndim != 2 or features.shape[0] != n_mels:
                raise ValueError(f"{request.id}: features {features.shape} are not [{n_mels}, frames]")
        elif features.shape != (n_mels, n_frames):
            raise ValueError(f"{request.id}: features {features.shape} do not match the bmodel's mel window "
                             f"{(n_mels, n_frames)}")
        n_valid = (int(np.asarray(request.feature_mask).sum()) if request.feature_mask is not None
                   else features.shape[1])
        audio = runtime_chunks(self._native, self.family, self.layout, n_valid)
        tokens = sum(c.rows for c in audio)
        if tokens != request.n_audio_tokens:
            raise ValueError(f"{request.id}: n_audio_tokens {request.n_audio_tokens} disagrees with {n_valid} valid mel "
                             f"frames ({self.family.name}'s encoder makes {tokens} audio tokens of them)")
        audio_id = request.audio_token_id if request.audio_token_id is not None else self.facts.audio_token_id
        return (features, audio, list(request.prompt_ids), int(audio_id), list(request.stop_ids),
                int(request.max_new_tokens))

    def _error(self, request: Request, e: BaseException) -> BaseException:
        """The engine's exception for a runtime error of one request."""
        if isinstance(e, self._native.TooLongError):
            return SequenceTooLong(f"{request.id}: {e}")
        if isinstance(e, self._native.DeviceError):
            return EngineError(f"{request.id}: device {self.device}: {e}")
        return e

    def transcribe(self, request: Request) -> EngineResult:
        args = self._call_args(request)
        try:
            out = self.runtime.generate(*args)
        except Exception as e:  # noqa: BLE001 - mapped to the engine's errors
            mapped = self._error(request, e)
            if mapped is e:
                raise
            raise mapped from e
        return _result(out, batch=self.preferred_batch_size)

    def stream(self, batch: int) -> "SlotStream":
        """The bmodel's B decode slots (`batch`, the actor's batch size, does not change them)."""
        if self._stream is None:
            self._stream = SlotStream(self)
        return self._stream

    def transcribe_batch(self, requests: Sequence[Request]) -> list[EngineResult | BaseException]:
        """All requests through the B slots (`run_stream`): a request starts as soon as a slot is free (in order),
        every step decodes all busy slots at once. One result or exception per request, in order; a request that
        fails (malformed, too long for SEQLEN, ...) fails alone while the others go on."""
        return run_stream(self.stream(len(requests)), requests)

    def close(self) -> None:
        self.runtime = None  # frees the device memory and the device handle


class SlotStream(EngineStream):
    """The runtime's B decode slots as an engine stream: `submit` starts a request in a free slot (audio encode,
    prefill, first token: `Runtime.start`), `step` decodes every busy slot with one launch per net (`Runtime.step`)
    and collects the answers that finished (`Runtime.finish`). A request the runtime refuses (malformed, too long
    for SEQLEN) fails alone; a failed step launch fails every request in a slot (they are cancelled)."""

    def __init__(self, engine: Bm1684xEngine):
        self.engine = engine
        self.slots = int(engine.layout.batch)
        self._live: dict[int, Request] = {}  # slot -> its request
        self._done: list[Finished] = []  # finished or failed in submit: returned by the next step

    @property
    def free_slots(self) -> int:
        return self.engine.runtime.free_slots()

    @property
    def pending(self) -> int:
        return len(self._live) + len(self._done)

    def submit(self, request: Request) -> None:
        self._check_free(request)
        eng, rt = self.engine, self.engine.runtime
        try:
            slot = rt.start(*eng._call_args(request))
        except Exception as e:  # noqa: BLE001 - reported for this request alone
            self._done.append(Finished(request, eng._error(request, e)))
            return
        self._live[slot] = request
        if rt.state(slot) != "decoding":  # stop id or max_new_tokens 1 at the first token
            self._collect(slot, self._done)

    def step(self) -> list[Finished]:
        out, self._done = self._done, []
        if not self._live:
            return out
        rt = self.engine.runtime
        live = len(self._live)
        try:
            finished = rt.step()
        except Exception as e:  # noqa: BLE001 - a failed launch takes down every request in a slot
            for slot, request in self._live.items():
                rt.cancel(slot)
                out.append(Finished(request, self.engine._error(request, e)))
            self._live.clear()
            return out
        self.steps += 1
        self.busy += live
        for slot in finished:
            self._collect(slot, out)
        return out

    def _collect(self, slot: int, out: list[Finished]) -> None:
        request = self._live.pop(slot)
        try:
            out.append(Finished(request, _result(self.engine.runtime.finish(slot), batch=self.slots)))
        except Exception as e:  # noqa: BLE001 - reported per request
            out.append(Finished(request, self.engine._error(request, e)))


def _result(out, *, batch: int) -> EngineResult:
    """An EngineResult from the runtime's Generation. decode_s is the wall time of the steps the request took part
    in (shared with the other slots of each step)."""
    steps = list(out.step_s)
    n_steps = max(len(steps), 1)
    logprobs = out.token_logprobs
    pre, dec = out.prefill, out.decode
    return EngineResult(
        token_ids=list(out.tokens),
        token_logprobs=None if logprobs is None else [float(v) for v in logprobs],
        finish_reason=FINISH_EOS if out.finish_reason == "eos" else FINISH_MAX_TOKENS,
        ttft_s=out.ttft_s,
        decode_s=float(sum(steps)),
        encode_s=out.encode_s,
        extra={
            "prompt_len": out.prompt_len,
            "prefill_s": out.prefill_s,
            "decode_steps": len(steps),
            "slot": out.slot,
            "batch": batch,
            "prefill_launches": pre.launches,
            "prefill_h2d_bytes": pre.h2d_bytes,
            "prefill_d2h_bytes": pre.d2h_bytes,
            "decode_h2d_bytes": dec.h2d_bytes,
            "decode_d2h_bytes": dec.d2h_bytes,
            "decode_h2d_bytes_per_token": dec.h2d_bytes / n_steps,
            "decode_d2h_bytes_per_token": dec.d2h_bytes / n_steps,
            "decode_launches": dec.launches,
        },
    )


def create(config: WorkerConfig, device: int | None) -> Engine:
    if not config.model_dir:
        raise ValueError("engine bm1684x needs model_dir (the tokenizer/config folder the bmodel was compiled from)")
    device = 0 if device is None else device
    if config.log_dir:
        route_native_stdout(Path(config.log_dir) / f"bm1684x-device{device}.log")
    return Bm1684xEngine(config.model_dir, config.bmodel, device)


def route_native_stdout(path: Path) -> None:
    """libbmrt and the cmodel simulator print their chatter to the process's stdout (fd 1), dozens of lines per
    request: in a runner's actor that goes to a log file in the run folder instead of the driver's console."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
    finally:
        os.close(fd)
