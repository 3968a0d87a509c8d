"""Hugging Face dataset (`datasets`, Arrow on disk): `datasets.load_from_disk(OUT)` gives a Dataset with `id`,
`text` (the transcript), `duration`, and either `audio_filepath` + `offset` (paths; default) or `audio` (with
--embed-audio: the utterance's own samples, 16 kHz mono FLAC bytes in an `Audio(sampling_rate=16000)` column), then
the `--field` columns with their Arrow types.

Rows are written batch by batch with datasets' ArrowWriter into a scratch Arrow file (flat memory), which
`save_to_disk` then lays out as datasets does (shards, dataset_info.json, state.json). An export that keeps no rows
is a dataset of one empty shard with the same columns (`save_to_disk` would write no shard, which
`load_from_disk` cannot read).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import soundfile as sf
from datasets.arrow_writer import ArrowWriter

from transcribe_batch.workers.audio import SAMPLE_RATE, AudioError, load_audio

from . import ExportError
from . import writer
from .writer import WriterOptions, field_name

SCRATCH = ".rows.arrow"  # the rows as written, inside the folder being built; gone when it is complete


def _flac(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


class Writer(writer.Writer):
    is_folder = True

    def __init__(self, path: Path, options: WriterOptions, schema: pa.Schema):
        super().__init__(path, options, schema)
        self.arrow_path = path / SCRATCH
        self.writer = ArrowWriter(features=self._features(), path=str(self.arrow_path))

    def _features(self) -> datasets.Features:
        spec: dict = {"id": datasets.Value("string")}
        if self.options.embed_audio:
            spec["audio"] = datasets.Audio(sampling_rate=SAMPLE_RATE)
        else:
            spec["audio_filepath"] = datasets.Value("string")
            spec["offset"] = datasets.Value("float64")
        spec["duration"] = datasets.Value("float64")
        spec["text"] = datasets.Value("string")
        field_schema = pa.schema([pa.field(field_name(n), self.schema.field(n).type) for n in self.options.fields])
        spec.update(datasets.Features.from_arrow_schema(field_schema))
        return datasets.Features(spec)

    def write(self, table: pa.Table) -> None:
        batch: dict = {"id": table["id"].to_pylist()}
        if self.options.embed_audio:
            paths, offsets, durations = (table[c].to_pylist() for c in ("audio_filepath", "offset", "duration_s"))
            try:
                batch["audio"] = [{"bytes": _flac(load_audio(p, offset=o or 0.0, duration=d)), "path": None}
                                  for p, o, d in zip(paths, offsets, durations)]
            except AudioError as e:
                raise ExportError(f"--embed-audio: {e}") from None
        else:
            batch["audio_filepath"] = table["audio_filepath"].to_pylist()
            batch["offset"] = [o or 0.0 for o in table["offset"].to_pylist()]
        batch["duration"] = table["duration_s"].to_pylist()
        batch["text"] = [t.strip() for t in table["pred_text"].to_pylist()]
        for name in self.options.fields:
            batch[field_name(name)] = table[name].to_pylist()
        self.writer.write_batch(batch)

    def close(self) -> None:
        n_rows, _ = self.writer.finalize()
        self.writer.close()
        dataset = datasets.Dataset.from_file(str(self.arrow_path))
        built = self.path / ".dataset"
        dataset.save_to_disk(str(built), **({} if n_rows else {"num_shards": 1}))
        del dataset  # it maps the scratch file
        self.arrow_path.unlink()
        for name in os.listdir(built):
            os.replace(built / name, self.path / name)
        built.rmdir()

    def abort(self) -> None:
        try:
            self.writer.close()
        except Exception:  # noqa: BLE001 - removed anyway
            pass
