"""Granary-style sanity checks on a transcript against its audio span: characters per second, known hallucination
phrases (a list file, config/hallucinations.txt by default), runaway repetition (workers/cleanup.py's check, the
one every answer already goes through). Each gives a bool per row, for `filters.keep_mask`.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from transcribe_batch.workers.cleanup import check_degenerate

from . import ExportError


def shipped(name: str) -> str:
    """A file config/ ships (e.g. the default hallucination list), as a path."""
    return str(resources.files("transcribe_batch.config").joinpath(name))


def normalize(text: str) -> str:
    """Case folded, punctuation and symbols as spaces, whitespace collapsed: what phrases are matched on."""
    out = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in text.casefold())
    return " ".join(out.split())


def _spaceless(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(unicodedata.east_asian_width(c) in "WF" for c in letters) > len(letters) / 2


@dataclass(frozen=True)
class Phrases:
    contained: tuple[str, ...]  # normalized, spaced scripts: matched as whole words
    contained_spaceless: tuple[str, ...]  # normalized, spaces removed: matched anywhere
    whole: frozenset[str]  # normalized: the whole transcript

    def matches(self, text: str) -> bool:
        norm = normalize(text)
        if not norm:
            return False
        if norm in self.whole:
            return True
        padded = f" {norm} "
        if any(f" {p} " in padded for p in self.contained):
            return True
        if self.contained_spaceless:
            squeezed = norm.replace(" ", "")
            return any(p in squeezed for p in self.contained_spaceless)
        return False


def read_phrases(path: str | os.PathLike) -> Phrases:
    """Parse a phrase list (format: config/hallucinations.txt's header). Errors name the file and line."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise ExportError(f"--hallucinations {path}: cannot read it ({e.strerror or e})") from None
    return _read(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _read(path: str, size: int, mtime_ns: int) -> Phrases:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"--hallucinations {path}: cannot read it as UTF-8 text ({e})") from None
    contained, spaceless, whole = [], [], set()
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exact = line.startswith("=")
        phrase = normalize(line[1:] if exact else line)
        if not phrase:
            raise ExportError(f"{path}:{number}: {line!r} has no words to match (after removing punctuation)")
        if exact:
            whole.add(phrase)
        elif _spaceless(phrase):
            spaceless.append(phrase.replace(" ", ""))
        else:
            contained.append(phrase)
    return Phrases(tuple(contained), tuple(spaceless), frozenset(whole))


def hallucinated(texts: Sequence[str], phrases: Phrases) -> np.ndarray:
    return np.fromiter((phrases.matches(t or "") for t in texts), dtype=bool, count=len(texts))


def repeated(texts: Sequence[str], durations: Sequence[float | None]) -> np.ndarray:
    """Runaway repetition as workers/cleanup.py finds it (an n-gram repeated back to back over a long span)."""
    return np.fromiter((check_degenerate((t or "").strip(), float(d or 0.0)) == "repetition"
                        for t, d in zip(texts, durations)), dtype=bool, count=len(texts))


