"""Check every row of a manifest before a run: the line parses, its audio exists and has a readable header, and
its offset/duration fit inside the audio. Streams (rows come from `reader.iter_rows`), so 1M-row manifests are fine.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

from .headers import DURATION_TOLERANCE_S, Header, read_header

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib
from .reader import ManifestError, iter_rows
from .row import ManifestRow

ERROR = "error"  # the row would fail in a run
WARNING = "warning"  # the row runs, but probably not as meant


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    field: str | None
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        what = f"field {self.field!r}: " if self.field else ""
        return f"{self.path}:{self.line}: {self.severity}: {what}{self.message}"


@dataclass
class Summary:
    n_rows: int = 0
    n_bad_rows: int = 0  # rows with at least one error
    n_warnings: int = 0
    n_without_duration: int = 0  # neither the manifest nor a header gives a duration
    audio_s: float = 0.0  # Σ seconds the good rows will transcribe (manifest duration, else header)
    errors_by_field: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.n_bad_rows == 0


def _audio_problems(row: ManifestRow, header: Header, tolerance_s: float) -> Iterator[tuple[str, str, str]]:
    """(field, message, severity) for one parsed row whose file exists."""
    if header.problem:
        yield "audio_filepath", f"{row.audio_filepath}: {header.problem}", ERROR
        return
    if header.duration is None:
        return
    offset, duration, length = row.offset, row.duration, header.duration
    if offset >= length:
        yield "offset", f"{offset:g} s is at or past the end of the audio ({length:.3f} s)", ERROR
        return
    if duration is None:
        return
    if offset + duration > length + tolerance_s:
        what = "offset + duration" if offset else "duration"
        yield "duration", (f"{what} = {offset + duration:.3f} s runs past the end of the audio "
                           f"({length:.3f} s per its header)"), ERROR
    elif offset == 0 and duration < length - tolerance_s:
        yield "duration", (f"{duration:.3f} s but the audio is {length:.3f} s: only the first {duration:.3f} s "
                           "will be transcribed"), WARNING


@lru_cache(maxsize=1)
def _templates() -> dict[str, str]:
    """Prompt templates by name (config/prompts.toml: what a row's `task` names)."""
    from importlib import resources

    text = resources.files("transcribe_batch.config").joinpath("prompts.toml").read_text(encoding="utf-8")
    return dict(tomllib.loads(text).get("templates") or {})


def _prompt_problems(row: ManifestRow) -> Iterator[tuple[str, str]]:
    """(field, message) for a row whose prompt cannot be built (a run would fail the row)."""
    if row.prompt or not row.task:
        return  # free text wins over the task; no task: the run's --template (checked by `run`)
    templates = _templates()
    template = templates.get(row.task)
    if template is None:
        yield "task", f"unknown task {row.task!r}; known (config/prompts.toml): {', '.join(sorted(templates))}"
    elif "{language}" in template and not row.language:
        yield "language", f"task {row.task!r} needs the row's language"


def _stat_problem(audio: str) -> str | None:
    try:
        st = os.stat(audio)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"symbolic link loop (the link points back to itself): {audio}"
        if os.path.islink(audio):
            return f"broken symbolic link (to {os.readlink(audio)}): {audio}"
        if e.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied: {audio}"
        return f"file not found: {audio}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file: {audio}"
    if st.st_size == 0:
        return f"file is empty (0 bytes): {audio}"
    return None


def iter_problems(path: str | os.PathLike, *, check_audio: bool = True, tolerance_s: float = DURATION_TOLERANCE_S,
                  summary: Summary | None = None) -> Iterator[Problem]:
    """Yield every problem, in line order; fill `summary` as rows go by. A missing manifest raises ManifestError."""
    summary = summary if summary is not None else Summary()
    manifest = str(path)
    header_of = lru_cache(maxsize=256)(read_header)  # consecutive segments of one long file share a header read
    for line_no, row in iter_rows(path, skip_bad_lines=True):
        summary.n_rows += 1
        problems: list[Problem] = []
        if isinstance(row, ManifestError):
            problems.append(Problem(manifest, row.line, row.field, row.message))
            row = None
        else:
            problems += [Problem(manifest, line_no, fld, message) for fld, message in _prompt_problems(row)]
        if row is None:
            pass
        elif check_audio:
            audio = row.audio_filepath  # str, not Path (see headers.read_header)
            unusable = _stat_problem(audio)
            if unusable:
                problems.append(Problem(manifest, line_no, "audio_filepath", unusable))
            else:
                header = header_of(audio)
                for fld, message, severity in _audio_problems(row, header, tolerance_s):
                    problems.append(Problem(manifest, line_no, fld, message, severity))
                if not any(p.severity == ERROR for p in problems):
                    length = row.duration if row.duration is not None else (
                        header.duration - row.offset if header.duration is not None else None)
                    if length is None:
                        summary.n_without_duration += 1
                    else:
                        summary.audio_s += length
        else:
            if row.duration is None:
                summary.n_without_duration += 1
            else:
                summary.audio_s += row.duration
        errors = [p for p in problems if p.severity == ERROR]
        if errors:
            summary.n_bad_rows += 1
            for p in errors:
                key = p.field or "line"
                summary.errors_by_field[key] = summary.errors_by_field.get(key, 0) + 1
        summary.n_warnings += len(problems) - len(errors)
        yield from problems
