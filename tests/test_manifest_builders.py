"""`transcribe-batch manifest librispeech|dir|validate` on real audio (flac/wav made from tests/data/audio clips)."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pytest
import soundfile as sf
from typer.testing import CliRunner

from transcribe_batch.manifests.builders import dir_rows, librispeech_rows, write_jsonl
from transcribe_batch.manifests.reader import iter_rows
from transcribe_batch.manifests.validate import Summary, iter_problems
from transcribe_batch.pipeline.cli import app

CLIPS = ["001.wav", "002.wav", "arctic_a0007.wav", "goforward.wav"]


def run_cli(*args: str, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output + repr(result.exception)
    return result


def to_flac(src: Path, dst: Path) -> float:
    data, sr = sf.read(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(dst, data, sr, format="FLAC")
    return len(data) / sr


@pytest.fixture
def librispeech(tmp_path, audio_dir) -> tuple[Path, dict[str, tuple[float, str]]]:
    """LibriSpeech/test-clean with 2 speakers, 3 chapters, flac made from shared clips; id -> (duration, text)."""
    split = tmp_path / "LibriSpeech" / "test-clean"
    expected = {}
    layout = {("1089", "134686"): 2, ("1089", "134691"): 1, ("237", "126133"): 3}
    k = 0
    for (spk, chap), n in layout.items():
        lines = []
        for u in range(n):
            utt = f"{spk}-{chap}-{u:04d}"
            duration = to_flac(audio_dir / CLIPS[k % len(CLIPS)], split / spk / chap / f"{utt}.flac")
            text = f"UTTERANCE NUMBER {k} OF THE TEST"
            lines.append(f"{utt} {text}")
            expected[utt] = (duration, text)
            k += 1
        (split / spk / chap / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return split, expected


def test_librispeech_manifest(librispeech, tmp_path):
    split, expected = librispeech
    out = tmp_path / "manifests" / "test-clean.jsonl"
    result = run_cli("manifest", "librispeech", split, "-o", out, "--relative")
    assert "wrote 6 rows" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted(expected)  # utterance ids, sorted walk
    for r in rows:
        duration, text = expected[r["id"]]
        assert r["duration"] == pytest.approx(duration, abs=1e-6)
        assert r["text"] == text
        assert r["speaker"], r["chapter"] == r["id"].split("-")[:2]
        assert not os.path.isabs(r["audio_filepath"])
    # The reader resolves the relative paths against the manifest's folder, to the real files.
    read = [row for _, row in iter_rows(out)]
    assert all(Path(r.audio_filepath).is_file() for r in read)
    assert run_cli("manifest", "validate", out).exit_code == 0


def test_librispeech_reports_missing_audio_and_strict_fails(librispeech, tmp_path):
    split, expected = librispeech
    victim = sorted(expected)[0]
    spk, chap, _ = victim.split("-")
    (split / spk / chap / f"{victim}.flac").unlink()
    (split / spk / chap / "1089-134686-0099.flac").write_bytes((split / spk / chap / "1089-134686-0001.flac").read_bytes())
    out = tmp_path / "m.jsonl"
    result = run_cli("manifest", "librispeech", split, "-o", out)
    assert f"no audio file {victim}.flac" in result.output
    assert "1089-134686-0099.flac: no line in" in result.output
    assert len(out.read_text().splitlines()) == 5
    run_cli("manifest", "librispeech", split, "-o", out, "--strict", "--overwrite", code=1)
    bad = run_cli("manifest", "librispeech", tmp_path / "nowhere", code=2)
    assert "no such folder" in bad.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.trans.txt" in run_cli("manifest", "librispeech", empty, code=2).output


def test_dir_manifest_with_glob_sidecars_and_transcripts(tmp_path, audio_dir):
    root = tmp_path / "calls"
    (root / "day1").mkdir(parents=True)
    (root / "day2").mkdir()
    d1 = to_flac(audio_dir / "001.wav", root / "day1" / "a.flac")
    (root / "day1" / "b.wav").write_bytes((audio_dir / "002.wav").read_bytes())
    (root / "day1" / "a.wav").write_bytes((audio_dir / "003.wav").read_bytes())  # same stem as a.flac
    (root / "day2" / "c.wav").write_bytes((audio_dir / "goforward.wav").read_bytes())
    (root / "day2" / "notes.md").write_text("not audio")
    (root / "day2" / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    (root / "day1" / "b.txt").write_text("four queen\nof clubs\n")

    rows = list(dir_rows(root, transcripts="sidecar"))
    by_id = {r["id"]: r for r in rows}
    assert list(by_id) == ["day1/a.flac", "day1/a.wav", "day1/b", "day2/broken", "day2/c"]
    assert by_id["day1/a.flac"]["duration"] == pytest.approx(d1, abs=1e-6)
    assert by_id["day1/b"]["text"] == "four queen of clubs" and "text" not in by_id["day2/c"]
    assert "duration" not in by_id["day2/broken"]

    problems: list[str] = []
    kept = list(dir_rows(root, pattern="*.wav", skip_unreadable=True, report=problems.append))
    assert [r["id"] for r in kept] == ["day1/a", "day1/b", "day2/c"]
    assert any("broken.wav" in p and "left out" in p for p in problems)
    assert [r["id"] for r in dir_rows(root, pattern="day2/*.wav", skip_unreadable=True)] == ["day2/c"]

    table = tmp_path / "texts.tsv"
    table.write_text("file\ttext\nday2/c.wav\tgo forward ten meters\nb\tfour queen of clubs\nzzz\tnobody\n")
    out = tmp_path / "labels.jsonl"
    result = run_cli("manifest", "dir", root, "--glob", "*.wav", "--transcripts", table, "-o", out,
                     "--skip-unreadable")
    texts = {json.loads(line)["id"]: json.loads(line).get("text") for line in out.read_text().splitlines()}
    assert texts == {"day1/a": None, "day1/b": "four queen of clubs", "day2/c": "go forward ten meters"}
    assert "1 audio files have no transcript" in result.output
    assert "1 transcript keys match no audio file, e.g. zzz" in result.output
    run_cli("manifest", "validate", out)


def test_validate_reports_every_broken_row_by_line(tmp_path, audio_dir):
    good = tmp_path / "good.wav"
    good.write_bytes((audio_dir / "002.wav").read_bytes())  # 1.96 s
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC\x00\x00garbage")
    lines = [
        {"audio_filepath": "good.wav", "duration": 1.96, "text": "fine", "id": "ok1"},  # 1 fine
        "{not json",  # 2
        {"duration": 1.0},  # 3 no audio_filepath
        {"audio_filepath": "missing.wav", "id": "m"},  # 4
        {"audio_filepath": "empty.wav", "id": "e"},  # 5
        {"audio_filepath": "corrupt.flac", "id": "c"},  # 6
        {"audio_filepath": "good.wav", "offset": 5.0, "id": "o"},  # 7 offset past the end
        {"audio_filepath": "good.wav", "offset": 1.0, "duration": 3.0, "id": "d"},  # 8 runs past the end
        {"audio_filepath": "good.wav", "id": "ok1"},  # 9 duplicate id
        {"audio_filepath": "good.wav", "duration": 0.5, "id": "short"},  # 10 warning only
        {"audio_filepath": str(good), "offset": 0.5, "duration": 1.0, "id": "seg"},  # 11 fine (absolute path)
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    summary = Summary()
    problems = list(iter_problems(manifest, summary=summary))
    found = {(p.line, p.field, p.severity) for p in problems}
    assert found == {
        (2, None, "error"), (3, "audio_filepath", "error"), (4, "audio_filepath", "error"),
        (5, "audio_filepath", "error"), (6, "audio_filepath", "error"), (7, "offset", "error"),
        (8, "duration", "error"), (9, "id", "error"), (10, "duration", "warning"),
    }
    assert (summary.n_rows, summary.n_bad_rows, summary.n_warnings) == (11, 8, 1)
    assert summary.audio_s == pytest.approx(1.96 + 0.5 + 1.0)

    result = run_cli("manifest", "validate", manifest, code=1)
    out = result.output
    assert f"{manifest}:4: error: field 'audio_filepath': file not found" in out
    assert f"{manifest}:8: error: field 'duration': offset + duration = 4.000 s runs past the end" in out
    assert f"{manifest}:9: error: field 'id': duplicate id 'ok1' (first on line 1)" in out
    assert "11 rows, 3 ok, 8 with errors" in out
    assert "not found" in run_cli("manifest", "validate", tmp_path / "nope.jsonl", code=2).output


def _fake_librispeech(root: Path, n: int, flac: Path) -> None:
    """n utterances in chapters of 100, every flac a hard link to one real file (cheap to make, real to read)."""
    for start in range(0, n, 100):
        chapter = root / "19" / f"{start // 100:06d}"
        chapter.mkdir(parents=True)
        lines = []
        for i in range(start, min(start + 100, n)):
            utt = f"19-{start // 100:06d}-{i:06d}"
            os.link(flac, chapter / f"{utt}.flac")
            lines.append(f"{utt} A FEW WORDS OF TEXT FOR LINE {i}")
        (chapter / f"19-{start // 100:06d}.trans.txt").write_text("\n".join(lines) + "\n")


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_builder_and_validator_stream_in_bounded_memory(tmp_path, audio_dir):
    flac = tmp_path / "one.flac"
    to_flac(audio_dir / "001.wav", flac)
    small, big = tmp_path / "small", tmp_path / "big"
    _fake_librispeech(small, 300, flac)
    _fake_librispeech(big, 3000, flac)
    m_small, m_big = tmp_path / "small.jsonl", tmp_path / "big.jsonl"
    peak_small = _peak(lambda: write_jsonl(librispeech_rows(small), m_small))
    peak_big = _peak(lambda: write_jsonl(librispeech_rows(big), m_big))
    assert len(m_big.read_text().splitlines()) == 3000
    # Ten times the rows, the same memory: rows are written as they are made (a row dict alone is ~1 kB).
    assert peak_big < peak_small + 64 * 1024, (peak_small, peak_big)

    v_small = _peak(lambda: list(iter_problems(m_small)))
    v_big = _peak(lambda: list(iter_problems(m_big)))
    # The reader keeps an 8-byte digest per id for duplicate detection; nothing else grows with the rows.
    assert (v_big - v_small) / 2700 < 200, (v_small, v_big)


def test_validate_checks_task_names_and_names_symlink_loops(tmp_path, audio_dir):
    """Issue 9.9: `task` names a template in config/prompts.toml; a symlink loop is not "not found"."""
    good = tmp_path / "good.wav"
    good.write_bytes((audio_dir / "002.wav").read_bytes())
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "nowhere.wav")
    lines = [
        {"audio_filepath": "good.wav", "task": "recognize", "id": "a"},  # 1 fine
        {"audio_filepath": "good.wav", "task": "poetry", "id": "b"},  # 2 unknown task
        {"audio_filepath": "good.wav", "task": "language", "id": "c"},  # 3 needs a language
        {"audio_filepath": "good.wav", "task": "poetry", "prompt": "Free text.", "id": "d"},  # 4 prompt wins
        {"audio_filepath": "loop.wav", "id": "e"},  # 5
        {"audio_filepath": "dangling.wav", "id": "f"},  # 6
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    problems = {p.line: p for p in iter_problems(manifest)}
    assert sorted(problems) == [2, 3, 5, 6]
    assert problems[2].field == "task" and "unknown task 'poetry'" in problems[2].message
    assert "recognize" in problems[2].message
    assert problems[3].field == "language"
    assert "symbolic link loop" in problems[5].message
    assert "broken symbolic link" in problems[6].message


def test_run_and_validate_agree_on_a_duration_past_the_end(tmp_path, audio_dir):
    """Issue 9.9: validate calls it an error; the run used to transcribe the shorter audio silently."""
    from transcribe_batch.workers.audio import AudioNotFound, AudioRangeError, load_audio

    good = tmp_path / "good.wav"
    good.write_bytes((audio_dir / "002.wav").read_bytes())  # 1.96 s
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "good.wav", "duration": 4.0}) + "\n")
    assert [p.field for p in iter_problems(manifest)] == ["duration"]
    with pytest.raises(AudioRangeError, match=r"duration = 4.000 s runs past the end of the audio \(1.960 s\)"):
        load_audio(good, 0.0, 4.0)
    assert load_audio(good, 0.0, 2.0).size == load_audio(good).size  # within the tolerance: what is there
    (tmp_path / "loop.wav").symlink_to(tmp_path / "loop.wav")
    with pytest.raises(AudioNotFound, match="symbolic link loop"):
        load_audio(tmp_path / "loop.wav")


def test_output_never_replaces_audio_inputs_or_other_files(tmp_path):
    """Bug: `manifest dir md -o md/001.wav` replaced an audio file with JSONL (no existence check, no --overwrite)."""
    md = tmp_path / "md"
    md.mkdir()
    sf.write(md / "001.wav", [0.0, 0.1, -0.1] * 4000, 16000)
    sf.write(md / "002.wav", [0.0, 0.2, -0.2] * 4000, 16000)
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"id": "001", "text": "one"}) + "\n")
    (tmp_path / "a-file").write_text("x")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for args, words in [(["-o", md / "001.wav"], "exists and is not a JSONL manifest"),
                        (["-o", md / "001.wav", "--overwrite"], "exists and is not a JSONL manifest"),
                        (["-t", texts, "-o", texts, "--overwrite"], "is an input of this manifest"),
                        (["-o", md], "is a folder"),
                        (["-o", tmp_path / "a-file" / "m.jsonl"], "a-file is a file, not a folder")]:
        result = run_cli("manifest", "dir", md, *args, code=2)
        assert words in result.output and "Traceback" not in result.output, (args, result.output)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    out = tmp_path / "m.jsonl"
    run_cli("manifest", "dir", md, "-o", out)
    result = run_cli("manifest", "dir", md, "-o", out, code=2)
    assert "already exists (use --overwrite to replace it)" in result.output
    run_cli("manifest", "dir", md, "--glob", "001.wav", "-o", out, "--overwrite")
    assert [r.id for _, r in iter_rows(out)] == ["001"]
    assert not list(tmp_path.rglob(".*.tmp-*"))
