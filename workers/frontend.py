"""Front end shared by every engine: manifest row → Requests (audio, features, prompt ids), answer → transcript.

    fe = FrontEnd.for_worker(config, engine.limits)  # config: the run's WorkerConfig (workers/contracts.py)
    requests = fe.prepare(row)                 # long audio is cut at pauses into pieces (training segments)
    pieces = fe.prepare_pieces(row, span=item.span)  # the same, and what was left out; a long row's range only
    results = engine.transcribe_batch(requests)
    cleaned = [fe.clean(r.text or fe.decode(r.token_ids), duration_s=q.duration_s) for q, r in ...]
    transcript = fe.join([c.text for c in cleaned]); language = fe.join_languages([c.language for c in cleaned])

Everything model-specific (features, audio-token count, limits, prompt, stop ids, answer format) comes from the
model folder's family (workers/models/); this module only puts the pieces together.

Pieces: audio no longer than a piece may be (the engine's limits and `segment_max_s`) is one request; longer audio
is cut at pauses into training segments (workers/segmenting.py, speech found by the run's splitter: workers/vad.py),
long non-speech stretches left out and listed (`Pieces.skipped`). A range of a long row (workers/work.py Span)
reads only its own span of the file (workers/audio.py load_span), between cuts its neighbours compute alike
(workers/ranges.py boundary_cut). Every request carries its time span within the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transcribe_batch.manifests.row import ManifestRow

from .audio import SAMPLE_RATE, load_audio, load_span
from .cleanup import Cleaned, clean, join, join_languages
from .contracts import DecodeOptions, EngineLimits, Request, SegmentSettings, WorkerConfig
from .models import ModelFamily, load_family
from .prompts import ANSWER_OVERHEAD_TOKENS, TOKENS_PER_SECOND, PromptError, Templates, answer_budget, load_templates
from .ranges import boundary_cut
from .segment import max_piece_seconds, padded_samples, split_points
from .segmenting import SegmentOptions, segment_audio
from .work import Span

MIN_ANSWER_PIECE_S = 4.0  # see FrontEnd.max_piece_s


@dataclass(frozen=True)
class Pieces:
    """What the front end made of one work item's audio: its requests in time order, the stretches it left out
    (long non-speech), and the span of the file the audio covers (requests and skipped stretches tile it)."""

    requests: list[Request]
    skipped: tuple[tuple[float, float], ...]  # (start_s, end_s) within the file, in time order
    start_s: float  # where the item's audio starts within the file (the row's offset, or its range's cut)
    end_s: float  # where it ends

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class FrontEnd:
    def __init__(
        self,
        model_dir: str | os.PathLike | None,
        *,
        template: str,
        max_new_tokens: int,
        limits: EngineLimits | None = None,
        templates: Templates | None = None,
        segments: SegmentSettings | None = None,
    ):
        """`template`: the run's prompt template; `max_new_tokens`: the run's cap on generated tokens per request;
        `segments`: how long audio is cut (all three the run's settings: workers/contracts.py WorkerConfig; None:
        pieces only where the engine's limits require them, cut by short-time energy with nothing left out, for
        callers that want an engine's requests only); `limits`: the engine's (default: the model family's audio
        window, no sequence limit)."""
        self.model_dir = Path(model_dir) if model_dir is not None else None
        if self.model_dir is not None and not self.model_dir.is_dir():
            raise FileNotFoundError(f"model folder not found: {self.model_dir}")
        self.templates = templates or load_templates()
        self.family: ModelFamily = load_family(self.model_dir, self.templates)
        self.family.check_template(template)
        self.template = template
        self.max_new_tokens_cap = max_new_tokens
        self.features = self.family.features
        self.limits = limits or EngineLimits(max_audio_s=self.family.max_audio_s)
        self.tokenized = self.family.has_tokenizer
        self.model_id = model_id_of(self.model_dir)
        self.segments = segments

    @classmethod
    def for_worker(cls, config: WorkerConfig, limits: EngineLimits | None = None) -> "FrontEnd":
        """The front end a worker with `config` runs, for an engine with `limits`."""
        return cls(config.model_dir, template=config.template, max_new_tokens=config.max_new_tokens, limits=limits,
                   segments=config.segments)

    def budget(self, duration_s: float) -> int:
        return answer_budget(duration_s, self.max_new_tokens_cap)

    def max_piece_s(self, spec) -> float:
        """Longest piece (seconds) this engine takes with this prompt: the family's and the engine's limits, the
        sequence limit, and the answer cap (a piece whose plausible transcript outgrows max_new_tokens would be cut
        off, so it is split instead; a cap too small for MIN_ANSWER_PIECE_S of speech is taken as a deliberate
        truncation and does not split)."""
        n_text = len(self.family.prompt_ids(spec)) - 1 if self.tokenized else 0
        longest = max_piece_seconds(self.limits, self.features, n_text, self.budget,
                                    audio_tokens=self.family.n_audio_tokens,
                                    step_samples=self.family.token_step_samples, max_audio_s=self.family.max_audio_s)
        by_cap = (self.max_new_tokens_cap - ANSWER_OVERHEAD_TOKENS) / TOKENS_PER_SECOND
        return min(longest, by_cap) if by_cap >= MIN_ANSWER_PIECE_S else longest

    def warm_up(self) -> None:
        """Do the first row's one-time work now (imports and mel filters behind the features, the first FFT, the
        run's template's prompt ids) so that the first row costs what every other row costs."""
        if not self.tokenized:  # cheap mode: audio loading and splitting only, nothing to warm
            return
        self.family.log_mel(self.family.fit_audio(np.zeros(SAMPLE_RATE // 10, dtype=np.float32)))
        try:
            self.max_piece_s(self.family.prompt_spec(None, self.template))
        except PromptError:  # the template needs row fields (language): its ids are made with the first row
            self.family.prompt_ids(self.family.prompt_spec(ManifestRow(id="warm-up", audio_filepath="", prompt=" "),
                                                           "default"))

    def prepare(self, row: ManifestRow, *, max_chunk_s: float | None = None, keep_audio: bool = False
                ) -> list[Request]:
        """The row's requests (`prepare_pieces(row, ...).requests`)."""
        return self.prepare_pieces(row, max_chunk_s=max_chunk_s, keep_audio=keep_audio).requests

    def span_of(self, row: ManifestRow, span: Span | None) -> tuple[float, float | None]:
        """(start_s, end_s) within the file of the row (end None: to the file's end), or of its range `span`:
        inner boundaries moved into a pause by workers/ranges.boundary_cut, from the audio around them alone, so
        that the neighbouring range's actor finds the same time."""
        if span is None:
            return row.offset, None if row.duration is None else row.offset + row.duration
        row_end = row.offset + span.row_s
        splitter = self.segments.splitter if self.segments else "energy"

        def cut(k: int) -> float:
            return boundary_cut(row.audio_filepath, row.offset + span.nominal(k), splitter=splitter,
                                duration_s=row_end)

        return (row.offset if span.first else cut(span.k), row_end if span.last else cut(span.k + 1))

    def prepare_pieces(self, row: ManifestRow, *, span: Span | None = None, max_chunk_s: float | None = None,
                       keep_audio: bool = False) -> Pieces:
        """The row's (or its range's) requests, one per piece of its audio, each built whole: one piece unless the
        audio is longer than a piece may be (the engine's limits, segment_max_s, or `max_chunk_s` asking for
        shorter pieces), else training segments cut at pauses, long non-speech left out (`Pieces.skipped`).
        `keep_audio`: the engine wants the samples."""
        start_s, end_s = self.span_of(row, span)
        if span is None:
            audio = load_audio(row.audio_filepath, row.offset, row.duration)
        else:
            audio = load_span(row.audio_filepath, start_s, end_s)
        if span is None or end_s is None:
            end_s = start_s + audio.size / SAMPLE_RATE

        def at(sample: int) -> float:  # a sample position as seconds in the file; the ends exactly as cut (a
            # neighbouring range starts at the same float)
            return end_s if sample == audio.size else start_s + sample / SAMPLE_RATE

        spec = self.family.prompt_spec(row, self.template)
        longest = self.max_piece_s(spec)
        if self.segments is not None:
            longest = min(longest, self.segments.max_s)
        if max_chunk_s is not None:
            longest = min(longest, max_chunk_s)
        skipped: list[tuple[int, int]] = []
        if audio.size <= int(longest * SAMPLE_RATE):
            pieces = [(0, audio.size)]
        elif self.segments is None:
            pieces = split_points(audio, longest, SAMPLE_RATE)
        else:
            options = SegmentOptions(min_s=min(self.segments.min_s, longest), max_s=longest,
                                     edge_s=min(SegmentOptions.edge_s, longest / 4))  # (tiny engine limits)
            seg = segment_audio(audio, self.segments.splitter, options=options, limit_s=longest)
            pieces, skipped = seg.segments.tolist(), seg.dropped.tolist()
        if span is not None:  # piece j of range k: unique over the row (the record's segments are numbered in order)
            ids = [f"{row.id}#r{span.k}.{j}" for j in range(len(pieces))]
        else:
            ids = [row.id] if len(pieces) == 1 else [f"{row.id}#{k}" for k in range(len(pieces))]
        if self.tokenized:
            prompt_ids = tuple(self.family.prompt_ids(spec))
            audio_token_id, stop_ids = self.family.audio_token_id, tuple(self.family.stop_ids)
        else:
            prompt_ids, audio_token_id, stop_ids = (), None, ()
        requests = []
        for k, (start, end) in enumerate(pieces):
            duration_s = (end - start) / SAMPLE_RATE
            piece = self.fit_to_engine(audio[start:end])
            n_audio_tokens = self.family.n_audio_tokens(piece.size)
            budget = self.budget(duration_s)
            features = mask = None
            expanded: tuple[int, ...] = ()
            if self.tokenized:
                features, mask = self.family.log_mel(self.family.fit_audio(piece))
                expanded = tuple(self.family.expand(list(prompt_ids), n_audio_tokens))
                if self.limits.max_seq_len is not None:  # what is left of the sequence after the prompt
                    budget = max(1, min(budget, self.limits.max_seq_len - len(expanded)))
            requests.append(Request(
                id=ids[k],
                duration_s=duration_s,
                decode=DecodeOptions(max_new_tokens=budget, stop_ids=stop_ids),
                audio=piece if keep_audio or not self.tokenized else None,
                features=features,
                feature_mask=mask,
                n_audio_tokens=n_audio_tokens,
                prompt_ids=prompt_ids,
                expanded_ids=expanded,
                audio_token_id=audio_token_id,
                prompt=spec.text,
                reference=row.text,
                chunk_index=k,
                n_chunks=len(pieces),
                start_s=at(start),
                end_s=at(end),
                speech=has_speech(piece, SAMPLE_RATE),
            ))
        return Pieces(requests, tuple((at(s), at(e)) for s, e in skipped), start_s, end_s)

    def fit_to_engine(self, piece: np.ndarray) -> np.ndarray:
        """The piece padded with silence to the engine's audio multiple (an encoder that takes whole chunks only:
        Sophgo's prebuilt Qwen3-ASR bmodels take whole seconds); as it is otherwise. Never truncated."""
        n = padded_samples(piece.size, self.limits, SAMPLE_RATE)
        return piece if n == piece.size else np.pad(piece, (0, n - piece.size))

    def decode(self, token_ids: list[int]) -> str:
        if not self.tokenized:
            raise RuntimeError("FrontEnd(model_dir=None) has no tokenizer to decode with")
        return self.family.decode(token_ids)

    def clean(self, raw: str, *, duration_s: float) -> Cleaned:
        """The family's parse of the raw answer (transcript, identified language), then the degenerate check."""
        return clean(raw, duration_s=duration_s, extract=self.family.parse)

    def join(self, texts: list[str]) -> str:
        return join(texts)

    def join_languages(self, languages: list[str | None]) -> str | None:
        return join_languages(languages)


def model_id_of(model_dir: Path | None) -> str:
    """The model's name: config.json's _name_or_path if it names one, else the folder's name."""
    if model_dir is None:
        return ""
    config = model_dir / "config.json"
    if config.is_file():
        name = json.loads(config.read_text()).get("_name_or_path")
        if name:
            return Path(name).name
    return model_dir.name


SPEECH_FLOOR_DB = -50.0  # a 25 ms frame louder than this (dB full scale) may hold speech; room tone is quieter
MIN_SPEECH_S = 0.1  # audio holds speech when at least this much of it is above the floor


def has_speech(audio: np.ndarray, sr: int = SAMPLE_RATE) -> bool:
    """Whether `audio` ([n_samples] float32 in [-1, 1]) may hold speech: at least MIN_SPEECH_S of 25 ms frames
    (10 ms hop) above SPEECH_FLOOR_DB. Deliberately generous: only audio that is silent or nearly so (digital
    silence, room tone) is speechless, so an empty answer is accepted only where nothing could have been said."""
    frame, hop = int(0.025 * sr), int(0.010 * sr)
    power = np.concatenate([[0.0], np.cumsum(np.square(audio, dtype=np.float64))])
    starts = np.arange(0, max(1, audio.size - frame + 1), hop)
    ends = np.minimum(starts + frame, audio.size)
    db = 10 * np.log10((power[ends] - power[starts]) / np.maximum(1, ends - starts) + 1e-12)
    return int(np.count_nonzero(db > SPEECH_FLOOR_DB)) * hop / sr >= MIN_SPEECH_S
