"""Answer → transcript, degenerate-answer detection, joining split pieces."""

from __future__ import annotations

import pytest

from transcribe_batch.workers.cleanup import Cleaned, check_degenerate, clean, extract_transcript, join


@pytest.mark.parametrize("raw, text", [
    ("ten of clubs", "ten of clubs"),
    ('{"content": "Go forward ten meters."}', "Go forward ten meters."),
    ('{"content": ""}', ""),
    ('  {"content":"he said \\"no\\" twice"}\n', 'he said "no" twice'),
    ('{"content": "feels like these days go on', "feels like these days go on"),  # cut off by the token limit
    ("{'content': 'five five'}", "five five"),
    ('```json\n{"content": "seven of clubs"}\n```', "seven of clubs"),
    ("The original content of this audio is: 'he was not an ill disposed young man'",
     "he was not an ill disposed young man"),
    ('The original content of this audio is: {"content": "front center"}', "front center"),
    ("The speaker says: “ever tried, ever failed.”", "ever tried, ever failed."),
    ("Transcription: four queen of clubs", "four queen of clubs"),
    ('"eight of spades"', "eight of spades"),
    ("hello<|im_end|>", "hello"),
    ("<|en|><|0.00|>ten of clubs<|1.08|>", "ten of clubs"),
    ("assistant\nhello there", "hello there"),
    ("The audio is too short.", "The audio is too short."),  # not a lead-in: left alone
    ("", ""),
    ("  spaced \n  out  ", "spaced out"),
    ("你好，世界。", "你好，世界。"),
])
def test_extract_transcript(raw, text):
    assert extract_transcript(raw) == text


def test_runaway_repetition():
    assert clean("and then " * 20, duration_s=5.0, extract=extract_transcript) == Cleaned(
        "and then " * 19 + "and then", True, "repetition")
    assert check_degenerate("the cat sat on the mat " * 6, 30.0) == "repetition"  # 6-gram looped, long clip
    assert check_degenerate("no no no no", 2.0) is None  # genuine short repetition
    assert check_degenerate("five five", 1.5) is None
    assert check_degenerate("啊" * 40, 10.0) == "repetition"
    assert check_degenerate('{"content": "a b"}' * 10, 60.0) == "repetition"


def test_clean_takes_the_familys_parser():
    """No family's answer format is built in: the caller passes the model family's `parse`."""
    from transcribe_batch.workers.models import Answer

    with pytest.raises(TypeError, match="extract"):
        clean("ten of clubs", duration_s=1.0)
    cleaned = clean(" ten  of clubs ", duration_s=1.0, extract=lambda raw: Answer(" ".join(raw.split()), "English"))
    assert cleaned == Cleaned("ten of clubs", language="English")


def test_far_too_many_words():
    words = " ".join(f"w{i}" for i in range(60))
    assert check_degenerate(words, 2.0) == "too_long"
    assert check_degenerate(words, 20.0) is None
    assert check_degenerate("字" * 0 + "".join(chr(0x4E00 + i) for i in range(200)), 2.0) == "too_long"


def test_normal_answers_are_not_degenerate(audio_rows):
    for row in audio_rows:
        if row.get("text"):
            cleaned = clean(row["text"], duration_s=row["duration"], extract=extract_transcript)
            assert cleaned == Cleaned(row["text"], False, None)


def test_join():
    assert join(["It was the best of times,", " it was the worst of times."]) == \
        "It was the best of times, it was the worst of times."
    assert join(["one", "", "  ", "two"]) == "one two"
    assert join(["你好，", "世界。"]) == "你好，世界。"
    assert join([]) == ""
