"""`transcribe-batch export --segments`: one training row per result segment in each format, read back by the
format's own library (ids, offsets, texts, sliced audio), every filter applied per segment, the sanity filters,
--language, agreement per segment, old runs without segments, empty exports, and the refusals of target.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from eval_helpers import result_row, segment, write_run
from transcribe_batch.pipeline.cli import app
from transcribe_batch.pipeline.export import ExportError
from transcribe_batch.pipeline.export.export import export
from transcribe_batch.pipeline.export.filters import Filters
from transcribe_batch.pipeline.export.sanity import read_phrases, shipped

runner = CliRunner()
NO_SANITY = dict(min_chars_per_s=0.0, max_chars_per_s=0.0, hallucinations=None, repetition=False)

# (start, end, text, confidence, language[, status]) of the long recording's segments (two_cities.wav, 44.4 s)
LONG = [
    (0.0, 9.5, "it was the best of times it was the worst of times", 0.95, "English"),
    (9.5, 20.0, "it was the age of wisdom it was the age of foolishness", 0.60, "English"),
    (20.0, 31.25, "it was the epoch of belief", 0.90, "Chinese"),
    (31.25, 44.0, "it was the season of light", 0.20, "English", "failed"),
]


@pytest.fixture(scope="module")
def audio(audio_dir):
    return {name: str(audio_dir / f"{name}.wav") for name in ("two_cities", "endgame", "beckett")}


def _long_row(audio, row_id="long", specs=LONG, **kw):
    r = result_row(row_id, "the reference of the whole recording", " ".join(s[2] for s in specs if s[2]),
                   duration=44.374, **kw)
    r.update(audio_filepath=audio["two_cities"], confidence=0.7, language="en", speaker="dickens",
             detected_language="English,Chinese,English", n_chunks=len(specs),
             segments=[segment(s[0], s[1], s[2], confidence=s[3], language=s[4],
                               status=s[5] if len(s) > 5 else "ok") for s in specs], skipped=[])
    return r


def _rows(audio):
    """long: 4 segments (one failed); old: segments null (a row from before segments: one spanning it);
    silent: every second left out as non-speech (no segment)."""
    old = result_row("old", "ref", "ever tried ever failed no matter", duration=9.963)
    old.update(audio_filepath=audio["beckett"], offset=0.0, confidence=0.85, language="en", speaker="beckett",
               detected_language="English", segments=None, skipped=None)
    silent = result_row("silent", None, "", duration=28.277)
    silent.update(audio_filepath=audio["endgame"], confidence=None, language="en", speaker="x",
                  detected_language=None, segments=[], skipped=[{"start_s": 0.0, "end_s": 28.277,
                                                                 "reason": "non_speech"}])
    return [_long_row(audio), old, silent]


@pytest.fixture
def run(tmp_path, audio):
    return write_run(tmp_path / "run", _rows(audio))


def test_nemo_one_line_per_segment_with_stable_ids(run, tmp_path):
    out = tmp_path / "seg.jsonl"
    s = export([run], out, segments=True, fields=["speaker"])
    assert (s.n_rows, s.n_segments, s.n_kept) == (3, 5, 4) and dict(s.dropped) == {"status": 1}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == ["long#0", "long#1", "long#2", "old#0"]
    assert [(x["offset"], x["duration"]) for x in lines] == [(0.0, 9.5), (9.5, 10.5), (20.0, 11.25), (0.0, 9.963)]
    assert [x["text"] for x in lines] == [s[2] for s in LONG[:3]] + ["ever tried ever failed no matter"]
    assert list(lines[0])[:5] == ["audio_filepath", "offset", "duration", "text", "id"]
    assert lines[0]["speaker"] == "dickens" and lines[3]["speaker"] == "beckett"
    assert s.to_dict()["unit"] == "segment" and s.to_dict()["n_dropped"] == 1
    assert s.audio_s_kept == pytest.approx(9.5 + 10.5 + 11.25 + 9.963)


def test_lhotse_one_recording_per_file_and_cuts_trimmed_to_segments(run, tmp_path):
    lhotse = pytest.importorskip("lhotse")
    out = tmp_path / "lhotse"
    export([run], out, fmt="lhotse", segments=True, filters=Filters(status="any", **NO_SANITY))
    cuts = lhotse.CutSet.from_file(out / "cuts.jsonl.gz").to_eager()
    assert sorted(cuts.ids) == ["long#0", "long#1", "long#2", "old#0"]  # long#3 failed: no text (empty_text)
    recordings = lhotse.RecordingSet.from_file(out / "recordings.jsonl.gz").to_eager()
    assert len(recordings) == 2
    cut = cuts["long#1"]
    assert (cut.start, cut.duration) == (9.5, 10.5) and cut.recording.duration == pytest.approx(44.374, abs=1e-3)
    sup = cut.supervisions[0]
    assert sup.text == LONG[1][2] and sup.start == 0.0 and sup.duration == 10.5 and sup.language == "English"
    assert sup.custom["confidence"] == 0.60
    assert cuts["long#2"].supervisions[0].language == "Chinese"
    assert cuts["long#0"].recording_id == cut.recording_id != cuts["old#0"].recording_id
    samples = cut.load_audio()
    whole, sr = sf.read(cut.recording.sources[0].source, dtype="float32")
    assert samples.shape == (1, round(10.5 * sr))
    np.testing.assert_allclose(samples[0], whole[round(9.5 * sr):round(20.0 * sr)], atol=1e-6)
    sups = lhotse.SupervisionSet.from_file(out / "supervisions.jsonl.gz").to_eager()
    assert sups["long#2"].start == 20.0 and sups["long#2"].duration == 11.25


def test_hf_audio_sliced_per_segment(run, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "hf"
    s = export([run], out, fmt="hf", segments=True, embed_audio=True, fields=["speaker", "detected_language"])
    ds = datasets.load_from_disk(str(out)).cast_column("audio", datasets.Audio(decode=False))
    assert len(ds) == s.n_kept == 4
    assert ds["id"] == ["long#0", "long#1", "long#2", "old#0"]
    assert ds["detected_language"] == ["English", "English", "Chinese", "English"]
    assert ds["duration"] == [9.5, 10.5, 11.25, 9.963] and ds["speaker"][0] == "dickens"
    whole, sr = sf.read(_path(run, "long"), dtype="float32")
    got, got_sr = sf.read(io.BytesIO(ds[1]["audio"]["bytes"]), dtype="float32")
    assert got_sr == 16000 == sr and len(got) == round(10.5 * sr)
    np.testing.assert_allclose(got, whole[round(9.5 * sr):round(20.0 * sr)], atol=1 / 16384)
    paths = datasets.load_from_disk(str(_export(run, tmp_path / "hf-paths", fmt="hf")))
    assert paths["offset"] == [0.0, 9.5, 20.0, 0.0] and paths["text"][2] == LONG[2][2]


def _path(run, row_id):
    import pyarrow.parquet as pq

    table = pq.read_table(run / "results.parquet", columns=["id", "audio_filepath"]).to_pylist()
    return next(r["audio_filepath"] for r in table if r["id"] == row_id)


def _export(run, out, **kw):
    export([run], out, segments=True, **kw)
    return out


def test_every_filter_applies_per_segment(tmp_path, audio):
    specs = [
        (0.0, 4.0, "a good first segment", 0.95, "English"),            # kept
        (4.0, 8.0, "unsure words here", 0.40, "English"),               # low_confidence
        (8.0, 8.4, "tiny", 0.95, "English"),                            # too_short
        (8.4, 12.0, "ni hao shi jie", 0.95, "Chinese"),                 # other_language
        (12.0, 14.0, "one two three four five six seven eight nine ten eleven twelve", 0.95, "English"),  # >25/s
        (14.0, 24.0, "ok", 0.95, "English"),                            # too_few_chars_per_s (0.2/s)
        (24.0, 30.0, " ".join(["go on"] * 8), 0.95, "English"),          # repetition
        (30.0, 33.0, "Thanks for watching!", 0.95, "English"),          # hallucination
        (33.0, 36.0, None, 0.95, None),                                 # no_language (and no text: empty first)
        (36.0, 40.0, "the last good one", 0.97, "English"),             # kept
        (40.0, 44.0, "you", 0.97, None),                                # no_language
    ]
    run = write_run(tmp_path / "run", [_long_row(audio, specs=specs)])
    out = tmp_path / "f.jsonl"
    s = export([run], out, segments=True, filters=Filters(min_confidence=0.8, min_duration=0.5, language="en",
                                                           min_chars_per_s=1.0))
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["long#0", "long#9"]
    assert dict(s.dropped) == {"low_confidence": 1, "too_short": 1, "other_language": 1, "too_many_chars_per_s": 1,
                               "too_few_chars_per_s": 1, "repetition": 1, "hallucination": 1, "empty_text": 1,
                               "no_language": 1}
    # the same segments without --language: "you" alone is a whole-transcript hallucination
    s = export([run], tmp_path / "g.jsonl", segments=True, filters=Filters(min_confidence=0.8, min_duration=0.5))
    assert s.dropped["hallucination"] == 2 and "other_language" not in s.dropped
    assert s.n_kept == 4  # + "ni hao …" (any language) and "ok" (--min-chars-per-s is off by default)
    # and each sanity filter can be turned off
    s = export([run], tmp_path / "h.jsonl", segments=True, filters=Filters(**NO_SANITY))
    assert s.n_kept == 10 and dict(s.dropped) == {"empty_text": 1}


def test_language_is_refused_where_the_model_does_not_detect_it(tmp_path, audio):
    r = _long_row(audio)
    r["detected_language"] = None
    r["segments"] = [{**x, "language": None} for x in r["segments"]]
    run = write_run(tmp_path / "qwen2", [r], meta={"model_id": "Qwen2-Audio-7B-Instruct"})
    with pytest.raises(ExportError, match=r"--language en: .*qwen2 has no detected language on any row: "
                                          r"Qwen2-Audio-7B-Instruct did not identify the language"):
        export([run], tmp_path / "x.jsonl", segments=True, filters=Filters(language="en"))
    r = _long_row(audio)
    r["detected_language"] = None  # the segments say it: enough for --segments
    run = write_run(tmp_path / "segments-say", [r])
    s = export([run], tmp_path / "en.jsonl", segments=True, filters=Filters(language="en"))
    assert s.n_kept == 2 and s.dropped["other_language"] == 1
    old = result_row("u0", "ref", "words")
    run = write_run(tmp_path / "old", [old])  # no detected_language column at all
    with pytest.raises(ExportError, match="no detected language on any row"):
        export([run], tmp_path / "x.jsonl", filters=Filters(language="English"))
    assert not (tmp_path / "x.jsonl").exists()


def test_rows_from_before_segments_export_one_segment_each(tmp_path, audio):
    rows = [result_row(f"u{i}", "ref", text, duration=d) for i, (text, d) in
            enumerate([("ever tried ever failed", 9.963), ("no matter try again", 9.963)])]
    for r in rows:
        r.update(audio_filepath=audio["beckett"], confidence=0.9)
    run = write_run(tmp_path / "old", rows)  # no segments column at all
    out = tmp_path / "old.jsonl"
    s = export([run], out, segments=True, filters=Filters(min_confidence=0.5))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["id"], x["offset"], x["duration"], x["text"]) for x in lines] == [
        ("u0#0", 0.0, 9.963, "ever tried ever failed"), ("u1#0", 0.0, 9.963, "no matter try again")]
    assert (s.n_rows, s.n_segments, s.n_kept) == (2, 2, 2)


@pytest.mark.parametrize("fmt", ["nemo", "hf", "lhotse"])
def test_segment_exports_that_keep_nothing_still_load(tmp_path, audio, fmt):
    run = write_run(tmp_path / "run", _rows(audio))
    out = tmp_path / ("out.jsonl" if fmt == "nemo" else "out")
    s = export([run], out, fmt=fmt, segments=True, filters=Filters(min_confidence=0.99))
    assert s.n_kept == 0 and s.n_segments == 5
    if fmt == "nemo":
        assert out.read_text().strip() == ""
    elif fmt == "hf":
        datasets = pytest.importorskip("datasets")
        ds = datasets.load_from_disk(str(out))
        assert len(ds) == 0 and "id" in ds.column_names
    else:
        lhotse = pytest.importorskip("lhotse")
        assert lhotse.CutSet.from_file(out / "cuts.jsonl.gz") is None  # lhotse's own answer for an empty manifest
        assert len(lhotse.CutSet.from_jsonl(out / "cuts.jsonl.gz")) == 0
        assert len(lhotse.load_manifest(out / "cuts.jsonl.gz")) == 0


def test_agreement_compares_segments_of_the_same_span(tmp_path, audio):
    mine = write_run(tmp_path / "a", [_long_row(audio)])
    theirs = [(s[0], s[1], s[2], 0.9, "English") for s in LONG[:3]]
    theirs[1] = (9.5, 20.0, "it was the age of wisdom and of something else entirely", 0.9, "English")
    theirs[2] = (20.0, 31.0, LONG[2][2], 0.9, "English")  # split elsewhere: not the same audio
    other = write_run(tmp_path / "b", [_long_row(audio, specs=theirs)])
    out = tmp_path / "agree.jsonl"
    s = export([mine], out, segments=True, agree_with=other, filters=Filters(max_disagreement=0.1))
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["long#0"]
    assert dict(s.dropped) == {"status": 1, "disagreement": 1, "split_differently_in_other_run": 1}


def test_refusals_are_unchanged_with_segments(run, tmp_path):
    with pytest.raises(ExportError, match="inside the run folder"):
        export([run], run / "seg.jsonl", segments=True)
    with pytest.raises(ExportError, match="inside the run folder"):
        export([run], run / "parts" / "hf", fmt="hf", segments=True, overwrite=True)
    mine = tmp_path / "mine.jsonl"
    mine.write_text("keep me\n")
    with pytest.raises(ExportError, match="is not an earlier export"):
        export([run], mine, segments=True, overwrite=True)
    assert mine.read_text() == "keep me\n" and (run / "results.parquet").is_file()
    with pytest.raises(ExportError, match="--field text: with --segments each output row is one segment"):
        export([run], tmp_path / "t.jsonl", segments=True, fields=["text"])


def test_cli_segments_summary(run, tmp_path):
    out = tmp_path / "cli.jsonl"
    result = runner.invoke(app, ["export", str(run), "--segments", "-o", str(out), "--min-confidence", "0.8",
                                 "--language", "English", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["unit"], data["n_rows"], data["n_segments"], data["n_kept"]) == ("segment", 3, 5, 2)
    assert data["dropped"] == {"status": 1, "other_language": 1, "low_confidence": 1}
    assert data["filters"]["language"] == "English" and data["filters"]["max_chars_per_s"] == 25.0
    marker = json.loads((tmp_path / "cli.jsonl.export.json").read_text())
    assert marker["n_segments"] == 5 and marker["unit"] == "segment"
    result = runner.invoke(app, ["export", str(run), "--segments", "-o", str(tmp_path / "t.txt"),
                                 "--hallucinations", str(tmp_path / "none.txt")])
    assert result.exit_code == 2 and "none.txt: cannot read it" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(run), "--segments", "-o", str(tmp_path / "t.txt"),
                                 "--hallucinations", "", "--no-repetition", "--max-chars-per-s", "0", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["n_kept"] == 4


def test_hallucination_list_format(tmp_path):
    shipped_list = read_phrases(shipped("hallucinations.txt"))
    assert shipped_list.matches("Thanks for watching!") and shipped_list.matches("So, thanks for watching.")
    assert shipped_list.matches("You.") and not shipped_list.matches("you know what i mean")
    assert shipped_list.matches("字幕由Amara.org社区提供") and not shipped_list.matches("thanks for washing")
    bad = tmp_path / "bad.txt"
    bad.write_text("# fine\nthank you for watching\n= ...\n")
    with pytest.raises(ExportError, match=r"bad.txt:3: '= \.\.\.' has no words"):
        read_phrases(bad)


def test_batches_and_buckets_do_not_change_the_output(tmp_path, audio, monkeypatch):
    """Segments streamed a few rows at a time and joined over several hash buckets: the same lines as at once."""
    from transcribe_batch.pipeline.export import agreement, segments

    rows = [_long_row(audio, f"r{i}") for i in range(5)] + _rows(audio)[1:]
    other_rows = [_long_row(audio, f"r{i}") for i in (4, 2, 0, 3)]  # r1 missing; another order
    other_rows[0]["segments"][1]["text"] = "something else altogether in this segment"
    mine, other = write_run(tmp_path / "a", rows), write_run(tmp_path / "b", other_rows)

    def lines(name):
        export([mine], tmp_path / name, segments=True, agree_with=other, filters=Filters(max_disagreement=0.2),
               fields=["row_id"])
        return (tmp_path / name).read_text()

    at_once = lines("once.jsonl")
    monkeypatch.setattr(segments, "BATCH_ROWS", 2)
    monkeypatch.setattr(segments, "SEGMENT_ROWS", 5)
    monkeypatch.setattr(agreement, "BUCKET_ROWS", 3)
    assert lines("small.jsonl") == at_once
    got = [json.loads(x) for x in at_once.splitlines()]
    assert [x["id"] for x in got] == ["r0#0", "r0#1", "r0#2", "r2#0", "r2#1", "r2#2", "r3#0", "r3#1", "r3#2",
                                      "r4#0", "r4#2"]
    assert all(x["row_id"] == x["id"].split("#")[0] for x in got)


def test_repetition_filter_decides_as_cleanups_check():
    """sanity.repeated skips cleanup's check only where it cannot find repetition: the same answer on every text,
    around its thresholds (n-grams of 1-17 words repeated 2-13 times), accented and CJK texts included."""
    import random

    from transcribe_batch.pipeline.export.sanity import repeated
    from transcribe_batch.workers.cleanup import check_degenerate

    rng = random.Random(7)
    words = "the of and to a in that he was it très été 好 well said on be mister much".split()
    texts = []
    for _ in range(600):
        n, times = rng.randint(1, 17), rng.randint(2, 13)
        gram = [rng.choice(words) for _ in range(n)]
        before = [rng.choice(words) for _ in range(rng.randint(0, 6))]
        after = [rng.choice(words) for _ in range(rng.randint(0, 6))]
        texts.append(" ".join(before + gram * times + after))
    texts += ["哈" * 30, "我们" * 7 + "好", "".join(rng.choice("我们你好的是") for _ in range(60)), "", "  ",
              "no repetition in this one at all, just words said once"]
    durations = [rng.choice([0.5, 3.0, 30.0]) for _ in texts]
    want = [check_degenerate(t.strip(), d) == "repetition" for t, d in zip(texts, durations)]
    assert list(repeated(texts, durations)) == want
    assert 100 < sum(want) < len(texts) - 100  # both answers well represented


def test_hallucination_phrases_match_the_same_however_a_text_is_tested():
    """hallucinated() decides ASCII texts with RE2 patterns, others in Python: the same answers as Phrases.matches."""
    from transcribe_batch.pipeline.export.sanity import hallucinated

    phrases = read_phrases(shipped("hallucinations.txt"))
    texts = ["Thanks for watching!", "thanks--for   WATCHING", "thanksfor watching", "xthanks for watching",
             "You", "  you?! ", "you you", "Bye.", "bye bye", "so... thank you for listening", "Thank you for listening.",
             "Subtitles by the Amara.org community", "amara org", "amara.orgy", "I'm sorry, but I can't.",
             "im sorry but i cant", "THE AUDIO IS SILENT.", "the audio is silent-ish", "", "   ", "über you",
             "Thanks for watching – really", "字幕由Amara.org社区提供", "ご視聴ありがとうございました。", "no match here",
             "tab\tthanks\tfor\twatching", "no speech detected\n", "café thanks for watching"]
    want = [phrases.matches(t) for t in texts]
    assert list(hallucinated(texts, phrases)) == want
    assert want[:12] == [True, True, False, False, True, True, False, True, False, False, True, True]
    assert sum(want) > len(texts) // 2
