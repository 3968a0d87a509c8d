"""The model's answer → the transcript, and a check for degenerate answers (runaway repetition, impossible length).

Each model family parses its own answers (workers/models/); this module holds Qwen2-Audio's free-text extraction,
which its family uses, and the degenerate-answer check every family shares. Qwen2-Audio-7B-Instruct answers in several shapes: the bare words; a JSON object when asked for one
(`{"content": "..."}`, sometimes cut off by the token limit); or a lead-in sentence ("The original content of this
audio is: '...'"). The raw answer is kept in the results; this module makes the text WER is computed on.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable

# Lead-ins the model puts before the words ("The original content of this audio is: ...").
_LEAD_IN = re.compile(
    r"""^\s*(?:
        (?:the\s+)?(?:original\s+)?(?:content|transcription|transcript|text|speech|words?)\s+
            (?:of|in|from)\s+(?:this|the)\s+(?:audio|speech|recording|clip)(?:\s+(?:clip|file))?\s+(?:is|are|says?|reads?)
      | (?:this|the)\s+(?:audio|speech|recording|clip|speaker|person)\s+(?:says?|said|reads?|is\s+saying)
      | (?:the\s+)?(?:speaker|person)\s+(?:says?|said|is\s+saying)
      | (?:here\s+is\s+)?(?:the\s+)?(?:transcription|transcript)(?:\s+of\s+(?:the|this)\s+(?:audio|speech))?(?:\s+is)?
      | in\s+english,?\s+(?:this|it)\s+(?:means|says)
    )\s*[:：,]?\s*""",
    re.IGNORECASE | re.VERBOSE,
)
_CHAT_RESIDUE = re.compile(r"<\|[^|<>\s]{1,40}\|>|^\s*(?:assistant|system|user)\s*\n", re.MULTILINE)
_CONTENT_FIELD = re.compile(r"""["']?(?:content|text|transcription|transcript)["']?\s*:\s*(["'])(?P<body>.*)""",
                            re.IGNORECASE | re.DOTALL)
_QUOTES = "\"'“”‘’「」『』«»`"

# Degenerate-output thresholds.
MAX_WORDS_PER_S = 6.0  # fast speech is ~4 words/s
MAX_CHARS_PER_S = 25.0  # for scripts without spaces (CJK: ~5 characters/s)
LENGTH_SLACK = 12  # words (×4 for characters) allowed on top, for very short clips
MIN_REPEAT_SPAN = 12  # a repeated n-gram must cover at least this many words to count as runaway
MIN_REPEATS = 4


@dataclass(frozen=True)
class Cleaned:
    text: str
    degenerate: bool = False
    reason: str | None = None  # "repetition" / "too_long" when degenerate
    language: str | None = None  # the language the model identified, for families that say it (Qwen3-ASR)


def _from_json(s: str) -> str | None:
    """The `content` of a JSON answer, also when the JSON is cut off or slightly malformed."""
    start = s.find("{")
    if start < 0:
        return None
    end = s.rfind("}")
    if end > start:
        try:
            obj = json.loads(s[start:end + 1])
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            for key in ("content", "text", "transcription", "transcript"):
                if isinstance(obj.get(key), str):
                    return obj[key]
            values = [v for v in obj.values() if isinstance(v, str)]
            if len(values) == 1:
                return values[0]
    m = _CONTENT_FIELD.search(s, start)
    if not m:
        return None
    body = m.group("body")
    close = re.search(r"(?<!\\)" + re.escape(m.group(1)) + r"\s*[,}]?\s*$", body)
    body = body[: close.start()] if close else body.rstrip("} \n")
    try:
        return json.loads(f'"{body}"') if m.group(1) == '"' else body
    except json.JSONDecodeError:
        return body


def _strip_quotes(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s[0] in _QUOTES and s[-1] in _QUOTES:
        s = s[1:-1].strip()
    if s.count('"') == 1:  # a lone quote left by a cut-off answer
        s = s.replace('"', "").strip()
    return s


def extract_transcript(raw: str) -> str:
    s = _CHAT_RESIDUE.sub("", raw or "").strip()
    inner = _from_json(s)
    if inner is not None:
        s = inner
    for _ in range(2):  # "The original content of this audio is: '{"content": ...}'" and the like
        s = _strip_quotes(_LEAD_IN.sub("", s, count=1))
        inner = _from_json(s)
        if inner is not None:
            s = inner
    return " ".join(s.split())


def _is_spaceless(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(map(_wide, letters)) > len(letters) / 2


def _wide(c: str) -> bool:
    return unicodedata.east_asian_width(c) in "WF"


def _runaway_repetition(units: list[str]) -> bool:
    """True when some n-gram repeats back to back ≥ MIN_REPEATS times over ≥ MIN_REPEAT_SPAN units."""
    n_units = len(units)
    for n in range(1, min(16, n_units // MIN_REPEATS) + 1):
        need = max(MIN_REPEATS, -(-MIN_REPEAT_SPAN // n))
        for offset in range(n):  # every alignment of the n-gram grid
            run = 1
            for i in range(offset + n, n_units - n + 1, n):
                run = run + 1 if units[i:i + n] == units[i - n:i] else 1
                if run >= need:
                    return True
    return False


def check_degenerate(text: str, duration_s: float) -> str | None:
    """"repetition", "too_long" or None."""
    if not text:
        return None
    spaceless = _is_spaceless(text)
    units = [c for c in text if not c.isspace()] if spaceless else text.lower().split()
    if _runaway_repetition(units):
        return "repetition"
    if spaceless:
        limit = MAX_CHARS_PER_S * duration_s + 4 * LENGTH_SLACK
    else:
        limit = MAX_WORDS_PER_S * duration_s + LENGTH_SLACK
    return "too_long" if len(units) > limit else None


def clean(raw: str, *, duration_s: float, extract: Callable[[str], Any]) -> Cleaned:
    """`extract(raw)` - the model family's `parse` - gives the transcript (str) or an answer with `.text` and
    `.language`."""
    answer = extract(raw)
    text, language = (answer, None) if isinstance(answer, str) else (answer.text, answer.language)
    reason = check_degenerate(text, duration_s)
    return Cleaned(text=text, degenerate=reason is not None, reason=reason, language=language)


def join_languages(languages: list[str | None]) -> str | None:
    """Per-piece languages of one utterance → "English" or "Chinese,English" (consecutive repeats and unknowns
    dropped, as qwen-asr's merge_languages); None when no piece said."""
    out: list[str] = []
    for lang in languages:
        if lang and (not out or out[-1] != lang):
            out.append(lang)
    return ",".join(out) or None


def join(texts: list[str]) -> str:
    """Pieces of one split utterance → one transcript (no space between two CJK pieces)."""
    out = ""
    for t in (t.strip() for t in texts):
        if not t:
            continue
        if out and not (_wide(out[-1]) and _wide(t[0])):
            out += " "
        out += t
    return out
