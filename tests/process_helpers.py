"""Driving the CLI as a separate process in tests: start it, and SIGKILL it once it has finished some rows."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = "import sys; from transcribe_batch.pipeline.cli import main; sys.argv[0] = 'transcribe-batch'; main()"


def part_names(out: Path) -> list[str]:
    """The run folder's part files, by name (none before the run has made parts/)."""
    return sorted(p.name for p in (out / "parts").glob("part-*.parquet")) if (out / "parts").is_dir() else []


def kill_after_a_new_part(args: list[str], out: Path, *, timeout: float = 240, **popen) -> None:
    """Runs `transcribe-batch ARGS` and SIGKILLs it as soon as a part file appears in `out` that was not there
    before (rows finished, more to do); fails the test if the run ends first or no part appears in `timeout` s. No
    results.parquet may exist afterwards (the merge never ran)."""
    before = set(part_names(out))
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)
    deadline = time.monotonic() + timeout
    while not set(part_names(out)) - before:
        if proc.poll() is not None:
            pytest.fail(f"the driver ended before it was killed: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no new part file")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "results.parquet").exists()
