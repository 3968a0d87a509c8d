"""Granary-style sanity checks on a transcript against its audio span: characters per second, known hallucination
phrases (a list file, config/hallucinations.txt by default), runaway repetition (workers/cleanup.py's check, the
one every answer already goes through). Each gives a bool per row, for `filters.keep_mask`.
"""

from __future__ import annotations

import os
import re
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


class _Blanks(dict):
    """str.translate table: punctuation, symbols, separators and control characters -> a space (filled as met)."""

    def __missing__(self, code: int):
        value = " " if unicodedata.category(chr(code))[0] in "PSZC" else chr(code)
        self[code] = value
        return value


_BLANKS = _Blanks()
_WIDE_POSSIBLE = re.compile("[\u1100-\U0010ffff]")  # East Asian wide/fullwidth characters are all at U+1100 and up


def normalize(text: str) -> str:
    """Case folded, punctuation and symbols as spaces, whitespace collapsed: what phrases are matched on."""
    return " ".join(text.casefold().translate(_BLANKS).split())


def _spaceless(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(unicodedata.east_asian_width(c) in "WF" for c in letters) > len(letters) / 2


@dataclass(frozen=True)
class Phrases:
    contained: dict[str, tuple[str, ...]]  # first word -> normalized phrases (spaced scripts: whole words)
    contained_spaceless: tuple[str, ...]  # normalized, spaces removed: matched anywhere
    whole: frozenset[str]  # normalized: the whole transcript

    def matches(self, text: str) -> bool:
        norm = normalize(text)
        if not norm:
            return False
        if norm in self.whole:
            return True
        padded = None
        for word in set(norm.split()).intersection(self.contained):
            padded = padded or f" {norm} "
            if any(f" {p} " in padded for p in self.contained[word]):
                return True
        if self.contained_spaceless and _WIDE_POSSIBLE.search(norm):
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
    by_first: dict[str, list[str]] = {}
    for phrase in contained:
        by_first.setdefault(phrase.split()[0], []).append(phrase)
    return Phrases({w: tuple(p) for w, p in by_first.items()}, tuple(spaceless), frozenset(whole))


def hallucinated(texts: Sequence[str], phrases: Phrases) -> np.ndarray:
    return np.fromiter((phrases.matches(t or "") for t in texts), dtype=bool, count=len(texts))


# workers/cleanup.py's runaway repetition: an n-gram (n <= 16) repeated back to back over a long span, which means,
# for every such n, at least 9 positions in a row where units[p] == units[p + n] (n = 1: 11, 2: 10, 3: 9, 4+: 3n).
_MAX_N, _MIN_RUN = 16, 9


def _maybe_repeated(texts: Sequence[str]) -> np.ndarray:
    """True where cleanup's check could find runaway repetition (never False where it does): texts cleanup splits
    in words, tested all at once with numpy; texts that may be written without spaces (a character from U+1100
    up) are left to the check itself."""
    maybe = np.zeros(len(texts), dtype=bool)
    vocab: dict[str, int] = {}
    units: list[int] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        if _WIDE_POSSIBLE.search(text):
            maybe[i] = True
            continue
        words = text.lower().split()
        units += [vocab.setdefault(w, len(vocab)) for w in words]
        owner += [i] * len(words)
    u, own = np.asarray(units, dtype=np.int64), np.asarray(owner, dtype=np.int64)
    for n in range(1, _MAX_N + 1):
        if len(u) <= n + _MIN_RUN:
            break
        same = (u[:-n] == u[n:]) & (own[:-n] == own[n:])
        sums = np.concatenate([[0], np.cumsum(same)])
        runs = np.flatnonzero(sums[_MIN_RUN:] - sums[:-_MIN_RUN] == _MIN_RUN)
        maybe[own[runs]] = True
    return maybe


def repeated(texts: Sequence[str], durations: Sequence[float | None]) -> np.ndarray:
    """Runaway repetition as workers/cleanup.py finds it (its own check decides; a vectorized necessary condition
    spares it the texts that cannot repeat)."""
    texts = [(t or "").strip() for t in texts]
    out = np.zeros(len(texts), dtype=bool)
    for i in np.flatnonzero(_maybe_repeated(texts)):
        out[i] = check_degenerate(texts[i], float(durations[i] or 0.0)) == "repetition"
    return out


