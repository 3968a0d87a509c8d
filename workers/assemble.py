"""One work item's engine results → its result record and what happens next (an `Outcome`, workers/work.py).

Pure assembly, no device: the actor hands over the item, the requests its front end made (one per piece of audio),
the engine's result for each, and when and where it ran. The answer is cleaned by the model family (through the
front end), checked (runaway repetition, hitting max_new_tokens far beyond what the audio can hold, an empty answer
to audio with speech: worth another attempt), and joined over the pieces; every piece is kept in the record's
`segments` (times within the file), and what the front end left out in `skipped`. A long row planned as several
ranges (workers/work.py Span) gets one record per range; `join_ranges` makes the row's record of them at the merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from .cleanup import Cleaned, join, join_languages
from .confidence import confidence_fields
from .engines.base import (FINISH_EOS, FINISH_ERROR, FINISH_MAX_TOKENS, FINISH_NO_SPEECH, FINISH_REPETITION,
                           EngineResult, Request)
from .frontend import FrontEnd, Pieces
from .prompts import plausible_answer_tokens
from .record import Record, base_record, failed_record
from .work import FINAL, RETRY, Outcome, WorkItem

NON_SPEECH = "non_speech"  # the `skipped` reason for a long stretch without speech (workers/segmenting.py)


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
    if item.span is not None:  # a range: its own (nominal) length, not the row's
        fields.setdefault("duration_s", item.duration)
    rec = failed_record(item.row, item.line, error, error_class=kind, **producer.fields(item), **fields)
    return Outcome.of(item, rec, RETRY if retry else FINAL, on_device=on_device)


@dataclass(frozen=True)
class Answer:
    """One piece's answer: the raw text, its cleaned form, how it finished, and what was wrong with it (None: ok)."""

    raw: str
    cleaned: Cleaned
    finish: str  # eos | max_tokens | repetition | no_speech
    failure: RetryableFailure | None = None


def answer_of(frontend: FrontEnd, req: Request, res: EngineResult) -> Answer:
    """The piece's answer, cleaned by the model family and checked (runaway repetition, hitting max_new_tokens far
    beyond what the audio can hold)."""
    raw = res.text if res.text is not None else frontend.decode(res.token_ids)
    cleaned = frontend.clean(raw, duration_s=req.duration_s)
    n_new = len(res.token_ids)
    if cleaned.degenerate:
        return Answer(raw, cleaned, FINISH_REPETITION, RetryableFailure(
            "Repetition", f"{req.id}: degenerate output ({cleaned.reason or 'repetition'})", raw=raw,
            text=cleaned.text))
    if res.finish_reason == FINISH_MAX_TOKENS:
        plausible = plausible_answer_tokens(req.duration_s)
        if n_new >= plausible:
            return Answer(raw, cleaned, FINISH_REPETITION, RetryableFailure(
                "RunawayOutput", f"{req.id}: hit max_new_tokens ({n_new} tokens) for {req.duration_s:.1f} s of audio "
                f"(plausible ≤ {plausible})", raw=raw, text=cleaned.text))
        return Answer(raw, cleaned, FINISH_MAX_TOKENS)
    if not cleaned.text.strip() and not req.speech:
        return Answer(raw, cleaned, FINISH_NO_SPEECH)
    return Answer(raw, cleaned, FINISH_EOS)


def segment_of(req: Request, res: EngineResult, answer: Answer) -> dict:
    """The piece as an element of the record's `segments` column (workers/record.py SEGMENT_FIELDS)."""
    return dict(start_s=req.start_s, end_s=req.end_s,
                text=None if answer.failure else answer.cleaned.text, raw_text=answer.raw,
                **confidence_fields([res]), n_tokens=len(res.token_ids), language=answer.cleaned.language,
                finish_reason=answer.finish, status="failed" if answer.failure else "ok")


def skipped_of(pieces: Pieces) -> list[dict]:
    """The stretches the front end left out, as the record's `skipped` column (workers/record.py SKIPPED)."""
    return [dict(start_s=s, end_s=e, reason=NON_SPEECH) for s, e in pieces.skipped]


def texts(frontend: FrontEnd, requests: list[Request], answers: list[Answer]) -> tuple[str, str, str, str | None]:
    """(transcript, raw answer, finish reason, detected language) over an item's pieces; RetryableFailure when the
    answer is unusable: a piece's failure (the first), or an empty transcript of audio with speech."""
    for answer in answers:
        if answer.failure is not None:
            raise answer.failure
    cleaned_texts = [a.cleaned.text for a in answers]
    text = frontend.join(cleaned_texts) if len(cleaned_texts) > 1 else cleaned_texts[0] if cleaned_texts else ""
    raw = "\n".join(a.raw for a in answers)
    languages = frontend.join_languages([a.cleaned.language for a in answers])
    if not text.strip():
        if not any(req.speech for req in requests):  # nothing was said: an empty answer is the right one
            return "", raw, FINISH_NO_SPEECH, languages
        raise RetryableFailure("EmptyOutput", f"{requests[0].id.split('#')[0]}: empty transcript", raw=raw, text=text)
    finish = FINISH_MAX_TOKENS if any(a.finish == FINISH_MAX_TOKENS for a in answers) else FINISH_EOS
    return text, raw, finish, languages


def answered(frontend: FrontEnd, producer: Producer, item: WorkItem, pieces: Pieces,
             results: list[EngineResult], time: DeviceTime) -> Outcome:
    """The outcome of an item whose every request came back from the engine (one result per request, in order; an
    item whose audio held no speech at all has no requests). The record's `segments` list every piece, failed ones
    as such; the item is ok only when every piece is."""
    requests = pieces.requests
    duration = pieces.duration_s
    n_new = sum(len(res.token_ids) for res in results)
    decode_s = sum(res.decode_s for res in results)
    answers = [answer_of(frontend, req, res) for req, res in zip(requests, results)]
    fields = dict(
        producer.fields(item),
        duration_s=duration,
        prompt=requests[0].prompt if requests and requests[0].prompt else item.row.prompt,
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
        segments=[segment_of(req, res, a) for req, res, a in zip(requests, results, answers)],
        skipped=skipped_of(pieces),
        **confidence_fields(results),
    )
    try:
        text, raw, finish, detected = texts(frontend, requests, answers)
    except RetryableFailure as e:
        if e.kind == "EmptyOutput":  # the pieces with speech said nothing: those are the failed ones
            fields["segments"] = [dict(s, text=None, finish_reason=FINISH_ERROR, status="failed") if req.speech else s
                                  for req, s in zip(requests, fields["segments"])]
        rec = base_record(item.row, item.line, **fields, status="failed", error_class=e.kind,
                          error_message=str(e), raw_text=e.raw, pred_text=e.text or None,
                          finish_reason=FINISH_REPETITION if e.kind in ("Repetition", "RunawayOutput")
                          else FINISH_ERROR)
        return Outcome.of(item, rec, RETRY)
    rec = base_record(item.row, item.line, **fields, status="ok", pred_text=text, raw_text=raw,
                      finish_reason=finish, detected_language=detected)
    return Outcome.of(item, rec, FINAL)


_SUMMED = ("duration_s", "n_prompt_tokens", "n_audio_tokens", "n_new_tokens", "ttft_s", "decode_s", "total_s",
           "prep_s", "wait_s", "n_chunks")


def join_ranges(records: list[Record]) -> Record:
    """A long row's record from the records of its ranges, in range order (the merge calls this: each range was
    its own work item, pipeline/plan.py). Its segments and skipped stretches are the ranges' in order (skipped
    stretches that meet at a range's cut made one); it is ok only
    when every range is; texts are joined as a split row's pieces are; counts and times are summed, confidence is
    over all the row's tokens; a failed row says which ranges failed and the first one's error; device, node and
    attempts are those of the range that took the most attempts (the first such). A range that failed without an
    answer (bad audio, engine errors, crashes) has no segments: the failed row's segments then leave its span out,
    and the other ranges' segments stay usable."""
    if not records:
        raise ValueError("a row's record needs at least one range record")
    first = records[0]
    ok = all(r.ok for r in records)
    summed = {name: _sum([getattr(r, name) for r in records]) for name in _SUMMED}
    n_new = summed["n_new_tokens"] or 0
    decode_s = summed["decode_s"]
    means = [(r.mean_logprob, r.n_new_tokens or 0) for r in records]
    mean = (sum(m * n for m, n in means) / n_new if n_new and all(m is not None for m, _ in means)
            else None)
    worst = max(records, key=lambda r: r.attempts or 0)
    texts_ = [r.pred_text for r in records]
    fields = dict(
        **summed,
        status="ok" if ok else "failed",
        pred_text=join([t for t in texts_ if t]) if all(t is not None for t in texts_) else None,
        raw_text="\n".join(r.raw_text for r in records if r.raw_text is not None) or None,
        detected_language=join_languages([lang for r in records for lang in (r.detected_language or "").split(",")
                                          if lang]),
        mean_logprob=mean,
        min_logprob=min((r.min_logprob for r in records), default=None) if mean is not None else None,
        confidence=math.exp(mean) if mean is not None else None,
        encode_s=_sum([r.encode_s for r in records], strict=True),
        tokens_per_s=(n_new - summed["n_chunks"]) / decode_s if decode_s and n_new > summed["n_chunks"] else None,
        rtf=summed["total_s"] / summed["duration_s"] if summed["total_s"] is not None and summed["duration_s"]
        else None,
        queued_at=min((r.queued_at for r in records if r.queued_at), default=None),
        started_at=min((r.started_at for r in records if r.started_at), default=None),
        finished_at=max((r.finished_at for r in records if r.finished_at), default=None),
        segments=[s for r in records for s in (r.segments or [])],
        skipped=_merged_stretches([s for r in records for s in (r.skipped or [])]),
        attempts=worst.attempts, device=worst.device, node=worst.node, node_id=worst.node_id,
        engine=worst.engine, model_id=worst.model_id,
    )
    if ok:
        fields.update(error_class=None, error_message=None,
                      finish_reason=_finish([r.finish_reason for r in records]))
    else:
        bad = [k for k, r in enumerate(records) if not r.ok]
        failed_ = records[bad[0]]
        fields.update(error_class=failed_.error_class, finish_reason=failed_.finish_reason,
                      error_message=f"range{'s' if len(bad) > 1 else ''} {', '.join(map(str, bad))} of "
                                    f"{len(records)} failed; range {bad[0]}: {failed_.error_message}")
    return first.replace(**fields)


def _merged_stretches(stretches: list[dict]) -> list[dict]:
    """Skipped stretches in time order with those that meet (at a range's cut) and share a reason made one."""
    out: list[dict] = []
    for s in stretches:
        if out and out[-1]["end_s"] == s["start_s"] and out[-1]["reason"] == s["reason"]:
            out[-1] = {**out[-1], "end_s": s["end_s"]}
        else:
            out.append(dict(s))
    return out


def _sum(values: list, *, strict: bool = False):
    """Sum of the values that are not None (None when all are, or with `strict` when any is)."""
    known = [v for v in values if v is not None]
    if not known or (strict and len(known) < len(values)):
        return None
    return sum(known)


def _finish(reasons: list[str | None]) -> str | None:
    """A joined row's finish reason: max_tokens if any range hit it, no_speech if every range had none, else eos."""
    if FINISH_MAX_TOKENS in reasons:
        return FINISH_MAX_TOKENS
    if reasons and all(r == FINISH_NO_SPEECH for r in reasons):
        return FINISH_NO_SPEECH
    return FINISH_EOS
