"""`run.json`: what a run writes about itself, and the check that a file named run.json is one a run wrote.

A folder counts as a run folder only if its run.json passes `check_run_json` (an object with the keys and types runs
write); anything else named run.json (a user's config, `null`, `[1, 2]`, a truncated file) makes the folder
someone else's: runs refuse it, --overwrite never deletes in it, and readers say so.

Each run that starts writes a new `run_id`; the merge writes the same id into results.parquet's schema metadata
(RESULTS_RUN_ID), so a reader can tell the results of the folder's latest complete run from older ones.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

STATUSES = ("running", "complete", "interrupted", "failed")
RESULTS_RUN_ID = "transcribe_batch.run_id"  # results.parquet schema metadata: the run_id of the run that merged it

_NUMBER = (int, float)
# Every run.json has had these (also the compact copy written in place on a full disk, which drops bulky keys).
REQUIRED: dict[str, tuple] = {"status": (str,), "started_at": (str,), "identity": (dict,)}
# Written by runs at some point; checked when present.
OPTIONAL: dict[str, tuple] = {
    "run_id": (str,), "finished_at": (str, type(None)), "manifest": (str,), "manifest_fingerprint": (dict, type(None)),
    "output": (str,), "engine": (str, type(None)), "model_id": (str, type(None)), "config": (dict,),
    "versions": (dict,), "resumed": (bool,), "runs": (list,), "counts": (dict,), "audio_s": _NUMBER,
    "wall_s": _NUMBER, "stats": (dict,), "devices": (list, type(None)), "error": (str,), "signal": (str,),
}


class NotARunJson(ValueError):
    """A file named run.json that no run wrote (or that is damaged); the message names the file and the problem."""


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def _type_names(types: tuple) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def _has_type(value, types: tuple) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False  # True is an int to Python, never a number to a run
    return isinstance(value, types)


def check_run_json(obj, path: Path) -> dict:
    """`obj` (parsed from `path`) if it is a run's run.json, else NotARunJson naming the first problem."""
    if not isinstance(obj, dict):
        raise NotARunJson(f"{path}: not a run's run.json: it holds {_json_type(obj)}, not an object")
    for key, types in {**REQUIRED, **OPTIONAL}.items():
        if key not in obj:
            if key in REQUIRED:
                raise NotARunJson(f"{path}: not a run's run.json: it has no {key!r} field")
            continue
        if not _has_type(obj[key], types):
            raise NotARunJson(f"{path}: not a run's run.json: field {key!r} is {_json_type(obj[key])}, a run writes "
                              f"{_type_names(types)}")
    if obj["status"] not in STATUSES:
        raise NotARunJson(f"{path}: not a run's run.json: field 'status' is {obj['status']!r}, a run writes one of "
                          + ", ".join(STATUSES))
    if any(not isinstance(r, dict) for r in obj.get("runs", [])):
        raise NotARunJson(f"{path}: not a run's run.json: field 'runs' holds something other than objects")
    return obj


def read_run_json(path: Path) -> dict | None:
    """The run.json at `path` (None if there is none); NotARunJson if it cannot be read or is not a run's."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise NotARunJson(f"{path}: unreadable ({getattr(e, 'strerror', None) or e})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise NotARunJson(f"{path}: not a run's run.json: not JSON ({e})") from None
    return check_run_json(obj, path)


def versions() -> dict:
    """Versions recorded in run.json: python, platform, ray, pyarrow, numpy, transcribe-batch."""
    import numpy as np
    import pyarrow as pa
    import ray

    out = {"python": sys.version.split()[0], "platform": platform.platform(), "ray": ray.__version__,
           "pyarrow": pa.__version__, "numpy": np.__version__}
    try:
        from importlib.metadata import version

        out["transcribe-batch"] = version("transcribe-batch")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        out["transcribe-batch"] = "unknown"
    return out
