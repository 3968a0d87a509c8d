"""One work item's engine results → its result record and what happens next (an `Outcome`, workers/work.py).

Pure assembly, no device: the actor hands over the item, the requests its front end made (one per piece of audio),
the engine's result for each, and when and where it ran. The answer is cleaned by the model family (through the
front end), checked (runaway repetition, hitting max_new_tokens far beyond what the audio can hold, an empty answer
to audio with speech: worth another attempt), and joined over the pieces.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .confidence import confidence_fields
from .engines.base import (FINISH_EOS, FINISH_ERROR, FINISH_MAX_TOKENS, FINISH_NO_SPEECH, FINISH_REPETITION,
                           EngineResult, Request)
from .frontend import FrontEnd
from .prompts import plausible_answer_tokens
from .record import base_record, failed_record
from .work import FINAL, RETRY, Outcome, WorkItem


class RetryableFailure(Exception):
    """A prediction that came back unusable (empty, runaway repetition, max tokens far beyond the audio)."""

    def __init__(self, kind: str, message: str, *, raw: str | None = None, text: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.raw = raw
        self.text = text


@dataclass(frozen=True)
class Producer:
    """Who made a record: the engine and the device it ran on (the results' identity columns)."""

    engine: str  # engine name
    model_id: str  # model identity
    device: int  # device index on its node
    node: str  # host name
    node_id: str | None  # Ray node id (None outside Ray)

    def fields(self, item: WorkItem) -> dict:
        return {"engine": self.engine, "model_id": self.model_id, "device": self.device, "node": self.node,
                "node_id": self.node_id, "attempts": item.attempt, "queued_at": item.queued_at}


@dataclass(frozen=True)
class DeviceTime:
    """When and for how long one item held the device."""

    started_at: datetime  # when the device started on it (UTC)
    finished_at: datetime  # when its last request finished (UTC)
    total_s: float  # device seconds charged to it (its share of a shared batch)
    wait_s: float  # seconds the device waited for its front end before it (0: prefetch kept up)
    prep_s: float  # CPU seconds its front end took


def failed(producer: Producer, item: WorkItem, error: BaseException, *, retry: bool = False, on_device: bool = True,
           **fields) -> Outcome:
    """The outcome of an item that produced no usable answer; `retry`: worth another attempt."""
    kind = error.kind if isinstance(error, RetryableFailure) else None
    rec = failed_record(item.row, item.line, error, error_class=kind, **producer.fields(item), **fields)
    return Outcome.of(item, rec, RETRY if retry else FINAL, on_device=on_device)


def texts(frontend: FrontEnd, requests: list[Request], results: list[EngineResult]) -> tuple[str, str, str, str | None]:
    """(transcript, raw answer, finish reason, detected language) over an item's pieces; RetryableFailure when the
    answer is unusable."""
    raws, cleaned_texts, languages, finish = [], [], [], FINISH_EOS
    for req, res in zip(requests, results):
        raw = res.text if res.text is not None else frontend.decode(res.token_ids)
        cleaned = frontend.clean(raw, duration_s=req.duration_s)
        raws.append(raw)
        cleaned_texts.append(cleaned.text)
        languages.append(cleaned.language)
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
    text = frontend.join(cleaned_texts) if len(cleaned_texts) > 1 else cleaned_texts[0]
    raw = "\n".join(raws)
    if not text.strip():
        if not any(req.speech for req in requests):  # nothing was said: an empty answer is the right one
            return "", raw, FINISH_NO_SPEECH, frontend.join_languages(languages)
        raise RetryableFailure("EmptyOutput", f"{requests[0].id.split('#')[0]}: empty transcript", raw=raw, text=text)
    return text, raw, finish, frontend.join_languages(languages)


def answered(frontend: FrontEnd, producer: Producer, item: WorkItem, requests: list[Request],
             results: list[EngineResult], time: DeviceTime) -> Outcome:
    """The outcome of an item whose every request came back from the engine (one result per request, in order)."""
    duration = sum(r.duration_s for r in requests)
    n_new = sum(len(res.token_ids) for res in results)
    decode_s = sum(res.decode_s for res in results)
    fields = dict(
        producer.fields(item),
        duration_s=duration,
        prompt=requests[0].prompt or item.row.prompt,
        n_prompt_tokens=sum(r.n_prompt_tokens for r in requests),
        n_audio_tokens=sum(r.n_audio_tokens for r in requests),
        n_new_tokens=n_new,
        ttft_s=sum(res.ttft_s for res in results),
        encode_s=sum(res.encode_s for res in results) if all(res.encode_s is not None for res in results) else None,
        decode_s=decode_s,
        tokens_per_s=(n_new - len(results)) / decode_s if decode_s > 0 and n_new > len(results) else None,
        total_s=time.total_s,
        rtf=time.total_s / duration if duration > 0 else None,
        prep_s=time.prep_s,
        wait_s=time.wait_s,
        started_at=time.started_at,
        finished_at=time.finished_at,
        n_chunks=len(requests),
        **confidence_fields(results),
    )
    try:
        text, raw, finish, detected = texts(frontend, requests, results)
    except RetryableFailure as e:
        rec = base_record(item.row, item.line, **fields, status="failed", error_class=e.kind,
                          error_message=str(e), raw_text=e.raw, pred_text=e.text or None,
                          finish_reason=FINISH_REPETITION if e.kind in ("Repetition", "RunawayOutput")
                          else FINISH_ERROR)
        return Outcome.of(item, rec, RETRY)
    rec = base_record(item.row, item.line, **fields, status="ok", pred_text=text, raw_text=raw,
                      finish_reason=finish, detected_language=detected)
    return Outcome.of(item, rec, FINAL)
