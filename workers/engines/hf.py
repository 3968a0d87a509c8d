"""`hf`: the model through transformers on a GPU (or the CPU) — the accuracy reference for the bmodel.

The model folder's family (workers/models/) loads the model classes: transformers' Qwen2-Audio, or `qwen-asr`'s
Qwen3-ASR classes (installed with --no-deps next to this project's transformers; see the README).

Greedy decoding with `generate`, a batch of similar-length requests at a time (left-padded prompts, one feature
window each). A no-op stopping criterion stamps the time of every decoding step, so each utterance gets its own
TTFT (audio encoder + prefill + first token; shared by the batch) and decode time (until its own stop token). The
audio encoder's share is measured with forward hooks. A no-op logits processor, last in generate()'s list, records the
log-softmax of the scores greedy decoding picks its token from: the chosen token's log-probability (with the plain
greedy settings below no processor changes the logits, so it is the model's own distribution; a test checks it against
a teacher-forced forward pass). transformers and torch are imported only here.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..frontend import model_id_of
from ..models import load_family
from .base import FINISH_EOS, FINISH_MAX_TOKENS, Engine, EngineError, EngineLimits, EngineResult, Request, WorkerConfig

DTYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
          "bf16": "bfloat16", "bfloat16": "bfloat16"}

NEUTRAL = dict(temperature=1.0, top_k=50, top_p=1.0, typical_p=1.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
               length_penalty=1.0, no_repeat_ngram_size=0, min_new_tokens=0)


def _torch_device(device: int | None):
    import torch

    if device is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EngineError(f"GPU {device} requested but CUDA is not available (run with device None for the CPU)")
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    index = visible.index(str(device)) if str(device) in visible else int(device)  # Ray sets CUDA_VISIBLE_DEVICES
    if index >= torch.cuda.device_count():
        raise EngineError(f"GPU {device} not found ({torch.cuda.device_count()} visible)")
    return torch.device("cuda", index)


class _StepClock:
    """StoppingCriteria that stops nothing and records when each new token was chosen."""

    def __init__(self, sync):
        self.sync = sync
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        self.sync()
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _ChosenLogprob:
    """LogitsProcessor that changes nothing and records, per step, max(log_softmax(scores)) for each row: under greedy
    decoding (argmax of these very scores) the chosen token's log-probability. One float per row and step stays on
    the device, never the vocabulary's logits."""

    def __init__(self):
        self.steps: list = []

    def __call__(self, input_ids, scores):
        import torch

        self.steps.append(torch.log_softmax(scores.float(), dim=-1).amax(dim=-1))
        return scores

    def per_row(self) -> list[list[float]]:
        import torch

        return torch.stack(self.steps, dim=1).tolist() if self.steps else []


class HFEngine(Engine):
    name = "hf"

    def __init__(self, model_dir: str | os.PathLike, *, dtype: str = "auto", device: int | None = None,
                 batch_size: int = 1):
        import torch

        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"not a model folder (no config.json): {self.model_dir}")
        self.device = _torch_device(device)
        if dtype == "auto":
            dtype = "bf16" if self.device.type == "cuda" else "fp32"
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose auto, fp32, fp16 or bf16")
        self.dtype = getattr(torch, DTYPES[dtype])
        self.batch_size = max(1, int(batch_size))  # the run's --batch-size: requests per generate() call
        family = load_family(self.model_dir)
        reference = family.load_reference(self.dtype)
        self.model = reference.generator.to(self.device).eval()
        config = json.loads((self.model_dir / "config.json").read_text())
        self.model_id = model_id_of(self.model_dir)
        self.pad_id = self._pad_id(config)
        self.limits = EngineLimits(max_audio_s=family.max_audio_s, max_seq_len=reference.max_seq_len)
        self.n_frames = family.features.n_frames if family.features.fixed_window else None  # None: any length
        self._encode_s = 0.0
        tower = reference.audio_encoder
        tower.register_forward_pre_hook(self._encoder_start)
        tower.register_forward_hook(self._encoder_end)

    def _pad_id(self, config: dict) -> int:
        """generation_config.json's pad_token_id, else config.json's, else the tokenizer's pad token, else 0 (the
        value is masked out; it only matters for comparing inputs with transformers' processor)."""
        gen = self.model_dir / "generation_config.json"
        pad = json.loads(gen.read_text()).get("pad_token_id") if gen.is_file() else None
        pad = pad if pad is not None else config.get("pad_token_id", config.get("text_config", {}).get("pad_token_id"))
        tok_config = self.model_dir / "tokenizer_config.json"
        if pad is None and tok_config.is_file():
            token = json.loads(tok_config.read_text()).get("pad_token")
            token = token.get("content") if isinstance(token, dict) else token
            if token:
                from ..prompts import load_tokenizer

                pad = load_tokenizer(self.model_dir).token_to_id(token)
        return int(pad) if pad is not None else 0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)

    def _encoder_start(self, module, args):
        self._sync()
        self._encoder_t0 = time.perf_counter()

    def _encoder_end(self, module, args, output):
        self._sync()
        self._encode_s += time.perf_counter() - self._encoder_t0

    def inputs(self, requests: Sequence[Request]) -> dict:
        """Model inputs for a batch: left-padded expanded prompt ids, feature windows (clips of a model without a
        fixed window right-padded to the longest, masked) and their masks."""
        import torch

        for r in requests:
            if r.features is None or not r.expanded_ids:
                raise EngineError(f"{r.id}: the hf engine needs features and prompt ids (FrontEnd with a model_dir)")
            if self.n_frames is not None and r.features.shape[-1] != self.n_frames:
                raise EngineError(f"{r.id}: {r.features.shape[-1]} feature frames, this model takes {self.n_frames}")
        n_frames = max(r.features.shape[-1] for r in requests)
        features = np.zeros((len(requests), requests[0].features.shape[0], n_frames), dtype=np.float32)
        feature_mask = np.zeros((len(requests), n_frames), dtype=np.int64)
        for i, r in enumerate(requests):
            features[i, :, :r.features.shape[-1]] = r.features
            feature_mask[i, :r.features.shape[-1]] = r.feature_mask
        width = max(len(r.expanded_ids) for r in requests)
        ids = np.full((len(requests), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(requests), width), dtype=np.int64)
        for i, r in enumerate(requests):
            ids[i, width - len(r.expanded_ids):] = r.expanded_ids
            mask[i, width - len(r.expanded_ids):] = 1
        return {
            "input_ids": torch.from_numpy(ids).to(self.device),
            "attention_mask": torch.from_numpy(mask).to(self.device),
            "input_features": torch.from_numpy(features).to(self.device, self.dtype),
            "feature_attention_mask": torch.from_numpy(feature_mask).to(self.device),
        }

    def _generate(self, requests: Sequence[Request]) -> list[EngineResult]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        stop_ids = sorted({i for r in requests for i in r.stop_ids})
        budget = [r.max_new_tokens for r in requests]
        # Plain greedy: the neutral values are explicit because generate() fills every unset (None) field from the
        # folder's generation_config.json (Qwen2-Audio's asks for sampling and repetition_penalty 1.1).
        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=max(budget), eos_token_id=stop_ids,
                                  pad_token_id=self.pad_id, **NEUTRAL)
        inputs = self.inputs(requests)
        clock = _StepClock(self._sync)
        chosen = _ChosenLogprob()
        self._encode_s = 0.0
        self._sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=config, stopping_criteria=StoppingCriteriaList([clock]),
                                      logits_processor=LogitsProcessorList([chosen]))
        new = out[:, inputs["input_ids"].shape[1]:].tolist()
        logprobs = chosen.per_row() or [[] for _ in requests]
        ttft = clock.times[0] - t0
        results = []
        for r, tokens, limit, row_logprobs in zip(requests, new, budget, logprobs):
            stops = set(r.stop_ids)
            end = next((k for k, t in enumerate(tokens) if t in stops), None)
            if end is not None and end < limit:
                kept, steps, reason = tokens[:end], end + 1, FINISH_EOS
            else:
                kept = tokens[:limit]
                steps, reason = len(kept), FINISH_MAX_TOKENS
            results.append(EngineResult(
                token_ids=kept, finish_reason=reason, ttft_s=ttft, decode_s=clock.times[max(steps, 1) - 1] - clock.times[0],
                encode_s=self._encode_s, extra={"batch_size": len(requests), "dtype": str(self.dtype).removeprefix("torch.")},
                token_logprobs=row_logprobs[:len(kept)],
            ))
        return results

    def transcribe(self, request: Request) -> EngineResult:
        try:
            return self._generate([request])[0]
        except EngineError:
            raise
        except Exception as e:  # noqa: BLE001 - CUDA OOM and the like: a retry may succeed
            raise EngineError(f"{request.id}: {type(e).__name__}: {e}") from e

    def transcribe_batch(self, requests: Sequence[Request]) -> list[EngineResult | BaseException]:
        """Batches of `batch_size`, grouped by prompt length to keep padding small; results in the input order.
        A failed batch is retried one request at a time so that one bad request fails alone."""
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].expanded_ids or ()))
        out: list[EngineResult | BaseException | None] = [None] * len(requests)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            chunk = [requests[j] for j in idx]
            try:
                results: list = self._generate(chunk)
            except Exception as e:  # noqa: BLE001 - isolate the request that fails
                if len(chunk) > 1:
                    results = Engine.transcribe_batch(self, chunk)  # one by one, through transcribe()
                else:
                    results = [e if isinstance(e, EngineError) else EngineError(f"{chunk[0].id}: {type(e).__name__}: {e}")]
            for j, result in zip(idx, results):
                out[j] = result
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def create(config: WorkerConfig, device: int | None) -> HFEngine:
    if not config.model_dir:
        raise ValueError("the hf engine needs --model-dir (a Qwen2-Audio or Qwen3-ASR folder with weights)")
    return HFEngine(config.model_dir, dtype=config.dtype, device=device, batch_size=config.batch_size)
