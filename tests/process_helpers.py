"""Driving the CLI as a separate process in tests: start it, and SIGKILL it once it has finished some rows."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CLI = "import sys; from transcribe_batch.pipeline.cli import main; sys.argv[0] = 'transcribe-batch'; main()"


class Driver(subprocess.Popen):
    """A CLI process whose stdout and stderr go to files, not pipes. Ray processes it started can outlive it (a
    signal to its group can leave some, and they end only once they notice their GCS is gone, up to ~30 s later)
    holding its inherited stdout and stderr; reading pipes to their end would wait for them, whereas the driver
    itself is what the tests judge. `output()` waits for the driver alone, then reads what it wrote."""

    def __init__(self, argv: list[str], **popen):
        self._out = tempfile.TemporaryFile(mode="w+")
        self._err = tempfile.TemporaryFile(mode="w+")
        super().__init__(argv, stdout=self._out, stderr=self._err, text=True, **popen)

    def output(self, timeout: float | None = None) -> tuple[str, str]:
        """(stdout, stderr) once the driver has ended (its exit code in `returncode`)."""
        self.wait(timeout=timeout)
        self._out.seek(0)
        self._err.seek(0)
        return self._out.read(), self._err.read()


def part_names(out: Path) -> list[str]:
    """The run folder's part files, by name (none before the run has made parts/)."""
    return sorted(p.name for p in (out / "parts").glob("part-*.parquet")) if (out / "parts").is_dir() else []


def kill_after_a_new_part(args: list[str], out: Path, *, timeout: float = 240, **popen) -> None:
    """Runs `transcribe-batch ARGS` and SIGKILLs it as soon as a part file appears in `out` that was not there
    before (rows finished, more to do); fails the test if the run ends first or no part appears in `timeout` s. No
    results.parquet may exist afterwards (the merge never ran)."""
    before = set(part_names(out))
    proc = Driver([sys.executable, "-c", CLI, *args], **popen)
    deadline = time.monotonic() + timeout
    while not set(part_names(out)) - before:
        if proc.poll() is not None:
            pytest.fail(f"the driver ended before it was killed: {proc.output()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no new part file")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "results.parquet").exists()
