"""Manifests in tmp_path that point at the recordings the repository carries (tests/data/audio)."""

from __future__ import annotations

import json
from pathlib import Path


def shared_rows(audio_dir: Path) -> list[dict]:
    """The rows of audio_dir/manifest.jsonl with absolute audio paths."""
    rows = [json.loads(line) for line in (audio_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    for r in rows:
        r["audio_filepath"] = str(audio_dir / r["audio_filepath"])
    return rows


def write_manifest(path: Path, audio_dir: Path, *, repeat: int = 1, limit: int | None = None,
                   max_duration: float | None = None) -> list[dict]:
    """`repeat` copies of the recordings' rows (distinct ids `<stem>-<k>`); returns the rows written, in order."""
    base = shared_rows(audio_dir)
    if max_duration is not None:
        base = [r for r in base if r["duration"] <= max_duration]
    base = base[:limit]
    rows = []
    for k in range(repeat):
        for r in base:
            rows.append({**r, "id": f"{Path(r['audio_filepath']).stem}-{k}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def write_reference_manifest(path: Path, clips: list[dict], audio_dir: Path) -> None:
    """A manifest of the tiny fixture's reference clips (reference.json), ids = the clips' file names."""
    path.write_text("".join(
        json.dumps({"id": c["audio_filepath"], "audio_filepath": str(audio_dir / c["audio_filepath"]),
                    "offset": c.get("offset") or 0.0, **({"duration": c["duration"]} if c.get("duration") else {})})
        + "\n" for c in clips))
