"""One export: check everything (the target first: `target.py`), compare with the other run (if asked), stream the
kept rows into the format's writer, move the output into place, and say what was kept and what was dropped and why.
With `segments` the rows written are the results' segments (segments.py), each filtered on its own values.
Any failure (a full disk, a folder without write permission, Ctrl-C) leaves nothing behind and an earlier export
unchanged; an OSError becomes an ExportError naming the target."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from transcribe_batch.manifests.reader import DigestSet, id_digest

from ..evaluate.normalize import NORMALIZERS
from . import ExportError, writer_class
from . import segments as seg
from .filters import REASONS, Filters, keep_mask
from .source import RunSource, open_run, open_runs
from .target import Target, commit, discard, make_parents, plan_target, remove_parents, run_inputs, staging_path
from .writer import BUILT_IN, ROW_COLUMNS, WriterOptions, field_name


@dataclass
class RunCount:
    path: str
    n_rows: int
    n_kept: int = 0
    n_segments: int | None = None  # --segments: the segments its rows hold (what the filters saw)


@dataclass
class Summary:
    output: str
    format: str
    n_rows: int = 0
    n_kept: int = 0
    audio_s_kept: float = 0.0
    dropped: Counter = field(default_factory=Counter)
    runs: list[RunCount] = field(default_factory=list)
    agree_with: str | None = None
    filters: dict = field(default_factory=dict)
    n_segments: int | None = None  # --segments: segments read (n_kept, n_dropped and dropped count segments)

    @property
    def n_read(self) -> int:
        """What the filters saw: result rows, or with --segments their segments."""
        return self.n_rows if self.n_segments is None else self.n_segments

    def to_dict(self) -> dict:
        return {
            "output": self.output,
            "format": self.format,
            "unit": "row" if self.n_segments is None else "segment",
            "n_rows": self.n_rows,
            **({} if self.n_segments is None else {"n_segments": self.n_segments}),
            "n_kept": self.n_kept,
            "n_dropped": self.n_read - self.n_kept,
            "hours_kept": self.audio_s_kept / 3600,
            "dropped": {reason: self.dropped.get(reason, 0) for reason in REASONS if self.dropped.get(reason)},
            "runs": [{k: v for k, v in vars(r).items() if v is not None} for r in self.runs],
            "agree_with": self.agree_with,
            "filters": self.filters,
        }


def _check_fields(sources: Sequence[RunSource], fields: Sequence[str], segments: bool) -> tuple[str, ...]:
    out: list[str] = []
    for name in fields:
        if name in BUILT_IN:
            raise ExportError(f"--field {name}: already in every export (audio_filepath, offset, duration, text)")
        if segments and name in seg.ROW_ONLY:
            raise ExportError(f"--field {name}: with --segments each output row is one segment, and {name} is the "
                              "whole result row's" + (" (its reference text is not split into segments)"
                                                      if name == "text" else ""))
        if segments and name == seg.ROW_ID:
            out.append(name)
            continue
        for s in sources:
            if name not in s.columns:
                raise ExportError(f"--field {name}: {s.results} has no such column; it has: {', '.join(s.columns)}")
        if field_name(name) in out:
            raise ExportError(f"--field {name} given twice")
        out.append(name)
    return tuple(out)


def _check_unique_ids(sources: Sequence[RunSource]) -> None:
    """Several runs are concatenated; an id in two of them is refused (which label would be right?)."""
    if len(sources) < 2:
        return
    seen = DigestSet(sum(s.n_rows for s in sources))
    for source in sources:
        for batch in source.batches(["id"]):
            for row_id in batch["id"].to_pylist():
                if not seen.add(id_digest(row_id)):
                    first = next((s for s in sources[:sources.index(source) + 1] if _has_id(s, row_id)), source)
                    raise ExportError(f"id {row_id!r} is in both {first.path} and {source.path}: export runs with "
                                      "disjoint ids (or only the run whose labels you want)")


def _says_language(source: RunSource, segments: bool) -> bool:
    """Whether some row (with `segments`: or some segment) of the run has a detected language."""
    if "detected_language" in source.columns and any(
            pc.any(pc.is_valid(b["detected_language"])).as_py() for b in source.batches(["detected_language"])):
        return True
    return segments and "segments" in source.columns and any(
        pc.any(pc.is_valid(pc.list_flatten(b["segments"].combine_chunks()).field("language"))).as_py() is True
        for b in source.batches(["segments"], seg.BATCH_ROWS))


def _check_language(sources: Sequence[RunSource], language: str, segments: bool) -> None:
    """--language on a run whose model never says which language it heard: refused, saying so (every row would be
    dropped for it)."""
    for s in sources:
        if not _says_language(s, segments):
            model = s.meta.get("model_id") or _first(s, "model_id") or "its model"
            raise ExportError(
                f"--language {language}: {s.path} has no detected language on any row: {model} did not identify "
                "the language (Qwen2-Audio never does; Qwen3-ASR does with its default template, not when the "
                "language was forced). Drop --language for this run, or filter on the manifest's `language` "
                "field before the run")


def _first(source: RunSource, column: str):
    """The first non-null value of a column (None when the run lacks it or it is all null)."""
    if column not in source.columns:
        return None
    for batch in source.batches([column]):
        values = batch[column].drop_null()
        if len(values):
            return values[0].as_py()
    return None


def _has_id(source: RunSource, row_id: str) -> bool:
    return any(pc.any(pc.equal(b["id"], row_id)).as_py() for b in source.batches(["id"]))


def _schema(sources: Sequence[RunSource], columns: Sequence[str]) -> pa.Schema:
    """The columns a writer gets, typed as in the first run that has each (a column no run has: nulls)."""
    out = []
    for name in columns:
        have = [s.schema.field(name) for s in sources if name in s.schema.names]
        out.append(have[0] if have else pa.field(name, pa.float64()))
    return pa.schema(out)


def _os_failure(e: OSError, target: Target, tmp: Path | None) -> ExportError:
    where = e.filename
    if where is not None and tmp is not None and os.path.basename(str(where)).startswith(".tmp-"):
        where = None  # our own temporary files: the target is what the user knows
    detail = e.strerror or str(e)
    return ExportError(f"-o {target.given}: the export failed: " + (f"{where}: " if where else "") + detail
                       + "; nothing was written" + (" (the earlier export is unchanged)" if target.replaces else ""))


def export(runs: Sequence[str | Path], output: str | Path, *, fmt: str = "nemo", filters: Filters = Filters(),
           fields: Sequence[str] = (), agree_with: str | Path | None = None, normalizer: str = "whisper",
           embed_audio: bool = False, overwrite: bool = False, segments: bool = False) -> Summary:
    filters.check()
    if normalizer not in NORMALIZERS:
        raise ExportError(f"--normalizer {normalizer!r}: choose from {', '.join(NORMALIZERS)}")
    if agree_with is None and filters.max_disagreement is not None:
        raise ExportError("--max-disagreement needs --agree-with RUN")
    if agree_with is not None and filters.max_disagreement is None:
        raise ExportError("--agree-with needs --max-disagreement (e.g. 0.1)")
    Writer = writer_class(fmt)
    if embed_audio and fmt != "hf":
        raise ExportError("--embed-audio is for --to hf (NeMo and Lhotse manifests point at the audio files)")
    sources = open_runs(runs)
    other = open_run(agree_with) if agree_with is not None else None
    if other is not None and any(other.results.resolve() == s.results.resolve() for s in sources):
        raise ExportError(f"--agree-with {agree_with}: is one of the runs exported; compare with another run")
    inputs = [i for s in [*sources, *([other] if other else [])] for i in run_inputs(s.path, s.results)]
    target = plan_target(output, fmt, Writer.is_folder, overwrite, inputs)
    if filters.min_confidence is not None:
        for s in sources:
            if "confidence" not in s.columns and not (segments and "segments" in s.columns):
                raise ExportError(f"{s.results}: no confidence column (a run written before confidence existed): "
                                  "--min-confidence cannot be applied to it")
    fields = _check_fields(sources, fields, segments)
    if filters.language is not None:
        _check_language(sources, filters.language, segments)
    _check_unique_ids(sources)

    summary = Summary(str(output), fmt, agree_with=str(agree_with) if agree_with is not None else None,
                      filters={k: v for k, v in vars(filters).items() if v is not None},
                      n_segments=0 if segments else None)
    columns = list(dict.fromkeys([*ROW_COLUMNS, *filters.columns(), "status", *fields]))
    write_columns = list(dict.fromkeys([*ROW_COLUMNS, *fields]))
    schema = _schema(sources, write_columns)
    if segments:
        schema = seg.schema(schema)
    created: list[Path] = []
    tmp: Path | None = None
    writer = None
    try:
        created = make_parents(target)
        tmp = staging_path(target)
        agreement = None
        if other is not None:
            from .agreement import agreement_codes
            from .filters import pre_agreement

            agreement = agreement_codes(sources, other, pre_agreement(filters), normalizer=normalizer,
                                        workdir=target.path.parent, segments=segments)
        writer = Writer(tmp, WriterOptions(fields=fields, embed_audio=embed_audio, segments=segments), schema)
        start = 0
        for source in sources:
            count = RunCount(str(source.path), source.n_rows, n_segments=0 if segments else None)
            for batch in seg.rows_of(source, columns, segments):
                if segments:
                    count.n_segments += batch.num_rows
                codes = agreement[start:start + batch.num_rows] if agreement is not None else None
                keep, dropped = keep_mask(batch, filters, codes)
                start += batch.num_rows
                kept = batch.filter(pa.array(keep))
                if kept.num_rows:
                    writer.write(kept.select(write_columns))
                count.n_kept += kept.num_rows
                summary.audio_s_kept += float(pc.sum(kept["duration_s"]).as_py() or 0.0)
                summary.dropped.update(dropped)
            summary.runs.append(count)
            summary.n_rows += count.n_rows
            summary.n_kept += count.n_kept
            if segments:
                summary.n_segments += count.n_segments
        writer.close()
        writer = None
        record = {k: v for k, v in summary.to_dict().items() if k not in ("output", "format")}
        commit(target, tmp, record)
    except BaseException as e:
        if writer is not None:
            writer.abort()
        if tmp is not None:
            discard(tmp)
        remove_parents(created)
        if isinstance(e, OSError):
            raise _os_failure(e, target, tmp) from None
        raise
    return summary
