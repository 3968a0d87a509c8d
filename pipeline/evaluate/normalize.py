"""Text normalization applied to both reference and hypothesis before scoring.

`whisper` is Whisper's English normalizer (from the maintained `whisper-normalizer` package): lower case, no
punctuation, contractions expanded ("won't" → "will not"), spelled-out numbers to digits ("twenty five" → "25"),
British → American spelling, fillers ("uh", "hmm") dropped. It is what UltraEval-Audio, the Open ASR Leaderboard and
the published Qwen2-Audio figures use, so numbers stay comparable. `basic` is Whisper's language-neutral normalizer
(lower case, symbols and bracketed text removed) for non-English runs; `none` only collapses whitespace.

After `whisper`/`basic`, tokens made only of punctuation (e.g. the lone "." Whisper's normalizer leaves of "well...")
are dropped, as the evaluation tokenizer of Qwen-Audio / UltraEval-Audio does (sacreBLEU-style, punctuation removal).
"""

from __future__ import annotations

import os
import unicodedata
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from typing import Callable, Sequence

NORMALIZERS = ("whisper", "basic", "none")


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _is_punctuation(token: str) -> bool:
    return all(unicodedata.category(c).startswith("P") for c in token)


def _words(text: str) -> str:
    return " ".join(t for t in text.split() if not _is_punctuation(t))


@lru_cache(maxsize=None)
def get_normalizer(name: str = "whisper") -> Callable[[str], str]:
    if name == "whisper":
        from whisper_normalizer.english import EnglishTextNormalizer

        english = EnglishTextNormalizer()
        return lambda text: _words(english(text))
    if name == "basic":
        from whisper_normalizer.basic import BasicTextNormalizer

        basic = BasicTextNormalizer()
        return lambda text: _words(basic(text))
    if name == "none":
        return _collapse
    raise ValueError(f"unknown normalizer {name!r} (choose from {', '.join(NORMALIZERS)})")


PARALLEL_MIN = 20_000  # below this, starting worker processes costs more than it saves


def _normalize_chunk(args: tuple[str, list[str]]) -> list[str]:
    name, texts = args
    norm = get_normalizer(name)
    return [norm(t) for t in texts]


def normalize_all(texts: Sequence[str], name: str = "whisper", *, workers: int | None = None) -> list[str]:
    """Normalize many texts; Whisper's normalizer costs ~0.3 ms a text, so big runs use a process per core."""
    texts = list(texts)
    workers = workers if workers is not None else min(os.cpu_count() or 1, 16)
    if len(texts) < PARALLEL_MIN or workers < 2:
        return _normalize_chunk((name, texts))
    size = -(-len(texts) // (workers * 4))
    chunks = [(name, texts[i:i + size]) for i in range(0, len(texts), size)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [t for part in pool.map(_normalize_chunk, chunks) for t in part]
