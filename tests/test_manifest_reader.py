import json
from pathlib import Path

import pytest

from transcribe_batch.manifests.reader import ManifestError, iter_rows, iter_rows_with_offsets, read_rows_at, stable_id


def _write(path: Path, lines: list) -> Path:
    path.write_text("".join((l if isinstance(l, str) else json.dumps(l)) + "\n" for l in lines))
    return path


def test_shared_manifest_normalized(audio_manifest):
    rows = [row for _, row in iter_rows(audio_manifest)]
    assert len(rows) == 18
    for row in rows:
        assert Path(row.audio_filepath).is_absolute() and Path(row.audio_filepath).is_file()
        assert row.offset == 0.0 and row.duration > 0
        assert row.extra_fields["source"]  # unknown fields are carried
    assert len({r.id for r in rows}) == 18


def test_relative_paths_defaults_and_carried_fields(tmp_path):
    (tmp_path / "sub").mkdir()
    m = _write(tmp_path / "sub" / "m.jsonl", [
        {"audio_filepath": "a.wav", "speaker": 7, "meta": {"x": [1, 2]}},
        "",
        {"audio_filepath": "../b.flac", "offset": "1.5", "duration": 2, "text": "hi", "id": 12, "task": "asr"},
    ])
    (line1, r1), (line3, r3) = list(iter_rows(m))
    assert (line1, line3) == (1, 3)  # blank lines are skipped but counted
    assert r1.audio_filepath == str(tmp_path / "sub" / "a.wav")
    assert r1.offset == 0.0 and r1.duration is None and r1.text is None and r1.language is None
    assert r1.extra == (("speaker", 7), ("meta", {"x": [1, 2]}))
    assert r3.audio_filepath == str(tmp_path / "b.flac")
    assert r3.offset == 1.5 and r3.duration == 2.0 and r3.id == "12" and r3.task == "asr"


def test_derived_ids_are_stable_and_distinct(tmp_path):
    line = {"audio_filepath": "x/long.wav", "offset": 0, "duration": 10}
    a = _write(tmp_path / "a.jsonl", [line, {**line, "offset": 10}])
    (tmp_path / "elsewhere").mkdir()
    b = _write(tmp_path / "elsewhere" / "b.jsonl", [line])
    ids_a = [r.id for _, r in iter_rows(a)]
    ids_b = [r.id for _, r in iter_rows(b)]
    assert ids_a[0] == ids_b[0] == stable_id("x/long.wav", 0.0, 10.0)  # a moved manifest keeps its ids
    assert ids_a[0] != ids_a[1]
    assert ids_a[0].startswith("long-")


@pytest.mark.parametrize(
    "line, field, words",
    [
        ("{not json", None, "not valid JSON"),
        ("[1, 2]", None, "expected a JSON object"),
        ({"text": "no audio"}, "audio_filepath", "missing"),
        ({"audio_filepath": ""}, "audio_filepath", "non-empty string"),
        ({"audio_filepath": "a.wav", "offset": -1}, "offset", ">= 0"),
        ({"audio_filepath": "a.wav", "duration": "long"}, "duration", "number of seconds"),
        ({"audio_filepath": "a.wav", "duration": 0}, "duration", "> 0"),
        ({"audio_filepath": "a.wav", "text": 5}, "text", "must be a string"),
        ({"audio_filepath": "a.wav", "id": "a#1"}, "id", "'#'"),
        ({"audio_filepath": "a.wav", "duration": float("nan")}, "duration", "finite"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, field, words):
    m = _write(tmp_path / "m.jsonl", [{"audio_filepath": "ok.wav"}, line])
    with pytest.raises(ManifestError) as info:
        list(iter_rows(m))
    e = info.value
    assert (e.path, e.line, e.field) == (str(m), 2, field)
    assert str(e).startswith(f"{m}:2: ")
    assert words in str(e)
    if field:
        assert f"field {field!r}" in str(e)


def test_duplicate_ids_name_both_lines(tmp_path):
    m = _write(tmp_path / "m.jsonl", [{"audio_filepath": "a.wav", "id": "u1"}, {"audio_filepath": "b.wav"},
                                      {"audio_filepath": "c.wav", "id": "u1"}])
    with pytest.raises(ManifestError, match=r":3: field 'id': duplicate id 'u1' \(first on line 1\)"):
        list(iter_rows(m))
    same = _write(tmp_path / "same.jsonl", [{"audio_filepath": "a.wav"}, {"audio_filepath": "a.wav"}])
    with pytest.raises(ManifestError, match="duplicate id"):  # same derived id: same file, offset, duration
        list(iter_rows(same))


def test_skip_bad_lines_yields_errors_and_goes_on(tmp_path):
    m = _write(tmp_path / "m.jsonl", [{"audio_filepath": "a.wav"}, "oops", {"audio_filepath": "b.wav", "offset": -2},
                                      {"audio_filepath": "c.wav"}])
    out = list(iter_rows(m, skip_bad_lines=True))
    assert [line for line, _ in out] == [1, 2, 3, 4]
    assert [type(r).__name__ for _, r in out] == ["ManifestRow", "ManifestError", "ManifestError", "ManifestRow"]
    assert out[2][1].field == "offset"


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        list(iter_rows(tmp_path / "nope.jsonl"))


def test_read_rows_at_round_trip(tmp_path):
    lines = [{"audio_filepath": f"{i}.wav", "text": f"t{i} ünïcode", "n": i} for i in range(50)]
    m = _write(tmp_path / "m.jsonl", lines)
    positions = [(line, off) for line, off, _ in iter_rows_with_offsets(m)]
    pick = [positions[i] for i in (49, 0, 17)]
    assert [r.extra_fields["n"] for r in read_rows_at(m, pick)] == [49, 0, 17]
    assert read_rows_at(m, pick)[0] == next(r for _, r in iter_rows(m) if r.extra_fields["n"] == 49)


def test_digest_set_is_a_set():
    import random

    from transcribe_batch.manifests.reader import DigestSet, id_digest

    rng = random.Random(5)
    values = [id_digest(f"u{i}") for i in range(5000)] + [0, -1, 1, 2**63 - 1, -2**63]
    values += [rng.choice(values) for _ in range(2000)]  # repeats
    rng.shuffle(values)
    compact, reference = DigestSet(), set()
    for v in values:
        assert compact.add(v) == (v not in reference)
        reference.add(v)
    assert len(compact) == len(reference)
    assert all(v in compact for v in reference)
    assert not any(id_digest(f"other{i}") in compact for i in range(1000))
