"""`transcribe-batch export`: a run's transcripts as training labels, filtered, in the formats training code reads.

Modules, in data-flow order: `source` (open run folders, check columns, stream record batches) → `segments` (with
--segments: each result row's segments as rows of their own) → `target` (where the export may go; build it aside,
mark it as an export, move it into place) → `agreement` (normalized WER against a second run, joined by id through
hash buckets on disk) → `filters` (keep/drop each row, counting why; the text checks in `sanity`: characters per
second, repetition, hallucination phrases) → one writer module per format → `export` (the passes, the summary).
A new format is one module with a subclass of `writer.Writer` named `Writer`, its tests, and one line in `FORMATS`.
"""

from __future__ import annotations

import importlib

# format name -> module under transcribe_batch.pipeline.export (imported only when used: datasets, lhotse are extras)
FORMATS = {
    "nemo": "nemo",
    "hf": "hf_datasets",
    "lhotse": "lhotse_cuts",
}


class ExportError(ValueError):
    """Bad export input (missing run, unknown field, bad threshold, existing output): the message says which."""


def writer_class(fmt: str) -> type:
    """The `writer.Writer` subclass of format `fmt` (its module is imported now: hf and lhotse need extras)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    try:
        module = importlib.import_module(f"{__name__}.{FORMATS[fmt]}")
    except ImportError as e:
        raise ExportError(f"--to {fmt} needs a package that is not installed ({e.name or e}); "
                          "install the extra: pip install 'transcribe-batch[export]'") from None
    return module.Writer
