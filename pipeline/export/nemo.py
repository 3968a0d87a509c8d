"""NeMo manifest: one JSON object per line, `audio_filepath` (absolute), `offset`, `duration` (s), `text` (the
transcript), then the `--field` columns. NeMo's ASR datasets (and our manifest reader) read it as is."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from .writer import WriterOptions, field_name, fsync_file, json_value, move_into_place, remove, start_output


class Writer:
    kind = "file"

    def __init__(self, output: Path, options: WriterOptions):
        self.tmp = start_output(output, options.overwrite, folder=False)
        self.output = output
        self.fields = options.fields
        self.fh = open(self.tmp, "w", encoding="utf-8")

    def write(self, table: pa.Table) -> None:
        columns = {name: table[name].to_pylist() for name in ("audio_filepath", "offset", "duration_s", "pred_text",
                                                              *self.fields)}
        lines = []
        for i in range(table.num_rows):
            row = {"audio_filepath": columns["audio_filepath"][i], "offset": columns["offset"][i] or 0.0,
                   "duration": columns["duration_s"][i], "text": columns["pred_text"][i].strip()}
            for name in self.fields:
                row[field_name(name)] = json_value(columns[name][i])
            lines.append(json.dumps(row, ensure_ascii=False, default=str))
        if lines:
            self.fh.write("\n".join(lines) + "\n")

    def close(self) -> None:
        self.fh.close()
        fsync_file(self.tmp)
        move_into_place(self.tmp, self.output)

    def abort(self) -> None:
        self.fh.close()
        remove(self.tmp)
