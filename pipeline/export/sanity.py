"""Granary-style sanity checks on a transcript against its audio span: characters per second, known hallucination
phrases (a list file, config/hallucinations.txt by default), runaway repetition (workers/cleanup.py's check, the
one every answer already goes through). Each gives a bool per row, for `filters.keep_mask`.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
_WIDE = "[\u1100-\U0010ffff]"  # the same, for Arrow (RE2)
_CONTROL = "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"  # ASCII characters where Python's split() and Arrow's differ


def _strings(texts) -> pa.Array:
    """Texts (a sequence or an Arrow array; null = "") as one Arrow string array."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not isinstance(texts, pa.Array):
        texts = pa.array(list(texts), pa.string())
    return pc.fill_null(texts.cast(pa.string()), "")


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

    @cached_property
    def ascii_patterns(self) -> tuple[str | None, str | None]:
        """(contained, whole) as RE2 patterns on an ASCII text in lower case, exactly what `matches` decides for
        such a text (its normalization keeps [a-z0-9] and turns every other ASCII character into a space)."""
        return _ascii_patterns(self)

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


_GAP = "[^a-z0-9]"


def _ascii_patterns(phrases: Phrases) -> tuple[str | None, str | None]:
    def words(phrase: str) -> str:
        return f"{_GAP}+".join(re.escape(w) for w in phrase.split())

    contained = [words(p) for group in phrases.contained.values() for p in group if p.isascii()]
    whole = [words(p) for p in sorted(phrases.whole) if p.isascii()]
    return (f"(?:^|{_GAP})(?:{'|'.join(contained)})(?:{_GAP}|$)" if contained else None,
            f"^{_GAP}*(?:{'|'.join(whole)}){_GAP}*$" if whole else None)


def hallucinated(texts, phrases: Phrases) -> np.ndarray:
    """Per text (a sequence or an Arrow array of strings): it holds one of `phrases` (`Phrases.matches`; ASCII
    texts, most transcripts, are decided at once by two RE2 patterns; spaceless phrases cannot be in them)."""
    texts = _strings(texts)
    out = np.zeros(len(texts), dtype=bool)
    plain = pc.string_is_ascii(texts).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(plain)
    if len(rows):
        lower = pc.ascii_lower(texts.take(pa.array(rows)))
        for pattern in phrases.ascii_patterns:
            if pattern is not None:
                out[rows] |= pc.match_substring_regex(lower, pattern).to_numpy(zero_copy_only=False)
    for i in np.flatnonzero(~plain):
        out[i] = phrases.matches(texts[int(i)].as_py())
    return out


# workers/cleanup.py's runaway repetition: an n-gram (n <= 16) repeated back to back over a long span, which means,
# for every such n, at least 9 positions in a row where units[p] == units[p + n] (n = 1: 11, 2: 10, 3: 9, 4+: 3n).
_MAX_N, _MIN_RUN = 16, 9


def _maybe_repeated(texts: pa.Array) -> np.ndarray:
    """True where cleanup's check could find runaway repetition (never False where it does), tested all at once
    with numpy on the words as cleanup splits them: Arrow splits ASCII texts without control characters (the same
    words as Python's lower().split()), Python the other texts; texts that may be written without spaces (a
    character from U+1100 up: cleanup then counts characters) are left to the check itself."""
    maybe = pc.match_substring_regex(texts, _WIDE).to_numpy(zero_copy_only=False).copy()
    plain = pc.and_not(pc.string_is_ascii(texts), pc.match_substring_regex(texts, _CONTROL)).to_numpy(
        zero_copy_only=False)
    parts_u, parts_own = [], []
    rows = np.flatnonzero(plain)
    if len(rows):
        words = pc.ascii_split_whitespace(pc.ascii_lower(texts.take(pa.array(rows))))
        parts_u.append(pc.dictionary_encode(pc.list_flatten(words)).indices.to_numpy().astype(np.int64))
        parts_own.append(rows[pc.list_parent_indices(words).to_numpy()])
    vocab: dict[str, int] = {}
    units: list[int] = []
    owner: list[int] = []
    for i in np.flatnonzero(~plain & ~maybe):
        split = texts[int(i)].as_py().lower().split()
        units += [vocab.setdefault(w, len(vocab)) for w in split]
        owner += [int(i)] * len(split)
    parts_u.append(np.asarray(units, dtype=np.int64))
    parts_own.append(np.asarray(owner, dtype=np.int64))
    u, own = np.concatenate(parts_u), np.concatenate(parts_own)
    for n in range(1, _MAX_N + 1):
        if len(u) <= n + _MIN_RUN:
            break
        same = (u[:-n] == u[n:]) & (own[:-n] == own[n:])
        sums = np.concatenate([[0], np.cumsum(same)])
        runs = np.flatnonzero(sums[_MIN_RUN:] - sums[:-_MIN_RUN] == _MIN_RUN)
        maybe[own[runs]] = True
    return maybe


def repeated(texts, durations) -> np.ndarray:
    """Runaway repetition as workers/cleanup.py finds it (its own check decides; a vectorized necessary condition
    spares it the texts that cannot repeat). texts, durations: sequences or Arrow arrays."""
    texts = pc.utf8_trim_whitespace(_strings(texts))
    seconds = _numbers(durations)
    out = np.zeros(len(texts), dtype=bool)
    for i in np.flatnonzero(_maybe_repeated(texts)):
        out[i] = check_degenerate(texts[int(i)].as_py(), float(seconds[i])) == "repetition"
    return out


def _numbers(values) -> np.ndarray:
    """Numbers (a sequence or an Arrow array; null = 0) as float64."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return pc.fill_null(values.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    return np.array([float(v or 0.0) for v in values], dtype=np.float64)


