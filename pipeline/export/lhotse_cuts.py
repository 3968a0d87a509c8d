"""Lhotse manifests in folder OUT: `cuts.jsonl.gz` (a CutSet: one cut per utterance, its recording embedded and one
supervision carrying the transcript), plus `recordings.jsonl.gz` (each audio file once) and `supervisions.jsonl.gz`
(start relative to the recording), for recipes that build cuts themselves. `lhotse.load_manifest` reads each.

A recording's id is the file's stem and a digest of its absolute path (stable, unique); its header is read with
soundfile (no decoding). Mono files give MonoCuts on channel 0; multi-channel files give MultiCuts over all channels
(the model heard their mix). Supervision `custom` holds `confidence` and the `--field` columns. Files are written
line by line (lhotse's SequentialJsonlWriter); a recording is written once, tracked in a flat digest table. An export
that keeps no rows still has the three files, empty (what lhotse writes for an empty set; `lhotse.load_manifest`
gives an empty CutSet, `RecordingSet.from_jsonl` / `SupervisionSet.from_jsonl` empty sets).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pyarrow as pa
import soundfile as sf
from lhotse import MonoCut, MultiCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource
from lhotse.serialization import SequentialJsonlWriter

from transcribe_batch.manifests.reader import DigestSet, id_digest

from . import ExportError
from . import writer
from .writer import WriterOptions, field_name, json_value

FILES = ("cuts.jsonl.gz", "recordings.jsonl.gz", "supervisions.jsonl.gz")


def recording_id(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0][:40] or "rec"
    return f"{stem}-{hashlib.blake2b(path.encode(), digest_size=6).hexdigest()}"


class Writer(writer.Writer):
    is_folder = True

    def __init__(self, path: Path, options: WriterOptions, schema: pa.Schema):
        super().__init__(path, options, schema)
        self.cuts, self.recordings, self.supervisions = (SequentialJsonlWriter(path / name) for name in FILES)
        self.written = DigestSet()
        self._last: tuple[str, Recording] | None = None

    def _recording(self, path: str) -> Recording:
        if self._last is not None and self._last[0] == path:
            return self._last[1]
        try:
            info = sf.info(path)
        except (RuntimeError, OSError) as e:  # soundfile raises LibsndfileError (a RuntimeError)
            raise ExportError(f"{path}: cannot read the audio header for the Lhotse recording ({e})") from None
        rec = Recording(id=recording_id(path), sources=[AudioSource(type="file", channels=list(range(info.channels)),
                                                                     source=path)],
                        sampling_rate=int(info.samplerate), num_samples=int(info.frames),
                        duration=info.frames / info.samplerate)
        if self.written.add(id_digest(rec.id)):
            self.recordings.write(rec)
        self._last = (path, rec)
        return rec

    def write(self, table: pa.Table) -> None:
        cols = {name: table[name].to_pylist() for name in ("id", "audio_filepath", "offset", "duration_s", "pred_text",
                                                           "language", "confidence", *self.options.fields)}
        for i in range(table.num_rows):
            rec = self._recording(cols["audio_filepath"][i])
            start = float(cols["offset"][i] or 0.0)
            duration = min(float(cols["duration_s"][i]), rec.duration - start)  # measured; never past the file's end
            channels = rec.channel_ids
            channel = channels[0] if len(channels) == 1 else channels
            custom = {"confidence": cols["confidence"][i]}
            custom.update({field_name(n): json_value(cols[n][i]) for n in self.options.fields})
            language = cols["language"][i] if isinstance(cols["language"][i], str) else None
            text = cols["pred_text"][i].strip()
            row_id = cols["id"][i]
            sup = SupervisionSegment(id=row_id, recording_id=rec.id, start=start, duration=duration, channel=channel,
                                     text=text, language=language, custom=custom)
            self.supervisions.write(sup)
            in_cut = SupervisionSegment(id=row_id, recording_id=rec.id, start=0.0, duration=duration,
                                        channel=channel, text=text, language=language, custom=custom)
            cut_type = MonoCut if len(channels) == 1 else MultiCut
            self.cuts.write(cut_type(id=row_id, start=start, duration=duration, channel=channel, recording=rec,
                                     supervisions=[in_cut]))

    def close(self) -> None:
        for w in (self.cuts, self.recordings, self.supervisions):
            w.close()
        for name in FILES:  # the writers open their file at the first row
            if not (self.path / name).exists():
                gzip.open(self.path / name, "wb").close()

    def abort(self) -> None:
        for w in (self.cuts, self.recordings, self.supervisions):
            try:
                w.close()
            except Exception:  # noqa: BLE001 - removed anyway
                pass
