"""NeMo manifest: one JSON object per line, `audio_filepath` (absolute), `offset`, `duration` (s), `text` (the
transcript), with --segments the segment's `id` ("<row id>#<k>"), then the `--field` columns. NeMo's ASR datasets
read it as is (so does our manifest reader, except --segments ids: '#' is reserved in manifest ids); an export that
keeps no rows is an empty file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from . import writer
from .writer import WriterOptions, field_name, json_value


class Writer(writer.Writer):
    is_folder = False

    def __init__(self, path: Path, options: WriterOptions, schema: pa.Schema):
        super().__init__(path, options, schema)
        self.fh = open(path, "x", encoding="utf-8")

    def write(self, table: pa.Table) -> None:
        fields = self.options.fields
        columns = {name: table[name].to_pylist() for name in ("id", "audio_filepath", "offset", "duration_s",
                                                              "pred_text", *fields)}
        lines = []
        for i in range(table.num_rows):
            row = {"audio_filepath": columns["audio_filepath"][i], "offset": columns["offset"][i] or 0.0,
                   "duration": columns["duration_s"][i], "text": columns["pred_text"][i].strip()}
            if self.options.segments:
                row["id"] = columns["id"][i]
            for name in fields:
                row[field_name(name)] = json_value(columns[name][i])
            lines.append(json.dumps(row, ensure_ascii=False, default=str))
        self.fh.write("\n".join(lines) + "\n")

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()

    def abort(self) -> None:
        self.fh.close()
