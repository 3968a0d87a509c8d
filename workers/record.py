"""One result row per manifest row (contract 5): its fields, their Arrow types, the `Record` type generated from
them, and helpers to build records.

Part files use exactly `PART_SCHEMA`; manifest fields the runner doesn't know travel as one JSON column
(`manifest_extra`) so that every part has the same schema, and the merged results.parquet spreads them into columns.
"""

from __future__ import annotations

import dataclasses
import socket
from datetime import datetime, timezone
from typing import Any, Iterable

import pyarrow as pa

from transcribe_batch.manifests.row import ManifestRow

_TS = pa.timestamp("us", tz="UTC")

# One piece of a row's audio as the engine answered it (the `segments` column's elements; export --segments makes
# one training row of each). Times are seconds within the audio FILE (the row's offset included).
SEGMENT_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("start_s", pa.float64(), "start within the audio file, seconds"),
    ("end_s", pa.float64(), "end within the audio file, seconds"),
    ("text", pa.string(), "cleaned transcript of this piece (null when it failed)"),
    ("raw_text", pa.string(), "the model's raw answer for this piece"),
    ("confidence", pa.float64(), "exp(mean_logprob) of this piece's tokens (null: the engine gave no log-probabilities)"),
    ("mean_logprob", pa.float64(), "mean log-probability of this piece's generated tokens"),
    ("min_logprob", pa.float64(), "log-probability of this piece's least likely token"),
    ("n_tokens", pa.int32(), "tokens generated for this piece"),
    ("language", pa.string(), "language the model identified in this piece (null: the family does not say)"),
    ("finish_reason", pa.string(), "eos | max_tokens | repetition | error | no_speech"),
    ("status", pa.string(), "ok | failed"),
]
SEGMENT = pa.struct([pa.field(name, dtype) for name, dtype, _ in SEGMENT_FIELDS])
# A stretch of the row's audio left out of every segment (long non-speech), so that coverage stays auditable:
# segments and skipped stretches together tile [offset, offset + duration_s].
SKIPPED = pa.struct([pa.field("start_s", pa.float64()), pa.field("end_s", pa.float64()),
                     pa.field("reason", pa.string())])

FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("id", pa.string(), "manifest id (given or derived stably from path+offset+duration)"),
    ("line", pa.int64(), "line number in the manifest (1-based); results.parquet is sorted by it"),
    ("audio_filepath", pa.string(), "absolute path of the audio file"),
    ("offset", pa.float64(), "start of the utterance in the file, seconds"),
    ("duration_s", pa.float64(), "audio seconds transcribed (measured; the manifest's value if audio never loaded)"),
    ("text", pa.string(), "reference transcript from the manifest (null if none)"),
    ("pred_text", pa.string(), "cleaned transcript (null when the engine produced nothing usable)"),
    ("raw_text", pa.string(), "the model's raw answer before cleanup (last attempt)"),
    ("status", pa.string(), "ok | failed"),
    ("error_class", pa.string(), "exception class / failure kind of the final attempt (null when ok)"),
    ("error_message", pa.string(), "what went wrong, naming the file or line where it can"),
    ("attempts", pa.int32(), "attempts made (1 = first try succeeded or failed for good; 0 = a bad manifest line)"),
    ("engine", pa.string(), "engine name: bm1684x | hf | simulated"),
    ("model_id", pa.string(), "model identity (e.g. Qwen2-Audio-7B-Instruct; 'simulated' for the simulated engine)"),
    ("device", pa.int32(), "device index on its node (card / GPU / simulated device)"),
    ("node", pa.string(), "host name of the node that ran the final attempt"),
    ("node_id", pa.string(), "Ray node id of that node (distinguishes nodes sharing a host; null outside Ray)"),
    ("prompt", pa.string(), "instruction text sent with the audio"),
    ("task", pa.string(), "manifest task (prompt template name), if any"),
    ("language", pa.string(), "manifest language, if any"),
    ("detected_language", pa.string(), "language the model identified (Qwen3-ASR; 'A,B' across pieces), else null"),
    ("n_prompt_tokens", pa.int32(), "prompt tokens incl. audio tokens (summed over pieces)"),
    ("n_audio_tokens", pa.int32(), "audio tokens (Qwen2-Audio 25 per second, Qwen3-ASR 13; summed over pieces)"),
    ("n_new_tokens", pa.int32(), "generated tokens (summed over pieces)"),
    ("finish_reason", pa.string(), "eos | max_tokens | repetition | error | no_speech (an empty answer to audio "
                                   "without speech by the front end's energy check: status ok, pred_text '')"),
    ("mean_logprob", pa.float64(), "mean log-probability of the generated tokens (all pieces' tokens together; "
                                   "null when the engine gave none)"),
    ("min_logprob", pa.float64(), "log-probability of the least likely generated token (over all pieces)"),
    ("confidence", pa.float64(), "exp(mean_logprob) in [0, 1]: geometric mean of the chosen tokens' probabilities"),
    ("ttft_s", pa.float64(), "time to first token (audio encode + prefill), summed over pieces"),
    ("encode_s", pa.float64(), "audio encoder's share of ttft_s, summed over pieces (null: the engine cannot tell)"),
    ("decode_s", pa.float64(), "time for the tokens after the first, summed over pieces"),
    ("tokens_per_s", pa.float64(), "decode speed: (n_new_tokens - pieces) / decode_s"),
    ("total_s", pa.float64(), "device time for this row: finished_at - started_at"),
    ("rtf", pa.float64(), "real-time factor: total_s / duration_s"),
    ("prep_s", pa.float64(), "CPU front-end time (load audio, features, prompt) on the prefetch thread"),
    ("wait_s", pa.float64(), "time the device waited for the front end before this row (0 = prefetch kept up)"),
    ("queued_at", _TS, "when the driver handed this row's shard to the actor (final attempt)"),
    ("started_at", _TS, "when the device started on this row"),
    ("finished_at", _TS, "when the device finished this row"),
    ("n_chunks", pa.int32(), "pieces the audio was split into (1 = not split)"),
    ("segments", pa.list_(SEGMENT), "the row's pieces in time order, one element when it was not split (fields: "
                                    + ", ".join(name for name, _, _ in SEGMENT_FIELDS) + "; times within the file); "
                                    "null when no piece reached the engine (bad audio, engine errors)"),
    ("skipped", pa.list_(SKIPPED), "stretches of the row's audio left out of every segment (start_s, end_s, reason, "
                                   "e.g. non_speech); empty when nothing was left out"),
    ("manifest_extra", pa.string(), "other manifest fields as JSON (parts only; results.parquet has them as columns)"),
]

PART_SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in FIELDS])
COLUMNS = [name for name, _, _ in FIELDS]


def _python_type(dtype: pa.DataType) -> type:
    if pa.types.is_integer(dtype):
        return int
    if pa.types.is_floating(dtype):
        return float
    if pa.types.is_timestamp(dtype):
        return datetime
    if pa.types.is_boolean(dtype):
        return bool
    if pa.types.is_list(dtype):
        return list
    return str


def _record_type():
    fields = [(name, _python_type(dtype) | None, dataclasses.field(default=None)) for name, dtype, _ in FIELDS]
    doc = "One result row (frozen); every field is optional (None = null):\n\n" + "\n".join(
        f"    {name} ({_python_type(dtype).__name__}): {help_}" for name, dtype, help_ in FIELDS)
    cls = dataclasses.make_dataclass("Record", fields, frozen=True, slots=True, namespace={
        "__doc__": doc,
        "replace": lambda self, **changes: dataclasses.replace(self, **changes),
        "as_row": lambda self: {name: getattr(self, name) for name in COLUMNS},
        "ok": property(lambda self: self.status == "ok"),
    })
    cls.__module__ = __name__
    return cls


# The result record, generated from FIELDS: `Record(**fields)`, `rec.replace(**changes)`, `rec.as_row()` (the Arrow
# row as a dict), `rec.ok`; `to_table(records)` / `records_of(table)` to and from Arrow.
Record = _record_type()


def now() -> datetime:
    return datetime.now(timezone.utc)


def node_name() -> str:
    return socket.gethostname()


def base_record(row: ManifestRow | None, line: int, **fields: Any) -> Record:
    """The fields known from the manifest row alone (None: a bad line, no row), then `fields`; the rest null."""
    known = {} if row is None else dict(
        id=row.id, audio_filepath=row.audio_filepath, offset=row.offset, duration_s=row.duration, text=row.text,
        prompt=row.prompt, task=row.task, language=row.language, manifest_extra=row.extra_json())
    return Record(**{"line": line, "attempts": 0, "n_chunks": 0, **known, **fields})


def failed_record(row: ManifestRow | None, line: int, error: BaseException | str, *, error_class: str | None = None,
                  attempts: int = 1, **fields: Any) -> Record:
    return base_record(row, line, **{
        "status": "failed",
        "error_class": error_class or (type(error).__name__ if isinstance(error, BaseException) else "Error"),
        "error_message": str(error),
        "finish_reason": "error",
        "attempts": attempts,
        **fields,
    })


def to_table(records: Iterable[Record]) -> pa.Table:
    """Records as a table of PART_SCHEMA."""
    records = list(records)
    return pa.table({name: pa.array([getattr(r, name) for r in records], type=PART_SCHEMA.field(name).type)
                     for name in COLUMNS}, schema=PART_SCHEMA)


def records_of(table: pa.Table) -> list[Record]:
    """A table's rows (PART_SCHEMA's columns; others are ignored, missing ones null) as records."""
    names = [n for n in COLUMNS if n in table.column_names]
    return [Record(**row) for row in table.select(names).to_pylist()]


def conform(table: pa.Table) -> pa.Table:
    """A part written by an older version (fewer columns, e.g. no confidence columns) in today's PART_SCHEMA: the
    missing columns are null."""
    for name in COLUMNS:
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, PART_SCHEMA.field(name).type))
    return table.select(COLUMNS)


# -- the README's schema tables (README.md "Results schema"; tests/test_readme_schema.py keeps them equal) ---------
_TYPE_NAMES = [(SEGMENT, "segment"), (SKIPPED, "struct<start_s, end_s, reason>")]


def _type_name(dtype: pa.DataType) -> str:
    for named, name in _TYPE_NAMES:
        if dtype.equals(named):
            return name
    if pa.types.is_list(dtype):
        return f"list<{_type_name(dtype.value_type)}>"
    if pa.types.is_timestamp(dtype):
        return f"timestamp[{dtype.unit}, {dtype.tz}]"
    return str(dtype)


def _markdown_rows(fields: list[tuple[str, pa.DataType, str]], first: str) -> list[str]:
    return [f"| {first} | type | meaning |", "|---|---|---|"] + [
        f"| `{name}` | `{_type_name(dtype)}` | {help_.replace('|', chr(92) + '|')} |" for name, dtype, help_ in fields]


def markdown_tables() -> str:
    """FIELDS (the part files' and results.parquet's columns) and SEGMENT_FIELDS (a `segments` element) as the
    markdown tables README.md carries between its results-schema markers."""
    return "\n".join(_markdown_rows(FIELDS, "column") + ["", "A `segment` (one element of `segments`):", ""]
                     + _markdown_rows(SEGMENT_FIELDS, "field")) + "\n"


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m transcribe_batch.workers.record --markdown   (the README's results-schema tables)")
    sys.stdout.write(markdown_tables())
