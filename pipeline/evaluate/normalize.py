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

import unicodedata
from functools import lru_cache
from typing import Callable

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
