"""Build JSONL manifests from folders: a LibriSpeech split, or every audio file under a folder (labeling jobs).

Everything streams: folders are walked in sorted order one directory at a time and rows are written as they are
made, so a million-file tree costs the memory of its largest directory listing, not of its rows. Durations come
from the audio headers (soundfile.info), never from decoding.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .headers import read_header

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".wma", ".webm", ".mp4", ".aif",
                    ".aiff", ".au", ".caf", ".w64")
SIDECAR_EXTENSIONS = (".txt", ".lab")

Report = Callable[[str], None]  # receives one human-readable problem statement


class BuildError(ValueError):
    """The builder cannot go on (no such folder, nothing to build from, unreadable transcripts file)."""


def _walk_sorted(root: Path) -> Iterator[tuple[str, list[str]]]:
    """(directory, sorted file names) for every directory under root, in sorted depth-first order.

    Plain strings on purpose: pathlib interns every path part, which grows without bound over a million files.
    """
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        files.sort()
        yield folder, files


def _path_for(path: str, relative_to: Path | None) -> str:
    if relative_to is None:
        return os.path.abspath(path)
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(relative_to))
    return rel.replace(os.sep, "/")


def librispeech_rows(root: str | os.PathLike, *, relative_to: Path | None = None,
                     report: Report | None = None) -> Iterator[dict]:
    """Rows of a LibriSpeech split (…/SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt + SPEAKER-CHAPTER-NNNN.flac).

    ids are the utterance ids; `text` is the transcript as distributed (upper case, normalized at scoring time);
    `speaker` and `chapter` are carried along. A transcript line whose audio is missing or unreadable is reported
    and left out (it cannot be transcribed); so is a flac with no transcript line.
    """
    root = Path(root)
    if not root.is_dir():
        raise BuildError(f"{root}: no such folder")
    report = report or (lambda message: None)
    found = False
    for folder, files in _walk_sorted(root):
        transcripts = [f for f in files if f.endswith(".trans.txt")]
        if not transcripts:
            continue
        found = True
        listed: set[str] = set()
        present = set(files)
        for name in transcripts:
            trans = os.path.join(folder, name)
            with open(trans, encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, start=1):
                    line = line.strip()
                    if not line:
                        continue
                    utt_id, _, text = line.partition(" ")
                    audio_name = next((utt_id + ext for ext in (".flac", ".wav") if utt_id + ext in present), None)
                    if audio_name is None:
                        report(f"{trans}:{line_no}: no audio file {utt_id}.flac next to the transcript; left out")
                        continue
                    listed.add(audio_name)
                    audio = os.path.join(folder, audio_name)
                    header = read_header(audio)
                    if header.duration is None:
                        report(f"{audio}: {header.problem or 'not a format libsndfile reads'}; left out")
                        continue
                    speaker, chapter, *_ = utt_id.split("-") + ["", ""]
                    yield {
                        "id": utt_id,
                        "audio_filepath": _path_for(audio, relative_to),
                        "duration": header.duration,
                        "text": text.strip(),
                        "speaker": speaker,
                        "chapter": chapter,
                    }
        for name in files:
            if name.endswith(".flac") and name not in listed:
                report(f"{os.path.join(folder, name)}: no line in {', '.join(transcripts)}; left out")
    if not found:
        raise BuildError(f"{root}: no *.trans.txt found (expected a LibriSpeech split such as LibriSpeech/test-clean)")


def load_transcripts(path: str | os.PathLike) -> dict[str, str]:
    """KEY → text from a transcripts file: .jsonl/.json lines ({"id"|"audio_filepath"|"file": …, "text": …}),
    .csv/.tsv with a header (a key column: id, file, path, audio_filepath, filename; a text column: text,
    transcript, sentence), or plain lines `KEY<TAB or space>TEXT` (LibriSpeech/Kaldi style)."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path}: transcripts file not found")
    out: dict[str, str] = {}
    suffix = path.suffix.lower()
    key_names = ("id", "audio_filepath", "file", "path", "filename", "file_name", "key", "utt_id")
    text_names = ("text", "transcript", "transcription", "sentence", "normalized_text")
    with open(path, encoding="utf-8", newline="") as fh:
        if suffix in (".jsonl", ".json"):
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BuildError(f"{path}:{line_no}: not valid JSON ({exc})") from None
                key = next((obj[k] for k in key_names if isinstance(obj, dict) and obj.get(k) is not None), None)
                text = next((obj[k] for k in text_names if isinstance(obj, dict) and obj.get(k) is not None), None)
                if key is None or text is None:
                    raise BuildError(f"{path}:{line_no}: needs a key field ({'/'.join(key_names)}) and a text field "
                                     f"({'/'.join(text_names)})")
                out[str(key)] = str(text)
        elif suffix in (".csv", ".tsv"):
            reader = csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ",")
            fields = [f.strip().lower() for f in reader.fieldnames or []]
            key_col = next((reader.fieldnames[fields.index(k)] for k in key_names if k in fields), None)
            text_col = next((reader.fieldnames[fields.index(k)] for k in text_names if k in fields), None)
            if key_col is None or text_col is None:
                raise BuildError(f"{path}: header needs a key column ({', '.join(key_names)}) and a text column "
                                 f"({', '.join(text_names)}); found {reader.fieldnames}")
            for record in reader:
                if record.get(key_col):
                    out[record[key_col].strip()] = (record.get(text_col) or "").strip()
        else:
            for line_no, line in enumerate(fh, start=1):
                line = line.strip()
                if not line:
                    continue
                key, sep, text = line.partition("\t") if "\t" in line else line.partition(" ")
                if not sep:
                    raise BuildError(f"{path}:{line_no}: expected `KEY TEXT` (tab or space separated), got {line!r}")
                out[key.strip()] = text.strip()
    return out


def _matches(rel: str, name: str, pattern: str | None) -> bool:
    if pattern is None:
        return name.lower().endswith(AUDIO_EXTENSIONS)
    if "/" not in pattern:
        return fnmatch.fnmatch(name, pattern)
    return fnmatch.fnmatch(rel, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(rel, pattern[3:]))


def dir_rows(root: str | os.PathLike, *, pattern: str | None = None, transcripts: str | None = None,
             relative_to: Path | None = None, skip_unreadable: bool = False,
             report: Report | None = None) -> Iterator[dict]:
    """One row per audio file under `root` (sorted), id = path relative to root without extension.

    `pattern`: a glob on the file name (`*.wav`) or, with a `/`, on the path relative to root (`spk*/**/*.flac`);
    default: every file with a known audio extension. `transcripts`: None; `"sidecar"` (`NAME.txt` or `NAME.lab`
    beside each audio file); or a transcripts file (see `load_transcripts`) whose keys are matched against the
    relative path, the relative path without extension, the file name, then the stem. Files whose header is
    corrupt are reported (and with `skip_unreadable` left out); formats libsndfile cannot read get no duration.
    """
    root = Path(root)
    if not root.is_dir():
        raise BuildError(f"{root}: no such folder")
    report = report or (lambda message: None)
    table = None if transcripts in (None, "sidecar") else load_transcripts(transcripts)
    used: set[str] = set()
    n_missing_text = 0
    for folder, files in _walk_sorted(root):
        rel_dir = os.path.relpath(folder, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        present = set(files) if transcripts == "sidecar" else set()
        picked = [name for name in files if _matches(rel_dir + name, name, pattern)]
        stems = [os.path.splitext(name)[0] for name in picked]
        clashing = {s for s, n in Counter(stems).items() if n > 1}
        for name, stem in zip(picked, stems):
            path = os.path.join(folder, name)
            rel = rel_dir + name
            row_id = rel if stem in clashing else rel_dir + stem
            header = read_header(path)
            if header.problem:
                report(f"{path}: {header.problem}" + ("; left out" if skip_unreadable else "; kept (the run will "
                                                                                           "record it as failed)"))
                if skip_unreadable:
                    continue
            row: dict = {"id": row_id, "audio_filepath": _path_for(path, relative_to)}
            if header.duration is not None:
                row["duration"] = header.duration
            if transcripts == "sidecar":
                side = next((stem + ext for ext in SIDECAR_EXTENSIONS if stem + ext in present), None)
                if side is not None:
                    with open(os.path.join(folder, side), encoding="utf-8") as fh:
                        row["text"] = " ".join(fh.read().split())
                else:
                    n_missing_text += 1
            elif table is not None:
                key = next((k for k in (rel, rel_dir + stem, name, stem) if k in table), None)
                if key is not None:
                    row["text"] = table[key]
                    used.add(key)
                else:
                    n_missing_text += 1
            yield row
    if n_missing_text:
        report(f"{n_missing_text} audio files have no transcript (rows written without `text`)")
    if table is not None and len(used) < len(table):
        unused = [k for k in table if k not in used]
        report(f"{len(unused)} transcript keys match no audio file, e.g. {', '.join(unused[:5])}")


def _is_manifest(path: Path) -> bool:
    """Whether an existing file reads as a JSONL manifest: empty, or its first non-blank line a JSON object."""
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    return isinstance(json.loads(line), dict)
    except (OSError, ValueError):
        return False
    return True


def check_output(out: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Where a manifest may be written (BuildError otherwise): not over an input (`inputs`: e.g. the transcripts
    file), a folder or something under a file; an existing file only with `overwrite`, and only if it is a JSONL
    manifest itself (never an audio file or other data). Returns the path, resolved."""
    given = Path(out)
    path = Path(os.path.abspath(given)).resolve()
    for inp in inputs:
        if inp is not None and Path(inp).is_file() and path == Path(inp).resolve():
            raise BuildError(f"-o {given}: is an input of this manifest ({inp}): choose another path")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BuildError(f"-o {given}: {parent} is a file, not a folder")
            break
    if path.is_dir():
        raise BuildError(f"-o {given}: is a folder; give a file name (e.g. {given / 'manifest.jsonl'})")
    if path.exists():
        if not path.is_file() or not _is_manifest(path):
            raise BuildError(f"-o {given}: exists and is not a JSONL manifest: not replacing it, even with "
                             "--overwrite: choose another path")
        if not overwrite:
            raise BuildError(f"-o {given}: already exists (use --overwrite to replace it)")
    return path


def write_jsonl(rows: Iterable[dict], out: str | os.PathLike | None, *, overwrite: bool = False,
                inputs: Iterable[str | os.PathLike] = ()) -> int:
    """Stream rows to `out` or to stdout when out is None/'-'. A file is checked first (`check_output`), written
    to a temporary file beside it, then renamed: it appears complete or not at all (missing folders are created)."""
    if out is None or str(out) == "-":
        import sys

        n = 0
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        return n
    out = check_output(out, overwrite=overwrite, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    n = 0
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
        if out.exists() and not overwrite:  # appeared while the rows were made
            raise BuildError(f"-o {out}: appeared while the manifest was built; not replacing it")
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
