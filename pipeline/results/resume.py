"""Resume: check an output folder against a run and read what is already done; then claim it for the run.

Checking (`open_run_folder`) changes nothing in the folder: a run refused afterwards (a bad manifest, a bad
--devices, a stop signal before it starts) leaves the folder as it was. Claiming (`claim_run_folder`), once the run
is sure to start, writes its run.json and only then deletes: --overwrite's files, crash leftovers, the earlier
results.parquet (no longer the folder's results; the parts and that manifest make it again), and sets aside parts
that cannot be read whole, so that their rows are redone.

A row counts as done only when the latest record for its exact input is in a readable part (failed ones too,
unless retry_failed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from .atomic import write_json
from .folder import PART_RE, ResumeError, RunFolder, check_output_path, check_run_folder
from .parts import INPUT_DIGEST, PartUnreadable, last_of_each, read_part, set_aside


@dataclass(frozen=True)
class ResumeState:
    done_inputs: np.ndarray  # sorted int64 input digests whose latest record counts as done
    failed_inputs: np.ndarray  # sorted: those of them whose latest record failed (empty with retry_failed)
    next_seq: int  # sequence number of the next part file
    previous: dict | None  # the folder's run.json (a run's, checked), None for a new folder or with overwrite
    unreadable: tuple[tuple[Path, str], ...] = ()  # parts that cannot be read whole: (file, why); set aside on claim


def open_run_folder(folder: RunFolder, identity: dict, *, overwrite: bool = False, retry_failed: bool = False
                    ) -> ResumeState:
    """Check the folder against this run's identity and read what is already done, changing nothing. ResumeError
    for a folder that is not a run folder (with or without overwrite) or, unless overwrite, another run's."""
    check_output_path(folder.path)
    previous = check_run_folder(folder) if folder.path.exists() else None
    if previous is not None and not overwrite:
        old = previous["identity"]
        changed = {k: (old.get(k), v) for k, v in identity.items() if old.get(k) != v}
        if changed:
            what = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ResumeError(f"{folder.path} holds results of a different run ({what}). Use another --output, or "
                              "--overwrite to delete them and start over.")
    files = folder.part_files()
    next_seq = int(PART_RE.fullmatch(files[-1].name).group("seq")) + 1 if files else 0
    empty = np.zeros(0, np.int64)
    if overwrite or not files:
        return ResumeState(empty, empty, next_seq, None if overwrite else previous)
    digests, ok, unreadable = [], [], []
    for f in files:
        try:
            table = read_part(f, [INPUT_DIGEST, "status"])
        except PartUnreadable as e:
            unreadable.append((f, str(e)))
            continue
        if INPUT_DIGEST not in table.column_names:  # written before records carried input digests: never reused
            continue
        keep = pc.is_valid(table[INPUT_DIGEST])  # bad-line records have none: they are made afresh by every run
        digests.append(pc.filter(table[INPUT_DIGEST], keep).to_numpy().astype(np.int64, copy=False))
        ok.append(pc.equal(pc.filter(table["status"], keep), "ok").to_numpy(zero_copy_only=False))
    if not digests:
        return ResumeState(empty, empty, next_seq, previous, tuple(unreadable))
    all_digests, all_ok = np.concatenate(digests), np.concatenate(ok)
    last = last_of_each(all_digests)  # the latest record of each input counts
    all_digests, all_ok = all_digests[last], all_ok[last]
    if retry_failed:
        all_digests, all_ok = all_digests[all_ok], all_ok[all_ok]
    return ResumeState(np.sort(all_digests), np.sort(all_digests[~all_ok]), next_seq, previous, tuple(unreadable))


def claim_run_folder(folder: RunFolder, state: ResumeState, run_info: dict, *, overwrite: bool = False) -> list[str]:
    """The run starts: write its run.json, then delete what it replaces (see the module's docstring). Returns a
    line for each part set aside."""
    if overwrite:
        folder.delete_run_files()
    else:
        folder.remove_leftovers()
    write_json(folder.run_json, run_info)  # from now on the folder is this run's (its run_id)
    folder.results.unlink(missing_ok=True)
    notes = []
    for f, why in state.unreadable:
        try:
            target = set_aside(f)
        except OSError as e:
            notes.append(f"{why}; could not be set aside ({e.strerror or e}): its rows are redone")
            continue
        notes.append(f"{why}; renamed to {target.name}, its rows are redone")
    return notes
