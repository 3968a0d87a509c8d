"""The per-device worker: one instance per card/GPU/simulated device, run as a Ray actor by pipeline/scheduler.py.

It builds its engine and front end once, then transcribes shards of manifest rows. The front end (audio decode,
resampling, features, prompt tokens) is warmed up when the actor starts and runs on a prefetch thread, one row ahead
and across shards (the actor runs two shard calls concurrently: while one holds the device, the next one's rows are
being prepared), so the device never waits for the CPU; when it does, `wait_s` says for how long. Each row ends in
one record (workers/record.py); a failed prediction that deserves another try is marked `_retry` and the driver
decides where it goes next.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

from .audio import AudioError
from .confidence import confidence_fields
from .engines import create_engine
from .engines.base import FINISH_EOS, FINISH_ERROR, FINISH_MAX_TOKENS, FINISH_REPETITION, EngineResult, Request, SequenceTooLong
from .frontend import FrontEnd
from .prompts import PromptError, plausible_answer_tokens
from .record import base_record, failed_record, node_name, now

MIN_CHUNK_S = 4.0  # escalation never splits audio into pieces shorter than this
MAX_RESPLITS = 3  # SequenceTooLong -> re-prepare in shorter pieces at most this often


class RetryableFailure(Exception):
    """A prediction that came back unusable (empty, runaway repetition, max tokens far beyond the audio)."""

    def __init__(self, kind: str, message: str, *, raw: str | None = None, text: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.raw = raw
        self.text = text


def escalated_chunk_s(duration: float | None, attempt: int, max_audio_s: float, escalate_min_s: float) -> float | None:
    """Retry escalation: a long utterance that failed is re-tried in shorter pieces (30 s -> 15 s -> 7.5 s …)."""
    if attempt <= 1 or duration is None or duration < escalate_min_s:
        return None
    return max(MIN_CHUNK_S, min(max_audio_s, duration) / 2 ** (attempt - 1))


class TranscriptionWorker:
    def __init__(self, engine_name: str, options: dict, device: int | None, *, gpu: bool = False, cpu: bool = False):
        engine_device = None if cpu else device  # a CPU slot's number only names it in the results
        if gpu:  # Ray gave this actor one GPU and made it the only visible one: cuda:0 here, its real id recorded
            import ray

            ids = ray.get_gpu_ids()
            device, engine_device = (int(ids[0]) if ids else device), 0
        self.device = device
        self.options = dict(options)
        self.engine = create_engine(engine_name, self.options, engine_device)
        self.frontend = FrontEnd(
            self.options.get("model_dir"),
            template=self.options.get("template") or "default",
            limits=self.engine.limits,
            max_new_tokens_cap=int(self.options.get("max_new_tokens") or 256),
        )
        self.frontend.warm_up()
        self.batch_size = max(1, int(self.options.get("batch_size") or 1))
        self.escalate_min_s = float(self.options.get("escalate_min_s") or 10.0)
        self.node = node_name()
        self._device_lock = threading.Lock()
        self._device_free_at = 0.0  # perf_counter when the device last finished a row
        self._prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frontend-prefetch")

    # -- identity -----------------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.engine.model_id or getattr(self.frontend, "model_id", "") or ""

    def info(self) -> dict:
        return {"engine": self.engine.name, "model_id": self.model_id, "device": self.device, "node": self.node,
                "pid": os.getpid(), "limits": {"max_audio_s": self.engine.limits.max_audio_s,
                                               "max_seq_len": self.engine.limits.max_seq_len}}

    # -- one shard ----------------------------------------------------------------------------------------------
    def stream_shard(self, items: list[dict]):
        """items: {"row": normalized manifest row, "line": int, "attempt": int (1-based), "queued_at": datetime,
        "duration": planned seconds or None}. Yields one record per item, in order, each as soon as it is done
        (the driver calls this as a Ray streaming generator)."""
        submitted_at = time.perf_counter()
        futures = [self._prefetch.submit(self._prepare, item, self._chunk_s(item)) for item in items]
        if self.batch_size > 1:
            yield from self._run_batched(items, futures, submitted_at)
            return
        for item, fut in zip(items, futures):
            yield self._run_one(item, fut, submitted_at)

    def run_shard(self, items: list[dict]) -> list[dict]:
        """`stream_shard` as a list."""
        return list(self.stream_shard(items))

    def _chunk_s(self, item: dict) -> float | None:
        return escalated_chunk_s(item.get("duration"), item["attempt"], self.engine.limits.max_audio_s,
                                 self.escalate_min_s)

    def _prepare(self, item: dict, max_chunk_s: float | None) -> tuple[list[Request], float, float]:
        """(requests, CPU seconds, perf_counter when ready)."""
        t0 = time.perf_counter()
        requests = self.frontend.prepare(item["row"], max_chunk_s=max_chunk_s, keep_audio=self.engine.needs_audio)
        t1 = time.perf_counter()
        return requests, t1 - t0, t1

    def _await(self, item: dict, fut: Future) -> tuple[list[Request] | None, float, float, dict | None]:
        """(requests, prep_s, ready_at, failure record or None)."""
        try:
            requests, prep_s, ready_at = fut.result()
            return requests, prep_s, ready_at, None
        except (AudioError, PromptError) as e:  # bad input: final, never worth a retry
            return None, 0.0, 0.0, self._failed(item, e)
        except Exception as e:  # noqa: BLE001 - recorded; the driver may retry
            return None, 0.0, 0.0, self._failed(item, e, retry=True)

    @contextmanager
    def _device(self, ready_at: float, submitted_at: float):
        """Hold the device; yields how long it sat idle waiting for this work's front end: from when it was free
        (and the work had been handed to this actor) until the work was prepared. Time another shard held the
        device is not waiting."""
        with self._device_lock:
            try:
                yield max(0.0, ready_at - max(self._device_free_at, submitted_at))
            finally:
                self._device_free_at = time.perf_counter()

    def _run_one(self, item: dict, fut: Future, submitted_at: float) -> dict:
        requests, prep_s, ready_at, failure = self._await(item, fut)
        if failure:
            return failure
        chunk_s = self._chunk_s(item)
        with self._device(ready_at, submitted_at) as wait_s:
            self._begin(item)
            started_at = now()
            t0 = time.perf_counter()
            for _ in range(MAX_RESPLITS + 1):
                try:
                    results = [self.engine.transcribe(r) for r in requests]
                    break
                except SequenceTooLong:
                    chunk_s = max(MIN_CHUNK_S, (chunk_s or self.engine.limits.max_audio_s) / 2)
                    try:
                        requests, extra_prep, _ = self._prepare(item, chunk_s)
                        prep_s += extra_prep
                    except Exception as e:  # noqa: BLE001
                        return self._failed(item, e, retry=not isinstance(e, (AudioError, PromptError)))
                except Exception as e:  # noqa: BLE001 - one bad prediction; the driver retries it elsewhere
                    return self._failed(item, e, retry=True, started_at=started_at, finished_at=now())
            else:
                return self._failed(item, SequenceTooLong(f"{item['row']['id']}: still too long in {chunk_s:g} s pieces"),
                                    retry=False, started_at=started_at, finished_at=now())
            total_s = time.perf_counter() - t0
            finished_at = now()
        return self._record(item, requests, results, started_at, finished_at, total_s, prep_s, wait_s)

    def _run_batched(self, items: list[dict], futures: list[Future], submitted_at: float) -> list[dict]:
        """Batching engines (hf): rows of a shard are already of similar length (longest first); hand the engine
        up to batch_size requests at once. A row whose batch call fails is redone alone. The device's wait for a
        batch is recorded on its first row (summing wait_s over rows gives the device's idle time)."""
        out: list[dict | None] = [None] * len(items)
        prepared = []
        for i, (item, fut) in enumerate(zip(items, futures)):
            requests, prep_s, ready_at, failure = self._await(item, fut)
            if failure:
                out[i] = failure
            else:
                prepared.append((i, requests, prep_s, ready_at))
        for start in range(0, len(prepared), self.batch_size):
            group = prepared[start:start + self.batch_size]
            flat = [(i, r) for i, requests, _, _ in group for r in requests]
            with self._device(max(ready for *_, ready in group), submitted_at) as waited:
                started_at = now()
                t0 = time.perf_counter()
                results = self.engine.transcribe_batch([r for _, r in flat])
                total_s = time.perf_counter() - t0
                finished_at = now()
            by_row: dict[int, list] = {}
            for (i, _), res in zip(flat, results):
                by_row.setdefault(i, []).append(res)
            for i, requests, prep_s, ready_at in group:
                res = by_row[i]
                wait_s = waited if i == group[0][0] else 0.0
                if any(isinstance(r, BaseException) for r in res):
                    done: Future = Future()
                    done.set_result((requests, prep_s, ready_at))
                    out[i] = self._run_one(items[i], done, submitted_at)
                else:
                    share = total_s * sum(r.duration_s for r in requests) / max(1e-9, sum(
                        r.duration_s for _, rs, _, _ in group for r in rs))
                    out[i] = self._record(items[i], requests, res, started_at, finished_at, share, prep_s, wait_s)
        return out  # type: ignore[return-value]

    def _begin(self, item: dict) -> None:
        hook = getattr(self.engine, "begin_attempt", None)
        if hook is not None:
            hook(item["row"]["id"], item["attempt"])

    # -- records ------------------------------------------------------------------------------------------------
    def _common(self, item: dict) -> dict:
        return {"engine": self.engine.name, "model_id": self.model_id, "device": self.device, "node": self.node,
                "attempts": item["attempt"], "queued_at": item.get("queued_at")}

    def _failed(self, item: dict, error: BaseException, *, retry: bool = False, **fields) -> dict:
        kind = error.kind if isinstance(error, RetryableFailure) else None
        rec = failed_record(item["row"], item["line"], error, error_class=kind, **self._common(item), **fields)
        rec["_retry"] = retry
        return rec

    def _texts(self, requests: list[Request], results: list[EngineResult]) -> tuple[str, str, str]:
        raws, cleaned_texts, finish = [], [], FINISH_EOS
        for req, res in zip(requests, results):
            raw = res.text if res.text is not None else self.frontend.decode(res.token_ids)
            cleaned = self.frontend.clean(raw, duration_s=req.duration_s)
            raws.append(raw)
            cleaned_texts.append(cleaned.text)
            n_new = len(res.token_ids)
            if cleaned.degenerate:
                raise RetryableFailure("Repetition", f"{req.id}: degenerate output ({cleaned.reason or 'repetition'})",
                                       raw=raw, text=cleaned.text)
            if res.finish_reason == FINISH_MAX_TOKENS:
                plausible = plausible_answer_tokens(req.duration_s)
                if n_new >= plausible:
                    raise RetryableFailure("RunawayOutput", f"{req.id}: hit max_new_tokens ({n_new} tokens) for "
                                           f"{req.duration_s:.1f} s of audio (plausible ≤ {plausible})",
                                           raw=raw, text=cleaned.text)
                finish = FINISH_MAX_TOKENS
        text = self.frontend.join(cleaned_texts) if len(cleaned_texts) > 1 else cleaned_texts[0]
        raw = "\n".join(raws)
        if not text.strip():
            raise RetryableFailure("EmptyOutput", f"{requests[0].id.split('#')[0]}: empty transcript", raw=raw, text=text)
        return text, raw, finish

    def _record(self, item, requests, results, started_at, finished_at, total_s, prep_s, wait_s) -> dict:
        rec = base_record(item["row"], item["line"])
        rec.update(self._common(item))
        duration = sum(r.duration_s for r in requests)
        n_new = sum(len(res.token_ids) for res in results)
        decode_s = sum(res.decode_s for res in results)
        rec.update(
            duration_s=duration,
            prompt=requests[0].prompt or rec["prompt"],
            n_prompt_tokens=sum(r.n_prompt_tokens for r in requests),
            n_audio_tokens=sum(r.n_audio_tokens for r in requests),
            n_new_tokens=n_new,
            ttft_s=sum(res.ttft_s for res in results),
            decode_s=decode_s,
            tokens_per_s=(n_new - len(results)) / decode_s if decode_s > 0 and n_new > len(results) else None,
            total_s=total_s,
            rtf=total_s / duration if duration > 0 else None,
            prep_s=prep_s,
            wait_s=wait_s,
            started_at=started_at,
            finished_at=finished_at,
            n_chunks=len(requests),
        )
        rec.update(confidence_fields(results))
        try:
            text, raw, finish = self._texts(requests, results)
        except RetryableFailure as e:
            rec.update(status="failed", error_class=e.kind, error_message=str(e), raw_text=e.raw,
                       pred_text=e.text or None,
                       finish_reason=FINISH_REPETITION if e.kind in ("Repetition", "RunawayOutput") else FINISH_ERROR)
            rec["_retry"] = True
            return rec
        rec.update(status="ok", pred_text=text, raw_text=raw, finish_reason=finish)
        return rec

    def close(self) -> None:
        self._prefetch.shutdown(wait=False, cancel_futures=True)
        self.engine.close()
